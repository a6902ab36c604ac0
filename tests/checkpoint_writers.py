"""Write small checkpoints in every real layout, byte by byte, without torch or transformers.

Each writer takes tensors by Meta name (as `model.tensor_names` lists them, float32 arrays)
and lays them out as the real tools do: llama2.c's export, Hugging Face safetensors (one file
or sharded, F32/F16/BF16), Meta's params.json + torch.save zip. The tests then load each with
llama_np and check that the loaders agree.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import numpy as np

from llama_np.checkpoints.hf import hf_name
from llama_np.config import LlamaConfig
from llama_np.dtypes import bfloat16_from_float32
from llama_np.model import tensor_names


def random_tensors(config: LlamaConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 tensors by Meta name, rounded to bfloat16 so that F32 and BF16 files of
    them hold the same values."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in tensor_names(config).items():
        if name.endswith("norm.weight"):
            array = 1 + 0.25 * rng.standard_normal(shape)
        else:
            array = 0.1 * rng.standard_normal(shape)
        array = np.clip(array, -4, 4).astype(np.float32)
        tensors[name] = _widen(bfloat16_from_float32(array))
    return tensors


def _widen(bf16: np.ndarray) -> np.ndarray:
    return (bf16.view("<u2").astype(np.uint32) << 16).view(np.float32)


# ---------------------------------------------------------------- llama2.c


def write_llama2c(path: Path, config: LlamaConfig, tensors: dict[str, np.ndarray]) -> Path:
    """llama2.c's legacy (version 0) export: 7 int32, then float32 tensors stacked by kind."""
    L = config.n_layers
    vocab = config.vocab_size if config.tie_embeddings else -config.vocab_size
    header = struct.pack(
        "<7i",
        config.dim,
        config.hidden_dim,
        L,
        config.n_heads,
        config.n_kv_heads,
        vocab,
        config.max_seq_len,
    )
    kinds = ["attention_norm", "attention.wq", "attention.wk", "attention.wv", "attention.wo"]
    kinds += ["ffn_norm", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3"]
    parts = [tensors["tok_embeddings.weight"]]
    parts += [np.stack([tensors[f"layers.{i}.{k}.weight"] for i in range(L)]) for k in kinds]
    parts.append(tensors["norm.weight"])
    rope_table = np.zeros((config.max_seq_len, config.head_dim // 2), dtype=np.float32)
    parts += [rope_table, rope_table]  # cos and sin: ignored by llama_np
    if not config.tie_embeddings:
        parts.append(tensors["output.weight"])
    path.write_bytes(header + b"".join(p.astype("<f4").tobytes() for p in parts))
    return path


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
) -> Path:
    """An HF model directory; with n_shards > 1, shards plus model.safetensors.index.json."""
    directory.mkdir(parents=True, exist_ok=True)
    hf = {}
    for name, array in tensors.items():
        if name.endswith("attention.wq.weight"):
            array = permute_for_half_split(array, config.n_heads)
        elif name.endswith("attention.wk.weight"):
            array = permute_for_half_split(array, config.n_kv_heads)
        hf[hf_name(name)] = array
    (directory / "config.json").write_text(json.dumps(hf_config(config, spelling)))
    if n_shards == 1:
        (directory / "model.safetensors").write_bytes(safetensors_bytes(hf, dtype))
        return directory
    names = list(hf)
    weight_map = {}
    for k in range(n_shards):
        shard = f"model-{k + 1:05d}-of-{n_shards:05d}.safetensors"
        part = {n: hf[n] for n in names[k::n_shards]}
        (directory / shard).write_bytes(safetensors_bytes(part, dtype))
        weight_map.update(dict.fromkeys(part, shard))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
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
