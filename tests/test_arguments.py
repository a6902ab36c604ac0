"""The argument check of the public API: the checkers of llama_np/arguments.py.

NumPy scalars (np.int64 from argmax arithmetic, np.float32 from an array) and integer arrays
are accepted wherever Python numbers and lists are; bools and integral floats are not counts.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from llama_np import ArgumentError
from llama_np import arguments as args

# ---------------------------------------------------------------- the checkers


@pytest.mark.parametrize(
    "value, expected",
    [
        (3, 3),
        (np.int64(3), 3),
        (np.uint8(3), 3),
        (np.int32(-2), -2),
        (np.array(3), 3),  # 0-d integer array
        (10**30, 10**30),
    ],
)
def test_integer_accepts_python_and_numpy_integers(value, expected):
    got = args.integer(value, "n")
    assert got == expected and type(got) is int


@pytest.mark.parametrize(
    "value",
    [True, False, np.bool_(True), 3.0, np.float64(3.0), "3", None, [3], np.array([3]), 3 + 0j],
)
def test_integer_refuses_bools_floats_and_the_rest(value):
    with pytest.raises(ArgumentError, match=r"^n must be an integer, got "):
        args.integer(value, "n")


def test_integer_range_and_optional():
    assert args.integer(None, "n", 0, optional=True) is None
    with pytest.raises(ArgumentError, match=r"n must be an integer in 1\.\.4, got 5$"):
        args.integer(5, "n", 1, 4)
    with pytest.raises(ArgumentError, match=r"n must be an integer >= 0 \(or None\), got -1$"):
        args.integer(-1, "n", 0, optional=True)
    with pytest.raises(ArgumentError, match=r"n must be a count, got -1$"):
        args.integer(-1, "n", 0, allowed="a count")


@pytest.mark.parametrize(
    "value, expected",
    [(0.5, 0.5), (np.float32(0.5), 0.5), (np.float16(0.5), 0.5), (2, 2.0), (np.int64(2), 2.0)],
)
def test_real_accepts_python_and_numpy_numbers(value, expected):
    got = args.real(value, "x")
    assert got == expected and type(got) is float


@pytest.mark.parametrize(
    "value",
    [math.nan, math.inf, -math.inf, np.float32("nan"), 10**400, True, "0.5", None, [0.5], 1j],
)
def test_real_refuses_non_finite_and_non_numbers(value):
    with pytest.raises(ArgumentError, match=r"^x must be a finite number, got "):
        args.real(value, "x")


def test_real_ranges_are_described():
    with pytest.raises(ArgumentError, match=r"x must be a number in \(0, 1\], got 0\.0"):
        args.real(0.0, "x", 0, 1, open_lo=True)
    with pytest.raises(ArgumentError, match=r"x must be a number >= 0, got -1"):
        args.real(-1, "x", 0)
    with pytest.raises(ArgumentError, match=r"x must be a number in \[0, 1\), got 1"):
        args.real(1, "x", 0, 1, open_hi=True)


def test_flag_string_choice_path():
    assert args.flag(np.bool_(True), "f") is True
    for bad in (0, 1, "false", None):
        with pytest.raises(ArgumentError, match=r"^f must be True or False, got "):
            args.flag(bad, "f")
    assert args.choice("b", "c", ("a", "b")) == "b"
    with pytest.raises(ArgumentError, match=r"^c must be one of 'a', 'b', got \['a'\]$"):
        args.choice(["a"], "c", ("a", "b"))  # unhashable: refused, not a TypeError
    with pytest.raises(ArgumentError, match=r"^s must be a non-empty string, got ''$"):
        args.string("", "s", non_empty=True)
    assert args.path("a/b", "p") == Path("a/b") and args.path(Path("x"), "p") == Path("x")
    for bad in ("", "a\0b", b"a", 5, None):
        with pytest.raises(ArgumentError, match=r"^p must be a path"):
            args.path(bad, "p")


def test_text_refuses_a_lone_surrogate():
    with pytest.raises(ArgumentError, match="t is not valid Unicode text: character 3"):
        args.text("caf\udce9", "t")


@pytest.mark.parametrize(
    "value, expected",
    [("a", ["a"]), (["a", "b"], ["a", "b"]), (("a",), ["a"]), ({"a"}, ["a"]), ([], [])],
)
def test_strings(value, expected):
    assert args.strings(value, "stop", non_empty=True) == expected


@pytest.mark.parametrize("value", [None, 5, [""], "", ["a", 5], {"a": 1}, b"ab", iter(["a"])])
def test_strings_refused(value):
    with pytest.raises(ArgumentError, match=r"^stop must be a string or a list of non-empty"):
        args.strings(value, "stop", non_empty=True)


@pytest.mark.parametrize(
    "value",
    [
        [1, 2],
        (1, 2),
        [np.int32(1), np.int64(2)],
        np.array([1, 2], dtype=np.int32),
        np.array([1, 2], dtype=np.uint16),
        range(1, 3),
        [np.array(1), 2],
    ],
)
def test_token_ids_accepted(value):
    ids = args.token_ids(value, "tokens", 10)
    assert ids.dtype == np.int64 and ids.tolist() == [1, 2]


@pytest.mark.parametrize(
    "value, message",
    [
        ([], "a non-empty list of token ids"),
        ("12", "a non-empty list of token ids"),
        ([1, 2.0], "a non-empty list of token ids"),
        ([1, True], "a non-empty list of token ids"),
        (np.array([1.0]), "a non-empty list of token ids"),
        (np.array([[1, 2]]), "a non-empty list of token ids"),
        (np.array([True]), "a non-empty list of token ids"),
        ([[1, 2]], "a non-empty list of token ids"),
        (5, "a non-empty list of token ids"),
        ([1, 10], r"token id 10 is outside the vocabulary 0\.\.9 \(at index 1\)"),
        ([-1], r"token id -1 is outside the vocabulary 0\.\.9 \(at index 0\)"),
        ([10**30], "token id 1000000000000000000000000000000 is outside"),
        (np.array([3, 2**40]), "token id 1099511627776 is outside"),
    ],
)
def test_token_ids_refused(value, message):
    with pytest.raises(ArgumentError, match=f"^tokens(:| must be) .*{message}"):
        args.token_ids(value, "tokens", 10)


def test_shown_is_bounded():
    assert args.shown(10**5000) == "<an integer of 16610 bits>"
    assert args.shown([10**5000]) == "[<an integer of 16610 bits>]"
    assert len(args.shown("x" * 10**6)) <= args.MAX_SHOWN
    assert len(args.shown(list(range(10**6)))) <= args.MAX_SHOWN
    assert "\n" not in args.shown(np.zeros((50, 50)))


def test_dtype():
    assert args.dtype("float16", "dtype", (np.float32, np.float16)) == np.float16
    assert args.dtype(np.float32, "dtype", (np.float32, np.float16)) == np.float32
    for bad in ("bogus", None, np.float64, 5, [1], {"a": 1}, object()):
        with pytest.raises(ArgumentError, match=r"^dtype must be one of np.float32, np.float16"):
            args.dtype(bad, "dtype", (np.float32, np.float16))
