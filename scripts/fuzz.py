"""Fuzz the file parsers: load thousands of mutated and truncated files per format.

Every outcome must be a correct load or one of llama_np's errors (LlamaNpError); any other
exception, or a load taking longer than --timeout seconds, is a failure. The formats and
mutations are those of tests/bad_files.py (add a format there with one line).

    python scripts/fuzz.py                 # 3000 files per format
    python scripts/fuzz.py -n 500 --format llama2c-v1
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
    @given(ops=mutations(len(valid)))
    def one(ops):
        signal.alarm(timeout)
        try:
            load_fn(apply_mutations(valid, ops))
            outcomes["loaded"] += 1
        except LlamaNpError as e:
            outcomes[type(e).__name__] += 1
        except Hang:
            outcomes["HANG"] += 1
            failures.append(f"{ops}: took more than {timeout} s")
        except Exception:
            outcomes["OTHER EXCEPTION"] += 1
            failures.append(f"{ops}:\n{traceback.format_exc()}")
        finally:
            signal.alarm(0)

    one()
    return outcomes, failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=3000, help="files per format (default 3000)")
    parser.add_argument("--format", action="append", help="only these formats (repeatable)")
    parser.add_argument("--timeout", type=int, default=10, help="seconds per load (default 10)")
    args = parser.parse_args()
    signal.signal(signal.SIGALRM, _alarm)
    ok = True
    for name, make_valid, load_fn in FORMATS:
        if args.format and name not in args.format:
            continue
        t0 = time.perf_counter()
        outcomes, failures = fuzz(name, make_valid, load_fn, args.n, args.timeout)
        total = sum(outcomes.values())
        counts = ", ".join(f"{k} {v}" for k, v in outcomes.most_common())
        print(f"{name}: {total} files in {time.perf_counter() - t0:.1f} s: {counts}")
        for failure in failures[:3]:
            print("  FAILURE", failure)
        ok = ok and not failures
    print("no exception outside LlamaNpError" if ok else "FAILURES: see above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
