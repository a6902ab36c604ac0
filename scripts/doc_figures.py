"""Regenerate every figure the docs measure on this machine, and the numbers quoted from them.

    python scripts/doc_figures.py            # run the commands, rewrite the pages in place
    python scripts/doc_figures.py --check    # exit 1 if a quoted number disagrees with its block

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


def run(command: str) -> list[str]:
    """Run a documented command as `python -m llama_np` from the repository root."""
    argv = shlex.split(command)
    env = dict(os.environ)
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
    """`  decode at position 2,047   120.2 ms/token (8 tokens/s), memory-bound: ...`"""
    for line in lines:
        if line.strip().startswith(phase):
            m = re.search(r"  ([\d.,]+) ms/token \(([\d,]+) tokens/s\)", line)
            if m:
                return {"ms": float(m[1].replace(",", "")), "tps": float(m[2].replace(",", ""))}
    raise KeyError(f"no {phase} estimate")


def ridge(lines: list[str]) -> float:
    return float(re.search(r"ridge ([\d.]+) FLOP", "\n".join(lines))[1])


BUSY_CAVEAT = (
    " (measured while other processes were busy: the peaks came out low, so this is less than"
    " the machine can do; scripts/doc_figures.py on a quiet machine gives the true bound)"
)


def busy_peaks(lines: list[str]) -> bool:
    """True if `--hardware this-machine` says its peaks were measured on a busy machine."""
    return any("WHILE BUSY" in line for line in lines)


def critical(lines: list[str]) -> str:
    """The critical batch size at position 0: `  critical batch at position 0   9 sequences`."""
    return re.search(r"critical batch at position 0 +(\S+)", "\n".join(lines))[1]


def total_bytes(lines: list[str]) -> int:
    return int(re.search(r"total \(weights \+ KV cache\) +([\d,]+) bytes", "\n".join(lines))[1]
               .replace(",", ""))  # fmt: skip


def device_memory(lines: list[str]) -> int:
    return int(re.search(r"memory ([\d,]+) bytes", "\n".join(lines))[1].replace(",", ""))


def _fmt(x: float) -> str:
    return f"{x:.3g}"


FOX, LONG, BATCH, TINY = "quick brown fox", "Once upon a time, there", "--batch 8", "tinyllama"
INT8 = "--dtype int8 --hardware this-machine"


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
    return MARKER.sub(lambda m: f"<!-- fig {m[1]} -->{values[m[1]]}<!-- /fig -->", text)


def wait_for_quiet(seconds: float) -> bool:
    """Wait up to `seconds` until other processes use less than a quarter of a CPU over 3 s."""
    sys.path.insert(0, str(ROOT))
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
    """The trace overview of layer 0, and screenshots of the explorer page (needs chromium)."""
    EXPLORER.mkdir(parents=True, exist_ok=True)
    page = EXPLORER / "explorer.html"
    run(f'llama-np trace -p "Once upon a time" -n 12 --layers 0-4 --out {ROOT / "docs/img/trace"} '
        f"--html {page}")  # fmt: skip
    (ROOT / "docs" / "img" / "trace" / "attention.npz").unlink()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("no chromium: the explorer screenshots were not redrawn", file=sys.stderr)
        return
    for name, view in (
        ("explorer", "#layer=3&head=1&query=9"),
        ("explorer-prefill", "#layer=0&head=4&query=3"),
    ):
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run(
                [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                 "--window-size=1200,1150", f"--screenshot={EXPLORER / (name + '.png')}",
                 page.as_uri() + view],
                check=True, capture_output=True,
            )  # fmt: skip


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
    args = parser.parse_args()
    bad = False
    if not args.check and not args.only:
        wait_for_quiet(args.wait)
        # this machine's peaks are measured afresh, now, for every thread count used
        from llama_np.tools.machine import CACHE_FILE

        CACHE_FILE.unlink(missing_ok=True)
        pictures()
    for page in PAGES:
        text = page.read_text()
        if not args.check:
            text = regenerate(text, args.only)
            page.write_text(text)
            busy = [w for w in ("contaminated", "WHILE BUSY") if w in text]
            if busy:
                print(
                    f"{page.name}: measured on a busy machine ({', '.join(busy)})", file=sys.stderr
                )
                bad = True
        for name, quoted, computed in stale_markers(text):
            print(f"{page.name}: {name} quotes {quoted}, its block says {computed}")
            bad = True
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
