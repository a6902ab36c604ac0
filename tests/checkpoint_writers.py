"""Write small checkpoints in every real layout, byte by byte, without torch or transformers.

Each writer takes tensors by Meta name (as `schema.tensor_names` lists them, float32 arrays)
and lays them out as the real tools do: llama2.c's export, Hugging Face safetensors (one file
or sharded, F32/F16/BF16), Meta's params.json + torch.save zip, GGUF (with the gguf package's
writer, any tensor type). The tests then load each with llama_np and check that the loaders
agree.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import gguf
import numpy as np
from util import random_tensors  # noqa: F401  (re-exported for the tests)

from llama_np.checkpoints.hf import hf_name
from llama_np.config import LlamaConfig
from llama_np.dtypes import bfloat16_from_float32

# ---------------------------------------------------------------- llama2.c


def llama2c_bytes(
    config: LlamaConfig, tensors: dict, version: int = 0, group_size: int = 8
) -> bytes:
    """A llama2.c checkpoint of `config` holding `tensors`, as llama2.c's export.py writes it."""
    L = config.n_layers
    shared = config.tie_embeddings
    dims = [
        config.dim,
        config.hidden_dim,
        L,
        config.n_heads,
        config.n_kv_heads,
        config.vocab_size,
        config.max_seq_len,
    ]

    def stack(name: str) -> list[np.ndarray]:
        return [tensors[f"layers.{i}.{name}"] for i in range(L)]

    matrices = [
        *stack("attention.wq.weight"),
        *stack("attention.wk.weight"),
        *stack("attention.wv.weight"),
        *stack("attention.wo.weight"),
        *stack("feed_forward.w1.weight"),
        *stack("feed_forward.w2.weight"),
        *stack("feed_forward.w3.weight"),
    ]
    norms = [*stack("attention_norm.weight"), *stack("ffn_norm.weight"), tensors["norm.weight"]]
    classifier = [] if shared else [tensors["output.weight"]]
    if version == 0:
        dims[5] = dims[5] if shared else -dims[5]  # negative vocab: unshared classifier
        half = config.head_dim // 2
        rope = [np.zeros((config.max_seq_len, half), np.float32)] * 2  # ignored by loaders
        parts = [
            tensors["tok_embeddings.weight"],
            *stack("attention_norm.weight"),
            *matrices[: 4 * L],
            *stack("ffn_norm.weight"),
            *matrices[4 * L :],
            tensors["norm.weight"],
            *rope,
            *classifier,
        ]
        return struct.pack("<7i", *dims) + b"".join(_f32(p) for p in parts)
    header = struct.pack("<Ii7iB", 0x616B3432, version, *dims, int(shared))
    if version == 2:
        header += struct.pack("<i", group_size)
    header += b"\0" * (256 - len(header))
    if version == 1:
        parts = [*norms, tensors["tok_embeddings.weight"], *matrices, *classifier]
        return header + b"".join(_f32(p) for p in parts)
    body = b"".join(_f32(p) for p in norms)
    for w in [tensors["tok_embeddings.weight"], *matrices, *classifier]:
        groups = np.asarray(w, dtype=np.float32).reshape(-1, group_size)  # (n_groups, group)
        scale = np.abs(groups).max(axis=1) / 127.0
        scale[scale == 0] = 1.0
        q = np.round(groups / scale[:, None]).astype(np.int8)
        body += q.tobytes() + scale.astype(np.float32).tobytes()
    return header + body


def write_llama2c(path: Path, config: LlamaConfig, tensors: dict[str, np.ndarray]) -> Path:
    """llama2.c's legacy (version 0) export of `tensors` at `path`."""
    path.write_bytes(llama2c_bytes(config, tensors, version=0))
    return path


def _f32(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array, dtype=np.float32).tobytes()


# ---------------------------------------------------------------- Hugging Face

SAFETENSORS_DTYPES = {"F32": "<f4", "F16": "<f2"}


def safetensors_bytes(tensors: dict[str, np.ndarray], dtype: str = "F32") -> bytes:
    """A .safetensors file; BF16 is written as the high 16 bits of each float32."""
    header, blobs, offset = {}, [], 0
    for name, array in tensors.items():
        if dtype == "BF16":
            blob = bfloat16_from_float32(array).tobytes()
        else:
            blob = np.ascontiguousarray(array, dtype=SAFETENSORS_DTYPES[dtype]).tobytes()
        header[name] = {
            "dtype": dtype,
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header so the data is aligned
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def permute_for_half_split(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Meta's interleaved RoPE rows -> HF's half-split rows, within each head."""
    rows, D = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, D).transpose(0, 2, 1, 3).reshape(rows, D)


def hf_config(config: LlamaConfig, spelling: str = "transformers5") -> dict:
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": config.dim,
        "intermediate_size": config.hidden_dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    if spelling == "transformers5":
        cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": config.rope_theta}
        cfg["dtype"] = "bfloat16"
    else:
        cfg["rope_theta"] = config.rope_theta
        cfg["torch_dtype"] = "bfloat16"
    return cfg


def write_hf(
    directory: Path,
    config: LlamaConfig,
    tensors: dict[str, np.ndarray],
    dtype: str = "F32",
    n_shards: int = 1,
    spelling: str = "transformers5",
    pytorch: bool = False,
) -> Path:
    """An HF model directory; with n_shards > 1, shards plus model.safetensors.index.json.
    `pytorch`: PyTorch's files instead (pytorch_model.bin, or shards and its index), as older
    uploads hold them."""
    directory.mkdir(parents=True, exist_ok=True)
    hf = {}
    for name, array in tensors.items():
        if name.endswith("attention.wq.weight"):
            array = permute_for_half_split(array, config.n_heads)
        elif name.endswith("attention.wk.weight"):
            array = permute_for_half_split(array, config.n_kv_heads)
        hf[hf_name(name)] = array
    (directory / "config.json").write_text(json.dumps(hf_config(config, spelling)))
    stem, suffix = ("pytorch_model", "bin") if pytorch else ("model", "safetensors")

    def write(path: Path, part: dict[str, np.ndarray]) -> None:
        if pytorch:
            write_pth(path, part, dtype)
        else:
            path.write_bytes(safetensors_bytes(part, dtype))

    if n_shards == 1:
        write(directory / f"{stem}.{suffix}", hf)
        return directory
    names = list(hf)
    weight_map = {}
    for k in range(n_shards):
        shard = f"{stem}-{k + 1:05d}-of-{n_shards:05d}.{suffix}"
        part = {n: hf[n] for n in names[k::n_shards]}
        write(directory / shard, part)
        weight_map.update(dict.fromkeys(part, shard))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (directory / f"{stem}.{suffix}.index.json").write_text(json.dumps(index))
    return directory


# ---------------------------------------------------------------- Meta (torch.save zip)


class PickleWriter:
    """Just enough of pickle protocol 2 to write what torch.save writes for a state dict."""

    def __init__(self) -> None:
        self.out = bytearray(b"\x80\x02")  # PROTO 2

    def global_(self, module: str, name: str) -> None:
        self.out += b"c" + f"{module}\n{name}\n".encode()

    def str_(self, s: str) -> None:
        data = s.encode()
        self.out += b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE

    def int_(self, i: int) -> None:
        self.out += b"J" + struct.pack("<i", i)  # BININT

    def tuple_(self, items: tuple[int, ...]) -> None:
        self.out += b"("  # MARK
        for i in items:
            self.int_(i)
        self.out += b"t"  # TUPLE

    def empty_ordered_dict(self) -> None:
        self.global_("collections", "OrderedDict")
        self.out += b")R"  # EMPTY_TUPLE, REDUCE: OrderedDict()

    def tensor(self, storage_type: str, key: str, numel: int, shape: tuple[int, ...]) -> None:
        """_rebuild_tensor_v2(storage, 0, shape, contiguous strides, False, OrderedDict())"""
        self.global_("torch._utils", "_rebuild_tensor_v2")
        self.out += b"(("  # MARK (args), MARK (persistent id)
        self.str_("storage")
        self.global_("torch", storage_type)
        self.str_(key)
        self.str_("cpu")
        self.int_(numel)
        self.out += b"tQ"  # TUPLE, BINPERSID: the storage
        self.int_(0)
        self.tuple_(shape)
        self.tuple_(tuple(int(np.prod(shape[i + 1 :])) for i in range(len(shape))))
        self.out += b"\x89"  # NEWFALSE: requires_grad
        self.empty_ordered_dict()  # backward hooks
        self.out += b"tR"  # TUPLE, REDUCE

    def state_dict(self, tensors: dict[str, tuple[str, int, tuple[int, ...]]]) -> bytes:
        """{name: (storage type, numel, shape)}, storage keys "0", "1", ... in order."""
        self.empty_ordered_dict()
        self.out += b"("  # MARK
        for key, (name, (storage_type, numel, shape)) in enumerate(tensors.items()):
            self.str_(name)
            self.tensor(storage_type, str(key), numel, shape)
        self.out += b"u."  # SETITEMS, STOP
        return bytes(self.out)


def write_pth(path: Path, tensors: dict[str, np.ndarray], dtype: str = "BF16") -> Path:
    """Write `path` as torch.save would: a zip with <stem>/data.pkl and <stem>/data/<key>."""
    storage_type = {"F32": "FloatStorage", "F16": "HalfStorage", "BF16": "BFloat16Storage"}[dtype]
    blobs = []
    for array in tensors.values():
        if dtype == "BF16":
            blobs.append(bfloat16_from_float32(array).tobytes())
        else:
            blobs.append(np.ascontiguousarray(array, dtype=SAFETENSORS_DTYPES[dtype]).tobytes())
    pickled = PickleWriter().state_dict(
        {n: (storage_type, a.size, a.shape) for n, a in tensors.items()}
    )
    prefix = path.name.removesuffix(".pth")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{prefix}/data.pkl", pickled)
        z.writestr(f"{prefix}/byteorder", "little")
        for key, blob in enumerate(blobs):
            z.writestr(f"{prefix}/data/{key}", blob)
        z.writestr(f"{prefix}/version", "3\n")
    return path


def write_meta(
    directory: Path, config: LlamaConfig, tensors: dict[str, np.ndarray], dtype: str = "BF16"
) -> Path:
    """params.json + consolidated.00.pth. hidden_dim must follow Meta's formula for `dim`."""
    directory.mkdir(parents=True, exist_ok=True)
    params = {
        "dim": config.dim,
        "n_layers": config.n_layers,
        "n_heads": config.n_heads,
        "n_kv_heads": config.n_kv_heads,
        "vocab_size": config.vocab_size,
        "multiple_of": 32,
        "norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "max_seq_len": config.max_seq_len,
    }
    (directory / "params.json").write_text(json.dumps(params))
    write_pth(directory / "consolidated.00.pth", tensors, dtype)
    return directory


# ---------------------------------------------------------------- GGUF (the gguf package's writer)

QT = gguf.GGMLQuantizationType
# Where each block type keeps its float16 scales, and a typical size for each: random bytes
# everywhere else give valid blocks whose weights are of order 0.1.
FP16_FIELDS = {
    "Q8_0": {0: 0.2 / 127},
    "Q4_0": {0: 0.2 / 8},
    "Q4_1": {0: 0.4 / 15, 2: -0.2},
    "Q5_0": {0: 0.2 / 16},
    "Q5_1": {0: 0.4 / 31, 2: -0.2},
    "Q2_K": {80: 0.4 / 45, 82: 0.2 / 15},
    "Q3_K": {108: 0.2 / 128},
    "Q4_K": {0: 0.4 / 945, 2: 0.2 / 63},
    "Q5_K": {0: 0.4 / 1953, 2: 0.2 / 63},
    "Q6_K": {208: 0.2 / 4096},
}
# Meta name -> GGUF name (written out here, apart from the loader's own table)
GGUF_NAMES = {
    "tok_embeddings.weight": "token_embd.weight",
    "norm.weight": "output_norm.weight",
    "output.weight": "output.weight",
    "attention_norm.weight": "attn_norm.weight",
    "attention.wq.weight": "attn_q.weight",
    "attention.wk.weight": "attn_k.weight",
    "attention.wv.weight": "attn_v.weight",
    "attention.wo.weight": "attn_output.weight",
    "ffn_norm.weight": "ffn_norm.weight",
    "feed_forward.w1.weight": "ffn_gate.weight",
    "feed_forward.w2.weight": "ffn_down.weight",
    "feed_forward.w3.weight": "ffn_up.weight",
}


def gguf_name(meta: str) -> str:
    if meta in GGUF_NAMES:
        return GGUF_NAMES[meta]
    _, i, rest = meta.split(".", 2)
    return f"blk.{i}.{GGUF_NAMES[rest]}"


def random_blocks(type_name: str, shape: tuple[int, int], rng) -> np.ndarray:
    """Random raw rows (out, row_bytes) of a block type, with float16 scales of sane size."""
    block_weights, block_bytes = gguf.GGML_QUANT_SIZES[QT[type_name]]
    n_blocks = shape[0] * shape[1] // block_weights
    blocks = rng.integers(0, 256, (n_blocks, block_bytes), dtype=np.uint8)
    for offset, size in FP16_FIELDS[type_name].items():
        scale = size * rng.uniform(0.5, 1.5, (n_blocks, 1))
        blocks[:, offset : offset + 2] = scale.astype("<f2").view(np.uint8)
    return blocks.reshape(shape[0], -1)


def write_gguf(
    path: Path,
    config: LlamaConfig,
    tensors: dict[str, np.ndarray],
    types: dict[str, str] | str = "F32",
    seed: int = 0,
    arch: str = "llama",
    rope_divisors: np.ndarray | None = None,
    metadata: dict | None = None,
    blocks: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Write a llama GGUF; -> the float32 weights it holds (by Meta name), dequantized by gguf.

    Matrices take the type `types[name]` (or `types` for all); norms stay F32 as llama.cpp
    keeps them. Block types get random blocks (the given values are ignored), or the raw rows
    `blocks[name]` when given (e.g. the weights quantized). `metadata` adds keys (e.g. a
    tokenizer's): str, bool, int (uint32), lists and NumPy arrays.
    """
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(path, arch)
    writer.add_name("test-llama")
    writer.add_block_count(config.n_layers)
    writer.add_context_length(config.max_seq_len)
    writer.add_embedding_length(config.dim)
    writer.add_feed_forward_length(config.hidden_dim)
    writer.add_head_count(config.n_heads)
    writer.add_head_count_kv(config.n_kv_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_layer_norm_rms_eps(config.norm_eps)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_vocab_size(config.vocab_size)
    metadata = {"tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2} | (
        metadata or {}
    )
    for key, value in metadata.items():
        if isinstance(value, np.ndarray):
            writer.add_array(key, value.tolist())  # floats as FLOAT32, ints as INT32
        elif isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_array(key, value)
    held = {}
    for name, array in tensors.items():
        kind = "F32" if array.ndim == 1 else types if isinstance(types, str) else types[name]
        if kind == "F32":
            stored, raw_dtype = np.ascontiguousarray(array, dtype=np.float32), None
        elif kind == "F16":
            stored, raw_dtype = array.astype(np.float16), None
        elif kind == "BF16":
            stored, raw_dtype = gguf.quants.quantize(array, QT.BF16), QT.BF16
        elif blocks and name in blocks:
            stored, raw_dtype = blocks[name], QT[kind]
        else:
            stored, raw_dtype = random_blocks(kind, array.shape, rng), QT[kind]
        writer.add_tensor(gguf_name(name), stored, raw_dtype=raw_dtype)
        held[name] = gguf.quants.dequantize(stored, QT[kind]).astype(np.float32)
    if rope_divisors is not None:
        writer.add_tensor("rope_freqs.weight", rope_divisors.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return held
