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

import struct
from pathlib import Path

import numpy as np

from ..config import LlamaConfig
from ..errors import CheckpointError, ConfigError

MAGIC = 0x616B3432
HEADER_BYTES = 256  # versioned files pad their header to this size


def read_header(path: Path) -> tuple[int, LlamaConfig, int, int]:
    """-> (version, config, offset of the first tensor, Q8_0 group size or 0)."""
    with open(path, "rb") as f:
        head = f.read(HEADER_BYTES)
    if len(head) < 28:
        raise CheckpointError(f"{path}: {len(head)} bytes is too short for a llama2.c header (28+)")
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
        raise CheckpointError(f"{path}: not a valid llama2.c checkpoint header: {e}") from None
    if version == 2 and (group_size <= 0 or dim % group_size):
        raise CheckpointError(f"{path}: Q8_0 group size {group_size} does not divide dim {dim}")
    return version, config, offset, group_size


def load_llama2c(path: Path) -> tuple[LlamaConfig, dict[str, np.ndarray]]:
    """Read a llama2.c `.bin`; -> (config, tensors by Meta name, float32, (out, in))."""
    version, config, offset, group_size = read_header(path)
    data = np.memmap(path, dtype=np.uint8, mode="r")  # read-only: never writes to the file
    L, D, F, V = config.n_layers, config.dim, config.hidden_dim, config.vocab_size
    q_rows, kv_rows = config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
    # Stacked matrices in file order, by kind: (name suffix, per-layer shape)
    matrices = [
        ("attention.wq.weight", (q_rows, D)),
        ("attention.wk.weight", (kv_rows, D)),
        ("attention.wv.weight", (kv_rows, D)),
        ("attention.wo.weight", (D, q_rows)),
        ("feed_forward.w1.weight", (F, D)),
        ("feed_forward.w2.weight", (D, F)),
        ("feed_forward.w3.weight", (F, D)),
    ]
    layout: list[tuple[str, tuple[int, ...]]]  # (name, shape) in file order; "layers.*" stacked
    if version == 0:
        layout = [
            ("tok_embeddings.weight", (V, D)),
            ("attention_norm.weight", (L, D)),
            *[(n, (L, *s)) for n, s in matrices[:4]],
            ("ffn_norm.weight", (L, D)),
            *[(n, (L, *s)) for n, s in matrices[4:]],
            ("norm.weight", (D,)),
            ("rope.cos", (config.max_seq_len, config.head_dim // 2)),
            ("rope.sin", (config.max_seq_len, config.head_dim // 2)),
        ]
    else:
        layout = [
            ("attention_norm.weight", (L, D)),
            ("ffn_norm.weight", (L, D)),
            ("norm.weight", (D,)),
            ("tok_embeddings.weight", (V, D)),
            *[(n, (L, *s)) for n, s in matrices],
        ]
    if not config.tie_embeddings:
        layout.append(("output.weight", (V, D)))

    reader = _Reader(path, data, offset)
    if version == 2:
        arrays = _read_q8_0(reader, layout, group_size)
    else:
        arrays = {name: reader.take(np.float32, shape) for name, shape in layout}
    reader.check_end()

    tensors: dict[str, np.ndarray] = {}
    for name, array in arrays.items():
        if name.startswith("rope."):
            continue
        if name in ("tok_embeddings.weight", "norm.weight", "output.weight"):
            tensors[name] = array
        else:  # stacked over layers
            for i in range(L):
                tensors[f"layers.{i}.{name}"] = array[i]
    return config, tensors


class _Reader:
    """Takes consecutive typed arrays out of a memory-mapped file, checking its length."""

    def __init__(self, path: Path, data: np.ndarray, offset: int) -> None:
        self.path, self.data, self.offset = path, data, offset

    def take(self, dtype, shape: tuple[int, ...]) -> np.ndarray:
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if self.offset + n > self.data.size:
            raise CheckpointError(
                f"{self.path}: file is truncated: {self.data.size} bytes, but its header implies "
                f"at least {self.offset + n}; re-download or re-export it"
            )
        array = self.data[self.offset : self.offset + n].view(dtype).reshape(shape)
        self.offset += n
        return array

    def check_end(self) -> None:
        if self.offset != self.data.size:
            raise CheckpointError(
                f"{self.path}: {self.data.size - self.offset} unexpected bytes after the last "
                f"tensor ({self.data.size} bytes, header implies {self.offset}); the header does "
                f"not describe this file"
            )


def _read_q8_0(
    reader: _Reader, layout: list[tuple[str, tuple[int, ...]]], group_size: int
) -> dict[str, np.ndarray]:
    """Version 2: fp32 norms, then every matrix as int8, then every matrix's fp32 scales."""
    arrays = {n: reader.take(np.float32, s) for n, s in layout if n.endswith("norm.weight")}
    quantized = [(n, s) for n, s in layout if not n.endswith("norm.weight")]
    ints = {n: reader.take(np.int8, s) for n, s in quantized}
    for name, shape in quantized:
        scales = reader.take(np.float32, (int(np.prod(shape)) // group_size, 1))
        groups = ints[name].reshape(-1, group_size).astype(np.float32)  # (n_groups, group)
        arrays[name] = (groups * scales).reshape(shape)
    return arrays
