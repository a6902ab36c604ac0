"""Weights kept smaller than float32 (bf16, fp16, int8) and widened to float32 as they are used.

The default, fp32, keeps every matrix as a plain float32 array and is what model.py reads
first. The other formats exist so that big models fit in memory: an 8B-parameter model is
32 GB in fp32 but 16 GB in bf16 and 8.5 GB in int8.

NumPy can only multiply float32 fast (BLAS); there is no fast float16 or int8 matmul. So a
compressed matrix is widened to float32 a few rows at a time into one small preallocated
scratch buffer, and each piece is multiplied right away, while it is still in the CPU cache.
That is the reference path. With the optional compiled kernels (llama_np/kernels/, numba),
products instead widen each weight inside compiled loops: `PackedTransposed` asks
`kernels.compiled` first and falls back to this path.

    bf16  the top 16 bits of a float32: widening is a shift (exact)
    fp16  IEEE half precision: NumPy's cast (exact, but slower than the bf16 shift)
    int8  Q8_0-style: each run of GROUP_SIZE weights along a row shares one float32 scale,
          w ≈ scale * q with q in -127..127 and scale = max|w| / 127 of the group
    stored  each matrix as the checkpoint stores it: a GGUF's Q4_K, Q6_K, Q8_0, ... blocks
          (quants.py widens them), F16/BF16 as fp16/bf16, F32 as plain float32
    fp32  (a PackedRows kind, not a weights_dtype) float32 rows for the compiled kernels:
          weights.fp32_matrix keeps a float32 matrix so when compiled kernels are active as
          the model loads, since decode's few activation rows multiply it faster with one
          compiled dot product per row than OpenBLAS does; many rows go to BLAS, unwidened

A GGUF's fused matrices may mix block types (a Q4_K_M file stores wv in Q6_K and wq, wk in
Q4_K): `StackedRows` stacks such parts along the rows, and widens each piece from the part
that holds it.

A `PackedRows` holds an (N, K) matrix as rows, like an embedding table; its `.T` is the (K, N)
matrix that activations multiply, `x @ packed.T`, exactly as a plain float32 weight is
multiplied, `x @ w`. So model.py runs the same code whatever the storage.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import arguments
from .dtypes import BFLOAT16, bfloat16_from_float32, release_pages, to_float32
from .errors import ArgumentError
from .kernels import compiled, few_rows
from .quants import QUANT_TYPES, QuantizedTensor, dequantize_rows

WEIGHT_DTYPES = ("fp32", "bf16", "fp16", "int8", "stored")
GROUP_SIZE = 32  # int8 weights per scale, as llama.cpp's Q8_0
# Floats widened per piece: 1 MiB of float32, small enough to stay in the L2 cache between
# being written and being multiplied.
CHUNK_FLOATS = 1 << 18
# Floats compressed per block while loading (256 KiB of float32: int8's temporaries stay small).
PACK_FLOATS = 1 << 16


def int8_group_size(k: int) -> int:
    """GROUP_SIZE, or for rows it does not divide (tiny models) their largest divisor <= 64."""
    if k % GROUP_SIZE == 0:
        return GROUP_SIZE
    return max(g for g in range(1, 65) if k % g == 0)


def matrix_nbytes(weights_dtype: str, n: int, k: int) -> int:
    """Bytes an (n, k) matrix takes in memory stored as `weights_dtype`.

    The one source of truth for bytes per weight: PackedRows allocates exactly this, and the
    memory check and `llama-np memory` count with it. int8 is n*k int8 values plus one
    float32 scale per group: 36 bytes per 32 weights (llama.cpp's Q8_0 uses a 2-byte scale: 34).
    A ggml block type (a GGUF's "Q4_K", ...) takes its blocks' bytes (quants.QUANT_TYPES);
    "stored" depends on the file, whose loader counts its tensors instead.
    """
    if weights_dtype in QUANT_TYPES:
        return n * QUANT_TYPES[weights_dtype].row_bytes(k)
    if check_weights_dtype(weights_dtype) == "stored":
        raise ArgumentError("the bytes of weights kept as stored are counted from the file")
    if weights_dtype == "int8":
        return n * k + 4 * n * (k // int8_group_size(k))
    return n * k * (4 if weights_dtype == "fp32" else 2)


def check_weights_dtype(weights_dtype: str) -> str:
    return arguments.choice(weights_dtype, "weights_dtype", WEIGHT_DTYPES)


# Threads that widen pieces side by side when only a few activation rows are multiplied
# (measured on 2 cores: 1.2× faster int8/bf16 decode for TinyLlama with another process busy).
WIDEN_THREADS = 2


class Scratch:
    """The float32 buffer each thread widens pieces into (CHUNK_FLOATS, allocated once per
    thread), shared by every packed matrix of a model."""

    def __init__(self) -> None:
        self._local = threading.local()

    def rows(self, n: int, k: int) -> np.ndarray:
        buffer = getattr(self._local, "buffer", None)
        if buffer is None or buffer.size < n * k:  # first use in this thread, or a huge row
            buffer = self._local.buffer = np.empty(max(CHUNK_FLOATS, n * k), dtype=np.float32)
        return buffer[: n * k].reshape(n, k)  # (n, k) view, no allocation


@functools.cache  # made on first use: fp32 models never start threads
def _widen_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(WIDEN_THREADS, thread_name_prefix="llama_np-widen")


class PackedRows:
    """An (N, K) matrix stored as bf16, fp16, int8 or ggml-block rows; rows widen to float32
    on demand."""

    # Makes `ndarray @ packed.T` call our __rmatmul__ instead of converting us to an array.
    __array_ufunc__ = None

    def __init__(self, kind: str, data: np.ndarray, scales: np.ndarray | None, scratch: Scratch):
        self.kind = kind  # "bf16" | "fp16" | "int8" | "fp32" | a quants.QUANT_TYPES name
        # Read-only views, whether the bytes are mapped from a file (read-only) or built here:
        # numba compiles a kernel once per argument type, and read-only is another type, so
        # every kernel would otherwise compile twice (~3 minutes of a fresh test run).
        # (N, K) BFLOAT16, float16, int8 or float32; for block types (N, row_bytes) uint8
        self.data = _read_only(data)
        self.scales = None if scales is None else _read_only(scales)  # (N, K/group, 1) int8's
        self.scratch = scratch
        self.plans: dict = {}  # kernels.compiled's products for this matrix
        N, row = data.shape
        if kind in QUANT_TYPES:
            qtype = QUANT_TYPES[kind]
            self.shape = (N, row // qtype.block_bytes * qtype.block_weights)
        else:
            self.shape = (N, row)

    @classmethod
    def from_float32(cls, kind: str, w: np.ndarray, scratch: Scratch) -> PackedRows:
        """Compress a float32 (N, K) matrix."""
        if kind == "bf16":
            return cls(kind, bfloat16_from_float32(w), None, scratch)
        if kind == "fp16":
            return cls(kind, w.astype(np.float16), None, scratch)
        N, K = w.shape
        group = int8_group_size(K)
        groups = w.reshape(N, K // group, group)  # (N, K/G, G)
        scales = np.max(np.abs(groups), axis=-1, keepdims=True) / np.float32(127)  # (N, K/G, 1)
        safe = np.where(scales > 0, scales, np.float32(1))
        q = np.rint(groups / safe).astype(np.int8).reshape(N, K)  # (N, K)
        return cls(kind, q, scales.astype(np.float32), scratch)

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + (0 if self.scales is None else self.scales.nbytes)

    @property
    def T(self) -> PackedTransposed:
        return PackedTransposed(self)

    def all_finite(self) -> bool:
        return _all_finite(self)

    def widen(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        """Rows start..stop-1 as float32, written into `out` (stop-start, K)."""
        scales = None if self.scales is None else self.scales[start:stop]
        return _widen(self.kind, self.data[start:stop], scales, out)

    def __getitem__(self, index) -> np.ndarray:
        """Float32 rows for an array of row indices (an embedding lookup).   -> (n, K)"""
        index = np.asarray(index)
        scales = None if self.scales is None else self.scales[index]
        out = np.empty((index.size, self.shape[1]), dtype=np.float32)  # (n, K)
        return _widen(self.kind, self.data[index], scales, out)


def _widen(kind: str, rows: np.ndarray, scales: np.ndarray | None, out: np.ndarray) -> np.ndarray:
    """Compressed rows (n, K) -> float32, written into out (n, K)."""
    if kind == "bf16":  # bf16 bits are the high half of the float32 bits
        np.left_shift(rows.view(np.uint16), 16, out=out.view(np.uint32), dtype=np.uint32)
    elif kind in ("fp16", "fp32"):
        np.copyto(out, rows)
    elif kind == "int8":  # int8 × its group's scale: one multiply over (rows, groups, GROUP_SIZE)
        n, n_groups = rows.shape[0], scales.shape[1]
        np.multiply(rows.reshape(n, n_groups, -1), scales, out=out.reshape(n, n_groups, -1))
    else:  # ggml blocks (Q4_K, Q8_0, ...)
        dequantize_rows(kind, rows, out)
    return out


def _all_finite(packed: PackedRows | StackedRows) -> bool:
    """Whether every weight is finite, widened piece by piece (never the whole matrix)."""
    N, K = packed.shape
    step = max(1, CHUNK_FLOATS // K)
    return all(
        np.isfinite(
            packed.widen(i, min(N, i + step), packed.scratch.rows(min(step, N - i), K))
        ).all()
        for i in range(0, N, step)
    )


class StackedRows:
    """Packed (n_i, K) matrices stacked along the rows into one (sum n_i, K) matrix.

    For fused matrices whose parts are stored in different kinds (q/k in Q4_K, v in Q6_K):
    `widen` fills each part's slice of the output from that part, so nothing is widened
    whole and `x @ stacked.T` works as for one PackedRows.
    """

    __array_ufunc__ = None

    def __init__(self, parts: list[PackedRows]) -> None:
        self.parts = parts
        self.starts = np.cumsum([0, *(p.shape[0] for p in parts)]).tolist()  # first row of each
        self.shape = (self.starts[-1], parts[0].shape[1])
        self.scratch = parts[0].scratch
        self.plans: dict = {}  # kernels.compiled's products for this matrix

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.parts)

    @property
    def T(self) -> PackedTransposed:
        return PackedTransposed(self)

    def all_finite(self) -> bool:
        return _all_finite(self)

    def widen(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        """Rows start..stop-1 as float32, written into `out` (stop-start, K)."""
        for part, first in zip(self.parts, self.starts, strict=False):
            lo, hi = max(start, first), min(stop, first + part.shape[0])
            if lo < hi:  # this part holds rows lo..hi-1 of the piece
                part.widen(lo - first, hi - first, out[lo - start : hi - start])
        return out


class PackedTransposed:
    """The (K, N) transpose of a PackedRows, for `x @ w`: widened and multiplied in pieces."""

    __array_ufunc__ = None

    def __init__(self, packed: PackedRows | StackedRows) -> None:
        self.packed = packed
        self.shape = packed.shape[::-1]

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes

    def all_finite(self) -> bool:
        return self.packed.all_finite()

    def __rmatmul__(self, x: np.ndarray) -> np.ndarray:
        """x (..., K) @ (K, N) -> (..., N) float32."""
        N, K = self.packed.shape
        x = _check_inner(x, K)
        if x.ndim != 2:  # (..., K): multiplied as rows, then shaped back
            return (x.reshape(-1, K) @ self).reshape(*x.shape[:-1], N)
        out = np.empty((len(x), N), dtype=np.float32)  # (B, N)
        n_rows = len(x)
        kernel = compiled(self.packed, n_rows)
        if kernel is not None:  # compiled: widens each weight inside its products (kernels/)
            kernel(x, out)
            return out
        if isinstance(self.packed, PackedRows) and self.packed.kind == "fp32":
            # float32 rows need no widening: BLAS multiplies them in one call
            return np.matmul(x, self.packed.data.T, out=out)
        step = max(1, CHUNK_FLOATS // K)  # rows per piece

        def piece(start: int) -> None:
            stop = min(N, start + step)
            w = self.packed.widen(start, stop, self.packed.scratch.rows(stop - start, K))
            np.matmul(x, w.T, out=out[..., start:stop])

        if few_rows(n_rows, "numpy"):
            # Decode: widening (elementwise NumPy work, one core each) is the bottleneck, and
            # NumPy releases the GIL while it runs, so threads widen pieces side by side.
            list(_widen_pool().map(piece, range(0, N, step)))
        else:  # prefill: the matmuls dominate and BLAS already uses every core
            for start in range(0, N, step):
                piece(start)
        return out


# A weight matrix as the model holds it: a float32 array, or a packed one that multiplies
# like an array (`x @ w`) and knows its `shape`, `nbytes` and `all_finite()`.
Matrix = np.ndarray | PackedTransposed


# Float32 matrices from this many weights up are kept as PackedRows of kind "fp32" when
# compiled kernels are active as a model loads (weights.fp32_matrix): decode's rows then
# multiply them with a compiled dot product per row. Below it, BLAS's call costs less than a
# kernel's launch (~1.5 us against ~4 us at 64x64; even at 288x288, from the CPU cache;
# 288x864: 12 vs 10 us).
FP32_KERNEL_MIN = 1 << 16


def _check_inner(x, k: int) -> np.ndarray:
    """x as an array whose rows have k values, as the matrix has rows, else NumPy's error: the
    compiled kernels trust the shapes they are given (a mismatch would write past `out`)."""
    x = np.asarray(x)
    if x.ndim == 0 or x.shape[-1] != k:
        raise ValueError(f"matmul: x {x.shape} @ a ({k}, N) matrix: x's last dimension must be {k}")
    return x


def all_finite(w: Matrix) -> bool:
    """Whether every weight of `w` is finite, whatever its storage."""
    return bool(np.isfinite(w).all()) if isinstance(w, np.ndarray) else w.all_finite()


def stored_kind(w: np.ndarray | QuantizedTensor) -> str:
    """The packed kind that keeps a checkpoint tensor exactly as stored."""
    if isinstance(w, QuantizedTensor):
        return w.type_name
    if w.dtype == BFLOAT16:
        return "bf16"
    return "fp16" if w.dtype == np.float16 else "fp32"


Tensor = np.ndarray | QuantizedTensor  # a checkpoint matrix: float array or GGUF blocks


def pack(
    kind: str, w: Tensor | Sequence[Tensor], scratch: Scratch
) -> np.ndarray | PackedRows | StackedRows:
    """Store an (N, K) float32, bf16/fp16 or GGUF-block checkpoint matrix as `kind`; given
    several matrices (q, k, v), store them stacked along N, as one matrix.

    fp32 stays a plain float32 array; one bf16/fp16 tensor already in that dtype is kept as
    it is, e.g. used in place from the memory-mapped file.
    """
    parts = [w] if isinstance(w, (np.ndarray, QuantizedTensor)) else list(w)
    if kind == "stored":
        return _pack_stored(parts, scratch)
    if any(isinstance(p, QuantizedTensor) for p in parts):  # re-packed from float32
        parts = [to_float32(p) for p in parts]
    if kind == "fp32":
        return to_float32(np.concatenate(parts) if len(parts) > 1 else parts[0])
    if len(parts) == 1 and (kind, parts[0].dtype) in (("bf16", BFLOAT16), ("fp16", np.float16)):
        return PackedRows(kind, np.ascontiguousarray(parts[0]), None, scratch)
    # A block of rows at a time, into the final arrays: a float32 copy of a whole matrix (and
    # int8's temporaries, several times its size) would raise the peak memory of loading by
    # more than the matrix itself. (bf16/fp16 -> float32 -> the same type is exact.)
    N, K = sum(p.shape[0] for p in parts), parts[0].shape[1]
    step = max(1, PACK_FLOATS // K)  # rows per block
    data, scales, row = None, None, 0
    for source in parts:
        for start in range(0, source.shape[0], step):
            block = PackedRows.from_float32(kind, to_float32(source[start : start + step]), scratch)
            if data is None:  # the first block tells the storage dtype and the scales' shape
                data = np.empty((N, K), block.data.dtype)  # (N, K)
                if block.scales is not None:
                    scales = np.empty((N, *block.scales.shape[1:]), dtype=np.float32)  # (N, K/G, 1)
            stop = row + block.shape[0]
            data[row:stop] = block.data
            if scales is not None:
                scales[row:stop] = block.scales
            row = stop
            # Memory-mapped? Drop the pages read (see release_pages), the previous block's too:
            # touching a page maps its in-cache neighbours as well (Linux's fault-around).
            release_pages(source[max(0, start - step) : start + step])
        release_pages(source)
    return PackedRows(kind, data, scales, scratch)


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


def _pack_stored(parts: list[Tensor], scratch: Scratch) -> np.ndarray | PackedRows | StackedRows:
    """Matrices kept as stored, stacked along N: neighbouring parts of one stored kind are
    concatenated into one PackedRows; a mix of kinds (q/k in Q4_K, v in Q6_K) becomes a
    StackedRows of them. One float32 matrix alone stays a plain array."""
    if len(parts) == 1 and stored_kind(parts[0]) == "fp32":
        return to_float32(parts[0])
    groups: list[tuple[str, list]] = []  # (kind, parts) runs of one stored kind
    for p in parts:
        if groups and groups[-1][0] == stored_kind(p):
            groups[-1][1].append(p)
        else:
            groups.append((stored_kind(p), [p]))
    packed = []
    for group_kind, group in groups:
        data = [p.raw if group_kind in QUANT_TYPES else p for p in group]  # (n, row) each
        rows = data[0] if len(data) == 1 else np.concatenate(data, axis=0)
        packed.append(PackedRows(group_kind, np.ascontiguousarray(rows), None, scratch))
    return packed[0] if len(packed) == 1 else StackedRows(packed)
