"""docs/prefill_vs_decode.md: every command in it still prints what the page shows.

`>>>` examples run as doctests. `$ llama-np memory ...` blocks must print exactly the lines
shown, except the measured `hardware` lines of `--hardware this-machine`. `$ llama-np
profile ...` blocks are timed on the machine that wrote the page, so only their
machine-independent columns (tokens, FLOPs, bytes, FLOP/B) are checked; the timings and the
prose quoting them are checked for consistency by tests/test_docs_consistency.py.
"""

import doctest
import re
import shlex
from pathlib import Path

import pytest

from llama_np.cli import main
from llama_np.tools import machine
from llama_np.tools.machine import MachinePeaks

DOC = Path(__file__).resolve().parents[1] / "docs" / "prefill_vs_decode.md"


def console_commands() -> list[tuple[str, list[str]]]:
    """(command, the output lines shown under it) for every `$` line in ```console blocks."""
    commands = []
    for block in re.findall(r"```console\n(.*?)```", DOC.read_text(), flags=re.S):
        for chunk in re.split(r"^\$ ", block, flags=re.M)[1:]:
            command, *output = chunk.rstrip("\n").split("\n")
            commands.append((command, output))
    return commands


def run(argv: list[str], capsys) -> list[str]:
    assert main(argv) == 0
    return capsys.readouterr().out.rstrip("\n").split("\n")


def test_doctests():
    result = doctest.testfile(
        str(DOC), module_relative=False, optionflags=doctest.NORMALIZE_WHITESPACE
    )
    assert result.attempted > 20 and result.failed == 0


MEMORY = [(c, out) for c, out in console_commands() if c.startswith("llama-np memory")]
PROFILE = [(c, out) for c, out in console_commands() if " llama-np profile " in f" {c} "]
RUN_PROFILE = [(c, out) for c, out in PROFILE if "--random" not in c]
RANDOM_PROFILE = [(c, out) for c, out in PROFILE if "--random" in c]


def test_doc_has_the_commands():
    assert len(MEMORY) >= 8 and len(RUN_PROFILE) == 2 and len(RANDOM_PROFILE) == 2
    assert "llama-np memory llama-3.1-8b --context 128000" in [c for c, _ in MEMORY]
    assert "llama-np memory llama-3-8b --hardware h100" in [c for c, _ in MEMORY]
    assert "--prompt-tokens 240" in RANDOM_PROFILE[0][0]  # each phase at its ceiling
    assert "--batch 8" in RANDOM_PROFILE[1][0]


def fake_peaks(remeasure=False, threads=None):
    return MachinePeaks(1e11, 1e10, "test")


@pytest.mark.parametrize("command, shown", MEMORY, ids=[c[16:] for c, _ in MEMORY])
def test_memory_output_is_what_the_doc_shows(command, shown, capsys, monkeypatch):
    argv = shlex.split(command)[1:]
    monkeypatch.setattr(machine, "peaks", fake_peaks)
    printed = run(argv, capsys)
    if "this-machine" in argv:  # the hardware lines are this machine's measurements
        cut = next(i for i, line in enumerate(shown) if line.startswith("hardware"))
        shown, printed = shown[:cut], printed[:cut]
    assert printed == shown


def counts(lines: list[str]) -> dict[str, list[str]]:
    """phase -> tokens, MFLOP, weights MB, KV MB, FLOP/B: the columns no machine changes."""
    rows = [
        line.split() for line in lines if re.match(r"(prefill|decode|batch-decode) +\d+ ", line)
    ]
    return {r[0]: [r[2], *r[5:9]] for r in rows}


@pytest.mark.parametrize("command, shown", RUN_PROFILE, ids=["short prompt", "long prompt"])
def test_profile_counts_are_what_the_doc_shows(command, shown, capsys, monkeypatch, tmp_path):
    argv = shlex.split(command)
    argv = argv[argv.index("llama-np") + 1 :]
    argv[argv.index("--out") + 1] = str(tmp_path)  # never overwrite the doc's pictures
    monkeypatch.setattr(machine, "peaks", fake_peaks)
    printed = run([*argv, "--repeats", "1"], capsys)
    assert counts(shown).keys() == {"prefill", "decode"}
    assert counts(printed) == counts(shown)
    prompt_lines = [line for line in shown if line.startswith("prompt: ")]
    assert all(line in printed for line in prompt_lines)


@pytest.mark.parametrize("command, shown", RANDOM_PROFILE, ids=["stories15M", "stories110M"])
def test_random_profile_counts_are_the_formulas(command, shown):
    """The --random blocks' counts, recomputed from the config by costs.py (running an
    110M-parameter model here would take a minute)."""
    from llama_np.tools.costs import forward_bytes, forward_flops
    from llama_np.tools.known_models import known_config

    argv = shlex.split(command)
    cfg = known_config(argv[argv.index("--random") + 1])

    def flag(name: str, default: int) -> int:
        return int(argv[argv.index(name) + 1]) if name in argv else default

    n, batch, T = flag("-n", 64), flag("--batch", 1), flag("--prompt-tokens", 16)
    assert f"prompt: {T} random token ids; random weights of {cfg.name}'s shape" in shown

    def row(tokens, flops, weights, kv):
        return [str(tokens), f"{flops / 1e6:.2f}", f"{weights / 1e6:.3f}", f"{kv / 1e6:.3f}",
                f"{flops / (weights + kv):.2f}"]  # fmt: skip

    kv = [cfg.kv_cache_bytes(T + i + 1) for i in range(n)]  # each step reads the cache so far
    expected = {
        "prefill": row(
            T, forward_flops(cfg, T), forward_bytes(cfg, T, 0, 4, 0), cfg.kv_cache_bytes(T)
        ),
        "decode": row(
            n,
            sum(forward_flops(cfg, 1, T + i) for i in range(n)),
            n * forward_bytes(cfg, 1, T, 4, 0),
            sum(kv),
        ),
    }
    if batch > 1:
        expected["batch-decode"] = row(
            batch * n,
            sum(forward_flops(cfg, 1, T + i, 1, batch) for i in range(n)),
            n * forward_bytes(cfg, 1, T, 4, 0, batch),
            batch * sum(kv),
        )
    assert counts(shown) == expected


def test_pictures_exist():
    for name in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", DOC.read_text()):
        assert (DOC.parent / name).read_bytes()[:4] == b"\x89PNG"
