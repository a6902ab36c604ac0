"""docs/serving.md: its examples run, its simulator blocks print what the page shows, its
measured tables are the ones the lab prints, and every number its prose quotes is its
block's.

`>>>` examples run as doctests. `$ llama-np simulate` blocks on a GPU preset are pure Python
and must print exactly the lines shown. The `serving-lab` blocks and the `--hardware
this-machine` block were measured on the machine that wrote the page (scripts/doc_figures.py
regenerates them): each is rerun here on a tiny model, and must print the same table, numbers
and model names aside; the this-machine block's machine-independent lines (model, KV pool,
scheduler, workload) must be exactly what the simulator prints.
"""

from __future__ import annotations

import doctest
import importlib.util
import re
import shlex
from pathlib import Path

import pytest
from util import byte_tokenizer, random_model, small_config

import llama_np
from llama_np.cli import main
from llama_np.cli.main import build_parser
from llama_np.tools import machine, serving_lab
from llama_np.tools.machine import MachinePeaks

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "serving.md"
TEXT = DOC.read_text()


def console_commands() -> list[tuple[str, list[str]]]:
    commands = []
    for block in re.findall(r"```console\n(.*?)```", TEXT, flags=re.S):
        for chunk in re.split(r"^\$ ", block, flags=re.M)[1:]:
            command, *output = chunk.rstrip("\n").split("\n")
            commands.append((command, output))
    return commands


COMMANDS = console_commands()
SIMULATE = [(c, o) for c, o in COMMANDS if " simulate " in c and "this-machine" not in c]
HERE = [(c, o) for c, o in COMMANDS if " simulate " in c and "this-machine" in c]
LAB = [(c, o) for c, o in COMMANDS if " serving-lab " in c]


def test_doctests():
    result = doctest.testfile(
        str(DOC), module_relative=False, optionflags=doctest.NORMALIZE_WHITESPACE
    )
    assert result.attempted >= 5 and result.failed == 0


def test_the_page_has_its_commands():
    experiments = {shlex.split(c)[2] for c, _ in LAB}
    assert experiments == {"batching", "chunked", "prefix", "context", "speculative"}
    assert len(SIMULATE) >= 2 and len(HERE) == 1 and "--against-engine" in HERE[0][0]
    assert any("llama-3.1-8b --hardware h100 --context 131072 --rate" in c for c, _ in SIMULATE)
    for command, _ in COMMANDS:
        build_parser().parse_args(shlex.split(command)[1:])  # every command is valid


@pytest.mark.parametrize("command, shown", SIMULATE, ids=[c[24:70] for c, _ in SIMULATE])
def test_simulate_prints_what_the_page_shows(command, shown, capsys):
    assert main(shlex.split(command)[1:]) == 0
    assert capsys.readouterr().out.rstrip("\n").split("\n") == shown


FIXED = ("model", "KV pool", "  sequences of", "scheduler", "workload")


def test_this_machine_block_s_fixed_lines(capsys, monkeypatch):
    """What does not depend on this machine's speed: the model, the pool, the workload."""
    (command, shown), = HERE  # fmt: skip
    argv = [a for a in shlex.split(command)[1:] if a != "--against-engine"] + ["--no-overheads"]
    monkeypatch.setattr(machine, "peaks", lambda *a, **k: MachinePeaks(1e11, 2e10, "test"))
    assert main(argv) == 0
    printed = capsys.readouterr().out.split("\n")
    pick = [line for line in shown if line.startswith(FIXED)]
    assert len(pick) == len(FIXED) and pick == [line for line in printed if line.startswith(FIXED)]
    result = [line for line in shown if line.startswith("result")]
    assert len(result) == 1 and "±25%" in result[0]


def shape(line: str) -> str:
    """A table line with its numbers, units and model names masked."""
    line = re.sub(r"stories\w+|tiny", "M", line)
    line = re.sub(r"\d[\d,.]*", "#", line)
    line = re.sub(r"# (µs|ms|s|min|MiB|MB)\b", "# U", line)
    return re.sub(r"\s+", " ", line).strip()


TINY = small_config(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=96, vocab_size=300,
                    max_seq_len=128, name="tiny")  # fmt: skip


@pytest.fixture(scope="module")
def tiny():
    return random_model(TINY, 0, byte_tokenizer(300))


def run_lab(experiment: str, model) -> str:
    if experiment == "batching":
        return serving_lab.batching(model, n=16, max_seqs=8)[0]
    if experiment == "chunked":
        return serving_lab.chunked(model, streams=8, long=100, budget=24)[0]
    if experiment == "prefix":
        return serving_lab.prefix(model, system=50, questions=2)
    if experiment == "context":
        return serving_lab.context(model, (16, 32, 64, 96, 112), bandwidth=1e10)
    return serving_lab.speculative(llama_np.load(), model)


@pytest.mark.parametrize("command, shown", LAB, ids=[shlex.split(c)[2] for c, _ in LAB])
def test_lab_prints_the_table_the_page_shows(command, shown, tiny):
    printed = run_lab(shlex.split(command)[2], tiny).split("\n")
    table = [line for line in shown if not line.startswith("wrote ")]
    assert [shape(line) for line in printed] == [shape(line) for line in table]


def test_quoted_figures_are_the_ones_in_their_blocks():
    spec = importlib.util.spec_from_file_location("doc_figures", ROOT / "scripts/doc_figures.py")
    figs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figs)
    assert figs.stale_markers(TEXT) == []
    assert len(figs.MARKER.findall(TEXT)) >= 15


def test_pictures_exist():
    names = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", TEXT)
    assert names
    for name in names:
        assert (DOC.parent / name).read_bytes()[:4] == b"\x89PNG"


def test_the_lab_draws_its_steps_in_the_phase_colours(tiny, tmp_path):
    """plot_steps draws prefill and decode tokens in the one colour table's colours (an import
    of a renamed table once made every chart say 'matplotlib is not installed')."""
    pytest.importorskip("matplotlib")
    import numpy as np
    from matplotlib.colors import to_rgb
    from matplotlib.image import imread

    from llama_np.tools.colors import PHASE_COLORS

    _, runs = serving_lab.chunked(tiny, streams=2, long=40, budget=16)
    pixels = imread(serving_lab.plot_steps(runs, tmp_path / "steps.png", "chunked"))[..., :3]
    for phase in ("prefill", "decode"):
        near = np.abs(pixels - np.array(to_rgb(PHASE_COLORS[phase]))).max(axis=-1) < 0.02
        assert near.sum() > 100, phase  # bars of that colour, not a stray pixel
