"""The border for Python callers: every public function checks its arguments here first.

validate.py checks what comes from files; this module checks what comes from code. Each
checker takes the value and the parameter's name, returns the value as the engine uses it
(a plain Python int, float, str, list or Path), and otherwise raises ArgumentError naming the
parameter, what was given and what is allowed:

    max_new_tokens = integer(max_new_tokens, "max_new_tokens", lo=0)
    top_p = real(top_p, "top_p", 0, 1, open_lo=True)
    # top_p must be a number in (0, 1], got None

What counts as a number is what NumPy code hands over, not only Python's own types:

- An integer is a Python int or a NumPy integer scalar (np.int64 from `logits.argmax()`), or
  a 0-d integer array (np.array(3)): anything that is one whole number and says so by its
  type. A float is not an integer even when integral (3.0 is refused: "an integer"), and
  neither is a bool (True is not a token count), nor np.bool_.
- A real number is an integer as above or a float (Python, np.float32, np.float64, a 0-d
  float array; any numbers.Real), finite: NaN and infinity are refused.
- A flag is True or False (or np.bool_), not 0, 1 or "false".

Checkers: integer, real, flag (and flags), choice, string, text (a string that encodes as
UTF-8), strings (one string or a collection of them), path, token_id, token_ids, sequence,
instance, function, dtype, kv_cache. Most take `optional=True` to let None through, and
`allowed=` to say what is allowed in the caller's own words.
"""

from __future__ import annotations

import math
import numbers
import os
import reprlib
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import numpy as np

from .config import LlamaConfig
from .errors import ArgumentError
from .kv_cache import KVCache

MAX_SHOWN = 80  # characters of a refused value quoted in a message


class _Shown(reprlib.Repr):
    """reprlib's bounded repr (8 items of a list, 80 characters of a string), and huge ints
    by their size: Python refuses the repr of an int of more than 4300 digits."""

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 128:
            return f"<an integer of {x.bit_length()} bits>"
        return super().repr_int(x, level)


_repr = _Shown()
_repr.maxstring = _repr.maxother = _repr.maxlong = MAX_SHOWN
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 8


def shown(value: object) -> str:
    """`value` as a message quotes it: its repr on one line, at most MAX_SHOWN characters,
    whatever a caller passed (an int of 10**5000, a list of a million items, a long string)."""
    text = _repr.repr(value).replace("\n", " ")
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def refuse(name: str, value: object, allowed: str) -> ArgumentError:
    """The error for parameter `name`: "{name} must be {allowed}, got {value}"."""
    return ArgumentError(f"{name} must be {allowed}, got {shown(value)}")


def _or_none(allowed: str, optional: bool) -> str:
    return f"{allowed} (or None)" if optional else allowed


# ---------------------------------------------------------------- numbers


def as_int(value: object) -> int | None:
    """`value` as a Python int if it is an integer (see the module docstring), else None."""
    if type(value) is int:  # the common case, first: decode checks a token per step
        return value
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, numbers.Integral):  # int, np.int64, ...
        return int(value)
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iu":
        return int(value)
    return None


def as_float(value: object) -> float | None:
    """`value` as a Python float if it is a real number (integers included), else None.
    An integer too large for a float becomes inf, which the checkers refuse."""
    if type(value) is float:
        return value
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf":
        value = value[()]
    if not isinstance(value, numbers.Real):
        return None
    try:
        return float(value)
    except OverflowError:  # float(10**400)
        return math.inf


def integer(
    value: object,
    name: str,
    lo: int | None = None,
    hi: int | None = None,
    *,
    optional: bool = False,
    allowed: str | None = None,
) -> int | None:
    """`value` as an int in lo..hi (None: no bound)."""
    if value is None and optional:
        return None
    number = as_int(value)
    if number is None or (lo is not None and number < lo) or (hi is not None and number > hi):
        raise refuse(name, value, allowed or _or_none(_int_range(lo, hi), optional))
    return number


def _int_range(lo: int | None, hi: int | None) -> str:
    if lo is not None and hi is not None:
        return f"an integer in {lo}..{hi}"
    if lo is not None:
        return f"an integer >= {lo}"
    if hi is not None:
        return f"an integer <= {hi}"
    return "an integer"


def real(
    value: object,
    name: str,
    lo: float = -math.inf,
    hi: float = math.inf,
    *,
    open_lo: bool = False,
    open_hi: bool = False,
    optional: bool = False,
    allowed: str | None = None,
) -> float | None:
    """`value` as a finite float in [lo, hi] (open ends with open_lo / open_hi)."""
    if value is None and optional:
        return None
    number = as_float(value)
    fits = (
        number is not None
        and math.isfinite(number)
        and (lo < number if open_lo else lo <= number)
        and (number < hi if open_hi else number <= hi)
    )
    if not fits:
        what = _real_range(lo, hi, open_lo, open_hi)
        raise refuse(name, value, allowed or _or_none(what, optional))
    return number


def _real_range(lo: float, hi: float, open_lo: bool, open_hi: bool) -> str:
    if lo == -math.inf and hi == math.inf:
        return "a finite number"
    if hi == math.inf:
        return f"a number {'>' if open_lo else '>='} {lo:g}"
    if lo == -math.inf:
        return f"a number {'<' if open_hi else '<='} {hi:g}"
    return f"a number in {'(' if open_lo else '['}{lo:g}, {hi:g}{')' if open_hi else ']'}"


def flag(value: object, name: str, *, optional: bool = False) -> bool | None:
    """`value` as a bool: True or False (np.bool_ too); not 0, 1 or a string."""
    if value is True or value is False:
        return value
    if value is None and optional:
        return None
    if not isinstance(value, np.bool_):
        raise refuse(name, value, _or_none("True or False", optional))
    return bool(value)


def flags(**values: object) -> None:
    """Check that every keyword argument is a flag: flags(bos=bos, eos=eos)."""
    for name, value in values.items():
        flag(value, name)


# ---------------------------------------------------------------- strings and paths


def choice(
    value: object, name: str, choices: Collection[str], *, optional: bool = False
) -> str | None:
    """`value` if it is one of the strings `choices`."""
    if value is None and optional:
        return None
    if not (isinstance(value, str) and value in choices):
        raise refuse(name, value, _or_none(f"one of {', '.join(map(repr, choices))}", optional))
    return str(value)


def string(
    value: object,
    name: str,
    *,
    non_empty: bool = False,
    optional: bool = False,
    allowed: str | None = None,
) -> str | None:
    """`value` if it is a str (non-empty with `non_empty`)."""
    if value is None and optional:
        return None
    if not isinstance(value, str) or (non_empty and not value):
        what = "a non-empty string" if non_empty else "a string"
        raise refuse(name, value, allowed or _or_none(what, optional))
    return value


def text(value: object, name: str, *, optional: bool = False) -> str | None:
    """`value` if it is a str that encodes as UTF-8: text to tokenize.

    A lone surrogate is refused: it is how Python hands over bytes that are not UTF-8 (in a
    command-line argument or on stdin), and no tokenizer can encode it.
    """
    if value is None and optional:
        return None
    string(value, name, optional=optional)
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ArgumentError(
                f"{name} is not valid Unicode text: character {e.start} is a lone surrogate "
                f"({value[e.start]!r}), half of a UTF-16 pair or a byte that is not UTF-8 (as "
                f"Python reads such bytes from an argument or stdin): pass UTF-8 text"
            ) from None
    return value


def strings(value: object, name: str, *, non_empty: bool = False) -> list[str]:
    """One string, or a collection of strings (list, tuple, set, ...); -> a list of them.
    With `non_empty`, every string must have at least one character."""
    items = [value] if isinstance(value, str) else _collection(value, ordered=False)
    if items is None or not all(isinstance(s, str) and (s or not non_empty) for s in items):
        what = "non-empty strings" if non_empty else "strings"
        raise refuse(name, value, f"a string or a list of {what}")
    return [str(s) for s in items]


def path(value: object, name: str, *, optional: bool = False) -> Path | None:
    """`value` as a Path: a non-empty str or an os.PathLike (pathlib.Path) naming a file or
    directory (whether it exists is for the reader to say)."""
    if value is None and optional:
        return None
    try:
        name_text = os.fspath(value) if isinstance(value, (str, os.PathLike)) else None
    except TypeError:  # a PathLike whose __fspath__ returns something else
        name_text = None
    if not isinstance(name_text, str) or not name_text or "\0" in name_text:
        raise refuse(name, value, _or_none("a path (a non-empty str or pathlib.Path)", optional))
    return Path(name_text).expanduser()  # "~/models/x", as a shell would read it


# ---------------------------------------------------------------- containers and objects


def _collection(value: object, ordered: bool = True) -> list | None:
    """`value` as a list if it is a sequence of items (list, tuple, range, an array's rows;
    not a str, bytes or mapping), or without `ordered` any finite collection (a set too);
    else None."""
    if isinstance(value, (str, bytes, bytearray, Mapping)):
        return None
    if isinstance(value, np.ndarray):
        return list(value) if value.ndim else None
    kind = Sequence if ordered else Collection
    return list(value) if isinstance(value, kind) else None


def sequence(value: object, name: str, *, min_len: int = 0, allowed: str | None = None) -> list:
    """`value` as a list, if it is a sequence (list, tuple, array, ...; not a str, bytes or
    mapping) of at least `min_len` items."""
    items = _collection(value)
    if items is None or len(items) < min_len:
        what = "a list" if not min_len else f"a list of at least {min_len} item"
        raise refuse(name, value, allowed or what + ("s" if min_len > 1 else ""))
    return items


def token_ids(
    value: object, name: str, vocab_size: int, *, min_len: int = 1, allowed: str | None = None
) -> np.ndarray:
    """`value` as an int64 array (n,) of token ids in 0..vocab_size-1, n >= min_len.

    A list or tuple of integers (NumPy integer scalars included) or a 1-D integer array; not
    a str, a set (no order), floats (1.0 included) or bools.
    """
    if isinstance(value, np.ndarray):
        ids = value if value.ndim == 1 and value.dtype.kind in "iu" else None
    else:
        items = _collection(value)
        ids = None if items is None else [as_int(t) for t in items]
        ids = None if ids is None or None in ids else ids
    if ids is None or len(ids) < min_len:
        what = f"list of token ids (integers in 0..{vocab_size - 1})"
        raise refuse(name, value, allowed or (f"a non-empty {what}" if min_len else f"a {what}"))
    if isinstance(ids, np.ndarray):
        outside = np.flatnonzero((ids < 0) | (ids >= vocab_size))[:1].tolist()
    else:  # Python ints, any size: compared before they become int64
        outside = [i for i, t in enumerate(ids) if not 0 <= t < vocab_size][:1]
    if outside:
        at = outside[0]
        raise ArgumentError(
            f"{name}: token id {shown(int(ids[at]))} is outside the vocabulary "
            f"0..{vocab_size - 1} (at index {at})"
        )
    return np.asarray(ids, dtype=np.int64)


def token_id(value: object, name: str, vocab_size: int) -> int:
    """`value` as an int, if it is an integer (NumPy's too) in the vocabulary 0..vocab_size-1."""
    token = as_int(value)
    if token is None:
        raise refuse(name, value, f"a token id (an integer in 0..{vocab_size - 1})")
    if not 0 <= token < vocab_size:
        raise ArgumentError(
            f"{name}: token id {shown(token)} is outside the vocabulary 0..{vocab_size - 1}"
        )
    return token


def instance(
    value: object, name: str, cls: type, *, optional: bool = False, allowed: str | None = None
):
    """`value` if it is an instance of `cls`."""
    if value is None and optional:
        return None
    if not isinstance(value, cls):
        raise refuse(name, value, allowed or _or_none(f"a {cls.__name__}", optional))
    return value


def function(value: object, name: str, *, optional: bool = False):
    """`value` if it can be called."""
    if value is None and optional:
        return None
    if not callable(value):
        raise refuse(name, value, _or_none("a function (callable)", optional))
    return value


def dtype(value: object, name: str, choices: Collection[np.dtype]) -> np.dtype:
    """`value` as one of the NumPy dtypes `choices` (np.float16, "float16", np.dtype(...))."""
    try:  # a name or a type; np.dtype({}) or np.dtype([]) would make a structured dtype
        found = np.dtype(value) if isinstance(value, (str, type, np.dtype)) else None
    except (TypeError, ValueError):  # "bogus"
        found = None
    if found not in choices:
        raise refuse(name, value, f"one of {', '.join(f'np.{np.dtype(c)}' for c in choices)}")
    return found


def kv_cache(value: object, name: str, config: LlamaConfig, *, optional: bool = False):
    """`value` if it is a KVCache made for a model of `config`: as many layers and KV heads of
    the same head dim, float32 or float16, and no more positions than the model's context
    (RoPE is computed that far). A cache of another model would fail deep inside attention."""
    if value is None and optional:
        return None
    instance(value, name, KVCache, optional=optional, allowed="a KVCache (model.new_cache())")
    L, B, KVH, S, HD = value.k.shape
    want = (config.n_layers, config.n_kv_heads, config.head_dim)
    fits = (L, KVH, HD) == want and S <= config.max_seq_len and value.v.shape == value.k.shape
    fits = fits and value.k.dtype in (np.float32, np.float16) and len(value.lengths) == B
    if not fits:
        raise ArgumentError(
            f"{name} must be a KV cache of this model: (L, KVH, HD) = {want}, at most "
            f"{config.max_seq_len} positions, float32 or float16; got one of (L, KVH, HD) = "
            f"{(L, KVH, HD)}, {S} positions, {value.k.dtype}: make it with model.new_cache()"
        )
    return value
