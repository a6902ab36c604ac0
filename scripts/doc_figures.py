"""Regenerate every figure the docs measure on this machine, and the numbers quoted from them.

    python scripts/doc_figures.py            # run the commands, rewrite the pages in place
    python scripts/doc_figures.py --check    # exit 1 if a quoted number disagrees with its block
    python scripts/doc_figures.py --only 'memory (?!.*this-machine)'   # some commands only
    python scripts/doc_figures.py --benchmark-peaks   # against latest.json's peaks, wherever from

Each ```console block of docs/prefill_vs_decode.md, README.md and docs/serving.md holds
`$ command` lines and what they print. This script runs every `llama-np memory`, `profile`,
`generate`, `simulate` and `serving-lab` command there (profile and serving-lab --out also
redraw their charts in docs/img/)
and writes the output back, trimmed as the page shows it; it redraws the trace overview
(docs/img/trace/) and the explorer page with its screenshots (docs/img/explorer/). Prose
quotes numbers from those blocks between markers, <!-- fig NAME -->value<!-- /fig -->;
`figures()` computes each from the blocks, so a re-run rewrites the quotes too, and
tests/test_docs_consistency.py checks that every quote is what the blocks say. Run it on a
quiet machine: timings are the machine's, and a busy one makes profile say so in its output.

One roof everywhere: this machine's peaks (llama_np.tools.machine.machine_peaks: a BLAS
thread per CPU) are taken once, and every command runs against them, through a private
peaks cache. They are the ones the README's benchmark tables were measured against
(benchmarks/results/latest.json) when that run was on this machine and configuration;
otherwise they are measured now, and the script says that the benchmark tables must be
measured again (`python benchmarks/run.py`) for the README to quote one bandwidth.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # llama_np of this checkout
PAGES = [ROOT / "docs" / "prefill_vs_decode.md", ROOT / "README.md", ROOT / "docs" / "serving.md"]
BLOCK = re.compile(r"```console\n(.*?)```", re.S)
MARKER = re.compile(r"<!-- fig (\w+) -->(.*?)<!-- /fig -->")


def commands(block: str) -> list[tuple[str, list[str]]]:
    """(command, output lines) for each `$ ` line of a console block."""
    out = []
    for chunk in re.split(r"^\$ ", block, flags=re.M)[1:]:
        command, *lines = chunk.rstrip("\n").split("\n")
        out.append((command, lines))
    return out


def all_commands(text: str) -> list[tuple[str, list[str]]]:
    return [c for block in BLOCK.findall(text) for c in commands(block)]


ENV: dict[str, str] = {}  # set by main(): the private peaks cache every command reads
BENCHMARK = ROOT / "benchmarks" / "results" / "latest.json"


def one_roof(cache_home: Path, benchmark_peaks: bool = False) -> str:
    """Seed a peaks cache under `cache_home` with this machine's one measurement (see the
    module's docstring); returns where the figures came from. `benchmark_peaks`: take the
    benchmark run's even if it was measured on another configuration (until the benchmarks
    are run again here; the docs then quote its peaks, as the README's tables do)."""
    import json
    from dataclasses import asdict

    import numpy as np

    from llama_np import kernels
    from llama_np.tools import machine

    n = machine.cpu_count() if machine.blas().controllable else machine.blas().threads
    blas = machine.blas().describe()
    here = f"{machine.cpu_model()}, {machine.cpu_count()} cpus, {blas}, {n} threads"
    bench = json.loads(BENCHMARK.read_text())["machine"] if BENCHMARK.exists() else {}
    same = (bench.get("description"), bench.get("numpy"), bench.get("kernels")) == (
        here,
        np.__version__,
        kernels.describe(),
    )
    if same or (benchmark_peaks and bench):
        peaks = machine.MachinePeaks(
            bench["sgemm_gflops"] * 1e9, bench["bandwidth_gbs"] * 1e9, here, n,
            machine.machine_key(n),
        )  # fmt: skip
        source = f"the benchmark run's ({BENCHMARK.relative_to(ROOT)})"
        if not same:
            source += (
                f", measured on {bench.get('description')}, not on this configuration ({here}):"
                " run benchmarks/run.py and this script again here for figures of one machine"
            )
    else:
        peaks = machine.measure(threads=n)
        source = (
            "measured now: benchmarks/results/latest.json was measured on another machine or "
            f"configuration ({bench.get('description')}); run benchmarks/run.py here so that "
            "the README's tables quote the same peaks"
        )
    cache = cache_home / "llama_np" / "machine-peaks.json"
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"peaks": {peaks.key: asdict(peaks)}}, indent=2))
    ENV["XDG_CACHE_HOME"] = str(cache_home)
    return (
        f"peaks: {peaks.matmul_flops / 1e9:.1f} GFLOP/s, {peaks.memory_bandwidth / 1e9:.1f} GB/s, "
        f"{source}"
    )


def run(command: str) -> list[str]:
    """Run a documented command as `python -m llama_np` from the repository root, against
    the one roof (ENV)."""
    argv = shlex.split(command)
    env = {**os.environ, **ENV}
    while "=" in argv[0]:  # VAR=value prefixes
        key, value = argv.pop(0).split("=", 1)
        env[key] = value
    assert argv[0] == "llama-np", command
    result = subprocess.run(
        [sys.executable, "-m", "llama_np", *argv[1:]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    if argv[1] == "generate":  # what a terminal shows: the text, then the timing lines
        return (result.stdout + result.stderr).rstrip("\n").split("\n")
    return result.stdout.rstrip("\n").split("\n")


def trim(command: str, lines: list[str]) -> list[str]:
    """What the page shows of a command's output: profile's summary, not its 100 steps."""
    if " profile " not in f" {command} ":
        return lines
    cut = next(i for i, line in enumerate(lines) if line.startswith("per step"))
    return [line for line in lines[:cut] if line] + ["..."]


# ---------------------------------------------------------------- figures quoted in prose


def find(text: str, needle: str) -> list[str]:
    """Output lines of the first command containing `needle`."""
    for command, lines in all_commands(text):
        if needle in command:
            return lines
    raise KeyError(f"no documented command contains {needle!r}")


def phase_row(lines: list[str], phase: str) -> dict[str, float]:
    names = ["threads", "tokens", "median_ms", "ms_per_token", "mflop", "weights_mb", "kv_mb",
             "intensity", "gflops", "gbs", "mfu", "mbu"]  # fmt: skip
    for line in lines:
        fields = line.split()
        if fields and fields[0] == phase and len(fields) == 13:
            return {n: float(f.rstrip("%")) for n, f in zip(names, fields[1:], strict=True)}
    raise KeyError(f"no {phase} row")


def estimate_line(lines: list[str], phase: str) -> dict[str, float]:
    """`  prefill of 2,048 tokens   21.05 s for the pass, 10.28 ms/token (97 tokens/s), ...` or
    `  decode at position 2,047   130.3 ms per step, one token (8 tokens/s), ...`: the time of
    the pass (ms), the rate (tokens/s, across the batch)."""
    for line in lines:
        if line.strip().startswith(phase):
            m = re.search(
                r"  ([\d.,]+) (ms|s) (?:for the pass|per step).*?\(([\d,]+) tokens/s", line
            )
            if m:
                ms = float(m[1].replace(",", "")) * (1 if m[2] == "ms" else 1e3)
                return {"ms": ms, "tps": float(m[3].replace(",", ""))}
    raise KeyError(f"no {phase} estimate")


def peaks_line(lines: list[str]) -> dict[str, float]:
    """This machine's peaks as a block prints them: profile's `machine peaks (...): 198.0
    GFLOP/s float32 matmul, 44.8 GB/s ...` or memory's `  peaks   0.198 TFLOP/s, 44.77 GB/s`."""
    text = "\n".join(lines)
    m = re.search(r"machine peaks \(.*?\): ([\d.]+) GFLOP/s float32 matmul, ([\d.]+) GB/s", text)
    if m:
        return {"gflops": float(m[1]), "gbs": float(m[2])}
    m = re.search(r"  peaks +([\d.]+) TFLOP/s, ([\d.]+) GB/s", text)
    if m:
        return {"gflops": 1e3 * float(m[1]), "gbs": float(m[2])}
    raise KeyError("no peaks")


def spare_bytes(lines: list[str]) -> int:
    m = re.search(r"fit in memory +yes: ([\d,]+) bytes", "\n".join(lines))
    if not m:
        raise KeyError("no spare memory")
    return int(m[1].replace(",", ""))


def match(pattern: str, lines: list[str]) -> str:
    """The first group of `pattern` in a block's output; KeyError if the block does not say
    it (an older block, or another kind: the figure is then not computed from it)."""
    m = re.search(pattern, "\n".join(lines))
    if m is None:
        raise KeyError(pattern)
    return m[1]


def ridge(lines: list[str]) -> float:
    return float(match(r"ridge ([\d.]+) FLOP", lines))


BUSY_CAVEAT = (
    " (measured while other processes were busy: the peaks came out low, so this is less than"
    " the machine can do; scripts/doc_figures.py on a quiet machine gives the true bound)"
)


def busy_peaks(lines: list[str]) -> bool:
    """True if `--hardware this-machine` says its peaks were measured on a busy machine."""
    return any("WHILE BUSY" in line for line in lines)


def critical(lines: list[str]) -> str:
    """The critical batch size at position 0: `  critical batch at position 0   9 sequences`."""
    return match(r"critical batch at position 0 +(\S+)", lines)


def total_bytes(lines: list[str]) -> int:
    return int(match(r"total \(weights \+ KV cache\) +([\d,]+) bytes", lines).replace(",", ""))


def device_memory(lines: list[str]) -> int:
    return int(match(r"  memory +([\d,]+) bytes", lines).replace(",", ""))


def _fmt(x: float) -> str:
    return f"{x:.3g}"


FOX, LONG, BATCH, TINY = "quick brown fox", "Once upon a time, there", "--batch 8", "tinyllama"
M15, H100_B4 = "--random stories15M", "--batch 4 --hardware h100"
INT8 = "--dtype int8 --kv-dtype fp16 --hardware this-machine"
README = ROOT / "README.md"


def readme_batch_rates() -> dict[int, float]:
    """tokens/s of each batch size in the README's batched-decode table (benchmarks/run.py)."""
    rows = re.findall(r"^\| batch (\d+) \| ([\d.]+) ", README.read_text(), re.M)
    if not rows:
        raise KeyError("no batched-decode table in README.md")
    return {int(b): float(tps) for b, tps in rows}


def batch_summary() -> str:
    """The README's one-line pointer to batch_note, as of the table's figures."""
    rates = readme_batch_rates()
    if 4 not in rates or 8 not in rates or rates[8] > 1.1 * rates[4]:
        return "each batch size gains on the last"
    return (
        f"batch 8 ({rates[8]:.1f} tokens/s) gains nothing on batch 4 ({rates[4]:.1f}): from "
        "batch 4 on, the kernel layer's arithmetic, not the weight reads, sets the pace"
    )


def batch_note(text: str) -> str:
    """What the README's batched-decode table shows, as of its figures: the sentence follows
    the table whenever the benchmarks are run again."""
    from llama_np.tools.costs import forward_flops
    from llama_np.tools.known_models import known_config

    rates = readme_batch_rates()
    if 4 not in rates or 8 not in rates:
        return "."
    flops = forward_flops(known_config("stories110M"), 1, 16)  # one token's, at a short context
    b4, b8 = rates[4], rates[8]
    if b8 > 1.1 * b4:
        return (
            f": batch 8 made {b8:.1f} tokens/s, batch 4 {b4:.1f}, each further row still served "
            "by the same read of the weights."
        )
    than = "less than" if b8 < b4 else "about as much as"
    return (
        f", and there batch 8 made {b8:.1f} tokens/s, {than} batch 4's {b4:.1f}. That is about "
        f"{b8 * flops / 1e9:.0f} GFLOP/s of arithmetic for batch 8 and {b4 * flops / 1e9:.0f} "
        "for batch 4, a fraction of the sgemm peak and far below the roofline's bound for "
        "their intensity: "
        "from batch 4 on, the kernel layer's dot products (each row of weights read once, then "
        "B dot products with it) are limited by their own arithmetic, not by reading the "
        "weights, so a larger batch adds work without adding speed. That is this engine on "
        "this CPU as of those figures, not the roofline: a batched product that reached the "
        "sgemm peak would keep gaining up to the critical batch."
    )


def _row(needle: str, phase: str, column: str) -> Callable[[str], str]:
    return lambda t: _fmt(phase_row(find(t, needle), phase)[column])


def _ratio(t: str) -> str:
    lines = find(t, FOX)
    decode, prefill = phase_row(lines, "decode"), phase_row(lines, "prefill")
    return str(round(decode["median_ms"] / prefill["ms_per_token"]))


FIGURES: dict[str, Callable[[str], str]] = {
    # section 5: the short prompt
    "fox_prefill_ms": _row(FOX, "prefill", "ms_per_token"),
    "fox_decode_ms": _row(FOX, "decode", "median_ms"),
    "fox_ratio": _ratio,
    "fox_decode_mbu": _row(FOX, "decode", "mbu"),
    "fox_prefill_mfu": _row(FOX, "prefill", "mfu"),
    "long_intensity": _row(LONG, "prefill", "intensity"),
    "long_ridge": lambda t: _fmt(ridge(find(t, LONG))),
    # random stories110M with a batch of 8
    "b8_decode_ms": _row(BATCH, "decode", "ms_per_token"),
    "b8_batch_ms": _row(BATCH, "batch-decode", "ms_per_token"),
    "b8_intensity": _row(BATCH, "batch-decode", "intensity"),
    # stories15M with a 240-token prompt: each phase against the ceiling that binds it
    "m15_intensity": lambda t: f"{phase_row(find(t, M15), 'prefill')['intensity']:.0f}",
    "m15_prefill_mfu": lambda t: f"{phase_row(find(t, M15), 'prefill')['mfu']:.0f}",
    "m15_decode_mbu": lambda t: f"{phase_row(find(t, M15), 'decode')['mbu']:.0f}",
    "m15_decode_mfu": lambda t: f"{phase_row(find(t, M15), 'decode')['mfu']:.0f}",
    "m15_ratio": lambda t: str(
        round(
            phase_row(find(t, M15), "decode")["median_ms"]
            / phase_row(find(t, M15), "prefill")["ms_per_token"]
        )
    ),
    "batch_note": batch_note,
    "batch_summary": lambda t: batch_summary(),
    # an H100 with four 128k-token caches
    "h100_memory": lambda t: f"{device_memory(find(t, H100_B4)):,}",
    "h100_spare": lambda t: _fmt(spare_bytes(find(t, H100_B4)) / 1e9),
    "h100_b4_step": lambda t: f"{estimate_line(find(t, H100_B4), 'decode')['ms']:.4g}",
    "h100_b4_rate": lambda t: f"{estimate_line(find(t, H100_B4), 'decode')['tps']:.0f}",
    # the one roof: this machine's peaks, as the calculator and the benchmarks quote them
    "this_bandwidth": lambda t: f"{peaks_line(find(t, TINY))['gbs']:.1f}",
    "this_flops": lambda t: f"{peaks_line(find(t, TINY))['gflops']:.0f}",
    # the calculator with this machine's peaks
    "tiny_decode_bound": lambda t: _fmt(estimate_line(find(t, TINY), "decode")["tps"]),
    "tiny_prefill_bound": lambda t: _fmt(estimate_line(find(t, TINY), "prefill")["tps"]),
    "this_ridge": lambda t: _fmt(ridge(find(t, TINY))),
    "tiny_critical": lambda t: critical(find(t, TINY)),
    "tiny_caveat": lambda t: BUSY_CAVEAT if busy_peaks(find(t, TINY)) else "",
    "int8_total": lambda t: _fmt(total_bytes(find(t, INT8)) / 1e9),
    "this_ram": lambda t: _fmt(device_memory(find(t, INT8)) / 1e9),
}


# docs/serving.md: the serving lab's tables and the simulator's reports

LAB = "serving-lab"


def lab_row(text: str, experiment: str, first: str) -> list[str]:
    """The fields of the row starting with `first` in `serving-lab EXPERIMENT`'s table."""
    for line in find(text, f"{LAB} {experiment}"):
        if line.startswith(first):
            return line[len(first) :].split()
    raise KeyError(f"no {first!r} row in serving-lab {experiment}")


def lab_search(text: str, experiment: str, pattern: str) -> str:
    m = re.search(pattern, "\n".join(find(text, f"{LAB} {experiment}")))
    if m is None:
        raise KeyError(pattern)
    return m[1]


def seconds(value: str, unit: str) -> float:
    return float(value) * {"µs": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0}[unit]


def _context_growth(t: str) -> str:
    rows = [line.split() for line in find(t, f"{LAB} context") if re.match(r" +[\d,]+ ", line)]
    first, last = rows[0], rows[-1]
    return _fmt(seconds(*last[5:7]) / seconds(*first[5:7]))


def _spec_best(t: str) -> tuple[str, str]:
    rows = [line.split() for line in find(t, f"{LAB} speculative") if re.match(r" +\d+ ", line)]
    best = max(rows[1:], key=lambda r: float(r[3].rstrip("×")))
    return best[0], best[3].rstrip("×")


def _check(t: str, i: int) -> str:
    line = next(line for line in find(t, "--against-engine") if line.startswith("result"))
    m = re.search(
        r"throughput ([\d.]+)× and median TPOT ([\d.]+)× the engine's: (\w+( \w+)?)", line
    )
    return m[i]


FIGURES.update(
    {
        "srv_static_steps": lambda t: lab_row(t, "batching", "static")[0],
        "srv_cont_steps": lambda t: lab_row(t, "batching", "continuous")[0],
        "srv_static_rows": lambda t: lab_row(t, "batching", "static")[1],
        "srv_cont_rows": lambda t: lab_row(t, "batching", "continuous")[1],
        "srv_batching_ratio": lambda t: _fmt(
            float(lab_row(t, "batching", "continuous")[2])
            / float(lab_row(t, "batching", "static")[2])
        ),
        "srv_contig_used": lambda t: lab_search(t, "batching", r"contiguous .*?\(([\d.]+)% used"),
        "srv_paged_used": lambda t: lab_search(t, "batching", r"paged holds .*?\(([\d.]+)% used"),
        "srv_whole_worst": lambda t: lab_search(t, "chunked", r"\nwhole.*? ([\d.]+)×"),
        "srv_chunk_worst": lambda t: lab_search(t, "chunked", r"\nchunked.*? ([\d.]+)×"),
        "srv_prefix_cached": lambda t: lab_row(t, "prefix", "on")[0],
        "srv_prefix_saved": lambda t: lab_search(t, "prefix", r"TTFT saved: (\d+)%"),
        "srv_context_growth": _context_growth,
        "srv_spec_best_k": lambda t: _spec_best(t)[0],
        "srv_spec_best": lambda t: _spec_best(t)[1],
        "srv_check_tput": lambda t: _check(t, 1),
        "srv_check_tpot": lambda t: _check(t, 2),
        "srv_check_verdict": lambda t: _check(t, 3),
        "srv_h100_fit": lambda t: re.search(
            r"sequences of 131,072 +(\d+) fit", "\n".join(find(t, "--hardware h100 --context"))
        )[1],
    }
)


def figures(text: str) -> dict[str, str]:
    """Every quotable figure that `text`'s blocks hold (those whose blocks are present)."""
    out = {}
    for name, fn in FIGURES.items():
        try:
            out[name] = fn(text)
        except (KeyError, IndexError, TypeError, StopIteration):  # its block is not there
            continue
    return out


def stale_markers(text: str) -> list[tuple[str, str, str]]:
    """(name, quoted, computed) for every marker whose value disagrees with the blocks."""
    values = figures(text)
    return [(n, v, values.get(n, "?")) for n, v in MARKER.findall(text) if values.get(n) != v]


# ---------------------------------------------------------------- rewriting


def regenerate(text: str, only: str = "") -> str:
    """`text` with the output of every command (matching the regex `only`) run anew."""

    def block(m: re.Match) -> str:
        body = []
        for command, shown in commands(m[1]):
            if not re.match(
                r"(\w+=\S+ )*llama-np (memory|profile|generate|simulate|serving-lab) ", command
            ):
                raise SystemExit(f"do not know how to run {command!r}")
            if not re.search(only, command):
                body += [f"$ {command}", *shown]
                continue
            print(f"$ {command}", file=sys.stderr)
            body += [f"$ {command}", *trim(command, run(command))]
        return "```console\n" + "\n".join(body) + "\n```"

    text = BLOCK.sub(block, text)
    values = figures(text)
    # a figure whose block was not run yet keeps its quote (and --check reports it)
    return MARKER.sub(lambda m: f"<!-- fig {m[1]} -->{values.get(m[1], m[2])}<!-- /fig -->", text)


def wait_for_quiet(seconds: float) -> bool:
    """Wait up to `seconds` until other processes use less than a quarter of a CPU over 3 s."""
    from llama_np.tools.machine import CpuMeter

    deadline = time.monotonic() + seconds
    while True:
        with CpuMeter() as meter:
            time.sleep(3)
        if meter.use.others_cores < 0.25:
            return True
        if time.monotonic() > deadline:
            print(f"still busy: others use {meter.use.others_cores:.2f} CPUs", file=sys.stderr)
            return False
        time.sleep(5)


EXPLORER = ROOT / "docs" / "img" / "explorer"


def pictures() -> None:
    """The trace overview of layer 3 (the README shows it), and screenshots of the explorer
    page (the README and docs/debugging.md show them; needs chromium)."""
    EXPLORER.mkdir(parents=True, exist_ok=True)
    page = EXPLORER / "explorer.html"
    trace = ROOT / "docs" / "img" / "trace"
    for old in trace.glob("*.png"):
        old.unlink()
    run(f'llama-np trace -p "Once upon a time" -n 12 --layers 3 --out {trace}')
    (trace / "attention.npz").unlink()
    run(f'llama-np trace -p "Once upon a time" -n 12 --html {page}')
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("no chromium: the explorer screenshots were not redrawn", file=sys.stderr)
        return
    for name, view in SCREENSHOTS.items():
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run(
                [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                 "--window-size=1200,1250", f"--screenshot={EXPLORER / (name + '.png')}",
                 page.as_uri() + view],
                check=True, capture_output=True,
            )  # fmt: skip


# The explorer's views the docs show: the README a generated token's row in layer 3, head 1
# (the head docs/debugging.md ablates); docs/debugging.md the first decode step's row in
# layer 0, head 0, the row its pdb session prints.
SCREENSHOTS = {
    "explorer": "#layer=3&head=1&query=9",
    "explorer-decode-step": "#layer=0&head=0&query=5",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only check the quoted numbers")
    parser.add_argument(
        "--only",
        default="",
        metavar="REGEX",
        help="run only the commands matching REGEX (e.g. 'memory (?!.*this-machine)': the "
        "calculator's machine-independent blocks); others keep their output",
    )
    parser.add_argument(
        "--wait", type=float, default=600, help="seconds to wait for a quiet machine (600)"
    )
    parser.add_argument(
        "--benchmark-peaks",
        action="store_true",
        help="run every command against the peaks of benchmarks/results/latest.json even if "
        "they were measured on another machine or configuration (the README's tables quote "
        "them until the benchmarks are run again here)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache_home:
        if not args.check:
            if not args.only:
                wait_for_quiet(args.wait)
            print(one_roof(Path(cache_home), args.benchmark_peaks), file=sys.stderr)
            if not args.only:
                pictures()
        bad = pages(args)
    return 1 if bad else 0


def pages(args: argparse.Namespace) -> bool:
    """Regenerate (unless --check) and check every page; True if something is wrong."""
    bad = False
    for page in PAGES:
        text = page.read_text()
        if not args.check:
            text = regenerate(text, args.only)
            page.write_text(text)
            blocks = "\n".join(BLOCK.findall(text))  # what the commands said, not the prose
            busy = [w for w in ("contaminated", "INVALID", "WHILE BUSY") if w in blocks]
            if busy:
                print(
                    f"{page.name}: measured on a busy machine ({', '.join(busy)})", file=sys.stderr
                )
                bad = True
        for name, quoted, computed in stale_markers(text):
            print(f"{page.name}: {name} quotes {quoted}, its block says {computed}")
            bad = True
    return bad


if __name__ == "__main__":
    sys.exit(main())
