"""The border (llama_np/validate.py): bounded JSON reading and the schema specs."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llama_np.errors import ArgumentError, ConfigError
from llama_np.validate import (
    MAX_DEPTH,
    Bool,
    Either,
    Float,
    Int,
    List,
    Map,
    Maybe,
    Obj,
    Opt,
    Str,
    check_text,
    json_depth,
    parse_json,
    read_json,
    validate,
)

ROOT = Path(__file__).resolve().parents[1]


def check(value, spec):
    return validate(value, spec, "f.json", ConfigError)


@pytest.mark.parametrize(
    "value, spec, result",
    [
        (8, Int(1), 8),
        (8.0, Int(1), 8),  # integral floats are integers
        (3, Float(0), 3.0),
        (True, Bool(), True),
        (None, Maybe(Int()), None),
        ([1, "a"], List(Either((Int(), Str()))), [1, "a"]),
        ({"a": 1, "extra": [1]}, Obj({"a": Int(), "b": Opt(Int(), 7)}), {"a": 1, "b": 7}),
        ({}, Obj({"b": Opt(Int(), keep_absent=True)}), {}),
        ({"k": 1}, Map(Int()), {"k": 1}),
    ],
)
def test_specs_accept(value, spec, result):
    out = check(value, spec)
    assert out == result and type(out) is type(result)


@pytest.mark.parametrize(
    "value, spec, message",
    [
        (8.5, Int(1), "expected an integer in 1..2147483647, found 8.5"),
        (True, Int(), "expected an integer"),
        ("8", Int(), "found '8'"),
        (0, Int(1), "expected an integer in 1.."),
        (2**40, Int(), "expected an integer"),
        (True, Float(), "expected a finite number"),
        (0.0, Float(0, open_lo=True), "expected a number > 0"),
        ("false", Bool(), "expected true or false, found 'false'"),
        (0, Bool(), "expected true or false"),
        ("x" * 10, Str(5), "at most 5 characters"),
        ("c", Str(choices=("a", "b")), "one of 'a', 'b'"),
        ([1] * 3, List(Int(), max_len=2), "a list of 0..2 items"),
        ({"a": "x"}, Obj({"a": Int()}), "f.json: a: expected an integer"),
        ({}, Obj({"a": Int()}), "f.json: a: required key is missing"),
        ({"a": {"b": [1, "x"]}}, Obj({"a": Obj({"b": List(Int())})}), "a.b[1]: expected"),
        ([1], Obj({}), "expected an object, found [1]"),
    ],
)
def test_specs_refuse_naming_the_key(value, spec, message):
    with pytest.raises(ConfigError) as e:
        check(value, spec)
    assert message in str(e.value) and str(e.value).startswith("f.json: ")


@pytest.mark.parametrize(
    "text, message",
    [
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "nested 33 levels deep"),
        (b'{"a": 1' + b"0" * 45 + b"}", "digits"),
        (b'{"a": NaN}', "NaN is not a JSON value"),
        (b'{"a": -Infinity}', "-Infinity is not a JSON value"),
        (b'{"a": 1e999}', "overflows a float"),
        (b'{"a": 1, "a": 2}', "key 'a' appears twice"),
        (b"\xff{}", "not valid JSON"),
        (b"{", "not valid JSON"),
    ],
)
def test_parse_json_refuses_unbounded_or_ambiguous_input(text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_json(text, "f.json", ConfigError)


def test_depth_ignores_brackets_in_strings():
    assert json_depth(b'{"a": "[[[[{{{{", "b": ["\\"[["]}') == 2
    assert parse_json(b'{"a": "' + b"[" * 1000 + b'"}', "f", ConfigError) == {"a": "[" * 1000}


@settings(max_examples=200, deadline=None)
@given(
    value=st.recursive(
        st.none() | st.integers() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
        max_leaves=30,
    )
)
def test_depth_matches_the_parsed_nesting(value):
    def depth(v):
        if isinstance(v, list):
            return 1 + max(map(depth, v), default=0)
        if isinstance(v, dict):
            return 1 + max(map(depth, v.values()), default=0)
        return 0

    assert json_depth(json.dumps(value).encode()) == depth(value)


def test_read_json_refuses_pipes_and_large_files(tmp_path):
    os.mkfifo(tmp_path / "pipe.json")
    with pytest.raises(ConfigError, match="not a regular file"):
        read_json(tmp_path / "pipe.json", ConfigError)  # returns at once: never opened
    (tmp_path / "big.json").write_text("[" + "0," * 1000 + "0]")
    with pytest.raises(ConfigError, match="more than the 100"):
        read_json(tmp_path / "big.json", ConfigError, max_bytes=100)
    assert read_json(tmp_path / "absent.json", ConfigError, missing_ok=True) is None


def test_check_text():
    assert check_text("héllo") == "héllo"
    with pytest.raises(ArgumentError, match="character 3 is a lone surrogate"):
        check_text("caf\udce9")
    with pytest.raises(ArgumentError, match="must be a str"):
        check_text(b"bytes")


def test_no_module_catches_bare_exception():
    """Only errors of a named kind are turned into LlamaNpErrors: a bug stays a traceback."""
    pattern = re.compile(r"except\s*(Exception|BaseException)?\s*(as \w+)?:")
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in (ROOT / "llama_np").rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, found
