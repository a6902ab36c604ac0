"""The border: every structured input (JSON files, parsed headers) is read here, bounded and
checked against a small declarative schema before anything is built from it.

    spec = Obj({"hidden_size": Int(1), "rms_norm_eps": Opt(Float(0, open_lo=True), 1e-6)})
    cfg = validate(read_json(path, ConfigError), spec, path, ConfigError)
    cfg["rms_norm_eps"]   # present (default filled in), a finite float > 0

`read_json` refuses what would make parsing unbounded before parsing it: a file that is not
a regular file (a named pipe blocks forever), more than `max_bytes`, nesting deeper than
MAX_DEPTH (Python's parser recurses), integers of more than MAX_INT_DIGITS digits, NaN or
Infinity, and duplicate keys (JSON parsers disagree on which one wins). `validate` then
checks types (an int is not a bool, "false" is not a bool, 8.0 is an int only because it is
integral), ranges, required keys and lengths, and names the file and key that fail:

    config.json: rope_scaling.low_freq_factor: expected a number > 0, found None

Specs: Int, Float, Bool, Str, List, Map, Obj, Maybe (null allowed), Either (first that fits),
Opt (an optional key of an Obj, with its default). Anything that passes is plain Python data
of the declared types, so the loaders behind this module trust it.
"""

from __future__ import annotations

import abc
import json
import math
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import arguments
from .errors import LlamaNpError

MAX_DEPTH = 32  # real files nest 3 (config.json) to 7 (tokenizer.json) levels
# Every count, id and offset fits in 64 bits (20 digits), but transformers writes "no limit"
# as int(1e30) = 1000000000000000019884624838656 (31 digits: tokenizer_config.json's
# model_max_length in Llama 2's and Mistral's files); the schemas range-check what is used.
MAX_INT_DIGITS = 40
MAX_JSON_BYTES = 64 * 2**20  # a Llama 3 tokenizer.json is 9 MB
MAX_ID = 2**31 - 1  # token ids, dims: int32, as llama.cpp and llama2.c store them

# A JSON string literal (escapes included), to blank out before counting brackets.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


class _Invalid(Exception):
    """A value does not fit its spec; `validate` turns it into the caller's LlamaNpError."""

    def __init__(self, at: str, expected: str, found: object) -> None:
        self.at, self.expected, self.found = at, expected, found


# ---------------------------------------------------------------- bounded reading


def regular_file(path: Path, error: type[LlamaNpError], what: str = "file") -> os.stat_result:
    """stat(path), refusing anything but a regular file: a named pipe or a device would block
    or never end when read."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise error(f"{path}: cannot read the {what}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise error(f"{path}: {kind}; expected a {what}")
    return st


def read_bytes(path: Path, error: type[LlamaNpError], max_bytes: int, what: str = "file") -> bytes:
    """The bytes of regular file `path`, refusing one larger than `max_bytes`."""
    size = regular_file(path, error, what).st_size
    if size > max_bytes:
        raise error(
            f"{path}: {size:,} bytes is more than the {max_bytes:,} a {what} can plausibly be; "
            f"the file is corrupt or not a {what}"
        )
    try:
        with open(path, "rb") as f:
            return f.read(max_bytes + 1)[:max_bytes]
    except OSError as e:
        raise error(f"{path}: cannot read the {what}: {e.strerror}") from None


def read_json(
    path: str | Path,
    error: type[LlamaNpError],
    *,
    max_bytes: int = MAX_JSON_BYTES,
    missing_ok: bool = False,
):
    """The JSON value in file `path` (None if absent and `missing_ok`), bounded as parse_json."""
    path = Path(path)
    if missing_ok and not os.path.lexists(path):
        return None
    return parse_json(read_bytes(path, error, max_bytes, "JSON file"), path, error, max_bytes)


def parse_json(
    data: bytes | str, source: object, error: type[LlamaNpError], max_bytes: int = MAX_JSON_BYTES
):
    """Parse JSON text with bounded work: size, nesting depth and integer digits are checked
    before or while parsing; NaN/Infinity and duplicate keys are refused."""
    if isinstance(data, str):
        data = data.encode("utf-8", errors="surrogatepass")
    if len(data) > max_bytes:
        raise error(f"{source}: {len(data):,} bytes of JSON is more than the limit {max_bytes:,}")
    depth = json_depth(data)
    if depth > MAX_DEPTH:
        raise error(f"{source}: JSON nested {depth} levels deep, more than the limit {MAX_DEPTH}")
    try:
        return json.loads(
            data.decode("utf-8"),
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_refuse_constant,
            object_pairs_hook=_unique_keys,
        )
    except _Invalid as e:
        raise error(f"{source}: not valid JSON: {e.expected}") from None
    except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise error(f"{source}: not valid JSON: {e}") from e  # --debug shows the parser's


def json_depth(data: bytes) -> int:
    """Deepest nesting of [ and { in JSON text (strings blanked out first): linear, no
    recursion, so it can run before the (recursive) parser sees the text."""
    stripped = np.frombuffer(_JSON_STRING.sub(b'""', data), dtype=np.uint8)  # (n,)
    steps = (
        (stripped == ord("[")).astype(np.int32)
        + (stripped == ord("{"))
        - (stripped == ord("]"))
        - (stripped == ord("}"))
    )  # (n,)
    return int(np.cumsum(steps).max(initial=0))


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _Invalid("", f"an integer of {len(text)} digits (limit {MAX_INT_DIGITS})", text)
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Invalid("", f"the number {text[:40]} overflows a float", text)
    return value


def _refuse_constant(name: str):
    raise _Invalid("", f"{name} is not a JSON value", name)


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    result: dict = {}
    for key, value in pairs:
        if key in result:
            raise _Invalid("", f"key {key[:80]!r} appears twice in one object", key)
        result[key] = value
    return result


def check_text(text: object, what: str = "text") -> str:
    """`text` if it is a str that encodes as UTF-8; ArgumentError for anything else, e.g. a
    lone surrogate (from the API, or non-UTF-8 bytes in a command-line argument, which
    Python hands over as surrogate escapes). The check is arguments.text."""
    return arguments.text(text, what)


# ---------------------------------------------------------------- schemas


class Spec(abc.ABC):
    """A check of one JSON value; `check` returns the value as it should be used."""

    @abc.abstractmethod
    def check(self, value, at: str):
        """`value` as it should be used, or _Invalid naming `at` (the key path)."""

    @abc.abstractmethod
    def describe(self) -> str:
        """What a fitting value is, for messages ("an integer in 1..2147483647")."""


@dataclass(frozen=True)
class Int(Spec):
    """An integer in [lo, hi]. A float counts only if integral (8.0); a bool never does."""

    lo: int = 0
    hi: int = MAX_ID

    def check(self, value, at: str) -> int:
        integral = isinstance(value, float) and value.is_integer()
        if isinstance(value, bool) or not (isinstance(value, int) or integral):
            raise _Invalid(at, self.describe(), value)
        if not self.lo <= value <= self.hi:
            raise _Invalid(at, self.describe(), value)
        return int(value)

    def describe(self) -> str:
        return f"an integer in {self.lo}..{self.hi}"


@dataclass(frozen=True)
class Float(Spec):
    """A finite number (int or float, not bool) in [lo, hi] ((lo, hi] with open_lo)."""

    lo: float = -math.inf
    hi: float = math.inf
    open_lo: bool = False

    def check(self, value, at: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Invalid(at, self.describe(), value)
        value = float(value)
        low_ok = value > self.lo if self.open_lo else value >= self.lo
        if not (math.isfinite(value) and low_ok and value <= self.hi):
            raise _Invalid(at, self.describe(), value)
        return value

    def describe(self) -> str:
        if self.lo == -math.inf and self.hi == math.inf:
            return "a finite number"
        if self.hi == math.inf:
            return f"a number {'>' if self.open_lo else '>='} {self.lo:g}"
        return f"a number in {'(' if self.open_lo else '['}{self.lo:g}, {self.hi:g}]"


@dataclass(frozen=True)
class Bool(Spec):
    """true or false: not the string "false", not 0 or 1."""

    def check(self, value, at: str) -> bool:
        if not isinstance(value, bool):
            raise _Invalid(at, self.describe(), value)
        return value

    def describe(self) -> str:
        return "true or false"


@dataclass(frozen=True)
class Str(Spec):
    """A string of at most max_len characters; one of `choices`, or matching `pattern`
    (described as `what`), if given."""

    max_len: int = 4096
    choices: tuple[str, ...] = ()
    pattern: str = ""
    what: str = ""

    def check(self, value, at: str) -> str:
        if not isinstance(value, str) or len(value) > self.max_len:
            raise _Invalid(at, self.describe(), value)
        if self.choices and value not in self.choices:
            raise _Invalid(at, self.describe(), value)
        if self.pattern and not re.fullmatch(self.pattern, value):
            raise _Invalid(at, self.describe(), value)
        return value

    def describe(self) -> str:
        if self.choices:
            return f"one of {', '.join(map(repr, self.choices))}"
        return self.what or f"a string of at most {self.max_len:,} characters"


@dataclass(frozen=True)
class List(Spec):
    """A list of min_len..max_len items, each fitting `item`."""

    item: Spec
    max_len: int = 1 << 20
    min_len: int = 0

    def check(self, value, at: str) -> list:
        if not isinstance(value, list) or not self.min_len <= len(value) <= self.max_len:
            raise _Invalid(at, self.describe(), value)
        return [self.item.check(v, f"{at}[{i}]") for i, v in enumerate(value)]

    def describe(self) -> str:
        return f"a list of {self.min_len}..{self.max_len:,} items ({self.item.describe()})"


@dataclass(frozen=True)
class Map(Spec):
    """An object of up to max_len entries with arbitrary keys (`key`) and values (`value`)."""

    value: Spec
    key: Spec = Str(1024)
    max_len: int = 1 << 22

    def check(self, value, at: str) -> dict:
        if not isinstance(value, dict) or len(value) > self.max_len:
            raise _Invalid(at, self.describe(), value)
        out = {}
        for k, v in value.items():
            where = f"{at}[{k[:60]!r}]" if at else f"[{k[:60]!r}]"
            out[self.key.check(k, where)] = self.value.check(v, where)
        return out

    def describe(self) -> str:
        return f"an object of up to {self.max_len:,} entries ({self.value.describe()})"


_REQUIRED = object()


@dataclass(frozen=True)
class Opt:
    """An optional key of an Obj: its spec and the default when absent (no default: the key
    stays absent in the result)."""

    spec: Spec
    default: object = None
    keep_absent: bool = False


@dataclass(frozen=True)
class Obj(Spec):
    """An object with known keys: a Spec (required) or an Opt (optional, default filled in).
    Other keys are ignored and dropped: the result holds exactly the declared keys."""

    fields: Mapping[str, Spec | Opt] = field(default_factory=dict)

    def check(self, value, at: str) -> dict:
        if not isinstance(value, dict):
            raise _Invalid(at, "an object", value)
        out = {}
        for key, spec in self.fields.items():
            where = f"{at}.{key}" if at else key
            if key not in value:
                if not isinstance(spec, Opt):
                    raise _Invalid(where, "", _MISSING)
                if not spec.keep_absent:
                    out[key] = spec.default
                continue
            out[key] = (spec.spec if isinstance(spec, Opt) else spec).check(value[key], where)
        return out

    def describe(self) -> str:
        return "an object"


@dataclass(frozen=True)
class Maybe(Spec):
    """null, or a value fitting `spec`."""

    spec: Spec

    def check(self, value, at: str):
        return None if value is None else self.spec.check(value, at)

    def describe(self) -> str:
        return f"null or {self.spec.describe()}"


@dataclass(frozen=True)
class Either(Spec):
    """A value fitting the first of `specs` that it fits."""

    specs: tuple[Spec, ...]

    def check(self, value, at: str):
        for spec in self.specs:
            try:
                return spec.check(value, at)
            except _Invalid:
                continue
        raise _Invalid(at, self.describe(), value)

    def describe(self) -> str:
        return " or ".join(s.describe() for s in self.specs)


class _Missing:
    def __repr__(self) -> str:
        return "nothing"


_MISSING = _Missing()


def validate(value, spec: Spec, source: object, error: type[LlamaNpError]):
    """`value` checked against `spec`; the first misfit raises `error` naming source and key."""
    try:
        return spec.check(value, "")
    except _Invalid as e:
        at = f"{e.at}: " if e.at else ""
        if e.found is _MISSING:
            raise error(f"{source}: {at}required key is missing") from None
        found = arguments.shown(e.found)  # bounded: repr of a 30 MB list took 15 s
        raise error(f"{source}: {at}expected {e.expected}, found {found}") from None


# ---------------------------------------------------------------- the schema of each input

POSITIVE = Float(0, open_lo=True)
SIZE = Int(1)  # a dimension, count of layers or heads, context length: 1..2**31-1
TOKEN_ID = Int(0)
MAX_TOKEN_ID = 2**24 - 1  # the largest real vocabularies have ~2**18 tokens
# A file name in the same directory: no "/", "\\", ":" or NUL, and not "" / "." / "..".
FILE_NAME = Str(255, pattern=r"(?!\.\.?$)[^/\\:\x00]+", what="a file name in the same directory")

# Hugging Face config.json (both transformers 4 and 5 spellings; see checkpoints/hf.py).
HF_ROPE = Obj(
    {
        "rope_type": Opt(Str(64), keep_absent=True),
        "type": Opt(Str(64), keep_absent=True),
        "rope_theta": Opt(POSITIVE, keep_absent=True),
        "factor": Opt(POSITIVE, keep_absent=True),
        "low_freq_factor": Opt(POSITIVE, keep_absent=True),
        "high_freq_factor": Opt(POSITIVE, keep_absent=True),
        "original_max_position_embeddings": Opt(SIZE, keep_absent=True),
    }
)
HF_ROPE_LINEAR = Obj({"factor": POSITIVE})
HF_ROPE_LLAMA3 = Obj(
    {
        "factor": POSITIVE,
        "low_freq_factor": POSITIVE,
        "high_freq_factor": POSITIVE,
        "original_max_position_embeddings": SIZE,
    }
)
STOP_IDS = Maybe(Either((TOKEN_ID, List(TOKEN_ID, max_len=64))))
HF_CONFIG = Obj(
    {
        "architectures": Opt(Maybe(List(Str(256), max_len=16))),
        "sliding_window": Opt(Maybe(Int(0)), keep_absent=True),
        "hidden_act": Opt(Str(64), "silu"),
        "attention_bias": Opt(Bool(), False),
        "mlp_bias": Opt(Bool(), False),
        "hidden_size": SIZE,
        "num_attention_heads": SIZE,
        "num_hidden_layers": SIZE,
        "intermediate_size": SIZE,
        "vocab_size": SIZE,
        "num_key_value_heads": Opt(Maybe(SIZE)),
        "head_dim": Opt(Maybe(SIZE)),
        "max_position_embeddings": Opt(SIZE, 2048),
        "rms_norm_eps": Opt(POSITIVE, 1e-6),
        "rope_theta": Opt(POSITIVE, 10000.0),
        "rope_scaling": Opt(Maybe(HF_ROPE)),
        "rope_parameters": Opt(Maybe(HF_ROPE)),
        "tie_word_embeddings": Opt(Bool(), False),
        "bos_token_id": Opt(Maybe(TOKEN_ID)),
        "eos_token_id": Opt(STOP_IDS, 2),
    }
)
HF_GENERATION_CONFIG = Obj({"eos_token_id": Opt(STOP_IDS)})

# Meta's params.json (checkpoints/meta.py).
META_PARAMS = Obj(
    {
        "dim": SIZE,
        "n_layers": SIZE,
        "n_heads": SIZE,
        "n_kv_heads": Opt(Maybe(SIZE)),
        "vocab_size": Opt(Either((SIZE, Int(-1, -1))), -1),  # -1: the embedding's rows
        "multiple_of": Opt(SIZE, 256),
        "ffn_dim_multiplier": Opt(Maybe(POSITIVE)),
        "norm_eps": Opt(POSITIVE, 1e-5),
        "rope_theta": Opt(POSITIVE, 10000.0),
        "use_scaled_rope": Opt(Bool(), False),
        "rope_scaling_factor": Opt(POSITIVE, 8.0),
        "rope_high_freq_factor": Opt(POSITIVE, 4.0),
        "max_seq_len": Opt(SIZE, keep_absent=True),
    }
)

# safetensors: the JSON header of one file, and model.safetensors.index.json.
SAFETENSORS_ENTRY = Obj(
    {
        "dtype": Str(16),
        "shape": List(Int(0, 2**40), max_len=8),
        "data_offsets": List(Int(0, 2**62), max_len=2, min_len=2),
    }
)
SAFETENSORS_METADATA = Maybe(Map(Str(1 << 16), max_len=1024))
SAFETENSORS_HEADER = Map(SAFETENSORS_ENTRY, max_len=1 << 20)  # after __metadata__ is taken out
# A shard: a file in the directory or in a subfolder of it ("sub/model-00001.safetensors", as
# transformers reads them), never above it: no "/" first, no "." or ".." or empty part, no
# "\\", ":" or NUL.
SHARD_PATH = Str(
    1024,
    pattern=r"(?:(?!\.\.?/)[^/\\:\x00]+/)*(?!\.\.?$)[^/\\:\x00]+",
    what="a relative path inside the checkpoint directory (no '..', no absolute path)",
)
SAFETENSORS_INDEX = Obj({"weight_map": Map(SHARD_PATH, max_len=1 << 20)})

# tokenizer.json (byte-level BPE; tokenizers/hf_json.py) and tokenizer_config.json.
_TYPE = Opt(Maybe(Str(64)))
_PRE_STEP = {
    "type": _TYPE,
    "add_prefix_space": Opt(Bool(), False),
    "use_regex": Opt(Bool(), True),
    "behavior": Opt(Maybe(Str(64))),
    "invert": Opt(Bool(), False),
    "pattern": Opt(Maybe(Obj({"Regex": Opt(Str(1 << 16), keep_absent=True)}))),
    "individual_digits": Opt(Bool(), False),
}
_SPECIAL = Obj({"SpecialToken": Opt(Obj({"id": Str(256)}), keep_absent=True)})
_POST_STEP = {"type": _TYPE, "single": Opt(Maybe(List(_SPECIAL, max_len=64)))}
HF_TOKENIZER = Obj(
    {
        "model": Obj(
            {
                "type": _TYPE,
                "vocab": Opt(Map(Int(0, MAX_TOKEN_ID), key=Str(1024), max_len=MAX_TOKEN_ID), {}),
                "merges": Opt(
                    List(Either((Str(2048), List(Str(1024), max_len=2, min_len=2))), 1 << 23), []
                ),
                "byte_fallback": Opt(Maybe(Bool()), False),
            }
        ),
        "added_tokens": Opt(
            Maybe(
                List(
                    Obj(
                        {
                            "content": Str(1024),
                            "id": Int(0, MAX_TOKEN_ID),
                            "special": Opt(Bool(), True),
                        }
                    ),
                    1 << 20,
                )
            ),
            [],
        ),
        "normalizer": Opt(
            Maybe(Obj({"type": _TYPE, "normalizers": Opt(List(Obj({"type": _TYPE}), 64), [])}))
        ),
        "pre_tokenizer": Opt(
            Maybe(Obj({**_PRE_STEP, "pretokenizers": Opt(List(Obj(_PRE_STEP), 64), [])}))
        ),
        "decoder": Opt(
            Maybe(Obj({"type": _TYPE, "decoders": Opt(List(Obj({"type": _TYPE}), 64), [])}))
        ),
        "post_processor": Opt(
            Maybe(Obj({**_POST_STEP, "processors": Opt(List(Obj(_POST_STEP), 64), [])}))
        ),
    }
)
_TOKEN_NAME = Opt(Maybe(Either((Str(256), Obj({"content": Str(256)})))))
TOKENIZER_CONFIG = Obj(
    {
        "bos_token": _TOKEN_NAME,
        "eos_token": _TOKEN_NAME,
        "unk_token": _TOKEN_NAME,
        "pad_token": _TOKEN_NAME,
        "additional_special_tokens": Opt(
            Maybe(List(Either((Str(256), Obj({"content": Str(256)}))), max_len=1 << 16))
        ),
        "add_bos_token": Opt(Maybe(Bool())),
        "chat_template": Opt(
            Maybe(
                Either(
                    (
                        Str(1 << 20),
                        List(Obj({"name": Str(256), "template": Str(1 << 20)}), max_len=64),
                    )
                )
            )
        ),
    }
)

# The hub's file listing, {endpoint}/api/models/{repo}/tree/{revision} (checkpoints/download.py).
HUB_LISTING = List(
    Obj(
        {
            "type": Str(32),
            "path": Str(1024),
            "size": Opt(Int(0, 2**50), keep_absent=True),
            "lfs": Opt(Maybe(Obj({"size": Int(0, 2**50), "oid": Opt(Maybe(Str(128)))}))),
        }
    ),
    max_len=1 << 16,
)

# tools/machine.py's cache of this machine's measured peaks.
MACHINE_CACHE = Obj(
    {
        "peaks": Map(
            Obj(
                {
                    "matmul_flops": Float(0, 1e18, open_lo=True),
                    "memory_bandwidth": Float(0, 1e16, open_lo=True),
                    "description": Opt(Str(1024), ""),
                    "threads": Opt(Int(0, 4096), 0),
                    "key": Opt(Str(1024), ""),
                    "others_cores": Opt(Float(0, 4096), 0.0),
                }
            ),
            max_len=1024,
        )
    }
)
