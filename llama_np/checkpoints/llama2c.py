"""llama2.c checkpoints (`.bin`): the legacy header and the versioned "ak42" export.

Legacy (version 0): 7 int32 — dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
seq_len; a negative vocab_size means the classifier is stored separately (unshared). Then
float32 tensors: embedding, per-kind stacks over layers (rms_att, wq, wk, wv, wo, rms_ffn,
w1, w2, w3), final norm, two RoPE tables (ignored: we compute our own), classifier if unshared.

Versioned: uint32 magic 0x616b3432 ("ak42"), int32 version, the same 7 int32, a uint8
shared-classifier flag, (version 2: int32 group size), zero padding to 256 bytes. Version 1
is float32, norms first; version 2 is Q8_0: int8 weights in groups with float32 scales,
dequantized here to float32.

All weights are (out, in), Meta's layout, with RoPE on interleaved pairs.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np

from ..config import LlamaConfig
from ..errors import CheckpointError, ConfigError
from ..limits import check_model_fits
from ..schema import end_specs, layer_specs
from ..validate import regular_file

MAGIC = 0x616B3432
HEADER_BYTES = 256  # versioned files pad their header to this size


def read_header(path: Path) -> tuple[int, LlamaConfig, int, int]:
    """-> (version, config, offset of the first tensor, Q8_0 group size or 0)."""
    regular_file(path, CheckpointError, "llama2.c checkpoint")  # a named pipe would block
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_BYTES)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read the file: {e.strerror}") from None
    _refuse_other_formats(path, head)
    if len(head) < 28:
        raise CheckpointError(
            f"{path}: {len(head)} bytes is too short for a llama2.c header (28+ bytes); the file "
            f"is truncated or not a llama2.c checkpoint"
        )
    (magic,) = struct.unpack_from("<I", head, 0)
    if magic == MAGIC:
        if len(head) < HEADER_BYTES:
            raise CheckpointError(f"{path}: truncated llama2.c header ({len(head)} of 256 bytes)")
        (version,) = struct.unpack_from("<i", head, 4)
        if version not in (1, 2):
            raise CheckpointError(
                f"{path}: llama2.c export version {version} is not supported (expected 1 or 2)"
            )
        dims = struct.unpack_from("<7i", head, 8)
        shared = head[36] != 0
        group_size = struct.unpack_from("<i", head, 37)[0] if version == 2 else 0
        offset = HEADER_BYTES
    else:
        version, offset, group_size = 0, 28, 0
        dims = struct.unpack_from("<7i", head, 0)
        shared = dims[5] > 0
        dims = (*dims[:5], abs(dims[5]), dims[6])
    dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len = dims
    try:
        config = LlamaConfig(
            dim=dim,
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            hidden_dim=hidden_dim,
            vocab_size=vocab_size,
            max_seq_len=seq_len,
            tie_embeddings=shared,
            bos_id=1,
            stop_ids=(2, 1),  # story models end a story with BOS, as llama2.c's run.c does
            name=path.stem,
        )
    except ConfigError as e:
        raise CheckpointError(
            f"{path}: not a valid llama2.c checkpoint header (dim={dim}, hidden_dim={hidden_dim}, "
            f"n_layers={n_layers}, n_heads={n_heads}, n_kv_heads={n_kv_heads}, "
            f"vocab_size={vocab_size}, seq_len={seq_len}): {e}"
        ) from None
    if version == 2 and (group_size <= 0 or dim % group_size):
        raise CheckpointError(f"{path}: Q8_0 group size {group_size} does not divide dim {dim}")
    return version, config, offset, group_size


def _refuse_other_formats(path: Path, head: bytes) -> None:
    """Name the format of a file that is clearly not llama2.c, instead of misreading it."""
    if head[:4] == b"GGUF":
        raise CheckpointError(
            f"{path}: this is a GGUF file (llama.cpp's format), not a llama2.c .bin; load it "
            f"with llama_np.load / -m, which reads GGUF"
        )
    if head[:4] == b"PK\x03\x04":
        raise CheckpointError(
            f"{path}: this is a zip archive (PyTorch's torch.save format), not a llama2.c .bin"
        )
    if len(head) > 9 and head[8:9] == b"{" and struct.unpack_from("<Q", head)[0] < 1 << 30:
        raise CheckpointError(f"{path}: this is a safetensors file, not a llama2.c .bin")


def load_llama2c(path: Path) -> tuple[LlamaConfig, dict[str, np.ndarray]]:
    """Read a llama2.c `.bin`; -> (config, tensors by Meta name, float32, (out, in))."""
    version, config, offset, group_size = read_header(path)
    layout = _file_layout(version, config)
    # Check the size the header implies before reading or allocating anything: a corrupt
    # header can claim a model of terabytes, or of a billion layers.
    expected = offset + sum(_nbytes(name, shape, group_size) for name, shape in layout)
    size = path.stat().st_size
    if expected != size:
        header = (
            f"dim={config.dim}, hidden_dim={config.hidden_dim}, n_layers={config.n_layers}, "
            f"n_heads={config.n_heads}, n_kv_heads={config.n_kv_heads}, "
            f"vocab_size={config.vocab_size}, seq_len={config.max_seq_len}"
        )
        if expected < size:
            problem = f"{size - expected} unexpected bytes follow the last tensor"
        else:
            problem = (
                "the file is truncated (re-download or re-export it), or its header is corrupt "
                "(not a llama2.c checkpoint?)"
            )
        raise CheckpointError(
            f"{path}: the llama2.c header ({header}) implies a file of {expected:,} bytes, but it "
            f"has {size:,}: {problem}"
        )
    check_model_fits(config, str(path))

    data = np.memmap(path, dtype=np.uint8, mode="r")  # read-only: never writes to the file
    tensors: dict[str, np.ndarray] = {}
    for name, shape in layout:
        n = _nbytes(name, shape, group_size)
        raw = data[offset : offset + n]
        offset += n
        if name.startswith("rope."):
            continue
        if group_size and not name.endswith("norm.weight"):
            array = _dequantize_q8_0(raw, shape, group_size)
        else:
            array = raw.view(np.float32).reshape(shape)
        if name in ("tok_embeddings.weight", "norm.weight", "output.weight"):
            tensors[name] = array
        else:  # stacked over layers
            for i in range(config.n_layers):
                tensors[f"layers.{i}.{name}"] = array[i]
    return config, tensors


# llama2.c's file order: the order of its export scripts, by Meta name (schema.py gives the
# shapes). Block tensors are stacked over the layers: one (L, ...) array each.
_ORDER_V0 = (
    "tok_embeddings.weight",
    "attention_norm.weight",
    "attention.wq.weight",
    "attention.wk.weight",
    "attention.wv.weight",
    "attention.wo.weight",
    "ffn_norm.weight",
    "feed_forward.w1.weight",
    "feed_forward.w2.weight",
    "feed_forward.w3.weight",
    "norm.weight",
    "rope.cos",
    "rope.sin",  # RoPE tables, (S_max, HD/2) each: skipped, we compute our own
)
_ORDER_V1 = (
    "attention_norm.weight",
    "ffn_norm.weight",
    "norm.weight",
    "tok_embeddings.weight",
    "attention.wq.weight",
    "attention.wk.weight",
    "attention.wv.weight",
    "attention.wo.weight",
    "feed_forward.w1.weight",
    "feed_forward.w2.weight",
    "feed_forward.w3.weight",
)


def _file_layout(version: int, config: LlamaConfig) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of each array in file order; "layers.*" arrays are stacked: (L, ...)."""
    block = {s.name.split(".", 2)[2]: s.shape for s in layer_specs(config, 0) if s.required}
    first, last = end_specs(config)
    ends = {s.name: s.shape for s in [first, *last]}
    rope = (config.max_seq_len, config.head_dim // 2)
    layout = []
    for name in _ORDER_V0 if version == 0 else _ORDER_V1:
        if name in block:
            layout.append((name, (config.n_layers, *block[name])))
        else:
            layout.append((name, ends.get(name, rope)))
    if not config.tie_embeddings:
        layout.append(("output.weight", ends["output.weight"]))
    return layout


def _nbytes(name: str, shape: tuple[int, ...], group_size: int) -> int:
    """Bytes of one array in the file: float32, or (Q8_0) an int8 and a float32 scale per
    group of `group_size` values; norms are always float32."""
    n = math.prod(shape)
    if group_size and not name.endswith("norm.weight"):
        return n + 4 * (n // group_size)
    return 4 * n


def _dequantize_q8_0(raw: np.ndarray, shape: tuple[int, ...], group_size: int) -> np.ndarray:
    """Q8_0 bytes -> float32 of `shape`. As llama2.c's runq.c maps them, each matrix (each
    layer's separately when stacked) is its int8 values followed by its float32 scales."""
    n_mats = shape[0] if len(shape) == 3 else 1
    per_mat = math.prod(shape) // n_mats
    records = raw.reshape(n_mats, per_mat + 4 * (per_mat // group_size))  # one row per matrix
    values = records[:, :per_mat].view(np.int8).reshape(n_mats, -1, group_size)
    scales = records[:, per_mat:].view(np.float32).reshape(n_mats, -1, 1)
    return (values.astype(np.float32) * scales).reshape(shape)  # (n_mats, n_groups, group)


def llama2c_file(path: Path) -> Path:
    """The llama2.c checkpoint at `path`: the file, or the one .bin (not tok*.bin) of a
    directory; anything else is refused with what was expected."""
    if path.is_dir():
        bins = [p for p in sorted(path.glob("*.bin")) if not p.name.startswith("tok")]
        if len(bins) != 1:
            files = [*sorted(path.glob("*.gguf")), *bins]
            found = ", ".join(p.name for p in files[:8]) + (", ..." if len(files) > 8 else "")
            raise CheckpointError(
                f"{path}: not a checkpoint directory: looked for config.json (Hugging Face), "
                f"params.json + consolidated.*.pth (Meta), exactly one .gguf, or exactly one "
                f"llama2.c .bin (not tok*.bin); found .gguf and .bin files: {found or 'none'}"
                f"{'; pass the path of one of them' if len(files) > 1 else ''}"
            )
        path = bins[0]
    if path.suffix != ".bin":
        raise CheckpointError(
            f"{path}: unknown checkpoint format {path.suffix or '(no suffix)'!r}: expected a "
            f"GGUF file (.gguf), a llama2.c .bin file, or a directory "
            f"with config.json (Hugging Face) or params.json + consolidated.*.pth (Meta)"
        )
    return path
