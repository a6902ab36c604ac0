"""Writers of small valid files, mutations that break them, and the table of formats to fuzz.

Shared by the error tests, the fuzz tests and scripts/fuzz.py. The llama2.c writer follows
llama2.c's export.py (legacy_export, version1_export, version2_export) independently of our
loader, so a load of its output checks the loader against the format.
"""

from __future__ import annotations

import struct
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from checkpoint_writers import llama2c_bytes, write_hf, write_meta
from hypothesis import strategies as st
from util import random_tensors

from llama_np import LlamaConfig, generate_text, limits, load, load_tokenizer

REPO = Path(__file__).resolve().parents[1]
TOKENIZER_512 = REPO / "weights" / "stories260K" / "tok512.bin"  # a real llama2.c tokenizer

# Small enough that a fuzz example takes milliseconds; vocab 512 to match TOKENIZER_512.
FUZZ_CONFIG = LlamaConfig(
    dim=8, n_layers=2, n_heads=2, n_kv_heads=1, hidden_dim=16, vocab_size=512, max_seq_len=16
)
# Meta's params.json has no MLP width: its formula gives 32 for dim 8 (multiple_of 32).
META_FUZZ_CONFIG = FUZZ_CONFIG.replace(hidden_dim=32)


def tokenizer_bytes(pieces: list[bytes], scores: list[float]) -> bytes:
    """A llama2.c tokenizer.bin: max piece length, then (score, length, bytes) per piece."""
    out = struct.pack("<i", max(len(p) for p in pieces))
    for piece, score in zip(pieces, scores, strict=True):
        out += struct.pack("<fi", score, len(piece)) + piece
    return out


# ---------------------------------------------------------------- mutations

INTERESTING_INTS = [0, 1, -1, 2, 3, 7, 8, 16, 255, 256, 512, 65536, 2**30, 2**31 - 1, -(2**31)]


@st.composite
def mutations(draw, size: int) -> list[tuple]:
    """1-4 edits of a file of `size` bytes, biased towards its header where parsers branch."""
    ops = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["byte", "header_byte", "int", "truncate", "append"]))
        if kind in ("byte", "header_byte"):
            end = size if kind == "byte" else min(size, 300)
            ops.append(("set", draw(st.integers(0, end - 1)), draw(st.integers(0, 255))))
        elif kind == "int":
            value = draw(st.sampled_from(INTERESTING_INTS) | st.integers(-(2**31), 2**31 - 1))
            ops.append(("int", draw(st.integers(0, 12)) * 4, value))
        elif kind == "truncate":
            ops.append(("truncate", draw(st.integers(0, size - 1) | st.integers(0, 300))))
        else:
            ops.append(("append", draw(st.binary(min_size=1, max_size=64))))
    return ops


def apply_mutations(data: bytes, ops: list[tuple]) -> bytes:
    buf = bytearray(data)
    for op, a, *rest in ops:
        if op == "set" and a < len(buf):
            buf[a] = rest[0]
        elif op == "int" and a + 4 <= len(buf):
            buf[a : a + 4] = struct.pack("<i", rest[0])
        elif op == "truncate":
            del buf[a:]
        elif op == "append":
            buf += a
    return bytes(buf)


# ---------------------------------------------------------------- formats to fuzz


@contextmanager
def memory_limit(n_bytes: int) -> Iterator[None]:
    """Pretend only `n_bytes` of memory are available (limits.check_fits sees this).

    A mutated header can describe a model that fits in the machine's memory but is far
    larger than the file (a versioned llama2.c header's seq_len sizes the RoPE tables, not
    the file): fuzzing must not allocate gigabytes on a shared machine.
    """
    saved = limits.available_memory
    limits.available_memory = lambda: n_bytes
    try:
        yield
    finally:
        limits.available_memory = saved


def load_llama2c_checkpoint(data: bytes) -> None:
    """Load `data` as a checkpoint (with the matching tokenizer) and generate two tokens."""
    with tempfile.TemporaryDirectory() as tmp, memory_limit(64 * 2**20):
        path = Path(tmp) / "model.bin"
        path.write_bytes(data)
        model = load(path, tokenizer=TOKENIZER_512)
        generate_text(model, "a", 2, temperature=0)


def load_llama2c_tokenizer(data: bytes) -> None:
    """Load `data` as a tokenizer, with and without the model's vocab size, and use it."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokenizer.bin"
        path.write_bytes(data)
        for vocab_size in (None, 512):
            tok = load_tokenizer(path, vocab_size)
            tok.decode(tok.encode("Hello, wörld! 🦙"))


def load_safetensors_checkpoint(data: bytes) -> None:
    """Load `data` as the model.safetensors of an HF directory and generate two tokens."""
    with tempfile.TemporaryDirectory() as tmp, memory_limit(64 * 2**20):
        directory = write_hf(Path(tmp), FUZZ_CONFIG, random_tensors(FUZZ_CONFIG), "BF16")
        (directory / "model.safetensors").write_bytes(data)
        generate_text(load(directory, tokenizer=TOKENIZER_512), "a", 2, temperature=0)


def load_pth_checkpoint(data: bytes) -> None:
    """Load `data` as the consolidated.00.pth of a Meta directory and generate two tokens."""
    with tempfile.TemporaryDirectory() as tmp, memory_limit(64 * 2**20):
        directory = write_meta(Path(tmp), META_FUZZ_CONFIG, random_tensors(META_FUZZ_CONFIG))
        (directory / "consolidated.00.pth").write_bytes(data)
        generate_text(load(directory, tokenizer=TOKENIZER_512), "a", 2, temperature=0)


def _pth_members() -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        directory = write_meta(Path(tmp), META_FUZZ_CONFIG, random_tensors(META_FUZZ_CONFIG))
        with zipfile.ZipFile(directory / "consolidated.00.pth") as z:
            return {name: z.read(name) for name in z.namelist()}


def _pth_pickle() -> bytes:
    return next(blob for name, blob in _pth_members().items() if name.endswith("data.pkl"))


def load_pth_pickle(data: bytes) -> None:
    """Load `data` as the data.pkl of a valid .pth, repacked into a sound zip (so the damage
    reaches the unpickler, past the zip's CRC check), and generate two tokens."""
    members = _pth_members()
    members[next(n for n in members if n.endswith("data.pkl"))] = data
    with tempfile.TemporaryDirectory() as tmp, memory_limit(64 * 2**20):
        directory = write_meta(Path(tmp), META_FUZZ_CONFIG, random_tensors(META_FUZZ_CONFIG))
        with zipfile.ZipFile(directory / "consolidated.00.pth", "w") as z:
            for name, blob in members.items():
                z.writestr(name, blob)
        generate_text(load(directory, tokenizer=TOKENIZER_512), "a", 2, temperature=0)


def _file_of(writer, name: str, config: LlamaConfig) -> Callable[[], bytes]:
    def make() -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            return (writer(Path(tmp), config, random_tensors(config)) / name).read_bytes()

    return make


def _llama2c(version: int) -> Callable[[], bytes]:
    return lambda: llama2c_bytes(FUZZ_CONFIG, random_tensors(FUZZ_CONFIG), version)


# (name, make_valid_bytes, load_fn): every mutation of make_valid_bytes() must either load
# or raise a LlamaNpError. Add a format with one line.
FORMATS: list[tuple[str, Callable[[], bytes], Callable[[bytes], None]]] = [
    ("llama2c-legacy", _llama2c(0), load_llama2c_checkpoint),
    ("llama2c-v1", _llama2c(1), load_llama2c_checkpoint),
    ("llama2c-v2-q8_0", _llama2c(2), load_llama2c_checkpoint),
    ("llama2c-tokenizer", TOKENIZER_512.read_bytes, load_llama2c_tokenizer),
    (
        "safetensors",
        _file_of(write_hf, "model.safetensors", FUZZ_CONFIG),
        load_safetensors_checkpoint,
    ),
    (
        "meta-pth",
        _file_of(write_meta, "consolidated.00.pth", META_FUZZ_CONFIG),
        load_pth_checkpoint,
    ),
    ("meta-pth-pickle", _pth_pickle, load_pth_pickle),
]
