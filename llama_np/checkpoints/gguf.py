"""GGUF files (llama.cpp's format): a strict reader, and the loader of `llama` models.

Reader API (also used by the GGUF tokenizer):

    metadata, tensors = read_gguf(path)
        metadata: {key: value}: ints, floats, bools and strs as Python scalars, arrays of
                  strings as list[str], numeric arrays as NumPy arrays, arrays of arrays as lists
        tensors:  [TensorInfo(name, shape, type_name, offset, nbytes)], shape outermost-first
                  (NumPy order: a matrix is (out, in)), offset absolute in the file
    arrays = map_tensors(path, tensors)    {name: read-only memory-mapped array, or a
                                            quants.QuantizedTensor for block types}

The file, little-endian throughout (GGUF v2 and v3; v1 and big-endian files are refused):

    "GGUF"  u32 version  u64 n_tensors  u64 n_metadata
    n_metadata × (string key, u32 value type, value)     string = u64 length + UTF-8 bytes
                                                          array  = u32 type, u64 count, values
    n_tensors × (string name, u32 n_dims, u64 dims[n_dims], u32 ggml type, u64 offset)
    padding to `general.alignment` (default 32), then the data: each tensor at data start +
    offset, offsets aligned. dims are innermost first: dims[0] is the row length, so a
    (out, in) matrix is stored with dims [in, out].

Every count, length and offset is checked against the file size before anything is allocated,
and a malformed file raises CheckpointError naming the file and what is wrong. Strings that
are not valid UTF-8 keep their bytes as surrogate escapes (`s.encode("utf-8",
"surrogateescape")` gives them back).

The llama.cpp converter writes Llama's q/k weights with the RoPE pairs interleaved
(x[2i], x[2i+1]), as Meta's originals are (it undoes Hugging Face's permutation): the config
says `rope_interleaved=True`, and no weights are permuted here.
"""

from __future__ import annotations

import itertools
import math
import mmap
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import LlamaConfig, RopeScaling
from ..dtypes import BFLOAT16
from ..errors import CheckpointError, ConfigError
from ..quants import BY_TYPE_ID, QUANT_TYPES, QuantizedTensor
from ..schema import tensor_specs

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_ARRAY_NESTING = 8  # real files nest at most once; deeper is a broken or hostile file
MAX_SIZE = 2**31 - 1  # a dimension, count of layers or heads, context length (as validate.SIZE)
_LAYER_TENSOR = re.compile(r"blk\.(0|[1-9][0-9]{0,9})\..+")

# Metadata value types: id -> (name, struct format of one value; None: string/array)
VALUE_TYPES: dict[int, tuple[str, str | None]] = {
    0: ("uint8", "<B"),
    1: ("int8", "<b"),
    2: ("uint16", "<H"),
    3: ("int16", "<h"),
    4: ("uint32", "<I"),
    5: ("int32", "<i"),
    6: ("float32", "<f"),
    7: ("bool", "<?"),
    8: ("string", None),
    9: ("array", None),
    10: ("uint64", "<Q"),
    11: ("int64", "<q"),
    12: ("float64", "<d"),
}
# Plain float types come back as arrays of these; block types as QuantizedTensor.
FLOAT_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": BFLOAT16}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # outermost first, as NumPy: (out, in) for a matrix
    type_name: str  # a quants.QUANT_TYPES name: "F32", "Q4_K", ...
    offset: int  # absolute offset of the first byte in the file
    nbytes: int


class _Reader:
    """Bounds-checked little-endian reads from a memory-mapped file."""

    def __init__(self, path: Path, buffer: mmap.mmap) -> None:
        self.path, self.buffer, self.size, self.pos = path, buffer, len(buffer), 0

    def fail(self, what: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: malformed GGUF file: {what}")

    def need(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise self.fail(
                f"{what} needs {n:,} bytes at offset {self.pos:,}, but the file has "
                f"{self.size:,} bytes: it is truncated or corrupt"
            )

    def unpack(self, fmt: str, what: str):
        n = struct.calcsize(fmt)
        self.need(n, what)
        (value,) = struct.unpack_from(fmt, self.buffer, self.pos)
        self.pos += n
        return value

    def count(self, what: str, item_bytes: int) -> int:
        """A u64 count of items of at least `item_bytes` each, which must fit in the file."""
        n = self.unpack("<Q", what)
        if n * item_bytes > self.size - self.pos:
            raise self.fail(
                f"{what} is {n:,}, but only {self.size - self.pos:,} bytes follow at offset "
                f"{self.pos:,}: the file is truncated or corrupt"
            )
        return n

    def string(self, what: str) -> str:
        n = self.count(f"length of {what}", 1)
        data = self.buffer[self.pos : self.pos + n]
        self.pos += n
        return data.decode("utf-8", errors="surrogateescape")

    def value(self, type_id: int, what: str, depth: int = 0):
        if type_id not in VALUE_TYPES:
            raise self.fail(f"{what} has unknown value type {type_id} (known: 0-12)")
        name, fmt = VALUE_TYPES[type_id]
        if name == "string":
            return self.string(what)
        if name == "array":
            return self.array(what, depth)
        if name == "bool":
            byte = self.unpack("<B", what)
            if byte > 1:
                raise self.fail(f"{what} is a bool stored as {byte} (expected 0 or 1)")
            return bool(byte)
        return self.unpack(fmt, what)

    def array(self, what: str, depth: int):
        if depth >= MAX_ARRAY_NESTING:
            raise self.fail(f"{what} nests arrays more than {MAX_ARRAY_NESTING} deep")
        item_type = self.unpack("<I", f"{what}: array item type")
        if item_type not in VALUE_TYPES:
            raise self.fail(f"{what} is an array of unknown value type {item_type}")
        name, fmt = VALUE_TYPES[item_type]
        # strings and arrays take at least 8 and 12 bytes each, scalars their size
        item_bytes = {"string": 8, "array": 12}.get(name) or struct.calcsize(fmt)
        n = self.count(f"{what}: array length", item_bytes)
        if fmt is None:
            return [self.value(item_type, f"{what}[{i}]", depth + 1) for i in range(n)]
        dtype = np.dtype(fmt.replace("?", "u1"))
        values = np.frombuffer(self.buffer, dtype=dtype, count=n, offset=self.pos).copy()  # (n,)
        self.pos += n * dtype.itemsize
        if name == "bool":
            if values.size and values.max() > 1:
                raise self.fail(f"{what} is a bool array with values other than 0 and 1")
            values = values.astype(bool)
        return values


def read_gguf(path: str | Path) -> tuple[dict[str, object], list[TensorInfo]]:
    """The metadata and tensor infos of a GGUF file (see the module docstring)."""
    path = Path(path)
    with _open(path) as buffer:
        return _parse(path, buffer)


def _open(path: Path) -> mmap.mmap:
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            if size < 24:
                raise CheckpointError(
                    f"{path}: {size} bytes is too short for a GGUF file (a header is 24 bytes): "
                    f"the file is truncated"
                )
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # read-only
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read GGUF file: {e.strerror}") from None


def _parse(path: Path, buffer: mmap.mmap) -> tuple[dict[str, object], list[TensorInfo]]:
    r = _Reader(path, buffer)
    if buffer[:4] != MAGIC:
        raise r.fail(f"starts with {bytes(buffer[:4])!r}, not the GGUF magic {MAGIC!r}")
    r.pos = 4
    version = r.unpack("<I", "version")
    if version not in VERSIONS:
        swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
        if swapped in (1, *VERSIONS):
            raise CheckpointError(
                f"{path}: big-endian GGUF (version {swapped}) is not supported: llama_np reads "
                f"little-endian GGUF files, which is what llama.cpp's converter writes on "
                f"every common machine; re-convert the model on a little-endian machine"
            )
        raise CheckpointError(
            f"{path}: GGUF version {version} is not supported (llama_np reads versions 2 and "
            f"3); re-convert the model with a current llama.cpp"
        )
    # a tensor info takes at least 8 (name) + 4 + 8 + 4 + 8 bytes; a metadata entry 8 + 4 + 1
    n_tensors = r.count("tensor count", 32)
    n_metadata = r.count("metadata count", 13)

    metadata: dict[str, object] = {}
    for i in range(n_metadata):
        key = r.string(f"metadata key {i}")
        if key in metadata:
            raise r.fail(f"metadata key {key!r} appears twice")
        metadata[key] = r.value(r.unpack("<I", f"type of {key!r}"), f"metadata {key!r}")

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if (
        not isinstance(alignment, int)
        or isinstance(alignment, bool)
        or alignment <= 0
        or alignment & (alignment - 1)
    ):
        raise r.fail(f"general.alignment must be a power of two, got {alignment!r}")

    raw_infos = []
    for i in range(n_tensors):
        name = r.string(f"name of tensor {i}")
        n_dims = r.unpack("<I", f"dimension count of tensor {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise r.fail(f"tensor {name!r} has {n_dims} dimensions (expected 1..{MAX_DIMS})")
        dims = [r.unpack("<Q", f"dimension of tensor {name!r}") for _ in range(n_dims)]
        type_id = r.unpack("<I", f"type of tensor {name!r}")
        offset = r.unpack("<Q", f"offset of tensor {name!r}")
        raw_infos.append((name, dims, type_id, offset))

    data_start = -(-r.pos // alignment) * alignment
    infos: list[TensorInfo] = []
    for name, dims, type_id, offset in raw_infos:
        infos.append(_tensor_info(r, name, dims, type_id, offset, data_start, alignment))
    _check_layout(r, infos)
    return metadata, infos


# ggml's names of the types llama_np does not read (ggml.h's enum ggml_type), for the error
GGML_TYPE_NAMES = {
    4: "Q4_2 (removed from ggml)", 5: "Q4_3 (removed from ggml)", 9: "Q8_1", 15: "Q8_K",
    16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S",
    22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64",
    29: "IQ1_M", 31: "Q4_0_4_4", 32: "Q4_0_4_8", 33: "Q4_0_8_8", 34: "TQ1_0", 35: "TQ2_0",
    36: "IQ4_NL_4_4", 37: "IQ4_NL_4_8", 38: "IQ4_NL_8_8", 39: "MXFP4", 40: "NVFP4", 41: "Q1_0",
    42: "Q2_0",
}  # fmt: skip


def _tensor_info(
    r: _Reader, name: str, dims: list[int], type_id: int, offset: int, start: int, align: int
) -> TensorInfo:
    if type_id not in BY_TYPE_ID:
        known = GGML_TYPE_NAMES.get(type_id)
        raise CheckpointError(
            f"{r.path}: tensor {name!r} has ggml type {type_id}{f' ({known})' if known else ''}, "
            f"which llama_np does not read "
            f"(supported: {', '.join(QUANT_TYPES)}); use a file quantized to one of these"
        )
    qtype = BY_TYPE_ID[type_id]
    if any(d == 0 for d in dims) or dims[0] % qtype.block_weights:
        raise r.fail(
            f"tensor {name!r} has dims {dims}: each must be > 0 and the row length dims[0] a "
            f"multiple of {qtype.block_weights} ({qtype.name} blocks)"
        )
    n_weights = math.prod(dims)
    nbytes = n_weights // qtype.block_weights * qtype.block_bytes
    if offset % align:
        raise r.fail(f"tensor {name!r} has offset {offset}, not a multiple of alignment {align}")
    if start + offset + nbytes > r.size:
        raise r.fail(
            f"tensor {name!r} ({qtype.name}, dims {dims}) spans bytes {start + offset:,} to "
            f"{start + offset + nbytes:,}, past the end of the file ({r.size:,} bytes): "
            f"the file is truncated"
        )
    return TensorInfo(name, tuple(reversed(dims)), qtype.name, start + offset, nbytes)


def _check_layout(r: _Reader, infos: list[TensorInfo]) -> None:
    seen: set[str] = set()
    for info in infos:
        if info.name in seen:
            raise r.fail(f"tensor {info.name!r} appears twice")
        seen.add(info.name)
    spans = sorted((t.offset, t.offset + t.nbytes, t.name) for t in infos)
    for (_, end, name), (begin, _, next_name) in itertools.pairwise(spans):
        if begin < end:
            raise r.fail(f"tensors {name!r} and {next_name!r} overlap in the file")


def map_tensors(path: str | Path, infos: list[TensorInfo]) -> dict[str, object]:
    """Each tensor as a read-only view into a memory map of the file (nothing read yet).

    F32/F16/BF16 -> arrays of float32/float16/BFLOAT16 in `info.shape`; block types ->
    quants.QuantizedTensor (rows of raw blocks).
    """
    data = np.memmap(path, dtype=np.uint8, mode="r")  # (file bytes,)
    tensors: dict[str, object] = {}
    for t in infos:
        raw = data[t.offset : t.offset + t.nbytes]
        if t.type_name in FLOAT_DTYPES:
            tensors[t.name] = raw.view(FLOAT_DTYPES[t.type_name]).reshape(t.shape)
        else:
            rows = math.prod(t.shape[:-1])
            quantized = raw.reshape(rows, t.nbytes // rows)  # (rows, row_bytes)
            tensors[t.name] = QuantizedTensor(t.type_name, quantized, (rows, t.shape[-1]))
    return tensors


# ---------------------------------------------------------------- the llama loader

# GGUF's tensor names -> Meta's (what Model.from_tensors takes), per layer and global.
LAYER_NAMES = {
    "attn_norm.weight": "attention_norm.weight",
    "attn_q.weight": "attention.wq.weight",
    "attn_k.weight": "attention.wk.weight",
    "attn_v.weight": "attention.wv.weight",
    "attn_output.weight": "attention.wo.weight",
    "attn_q.bias": "attention.wq.bias",  # optional (schema.py), as in llama.cpp
    "attn_k.bias": "attention.wk.bias",
    "attn_v.bias": "attention.wv.bias",
    "attn_output.bias": "attention.wo.bias",
    "ffn_norm.weight": "ffn_norm.weight",
    "ffn_gate.weight": "feed_forward.w1.weight",
    "ffn_down.weight": "feed_forward.w2.weight",
    "ffn_up.weight": "feed_forward.w3.weight",
}
GLOBAL_NAMES = {
    "token_embd.weight": "tok_embeddings.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "output.weight",
}
ROPE_FREQS = "rope_freqs.weight"  # Llama 3.1 RoPE scaling: one frequency divisor per pair


def meta_name(gguf_name: str) -> str | None:
    """Meta's name for a GGUF tensor name, or None if it is not a Llama weight."""
    if gguf_name in GLOBAL_NAMES:
        return GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".", 2)  # "blk", "3", "attn_q.weight"
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in LAYER_NAMES:
        return f"layers.{int(parts[1])}.{LAYER_NAMES[parts[2]]}"
    return None


def is_gguf(path: Path) -> bool:
    """A .gguf file, a file starting with the GGUF magic, or a directory holding one .gguf."""
    if path.is_dir():
        return len(list(path.glob("*.gguf"))) == 1
    if path.suffix == ".gguf":
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


def gguf_file(path: Path) -> Path:
    """The .gguf file itself for a directory holding exactly one."""
    if path.is_dir():
        (path,) = path.glob("*.gguf")
    return path


# Tokens llama.cpp ends a generation at by their text (src/llama-vocab.cpp, the
# end-of-generation ids), those of Llama-architecture models: Llama 3, ChatML, Phi-style.
END_TEXTS = frozenset(
    ["<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|im_end|>", "<|end|>", "<|endoftext|>",
     "<end_of_turn>", "<EOT>", "</s>"]
)  # fmt: skip


def config_from_gguf(
    metadata: Mapping[str, object],
    infos: list[TensorInfo],
    source: Path,
    rope_divisors: np.ndarray | None = None,
) -> LlamaConfig:
    """LlamaConfig from a GGUF file's `llama.*` keys (and the rope_freqs tensor's values)."""
    arch = metadata.get("general.architecture")
    if arch != "llama":
        raise ConfigError(
            f"{source}: GGUF architecture {arch!r} is not supported; llama_np runs 'llama' "
            f"(Llama 1/2/3.x, TinyLlama, SmolLM, Mistral-style files that say 'llama')"
        )

    def get(key: str, kind: type, default=None):
        """llama.{key}: an integer in 1..2**31-1 (a size or count), or a finite number > 0;
        a message names the file's own key."""
        value = metadata.get(f"llama.{key}", default)
        if kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_SIZE
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            ok = ok and math.isfinite(value) and value > 0
        if not ok:
            expected = f"an integer in 1..{MAX_SIZE}" if kind is int else "a finite number > 0"
            found = "it is missing" if value is None else f"found {value!r:.60}"
            raise ConfigError(f"{source}: GGUF key llama.{key} must be {expected}; {found}")
        return value

    shapes = {t.name: t.shape for t in infos}
    if "token_embd.weight" not in shapes or len(shapes["token_embd.weight"]) != 2:
        raise CheckpointError(f"{source}: GGUF file has no 2-D token_embd.weight tensor")
    vocab_size = shapes["token_embd.weight"][0]
    tokens = metadata.get("tokenizer.ggml.tokens")
    declared = metadata.get("llama.vocab_size", len(tokens) if isinstance(tokens, list) else None)
    if declared is not None and declared != vocab_size:
        raise ConfigError(
            f"{source}: the vocabulary has {declared} tokens (llama.vocab_size or "
            f"tokenizer.ggml.tokens) but token_embd.weight has {vocab_size} rows"
        )
    n_heads = get("attention.head_count", int)
    dim = get("embedding_length", int)
    head_dim = get("attention.key_length", int, max(dim // n_heads, 1))
    # The sizes below build the list of expected tensors: a block_count of 10**9 must be
    # refused by what the file holds, before that list is made.
    n_layers = get("block_count", int)
    layers = {int(name.split(".")[1]) for name in shapes if _LAYER_TENSOR.fullmatch(name)}
    if len(layers) != n_layers or (layers and max(layers) != n_layers - 1):
        raise CheckpointError(
            f"{source}: llama.block_count is {n_layers}, but the file holds the tensors of "
            f"{len(layers)} layer{'' if len(layers) == 1 else 's'}"
            + (f" (blk.{min(layers)} to blk.{max(layers)})" if layers else "")
        )
    if get("attention.value_length", int, head_dim) != head_dim:
        raise ConfigError(f"{source}: llama.attention.value_length differs from key_length")
    if get("rope.dimension_count", int, head_dim) != head_dim:
        raise ConfigError(
            f"{source}: llama.rope.dimension_count is {metadata['llama.rope.dimension_count']}, "
            f"but llama_np rotates the whole head ({head_dim}): partial RoPE is not supported"
        )
    n_kv_heads = get("attention.head_count_kv", int, n_heads)
    hidden_dim = get("feed_forward_length", int)
    max_seq_len = get("context_length", int)
    norm_eps = float(get("attention.layer_norm_rms_epsilon", float, 1e-5))
    rope_theta = float(get("rope.freq_base", float, 10000.0))
    scaling = _rope_scaling(metadata, source, rope_divisors)

    stop_ids = []
    for key in ("eos_token_id", "eot_token_id", "eom_token_id"):
        value = metadata.get(f"tokenizer.ggml.{key}")
        if isinstance(value, int) and value not in stop_ids:
            stop_ids.append(value)
    # GGUF names at most three end tokens; llama.cpp also ends a generation at tokens it
    # knows by their text (a chat model's end of turn), and so does this.
    if isinstance(tokens, list):
        stop_ids += [i for i, t in enumerate(tokens) if t in END_TEXTS and i not in stop_ids]
    bos = metadata.get("tokenizer.ggml.bos_token_id", 1)
    try:
        return LlamaConfig(
            dim=dim,
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            hidden_dim=hidden_dim,
            vocab_size=vocab_size,
            head_dim=head_dim,
            max_seq_len=max_seq_len,
            norm_eps=norm_eps,
            rope_theta=rope_theta,
            rope_scaling=scaling,
            rope_interleaved=True,  # llama.cpp's converter writes interleaved q/k rows
            tie_embeddings="output.weight" not in shapes,
            bos_id=bos,
            stop_ids=tuple(stop_ids or [2]),
            name=str(metadata.get("general.name") or source.stem),
        )
    except (ConfigError, TypeError, ZeroDivisionError) as e:
        raise ConfigError(f"{source}: {e}") from None


def _rope_scaling(
    metadata: Mapping[str, object], source: Path, divisors: np.ndarray | None
) -> RopeScaling | None:
    kind = metadata.get("llama.rope.scaling.type", "none")
    if kind not in ("none", "linear"):
        raise ConfigError(
            f"{source}: GGUF RoPE scaling type {kind!r} is not supported (none, linear, or "
            f"Llama 3.1's rope_freqs tensor)"
        )
    if kind == "linear" and divisors is not None:
        raise ConfigError(f"{source}: linear RoPE scaling together with rope_freqs")
    if kind == "linear":
        factor = metadata.get("llama.rope.scaling.factor")
        if not isinstance(factor, (int, float)) or isinstance(factor, bool):
            raise ConfigError(f"{source}: linear RoPE scaling needs llama.rope.scaling.factor")
        return RopeScaling("linear", factor=float(factor))
    if divisors is not None:
        return RopeScaling("divisors", divisors=tuple(float(d) for d in divisors))
    return None


def load_gguf(
    path: Path,
) -> tuple[LlamaConfig, dict[str, object], dict[str, object], list[TensorInfo]]:
    """Read a GGUF Llama; -> (config, tensors by Meta name, metadata, tensor infos).

    Tensors are memory-mapped: plain arrays for F32/F16/BF16, quants.QuantizedTensor for
    block types. The metadata also carries the tokenizer (tokenizer.ggml.*).
    """
    metadata, infos = read_gguf(path)
    stored = map_tensors(path, infos)
    divisors = stored.pop(ROPE_FREQS, None)
    if divisors is not None:
        if not isinstance(divisors, np.ndarray) or divisors.dtype != np.float32:
            raise CheckpointError(f"{path}: {ROPE_FREQS} must be an F32 tensor")
        divisors = np.array(divisors.reshape(-1), dtype=np.float32)  # (HD/2,)
    config = config_from_gguf(metadata, infos, path, divisors)

    specs = tensor_specs(config)  # optional ones (q/k/v/o biases) may be present
    tensors: dict[str, object] = {}
    unknown = []
    for name, tensor in stored.items():
        meta = meta_name(name)
        if meta is None or meta not in specs:
            unknown.append(name)
            continue
        if tuple(tensor.shape) != specs[meta].shape:
            raise CheckpointError(
                f"{path}: tensor {name} has shape {tuple(tensor.shape)} (out, in), but the "
                f"llama.* metadata implies {specs[meta].shape}"
            )
        tensors[meta] = tensor
    missing = [n for n, spec in specs.items() if spec.required and n not in tensors]
    if unknown or missing:
        raise CheckpointError(
            f"{path}: tensors do not match a Llama of this config: "
            + (f"unexpected {unknown[:5]} " if unknown else "")
            + (f"missing {missing[:5]} (Meta names)" if missing else "")
        )
    return config, tensors, metadata, infos


def stored_bytes(tensors: Mapping[str, object]) -> int:
    """Bytes of the tensors as stored in the file (a model kept as stored occupies these)."""
    return sum(t.nbytes for t in tensors.values())


def type_summary(infos: list[TensorInfo]) -> list[tuple[str, int, int]]:
    """(type name, tensor count, bytes) per tensor type, largest first: the quantization mix."""
    by_type: dict[str, list[int]] = {}
    for t in infos:
        count_bytes = by_type.setdefault(t.type_name, [0, 0])
        count_bytes[0] += 1
        count_bytes[1] += t.nbytes
    return sorted(((n, c, b) for n, (c, b) in by_type.items()), key=lambda x: -x[2])
