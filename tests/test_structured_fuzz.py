"""Structure-aware fuzzing (tests/structured_fuzz.py): JSON of every input kind edited into
wrong types, extreme numbers, deep nesting, duplicate keys; tiktoken rank files with extreme
ids; command lines with edge values. Only LlamaNpError escapes, each case within 5 s.
`python scripts/fuzz.py --structured -n 5000` runs thousands."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structured_fuzz import Fixtures, command_lines, feeders, run_cli, strategies

from llama_np import LlamaNpError

FIXTURES = Fixtures()
FEED, STRATEGIES = feeders(FIXTURES), strategies(FIXTURES)
BUDGET_SECONDS = 5.0
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_the_originals_are_accepted():
    """Unedited, every document loads: the edits are what the fuzzer tests."""
    import json

    for kind, document in FIXTURES.originals().items():
        FEED[kind](json.dumps(document).encode())


@pytest.mark.parametrize("kind", sorted(STRATEGIES))
def test_edited_inputs_load_or_raise_our_errors(kind):
    @SETTINGS
    @given(data=STRATEGIES[kind])
    def check(data):
        start = time.perf_counter()
        try:
            FEED[kind](data)
        except LlamaNpError:
            pass
        assert time.perf_counter() - start < BUDGET_SECONDS

    check()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(argv=command_lines())
def test_command_lines_with_edge_values(argv):
    start = time.perf_counter()
    run_cli(argv)
    assert time.perf_counter() - start < BUDGET_SECONDS


def test_strategies_reach_every_edit():
    """The edits happen: some examples nest past the parser's limit, some change types."""
    seen = set()

    @settings(max_examples=150, deadline=None)
    @given(data=st.data())
    def collect(data):
        text = data.draw(STRATEGIES["config.json"])
        if text.count(b"[") > 32:
            seen.add("deep")
        if b"Infinity" in text or b"NaN" in text:
            seen.add("non-finite")
        if b'"hidden_size": "' in text or b'"hidden_size": [' in text:
            seen.add("wrong type")

    collect()
    assert {"deep", "non-finite"} <= seen
