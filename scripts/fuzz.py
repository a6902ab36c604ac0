"""Fuzz the file parsers: load thousands of mutated and truncated files per format.

Every outcome must be a correct load or one of llama_np's errors (LlamaNpError); any other
exception, or a load taking longer than --timeout seconds, is a failure. The formats and
mutations are those of tests/bad_files.py (add a format there with one line).

    python scripts/fuzz.py                 # 3000 files per format
    python scripts/fuzz.py -n 500 --format llama2c-v1
    python scripts/fuzz.py --structured -n 5000   # well-formed JSON with wrong structure

--structured runs tests/structured_fuzz.py instead: each input kind (config.json, params.json,
safetensors header and index, tokenizer.json, tokenizer_config.json, hub listing, machine
cache, tiktoken ranks) edited as JSON, and command lines with edge values. The process runs
under an address-space limit (--memory-mb), so an unbounded allocation shows up as BUDGET.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # threads reserve address space

import resource

from bad_files import FORMATS, apply_mutations, mutations
from hypothesis import HealthCheck, Phase, given, settings

from llama_np import LlamaNpError


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang


def fuzz(name, make_valid, load_fn, n: int, timeout: int) -> tuple[Counter, list[str]]:
    """-> (outcome counts, tracebacks of failures)."""
    valid = make_valid()
    return run_examples(
        mutations(len(valid)), lambda ops: load_fn(apply_mutations(valid, ops)), n, timeout
    )


def run_examples(strategy, feed, n: int, timeout: int) -> tuple[Counter, list[str]]:
    """Feed `n` examples of `strategy`; -> (outcome counts, descriptions of failures)."""
    outcomes: Counter = Counter()
    failures: list[str] = []

    # Generate only (no shrinking): every example is counted, and a failure is reported
    # with its mutations and traceback instead of stopping the run.
    @settings(
        max_examples=n,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(example=strategy)
    def one(example):
        signal.alarm(timeout)
        try:
            result = feed(example)
            outcomes["loaded" if result is None else f"exit {result}"] += 1
        except LlamaNpError as e:
            outcomes[type(e).__name__] += 1
        except Hang:
            outcomes["HANG"] += 1
            failures.append(f"{example!r:.300}: took more than {timeout} s")
        except MemoryError:
            outcomes["BUDGET"] += 1
            failures.append(f"{example!r:.300}: over the address-space limit")
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:  # the fuzzer's job: report anything else (a Rust panic too)
            outcomes["OTHER EXCEPTION"] += 1
            failures.append(f"{example!r:.300}:\n{traceback.format_exc()}")
        finally:
            signal.alarm(0)

    one()
    return outcomes, failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=3000, help="files per format (default 3000)")
    parser.add_argument("--format", action="append", help="only these formats (repeatable)")
    parser.add_argument("--timeout", type=int, default=10, help="seconds per load (default 10)")
    parser.add_argument("--structured", action="store_true", help="structure-aware inputs")
    parser.add_argument(
        "--memory-mb", type=int, default=3072, help="address-space limit (default 3072 MiB)"
    )
    args = parser.parse_args()
    signal.signal(signal.SIGALRM, _alarm)
    limit = args.memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if args.structured:
        from structured_fuzz import Fixtures, command_lines, feeders, run_cli, strategies

        fixtures = Fixtures()
        feed, kinds = feeders(fixtures), strategies(fixtures)
        runs = [(kind, kinds[kind], feed[kind]) for kind in kinds]
        runs.append(("command lines", command_lines(), run_cli))
    else:
        runs = [(name, None, (make_valid, load_fn)) for name, make_valid, load_fn in FORMATS]
    ok = True
    for name, strategy, feed in runs:
        if args.format and name not in args.format:
            continue
        t0 = time.perf_counter()
        if strategy is None:
            outcomes, failures = fuzz(name, *feed, args.n, args.timeout)
        else:
            outcomes, failures = run_examples(strategy, feed, args.n, args.timeout)
        total = sum(outcomes.values())
        counts = ", ".join(f"{k} {v}" for k, v in outcomes.most_common())
        print(f"{name}: {total} files in {time.perf_counter() - t0:.1f} s: {counts}")
        for failure in failures[:3]:
            print("  FAILURE", failure)
        ok = ok and not failures
    print(
        "no exception outside LlamaNpError, no hang, no budget breach"
        if ok
        else "FAILURES: see above"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
