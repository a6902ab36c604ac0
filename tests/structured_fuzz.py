"""Structure-aware fuzzing: well-formed inputs with the wrong types, nesting and sizes.

The byte fuzzer (bad_files.py) flips bytes, which mostly breaks a file's syntax. These
strategies start from a valid document of each input kind and edit it as JSON: a value
replaced by one of another type or an extreme number, a key deleted, a value buried under
dozens of brackets, an object given a duplicate key. Also: tiktoken rank files with extreme
ids, and command lines with edge values. The invariant is the same: only a LlamaNpError
escapes (argparse's usage error, SystemExit 2, on the command line).

KINDS maps each input kind to (strategy of inputs, function that feeds one to llama_np);
tests/test_structured_fuzz.py runs a few of each, `scripts/fuzz.py --structured` thousands.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

from bad_files import memory_limit
from checkpoint_writers import hf_config, write_hf, write_meta
from hypothesis import strategies as st
from util import random_tensors

from llama_np import LlamaConfig, generate_text, load, load_tokenizer
from llama_np.checkpoints import download as dl
from llama_np.cli import main
from llama_np.tools import machine

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "tokenizers"
TOK512 = REPO / "weights" / "stories260K" / "tok512.bin"
TINY = LlamaConfig(
    dim=16, n_layers=1, n_heads=2, n_kv_heads=1, hidden_dim=32, vocab_size=512, max_seq_len=32
)
META_TINY = TINY.replace(hidden_dim=64)  # Meta's MLP formula for dim 16, multiple_of 32

EDGE_NUMBERS = [0, -1, 1, 2, 8.0, 8.5, -0.0, 1e-45, 1e308, 2**31 - 1, 2**31, 2**32 - 1, 2**63,
                -(2**63), 10**30, float("inf"), float("-inf")]  # fmt: skip
SCALARS = (
    st.none()
    | st.booleans()
    | st.sampled_from(EDGE_NUMBERS)
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["false", "true", "8", "llama3", "", "..", "sub/x.safetensors", "\x00"])
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)


# ---------------------------------------------------------------- editing a document


def _paths(doc, prefix=(), limit: int = 12) -> list[tuple]:
    """Paths (tuples of keys / indices) to the values of `doc`, a few per container."""
    out = []
    if isinstance(doc, dict):
        items = list(doc.items())[:limit]
    elif isinstance(doc, list):
        items = list(enumerate(doc))[:limit]
    else:
        return out
    for key, value in items:
        out.append((*prefix, key))
        out += _paths(value, (*prefix, key), limit)
    return out


def _get(doc, path):
    for key in path:
        doc = doc[key]
    return doc


@st.composite
def edited_json(draw, base) -> bytes:
    """`base` (JSON-able) with 1-3 structural edits, serialized (NaN/Infinity allowed)."""
    doc = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, key = _get(doc, path[:-1]), path[-1]
        op = draw(st.sampled_from(["replace", "replace", "delete", "bury", "edge", "grow"]))
        if op == "replace":
            parent[key] = draw(JSON_VALUES)
        elif op == "edge":
            parent[key] = draw(st.sampled_from(EDGE_NUMBERS))
        elif op == "delete":
            del parent[key]
        elif op == "bury":  # deeper than any real file, sometimes past the parser's limit
            for _ in range(draw(st.integers(1, 60))):
                parent[key] = [parent[key]]
        elif isinstance(parent[key], str | list) and parent[key]:
            # grow a string (to at most ~200k characters) or a list (~10k items)
            cap = 200_000 if isinstance(parent[key], str) else 10_000
            parent[key] = parent[key] * draw(st.integers(1, max(1, cap // len(parent[key]))))
    text = json.dumps(doc)
    if draw(st.integers(0, 9)) == 0 and text.startswith("{") and len(text) > 2:
        first_key = re.match(r'\{("(?:[^"\\]|\\.)*": [^,{}\[\]]*)[,}]', text)
        if first_key:  # a duplicate of the first key
            text = "{" + first_key.group(1) + ", " + text[1:]
    return text.encode()


# ---------------------------------------------------------------- inputs of each kind


class Fixtures:
    """Valid directories, made once, that each example edits one file of."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="llama_np_fuzz_"))
        tensors = random_tensors(TINY)
        self.hf = write_hf(self.tmp / "hf", TINY, tensors)
        self.sharded = write_hf(self.tmp / "sharded", TINY, tensors, n_shards=2)
        self.meta = write_meta(self.tmp / "meta", META_TINY, random_tensors(META_TINY))
        st_bytes = (self.hf / "model.safetensors").read_bytes()
        n = int.from_bytes(st_bytes[:8], "little")
        self.safetensors_header = json.loads(st_bytes[8 : 8 + n])
        self.safetensors_data = st_bytes[8 + n :]
        self.tok = self.tmp / "tok"
        self.tok.mkdir()
        self.gpt2 = json.loads((DATA / "hf_gpt2" / "tokenizer.json").read_text())
        self.gpt2["added_tokens"] = [{"id": 420, "content": "<|endoftext|>", "special": True}]

    def originals(self) -> dict[str, object]:
        return {
            "config.json": hf_config(TINY),
            "generation_config.json": {"eos_token_id": [2, 7], "bos_token_id": 1},
            "params.json": json.loads((self.meta / "params.json").read_text()),
            "safetensors header": self.safetensors_header,
            "safetensors index": json.loads(
                (self.sharded / "model.safetensors.index.json").read_text()
            ),
            "tokenizer.json": self.gpt2,
            "tokenizer_config.json": {
                "bos_token": {"content": "<|endoftext|>"},
                "eos_token": "<|endoftext|>",
                "add_bos_token": False,
                "chat_template": [{"name": "default", "template": "{{ messages }}"}],
            },
            "hub listing": [
                {"type": "file", "path": "config.json", "size": 10},
                {
                    "type": "file",
                    "path": "model.safetensors",
                    "size": 134,
                    "lfs": {"size": 4000, "oid": "0" * 64},
                },
                {"type": "directory", "path": "original", "size": 0},
            ],
            "machine cache": {
                "peaks": {
                    machine.machine_key(machine.blas().threads): {
                        "matmul_flops": 1e11,
                        "memory_bandwidth": 1e10,
                        "description": "x",
                    }
                }
            },
        }


def _generate(model) -> None:
    generate_text(model, "Once upon a time", 2, temperature=0)


def _with_file(directory: Path, name: str, data: bytes, then: Callable[[], None]) -> None:
    """Write `data` as directory/name, run `then`, put the original back."""
    path = directory / name
    original = path.read_bytes() if path.exists() else None
    path.write_bytes(data)
    try:
        then()
    finally:
        if original is None:
            path.unlink()
        else:
            path.write_bytes(original)


def feeders(fx: Fixtures) -> dict[str, Callable[[bytes], None]]:
    """input kind -> a function that feeds bytes of that kind to llama_np."""

    def load_dir(directory: Path) -> Callable[[], None]:
        def run() -> None:
            with memory_limit(64 * 2**20):
                _generate(load(directory, tokenizer=TOK512))

        return run

    def tokenizer_json(data: bytes) -> None:
        _with_file(fx.tok, "tokenizer.json", data, use_tokenizer)

    def tokenizer_config(data: bytes) -> None:
        (fx.tok / "tokenizer.json").write_text(json.dumps(fx.gpt2))
        _with_file(fx.tok, "tokenizer_config.json", data, use_tokenizer)

    def use_tokenizer() -> None:
        tok = load_tokenizer(fx.tok / "tokenizer.json")
        tok.decode(tok.encode("Hello, wörld! 🦙 <|endoftext|>", allow_special=True))

    def hub_listing(data: bytes) -> None:
        hub = dl.Hub("http://127.0.0.1:9", "org/x", "main", None, dl.Budget(5, None, None, 0), True)
        saved = dl._open
        dl._open = lambda *args: io.BytesIO(data)
        try:
            hub.list_files()
        finally:
            dl._open = saved

    def machine_cache(data: bytes) -> None:
        cache = fx.tmp / "machine.json"
        cache.write_bytes(data)
        stub = machine.MachinePeaks(1.0, 1.0, "stub")
        saved = machine.CACHE_FILE, machine.measure
        machine.CACHE_FILE, machine.measure = cache, lambda **kw: stub
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                peaks = machine.peaks()
            assert peaks.matmul_flops > 0 and peaks.memory_bandwidth > 0
        finally:
            machine.CACHE_FILE, machine.measure = saved

    def safetensors_header(data: bytes) -> None:
        blob = len(data).to_bytes(8, "little") + data + fx.safetensors_data
        _with_file(fx.hf, "model.safetensors", blob, load_dir(fx.hf))

    return {
        "config.json": lambda d: _with_file(fx.hf, "config.json", d, load_dir(fx.hf)),
        "generation_config.json": lambda d: _with_file(
            fx.hf, "generation_config.json", d, load_dir(fx.hf)
        ),
        "params.json": lambda d: _with_file(fx.meta, "params.json", d, load_dir(fx.meta)),
        "safetensors header": safetensors_header,
        "safetensors index": lambda d: _with_file(
            fx.sharded, "model.safetensors.index.json", d, load_dir(fx.sharded)
        ),
        "tokenizer.json": tokenizer_json,
        "tokenizer_config.json": tokenizer_config,
        "hub listing": hub_listing,
        "machine cache": machine_cache,
        "tiktoken ranks": lambda d: _with_file(fx.tok, "tokenizer.model", d, use_tiktoken(fx)),
    }


def use_tiktoken(fx: Fixtures) -> Callable[[], None]:
    def run() -> None:
        tok = load_tokenizer(fx.tok / "tokenizer.model")
        tok.decode(tok.encode("abc  ab"))

    return run


@st.composite
def tiktoken_ranks(draw) -> bytes:
    """A rank file of the 256 bytes, with a few lines given extreme ranks or broken."""
    import base64

    lines = [base64.b64encode(bytes([b])) + b" %d" % b for b in range(256)]
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, 255))
        rank = draw(st.sampled_from([-1, 256, 2**24, 2**31, 2**32 - 1, 2**64, 10**30, 0]))
        lines[i] = draw(
            st.sampled_from(
                [
                    base64.b64encode(bytes([i])) + b" %d" % rank,
                    base64.b64encode(bytes([i])) + b" %d %d" % (rank, rank),
                    b"%d" % rank,
                    base64.b64encode(b"ab") + b" " + str(rank).encode() * 3,
                ]
            )
        )
    return b"\n".join(lines) + b"\n"


def strategies(fx: Fixtures) -> dict[str, st.SearchStrategy[bytes]]:
    out = {kind: edited_json(base) for kind, base in fx.originals().items()}
    out["tiktoken ranks"] = tiktoken_ranks()
    return out


# ---------------------------------------------------------------- command lines

EDGE_ARGS = ["-1", "0", "1", "1e-45", "inf", "-inf", "nan", "1e309", "2147483648",
             "9223372036854775808", "0.5", "", "x", "\udcff", "-0"]  # fmt: skip
FLAGS = ["-n", "--temp", "--top-k", "--top-p", "--min-p", "--repeat-penalty", "-s"]


@st.composite
def command_lines(draw) -> list[str]:
    """A llama-np command line with edge values in its flags."""
    command = draw(st.sampled_from(["generate", "memory", "info"]))
    argv = [command]
    if command == "memory":
        argv.append(draw(st.sampled_from(["stories15M", "llama-3.1-8b", str(TOK512), "nope"])))
        flags = ["--context", "--batch", "--prompt-tokens", "--flops", "--bandwidth"]
        for flag in draw(st.lists(st.sampled_from(flags), max_size=3)):
            argv += [flag, draw(st.sampled_from(EDGE_ARGS))]
        return argv
    if command == "info":
        return argv
    argv += ["-p", draw(st.sampled_from(["Hi", "", "\udcff", "<s>", "x" * 20000, "🦙"]))]
    for flag in draw(st.lists(st.sampled_from(FLAGS), max_size=4)):
        value = draw(st.sampled_from(EDGE_ARGS))
        if flag == "-n" and value not in ("-1", "0", "1", "x", ""):
            value = "3"  # a long generation proves nothing more
        argv += [flag, value]
    return argv


def run_cli(argv: list[str]) -> int:
    """main(argv) with output swallowed; -> its exit status (argparse's SystemExit too)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    assert code in (0, 1, 2), (argv, code)
    return code
