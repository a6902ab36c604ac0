"""Structure-aware fuzzing (tests/structured_fuzz.py): JSON of every input kind edited into
wrong types, extreme numbers, deep nesting, duplicate keys; tiktoken rank files with extreme
ids; command lines with edge values. Only LlamaNpError escapes (and nothing hangs).
`python scripts/fuzz.py --structured -n 5000` runs thousands."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from structured_fuzz import Fixtures, command_lines, feeders, run_cli, strategies
from util import hang_guard

from llama_np import LlamaNpError

FIXTURES = Fixtures()
FEED, STRATEGIES = feeders(FIXTURES), strategies(FIXTURES)
HANG_SECONDS = 60.0  # an example still running after this is stuck (each takes < 1 s)
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_the_originals_are_accepted():
    """Unedited, every document loads: the edits are what the fuzzer tests."""
    for kind, document in FIXTURES.originals().items():
        FEED[kind](json.dumps(document).encode())


@pytest.mark.parametrize("kind", sorted(STRATEGIES))
def test_edited_inputs_load_or_raise_our_errors(kind):
    @SETTINGS
    @given(data=STRATEGIES[kind])
    def check(data):
        try:
            with hang_guard(HANG_SECONDS, f"feeding a {kind}"):
                FEED[kind](data)
        except LlamaNpError:
            pass

    check()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(argv=command_lines())
def test_command_lines_with_edge_values(argv):
    with hang_guard(HANG_SECONDS, f"llama-np {' '.join(argv)[:80]}"):
        run_cli(argv)


def _top_level(text: bytes) -> tuple[dict, list[str]]:
    """The parsed document (NaN, Infinity allowed) and the keys its top object repeats."""
    repeated = []

    def pairs(items):
        keys = [k for k, _ in items]
        repeated.extend(k for k in set(keys) if keys.count(k) > 1)
        return dict(items)

    doc = json.loads(text, object_pairs_hook=pairs)
    return (doc if isinstance(doc, dict) else {}), repeated


CONFIG = FIXTURES.originals()["config.json"]
EDITS = {  # what each edit of structured_fuzz.edited_json leaves in config.json
    "replace: wrong type": lambda doc, repeated, text: any(
        isinstance(CONFIG[k], int) and (doc[k] is None or isinstance(doc[k], str | dict | bool))
        for k in CONFIG.keys() & doc.keys()
    ),
    "edge: extreme number": lambda doc, repeated, text: any(
        isinstance(v, int | float) and not isinstance(v, bool) and abs(v) >= 2**63
        for v in doc.values()
    ),
    "edge: non-finite": lambda doc, repeated, text: b"Infinity" in text or b"NaN" in text,
    "delete": lambda doc, repeated, text: bool(doc) and bool(CONFIG.keys() - doc.keys()),
    "bury: past the parser's depth limit": lambda doc, repeated, text: b"[" * 33 in text,
    "grow": lambda doc, repeated, text: len(text) > 20 * len(json.dumps(CONFIG)),
    "duplicate key": lambda doc, repeated, text: bool(repeated),
}


@pytest.mark.parametrize("edit", EDITS)
@pytest.mark.filterwarnings("ignore:Generating overly large repr")  # the grown examples
def test_strategies_reach_every_edit(edit):
    """Each edit happens: hypothesis.find searches config.json's strategy until an example
    shows it. Derandomized (the same search every run, whatever the run's seed) and without
    shrinking: the first example found ends the search (each within 80 examples today)."""
    found = find(
        STRATEGIES["config.json"],
        lambda text: EDITS[edit](*_top_level(text), text),
        settings=settings(
            derandomize=True, database=None, max_examples=300, phases=[Phase.generate]
        ),
    )
    assert EDITS[edit](*_top_level(found), found)
