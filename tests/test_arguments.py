"""The argument check of the public API (llama_np/arguments.py and its callers).

Every public function refuses a wrong argument with ArgumentError naming the parameter, before
any work: a hypothesis test feeds each argument of each function values of the wrong type and
out of range. NumPy scalars (np.int64 from argmax arithmetic, np.float32 from an array) and
integer arrays are accepted wherever Python numbers and lists are.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from util import random_model, small_config

import llama_np
from llama_np import (
    ArgumentError,
    GenerationStats,
    KVCache,
    LlamaConfig,
    Model,
    SamplingParams,
    generate,
    generate_batch,
    generate_batch_stream,
    generate_text,
    kernels,
    load_tokenizer,
    sample,
)
from llama_np import arguments as args
from llama_np.chat import Chat, make_chat_format
from llama_np.chat_template import ChatTemplate, check_messages
from llama_np.engine import Engine
from llama_np.hooks import Recorder
from llama_np.limits import parse_bytes
from llama_np.tools.hardware import PRESETS, Hardware
from llama_np.tools.memory import critical_batch, estimate, memory_report, weight_bytes
from llama_np.tools.random_model import random_model as tools_random_model

TOKENIZERS = Path(__file__).parent / "data" / "tokenizers"
# Writes content as the templates of real models do: text, each text part, or a tool's JSON.
TEMPLATE = (
    "{% for m in messages %}{{ m.role }}: "
    "{% if m.content is string or m.content is none or m.content is number %}{{ m.content }}"
    "{% elif m.content is mapping %}{{ m.content | tojson }}"
    "{% else %}{% for part in m.content %}{{ part.text }}{% endfor %}{% endif %}{{ '\\n' }}"
    "{% endfor %}"
)

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


# ---------------------------------------------------------------- every public function


@dataclass(frozen=True)
class Int:
    lo: int | None = None
    hi: int | None = None
    optional: bool = False

    def accepts(self, v) -> bool:
        if v is None:
            return self.optional
        if isinstance(v, np.ndarray) and v.ndim == 0:  # a 0-d array is the number it holds
            v = v[()]
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            return False
        return (self.lo is None or v >= self.lo) and (self.hi is None or v <= self.hi)


@dataclass(frozen=True)
class Real:
    lo: float
    hi: float = math.inf
    open_lo: bool = False
    zero: bool = False  # 0 allowed besides [lo, hi] (temperature)

    def accepts(self, v) -> bool:
        if isinstance(v, np.ndarray) and v.ndim == 0:  # a 0-d array is the number it holds
            v = v[()]
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.number)):
            return False
        try:
            x = float(v)
        except OverflowError:
            return False
        in_range = (x > self.lo if self.open_lo else x >= self.lo) and x <= self.hi
        return math.isfinite(x) and (in_range or (self.zero and x == 0))


@dataclass(frozen=True)
class Flag:
    optional: bool = False

    def accepts(self, v) -> bool:
        return isinstance(v, (bool, np.bool_)) or (v is None and self.optional)


@dataclass(frozen=True)
class Str:
    """Any string passes the type check (what it means is checked later, with other errors:
    an unknown hook point or dtype name, a missing file)."""

    optional: bool = False

    def accepts(self, v) -> bool:
        return isinstance(v, str) or (v is None and self.optional)


@dataclass(frozen=True)
class Dtype:
    def accepts(self, v) -> bool:
        try:
            return isinstance(v, (str, type)) and np.dtype(v) in (np.float32, np.float16)
        except (TypeError, ValueError):
            return False


@dataclass(frozen=True)
class Bytes:
    """A KV memory size: None, or bytes (an int, or text such as "1MiB") for one block or more."""

    at_least: int

    def accepts(self, v) -> bool:
        if v is None:
            return True
        # NumPy integers are byte counts too (the API takes them wherever it takes ints)
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer, str)):
            return False
        try:
            return parse_bytes(v) >= self.at_least
        except ArgumentError:
            return False


@dataclass(frozen=True)
class Instance:
    cls: type
    optional: bool = False

    def accepts(self, v) -> bool:
        return isinstance(v, self.cls) or (v is None and self.optional)


@dataclass(frozen=True)
class Strings:
    def accepts(self, v) -> bool:
        if isinstance(v, str):
            return bool(v)
        return isinstance(v, (list, tuple, set)) and all(isinstance(s, str) and s for s in v)


@dataclass(frozen=True)
class TokenIds:
    vocab_size: int
    min_len: int = 1
    optional: bool = False
    text: bool = False  # a prompt: text too
    sets: bool = False  # stop ids: any collection

    def accepts(self, v) -> bool:
        if v is None:
            return self.optional
        if isinstance(v, str):
            return self.text
        if isinstance(v, np.ndarray):
            v = v.tolist() if v.ndim == 1 and v.dtype.kind in "iu" else None
        kinds = (list, tuple, set) if self.sets else (list, tuple)
        if not isinstance(v, kinds) or len(v) < self.min_len:
            return False
        return all(Int(0, self.vocab_size - 1).accepts(t) for t in v)


@dataclass(frozen=True)
class Prompts:
    vocab_size: int

    def accepts(self, v) -> bool:
        v = list(v) if isinstance(v, np.ndarray) and v.ndim else v
        prompt = TokenIds(self.vocab_size, text=True)
        return isinstance(v, (list, tuple)) and len(v) > 0 and all(map(prompt.accepts, v))


@dataclass(frozen=True)
class Messages:
    def accepts(self, v) -> bool:
        return isinstance(v, (list, tuple)) and not v  # the values tried hold no dicts


@dataclass(frozen=True)
class Function:
    def accepts(self, v) -> bool:
        return callable(v)


@dataclass(frozen=True)
class Case:
    """`call(world, value)` with a value that `kind` does not accept raises ArgumentError
    whose message names `name`."""

    id: str
    call: Callable
    kind: object
    name: str


class World:
    """What the calls run on: stories260K, a small random model and its cache, one tokenizer
    of each kind, a chat template and a chat."""

    def __init__(self, stories: Model) -> None:
        self.stories = stories
        self.small = random_model(small_config())  # 64 ids, context 64
        self.cache = self.small.new_cache(8)
        self.tokenizers = {
            "llama2c": stories.tokenizer,
            "sentencepiece": load_tokenizer(TOKENIZERS / "llama2" / "tokenizer.model"),
            "tiktoken": load_tokenizer(TOKENIZERS / "hf_smollm"),
        }
        self.template = ChatTemplate(self.tokenizers["tiktoken"], TEMPLATE, "test template")
        self.llama2_format = make_chat_format(self.tokenizers["sentencepiece"], "llama2")
        self.chat = Chat(stories, "llama2", max_seq_len=64)
        self.logits = np.zeros(512, dtype=np.float32)


@dataclass(frozen=True)
class Of:
    """A fixed argument taken from the world: Of(lambda w: w.cache)."""

    get: Callable[[World], object]


def calls(function: Callable, /, **fixed) -> Callable[[str], Callable]:
    """For each parameter name, a call of function(world, **fixed) with that parameter set to
    the value tried; a fixed value Of(get) is get(world)."""

    def make(param: str) -> Callable:
        def run(world: World, value):
            kwargs = {k: v.get(world) if isinstance(v, Of) else v for k, v in fixed.items()}
            return function(world, **{**kwargs, param: value})

        return run

    return make


def _cases() -> list[Case]:
    cases: list[Case] = []

    def add(prefix: str, make: Callable, kinds: dict, names: dict | None = None) -> None:
        for param, kind in kinds.items():
            name = (names or {}).get(param, param)
            cases.append(Case(f"{prefix}-{param}", make(param), kind, name))

    V, S = 512, 512  # stories260K: vocabulary and context
    sampling = {
        "temperature": Real(1e-6, zero=True),
        "top_k": Int(0),
        "top_p": Real(0, 1, open_lo=True),
        "min_p": Real(0, 1),
        "repetition_penalty": Real(1e-6, 1e6),
        "repeat_last_n": Int(0),
    }
    generation = {
        "max_new_tokens": Int(0),
        "seed": Int(0, optional=True),
        "stop": Strings(),
        "stats": Instance(GenerationStats, optional=True),
        "stop_ids": TokenIds(V, 0, optional=True, sets=True),
        "special": Flag(),
        "sampling": Instance(SamplingParams, optional=True),
        **sampling,
    }

    def run_generate(w, **kwargs):
        return generate(w.stories, **kwargs)

    add(
        "generate",
        calls(run_generate, prompt="Hi", max_new_tokens=2),
        {
            "prompt": TokenIds(V, text=True),
            **generation,
            "cache": Instance(KVCache, optional=True),
            "truncate_prompt": Flag(),
            "prefill_chunk": Int(1, optional=True),
        },
    )
    add(
        "generate_text",
        calls(lambda w, **kw: generate_text(w.stories, **kw), prompt="Hi", max_new_tokens=2),
        {"prompt": TokenIds(V, text=True), "max_new_tokens": Int(0), "top_p": sampling["top_p"]},
    )
    batch = {"prompts": Prompts(V), **generation}
    add(
        "generate_batch",
        calls(
            lambda w, **kw: generate_batch(w.stories, **kw),
            prompts=["Hi", [1, 2]],
            max_new_tokens=2,
        ),
        batch,
    )
    add(
        "generate_batch_stream",
        calls(
            lambda w, **kw: list(generate_batch_stream(w.stories, **kw)),
            prompts=["Hi", [1, 2]],
            max_new_tokens=2,
        ),
        batch,
    )
    add(
        "Engine",
        calls(lambda w, **kw: Engine(w.stories, **kw), kv_memory="1MiB"),
        {
            "kv_memory": Bytes(w_block := 2 * 5 * 4 * 16 * 8 * 4),  # stories260K's 16 positions
            "block_size": Int(1, 1024),
            "max_seqs": Int(1),
            "max_batch_tokens": Int(1),
            "chunked_prefill": Flag(),
            "prefix_caching": Flag(),
            "kv_dtype": Dtype(),
        },
    )
    assert w_block == llama_np.load().config.kv_cache_bytes(16)
    request = {k: v for k, v in generation.items() if k != "stats"}
    add(
        "Engine.add_request",
        calls(
            lambda w, **kw: Engine(w.stories, kv_memory="1MiB").add_request(**kw),
            prompt="Hi",
            max_new_tokens=2,
        ),
        {"prompt": TokenIds(V, text=True), **request, "logprobs": Int(0, 20, optional=True)},
    )
    add(
        "Engine.generate",
        calls(
            lambda w, **kw: Engine(w.stories, kv_memory="1MiB").generate(**kw),
            prompts=["Hi", [1, 2]],
            max_new_tokens=2,
        ),
        {"prompts": Prompts(V), "max_new_tokens": Int(0)},
    )
    add("SamplingParams", calls(lambda w, **kw: SamplingParams(**kw)), sampling)
    add(
        "sample",
        calls(
            lambda w, **kw: sample(w.logits, **kw),
            params=SamplingParams(),
            rng=np.random.default_rng(0),
        ),
        {"params": Instance(SamplingParams), "rng": Instance(np.random.Generator)},
    )

    # the model (small random one: 64 ids, context 64, a cache of 8 positions, batch 1)
    def method(method: str, /, **fixed) -> Callable[[str], Callable]:
        return calls(lambda w, **kw: getattr(w.small, method)(**kw), **fixed)

    cache = Of(lambda w: w.cache)

    add(
        "new_cache",
        method("new_cache"),
        {"max_seq_len": Int(1, 64, optional=True), "batch_size": Int(1), "dtype": Dtype()},
    )
    add(
        "prefill",
        method("prefill", tokens=[1, 2], cache=cache),
        {
            "tokens": TokenIds(64),
            "cache": Instance(KVCache),
            "all_logits": Flag(),
            "seq": Int(0, 0),
        },
    )
    add(
        "decode",
        method("decode", token=1, cache=cache),
        {"token": Int(0, 63), "cache": Instance(KVCache)},
    )
    add(
        "decode_batch",
        method("decode_batch", tokens=[1], cache=cache),
        {"tokens": TokenIds(64), "cache": Instance(KVCache)},
    )
    add("add_hook", method("add_hook", name="logits", fn=print), {"name": Str(), "fn": Function()})
    add("Recorder", calls(lambda w, **kw: Recorder(w.small, **kw)), {"patterns": Strings()})

    # loading
    add(
        "load",
        calls(lambda w, **kw: llama_np.load(**kw)),
        {"path": Str(), "tokenizer": Str(optional=True), "weights_dtype": Str(optional=True)},
    )
    add(
        "load_tokenizer",
        calls(lambda w, **kw: load_tokenizer(**kw), path=TOKENIZERS / "llama2" / "tokenizer.model"),
        {"path": Str(), "vocab_size": Int(1, optional=True)},
    )

    # every kind of tokenizer
    for kind, vocab in (("llama2c", 512), ("sentencepiece", 32000), ("tiktoken", 49152)):

        def tokenizer(method: str, kind: str = kind, /, **fixed) -> Callable[[str], Callable]:
            return calls(lambda w, **kw: getattr(w.tokenizers[kind], method)(**kw), **fixed)

        eos = Flag(optional=kind != "sentencepiece")  # None: the tokenizer's own choice
        encode = {"text": Str(), "bos": Flag(), "eos": eos, "allow_special": Flag()}
        add(f"{kind}.encode", tokenizer("encode", text="Hi"), encode)
        add(
            f"{kind}.decode",
            tokenizer("decode", ids=[1]),
            {"ids": TokenIds(vocab, 0), "skip_special": Flag()},
        )
        add(
            f"{kind}.token_bytes",
            tokenizer("token_bytes", token=1),
            {"token": Int(0, vocab - 1), "special": Flag()},
        )
        add(f"{kind}.min_tokens", tokenizer("min_tokens"), {"text": Str()})
        add(f"{kind}.token_id", tokenizer("token_id"), {"name": Str()})

    # chat
    add(
        "Chat",
        calls(lambda w, **kw: Chat(**kw), model=Of(lambda w: w.stories), chat_format="llama2"),
        {
            "model": Instance(Model),
            "chat_format": Str(optional=True),
            "system": Str(optional=True),
            "max_seq_len": Int(1, S, optional=True),
        },
    )
    add(
        "Chat.send",
        calls(lambda w, **kw: list(w.chat.send(**kw)), user="Hi", max_new_tokens=1),
        {
            "user": Str(),
            "max_new_tokens": Int(0),
            "stats": Instance(GenerationStats, optional=True),
            "top_p": sampling["top_p"],
        },
    )
    hello = [{"role": "user", "content": "Hi"}]
    add(
        "ChatTemplate.render",
        calls(lambda w, **kw: w.template.render(**kw), messages=hello),
        {
            "messages": Messages(),
            "add_generation_prompt": Flag(),
            "now": Instance(datetime, optional=True),
        },
    )
    add(
        "ChatTemplate.encode",
        calls(lambda w, **kw: w.template.encode(**kw)),
        {"messages": Messages()},
    )
    add(
        "ChatFormat.dialog",
        calls(lambda w, **kw: w.llama2_format.dialog(**kw)),
        {"messages": Messages()},
    )
    add(
        "ChatTemplate",
        calls(lambda w, **kw: ChatTemplate(w.tokenizers["tiktoken"], **kw)),
        {"text": Str(optional=True), "source": Str(optional=True)},
    )

    # kernels and tools
    add(
        "kernels.use",
        calls(lambda w, **kw: kernels.use(**kw)),
        {"name": Str(optional=True)},
        {"name": "kernels"},
    )
    config, hardware = small_config(), PRESETS[next(iter(PRESETS))]
    flags = {
        "context": "--context",
        "batch": "--batch",
        "dtype": "--dtype",
        "kv_dtype": "--kv-dtype",
    }
    add(
        "memory_report",
        calls(lambda w, **kw: memory_report(**kw), config=config),
        {
            "config": Instance(LlamaConfig),
            "context": Int(1, optional=True),
            "batch": Int(1),
            "dtype": Str(),
            "kv_dtype": Str(),
        },
        flags,
    )
    add(
        "weight_bytes",
        calls(lambda w, **kw: weight_bytes(**kw), config=config),
        {"config": Instance(LlamaConfig), "dtype": Str()},
        flags,
    )
    add(
        "estimate",
        calls(lambda w, **kw: estimate(**kw), config=config, hardware=hardware),
        {"hardware": Instance(Hardware), "prompt_tokens": Int(1, optional=True)},
        {"prompt_tokens": "--prompt-tokens"},
    )
    add(
        "critical_batch",
        calls(lambda w, **kw: critical_batch(**kw), config=config, hardware=hardware, position=0),
        {"hardware": Instance(Hardware), "position": Int(0), "dtype": Str(), "kv_dtype": Str()},
        flags,
    )
    add(
        "random_model",
        calls(lambda w, **kw: tools_random_model(**kw), config=config),
        {
            "config": Instance(LlamaConfig),
            "weights_dtype": Str(),
            "seed": Int(0),
            "std": Real(0, open_lo=True),
        },
    )
    return cases


CASES = _cases()

# Values of the wrong type, or out of range, for most parameters.
WRONG = st.one_of(
    st.sampled_from(
        [
            *(None, True, False, np.bool_(True), object(), b"ab", {}, (), [], "", "0.7"),
            *(-1, 0, 1, 10**30, -(10**30), 2**63, np.int64(-1), np.int32(70000), np.uint64(2**63)),
            *(1.5, 2.0, -0.5, math.nan, math.inf, -math.inf, np.float32("nan"), np.float64(1e300)),
            *([None], ["a"], [1, "a"], [True], [1.5], [-1], [10**6], {"a": 1}, {1, 2}),
            *(np.array([1.5]), np.array([[1, 2]]), np.array([-1]), np.array(1.5), lambda: 0),
        ]
    ),
    st.integers(),
    st.floats(),
    st.text(max_size=6),
    st.lists(st.integers(-5, 10**6), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@pytest.fixture(scope="module")
def world(stories260k) -> World:
    return World(stories260k)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much],
)
@given(value=WRONG)
def test_every_public_argument_refuses_wrong_values(world, case, value):
    assume(not case.kind.accepts(value))
    with pytest.raises(ArgumentError) as e:
        case.call(world, value)
    assert case.name in str(e.value), str(e.value)


def test_the_table_covers_the_public_api():
    """Each function of `import llama_np` that takes arguments is in the table."""
    covered = {c.id.split("-")[0] for c in CASES}
    public = {"generate", "generate_text", "generate_batch", "generate_batch_stream", "load"}
    public |= {"load_tokenizer", "SamplingParams", "sample", "new_cache", "prefill", "decode"}
    public |= {"decode_batch", "add_hook", "Chat", "Chat.send", "ChatTemplate.render"}
    public |= {"Engine", "Engine.add_request", "Engine.generate"}
    assert public <= covered, public - covered


# ---------------------------------------------------------------- NumPy values are welcome


def test_numpy_scalars_are_accepted_everywhere(world):
    stories = world.stories
    greedy = generate_text(stories, "Once upon a time", 6, temperature=0)
    argmax = np.argmax(np.zeros(3))  # np.int64 0
    assert generate_text(stories, "Once upon a time", argmax + 6, temperature=0) == greedy
    assert generate_text(stories, "Once upon a time", np.int32(6), temperature=np.float32(0.0),
                         top_k=np.int64(40), seed=np.uint32(1)) == greedy  # fmt: skip
    prompt = stories.tokenizer.encode("Once upon a time")
    assert generate_text(stories, np.array(prompt, dtype=np.int32), 6, temperature=0) == greedy
    assert generate_text(stories, [np.int64(t) for t in prompt], 6, temperature=0) == greedy
    assert generate_batch(stories, np.array([prompt, prompt]), 6, temperature=0) == [greedy] * 2

    params = SamplingParams(np.float32(0.5), np.int64(40), np.float64(0.9), np.float32(0.0))
    assert params == SamplingParams(0.5, 40, 0.9, 0.0)
    assert hash(params) == hash(SamplingParams(0.5, 40, 0.9, 0.0))
    assert type(params.temperature) is float and type(params.top_k) is int

    model = world.small
    cache = model.new_cache(np.int64(8), np.int32(1), "float16")
    reference = model.prefill([1, 2, 3], model.new_cache(8, 1, np.float16))
    np.testing.assert_array_equal(model.prefill([np.int32(1), np.int64(2), 3], cache), reference)
    model.decode(np.int32(4), cache)
    model.prefill(np.array([5], dtype=np.uint8), cache, seq=np.int64(0))
    model.decode_batch(np.array([6]), cache)
    assert cache.lengths == [6]

    for tokenizer in world.tokenizers.values():
        ids = tokenizer.encode("Hi there", bos=np.bool_(True))
        assert tokenizer.decode(np.array(ids)) == tokenizer.decode(ids)
        assert tokenizer.token_bytes(np.int64(ids[-1])) == tokenizer.token_bytes(ids[-1])


def test_integral_floats_and_bools_are_not_counts(world):
    with pytest.raises(ArgumentError, match=r"max_new_tokens must be an integer >= 0, got 3.0"):
        generate(world.stories, "Hi", 3.0)
    with pytest.raises(ArgumentError, match="max_new_tokens must be an integer >= 0, got True"):
        generate(world.stories, "Hi", True)
    with pytest.raises(ArgumentError, match="prompt must be text or a list of token ids"):
        generate(world.stories, [1, True])


# ---------------------------------------------------------------- caches of other models


def test_a_cache_of_another_model_is_refused_by_name(world):
    stories, small = world.stories, world.small
    other = small.new_cache(8)  # 2 layers, 2 KV heads of dim 8; stories260K has 5, 4, 8
    for call in (
        lambda: stories.prefill([1, 2], other),
        lambda: stories.decode(1, other),
        lambda: stories.decode_batch([1], other),
        lambda: generate(stories, "Hi", 2, cache=other),
    ):
        with pytest.raises(ArgumentError, match=r"a KV cache of this model: \(L, KVH, HD\) = \(5,"):
            call()
    assert other.lengths == [0]
    too_long = KVCache(small.config.replace(max_seq_len=128), 128)  # past RoPE's positions
    with pytest.raises(ArgumentError, match=r"at most 64 positions.*128 positions"):
        small.prefill([1], too_long)
    float64 = KVCache(small.config, 8, 1, np.float64)  # made by hand: attention expects f32/f16
    with pytest.raises(ArgumentError, match="float64"):
        small.decode(1, float64)
    small.prefill([1], small.new_cache(8, 1, np.float16))  # the same model's own kinds pass
    with pytest.raises(ArgumentError, match=r"cache must be a KVCache \(model.new_cache\(\)\)"):
        small.prefill([1], np.zeros((2, 1, 2, 8, 8)))


def test_seq_must_be_a_row_of_the_cache(world):
    cache = world.small.new_cache(8, batch_size=2)
    world.small.prefill([1], cache, seq=1)
    with pytest.raises(ArgumentError, match=r"seq must be an integer in 0\.\.1, got 2"):
        world.small.prefill([1], cache, seq=2)
    with pytest.raises(ArgumentError, match=r"seq must be an integer in 0\.\.1, got -1"):
        world.small.prefill([1], cache, seq=-1)  # a negative index would write row 1
    assert cache.lengths == [0, 1]


# ---------------------------------------------------------------- chat messages


@pytest.mark.parametrize(
    "messages, message",
    [
        ([{"content": "x"}], r"messages\[0\]\['role'\] must be a string, got nothing"),
        ([{"role": 5, "content": "x"}], r"messages\[0\]\['role'\] must be a string, got 5"),
        (["hello"], r"messages\[0\] must be a message: a dict"),
        ([{"role": "user", "content": b"x"}], r"messages\[0\]\['content'\] must be a string, "),
        ([{"role": "user", "content": {1, 2}}], r"messages\[0\]\['content'\] must be a string, "),
        ({"role": "user", "content": "x"}, r"messages must be a list of messages"),
        ("hello", "messages must be a list of messages"),
        (None, "messages must be a list of messages"),
    ],
)
def test_malformed_messages_are_refused(world, messages, message):
    with pytest.raises(ArgumentError, match=message):
        world.template.render(messages)
    with pytest.raises(ArgumentError, match=message):
        world.template.encode(messages)


def test_messages_are_as_permissive_as_transformers(world):
    """What transformers' apply_chat_template passes to a template, rendered as it would."""
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Hi <|im_end|>"}]},  # parts
        {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {}}}]},
        {"role": "assistant", "content": None},
        {"role": "tool", "content": {"temperature": 22}, "name": "weather"},  # a JSON result
        {"role": "tool", "content": 22},
    ]
    assert check_messages(messages) == messages
    text = world.template.render(messages)
    assert text.splitlines() == [
        "user: Hi <|im_end|>",
        "assistant: ",  # the template writes no tool calls
        "assistant: None",
        'tool: {"temperature": 22}',
        "tool: 22",
    ]
    tokens = world.template.encode(messages)  # typed special-token text stays text in parts
    assert world.tokenizers["tiktoken"].token_id("<|im_end|>") not in tokens


def test_builtin_formats_need_text_content(world):
    with pytest.raises(ArgumentError, match=r"messages\[1\]\['content'\] must be a string"):
        world.llama2_format.dialog([{"role": "system", "content": "x"}, {"role": "user"}])


def test_chat_send_checks_before_any_work(world, monkeypatch):
    chat = Chat(world.stories, "llama2", max_seq_len=64)

    def no_work(*args, **kwargs):
        raise AssertionError("the model ran before the arguments were checked")

    monkeypatch.setattr(world.stories, "prefill", no_work)
    for kwargs, message in [
        ({"user": 5}, "user must be a string, got 5"),
        ({"user": "Hi", "max_new_tokens": -1}, "max_new_tokens must be an integer >= 0"),
        ({"user": "Hi", "top_p": None}, r"top_p must be in \(0, 1\]"),
        ({"user": "Hi", "seed": "1"}, "seed must be an integer >= 0"),
        ({"user": "Hi", "temp": 0.5}, "temp is not an argument"),
    ]:
        with pytest.raises(ArgumentError, match=message):
            list(chat.send(**kwargs))
    assert chat.messages == [] and chat.cache.lengths == [0]


# ---------------------------------------------------------------- odds and ends


def test_unknown_sampling_keyword_is_named(world):
    with pytest.raises(ArgumentError, match="temp is not an argument of generation; sampling"):
        generate(world.stories, "Hi", 2, temp=0.5)


def test_stop_ids_accept_any_collection(world):
    text = generate_text(world.stories, "Once", 4, temperature=0)
    assert generate_text(world.stories, "Once", 4, temperature=0, stop_ids={0}) == text
    assert generate_text(world.stories, "Once", 4, temperature=0, stop_ids=np.array([0])) == text
    with pytest.raises(ArgumentError, match="stop_ids: token id 512 is outside the vocabulary"):
        generate(world.stories, "Once", 4, stop_ids=[512])


def test_a_path_may_start_with_the_home_directory():
    assert args.path("~/models/x.gguf", "path") == Path.home() / "models" / "x.gguf"
