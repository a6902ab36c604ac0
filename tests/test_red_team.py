"""Run the red-team table (tests/red_team.py): each bad input ends as declared, within its
time budget, with a message that names what is wrong; docs/errors.md shows the same table."""

from __future__ import annotations

import time

import pytest
from red_team import CASES, LAST_OUTPUT, TABLE_END, TABLE_START, render_table

from llama_np import LlamaNpError

REPO_DOCS = __import__("pathlib").Path(__file__).resolve().parents[1] / "docs" / "errors.md"


@pytest.mark.parametrize("case", CASES, ids=[f"{c.kind}: {c.input}" for c in CASES])
def test_red_team_case(case, tmp_path):
    LAST_OUTPUT.clear()
    start = time.perf_counter()
    try:
        outcome, message = case.run(tmp_path), LAST_OUTPUT.get("text", "")
    except LlamaNpError as e:
        outcome, message = type(e).__name__, str(e)
    seconds = time.perf_counter() - start
    assert outcome == case.outcome, message
    for piece in case.pieces:
        assert piece in message, (piece, message)
    assert seconds < case.seconds, f"took {seconds:.2f} s, budget {case.seconds} s"


def test_docs_table_is_generated_from_the_cases():
    text = REPO_DOCS.read_text()
    assert TABLE_START in text and TABLE_END in text, "run: python scripts/red_team_table.py"
    current = text.split(TABLE_START)[1].split(TABLE_END)[0].strip("\n") + "\n"
    assert current == render_table(), "docs/errors.md is stale: python scripts/red_team_table.py"
