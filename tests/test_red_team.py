"""Run the red-team table (tests/red_team.py): each bad input ends as declared, with a message
that names what is wrong, and none hangs; docs/errors.md shows the same table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from red_team import CASES, LAST_OUTPUT, TABLE_END, TABLE_START, render_table
from util import hang_guard

from llama_np import LlamaNpError

ROOT = Path(__file__).resolve().parents[1]
REPO_DOCS = ROOT / "docs" / "errors.md"


@pytest.mark.parametrize("case", CASES, ids=[f"{c.kind}: {c.input}" for c in CASES])
def test_red_team_case(case, tmp_path):
    LAST_OUTPUT.clear()
    try:
        with hang_guard(10 * case.seconds, f"{case.kind}: {case.input}"):
            outcome, message = case.run(tmp_path), LAST_OUTPUT.get("text", "")
    except LlamaNpError as e:
        outcome, message = type(e).__name__, str(e)
    assert outcome == case.outcome, message
    for piece in case.pieces:
        assert piece in message, (piece, message)


BOUNDED = [c for c in CASES if c.memory_mb]

# Runs case number sys.argv[1] under an address-space limit and prints its outcome.
CHILD = """
import resource, sys, tempfile
from pathlib import Path
limit = int(sys.argv[2]) * 2**20
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
sys.path.insert(0, "tests")
from red_team import CASES
from llama_np import LlamaNpError
try:
    outcome = CASES[int(sys.argv[1])].run(Path(tempfile.mkdtemp()))
except LlamaNpError as e:
    outcome = type(e).__name__
print(outcome)
"""


@pytest.mark.parametrize("case", BOUNDED, ids=[f"{c.kind}: {c.input}" for c in BOUNDED])
def test_bounded_case_in_a_limited_address_space(case):
    """The bound is proved, not assumed: in a process that cannot map more than
    case.memory_mb, the case still ends as declared (an unbounded allocation would raise
    MemoryError, a traceback)."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}  # BLAS threads reserve address space
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(CASES.index(case)), str(case.memory_mb)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=10 * case.seconds,  # a hang
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-1] == case.outcome


def test_docs_table_is_generated_from_the_cases():
    text = REPO_DOCS.read_text()
    assert TABLE_START in text and TABLE_END in text, "run: python scripts/red_team_table.py"
    current = text.split(TABLE_START)[1].split(TABLE_END)[0].strip("\n") + "\n"
    assert current == render_table(), "docs/errors.md is stale: python scripts/red_team_table.py"
