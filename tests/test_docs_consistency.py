"""The docs and the README agree with each other and with what can be recomputed.

Figures measured on this machine are regenerated together by scripts/doc_figures.py; these
tests check what must hold whichever machine measured them: every number quoted in prose is
the one in the block it comes from, a measured speed never beats the bound another page
states, counts that follow from a config are that config's, and paths are ones the tools make.
"""

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

import llama_np
from llama_np.checkpoints.download import KNOWN_CHECKPOINTS
from llama_np.cli import main
from llama_np.tools.known_models import known_config

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LESSON = ROOT / "docs" / "prefill_vs_decode.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]


def doc_figures():
    spec = importlib.util.spec_from_file_location(
        "doc_figures", ROOT / "scripts" / "doc_figures.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("page", [LESSON, README], ids=lambda p: p.name)
def test_quoted_figures_are_the_ones_in_their_blocks(page):
    figs = doc_figures()
    text = page.read_text()
    assert figs.stale_markers(text) == []
    if page == LESSON:
        assert len(figs.MARKER.findall(text)) >= 10


def test_measured_speed_never_beats_the_stated_bound():
    """The README's measured TinyLlama fp32 decode cannot be faster than the lesson's bound
    for it on this machine (the lesson once said 'at best 4' beside a measured 7.4)."""
    figs = doc_figures()
    text = LESSON.read_text()
    bound = float(figs.figures(text)["tiny_decode_bound"])
    row = re.search(r"\| tinyllama-1\.1b \| decode \| ([\d.]+) ", README.read_text())
    if figs.busy_peaks(figs.find(text, figs.TINY)):  # then the page must say its bound is low
        assert f"<!-- fig tiny_caveat -->{figs.BUSY_CAVEAT}<!-- /fig -->" in text
    else:
        assert float(row[1]) <= bound


def this_machine_peaks() -> dict[str, set]:
    """Every figure of this machine's peaks the README and the lesson quote: the benchmark
    tables' line, each profile block's, each `--hardware this-machine` block's."""
    figs = doc_figures()
    readme = README.read_text()
    bench = re.search(
        r"Measured now: sgemm ([\d.]+) GFLOP/s, sgemv bandwidth ([\d.]+) GB/s", readme
    )
    quoted = {"GB/s": {float(bench[2])}, "GFLOP/s": {round(float(bench[1]))}}
    blocks = [
        lines
        for page in (README, LESSON)
        for command, lines in figs.all_commands(page.read_text())
        if " profile " in f" {command} " or "this-machine" in command  # not the presets
    ]
    assert len(blocks) >= 6
    for lines in blocks:
        peaks = figs.peaks_line(lines)  # every such block states the peaks it was held against
        quoted["GB/s"].add(round(peaks["gbs"], 1))
        quoted["GFLOP/s"].add(round(peaks["gflops"]))
    return quoted


def test_one_measured_bandwidth_everywhere():
    """The README's benchmark tables, every profile block and every this-machine estimate
    hold llama_np against one measurement of this machine (machine.machine_peaks), so one
    bandwidth and one FLOP/s are quoted everywhere (the lesson once said 25.1-32.5 GB/s
    beside the README's 44.8, and the same decode was 90.6% of one roof and 54% of the
    other). scripts/doc_figures.py runs every command against the benchmark run's peaks."""
    quoted = this_machine_peaks()
    assert len(quoted["GB/s"]) == 1, quoted
    assert len(quoted["GFLOP/s"]) == 1, quoted
    figs = doc_figures()
    lesson = figs.figures(LESSON.read_text())
    assert float(lesson["this_bandwidth"]) in quoted["GB/s"]


def test_the_lesson_s_bound_is_the_readme_s_roofline():
    """TinyLlama fp32 decode: the lesson's 'at best N tokens per second' and the README
    table's roofline column come from the same bandwidth (the lesson's at 2,048 positions of
    KV cache, 2% more bytes than the table's short context)."""
    figs = doc_figures()
    bound = float(figs.figures(LESSON.read_text())["tiny_decode_bound"])
    row = re.search(r"\| tinyllama-1\.1b \| decode \| [^|]+\| ([\d.]+) \|", README.read_text())
    assert bound == pytest.approx(float(row[1]), rel=0.06)


def test_every_picture_is_shown():
    """No picture in docs/img that no page shows (the trace grids once sat there unseen)."""
    shown = set()
    for page in PAGES:
        for name in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page.read_text()):
            shown.add((page.parent / name).resolve())
    pictures = {p.resolve() for p in (ROOT / "docs" / "img").rglob("*.png")}
    assert pictures - shown == set()


def test_readme_timing_block_is_what_its_command_prints(capsys):
    text = README.read_text()
    block = re.search(r"```console\n\$ (llama-np generate [^\n]*)\n(.*?)```", text, re.S)
    command, shown = block[1], block[2].splitlines()
    assert shown[0].startswith("Once upon a time, there was a little girl named Lily.")
    timing = [line for line in shown if line.startswith("llama-np: ")]
    assert main(shlex.split(command)[1:]) == 0
    printed = capsys.readouterr()
    assert printed.out.rstrip("\n") == shown[0]
    err = [line for line in printed.err.splitlines() if line.startswith("llama-np: ")]

    # the same lines, numbers aside: tokens counted, words, the stop reason
    def shape(line: str) -> str:
        return re.sub(r"\s+", " ", re.sub(r"\d+\.\d+", "#", line.split("; seed")[0]))

    assert [shape(line) for line in err] == [shape(line) for line in timing]
    per_token = []
    for line in timing[:2]:  # each line's arithmetic holds
        n, ms, per, tps = (float(x) for x in re.findall(r"[\d.]+", line.split(":", 1)[1])[:4])
        assert per == pytest.approx(ms / n, abs=0.01)
        assert tps == pytest.approx(1000 * n / ms, rel=0.01)
        per_token.append(ms / n)
    # The first output a learner sees already shows the lesson: a prompt of many tokens,
    # prefilled in one pass, faster per token than the decode steps after it.
    prefill, decode = per_token
    assert int(re.search(r"prefill +(\d+) tokens", timing[0])[1]) > 1
    assert prefill < decode


def test_context_lengths_are_the_registry_s():
    text = LESSON.read_text()
    full = re.search(
        r"Llama 3\.1 8B\s+at ([\d,]+) tokens.*?is\s+([\d,]+) = 128 × 1,024", text, re.S
    )
    assert full, "the lesson names Llama 3.1 8B's full context"
    assert int(full[2].replace(",", "")) == known_config("llama-3.1-8b").max_seq_len == 128 * 1024
    assert "full context of 128,000" not in text


def test_numbers_recomputed_from_the_config():
    cfg = llama_np.load().config  # stories260K, the lesson's measured model
    text = LESSON.read_text()
    row = cfg.kv_cache_bytes(1)  # bytes of one position, all layers, K and V, float32
    assert (
        f"one {row:,}-byte row (2 × {cfg.n_layers} layers × {cfg.n_kv_heads} heads × "
        f"{cfg.head_dim} × 4 bytes)" in text
    )
    from llama_np.tools.memory import memory_report

    int8 = memory_report(known_config("llama-3.1-8b"), 128000, dtype="int8", kv_dtype="fp16")
    assert f"<!-- fig int8_total -->{int8.total_bytes / 1e9:.3g}<!-- /fig --> GB" in text
    g = known_config("llama-3-8b")
    G = g.n_heads // g.n_kv_heads
    assert f"G = H / KVH = {G} query heads" in text
    assert f"2 × {G} / 2 = {2 * G // 2} FLOPs per" in text


def test_pictures_exist():
    for page in PAGES:
        for name in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page.read_text()):
            assert (page.parent / name).read_bytes()[:4] == b"\x89PNG", (page.name, name)


def test_checkpoint_paths_are_what_download_creates():
    for page in PAGES:
        for name in re.findall(r"weights/([A-Za-z0-9._-]+)", page.read_text()):
            assert name == "stories260K" or name in KNOWN_CHECKPOINTS, (
                f"{page.name} names weights/{name}, which `llama-np download` does not create"
            )


@pytest.mark.parametrize(
    "false_statement",
    ["weight byte is read for 2 FLOPs", "stays at about 1, for ever", "at best 4 tokens",
     "full context of 128,000", "paid for 3 tokens, not 19", "no longer fits an 80 GB H100",
     "prefill 512,000 tokens", "the roofline of each thread count"],
)  # fmt: skip
def test_corrected_statements_stay_corrected(false_statement):
    sources = [*PAGES, *(ROOT / "llama_np").rglob("*.py")]
    assert not [p for p in sources if false_statement in p.read_text()]
