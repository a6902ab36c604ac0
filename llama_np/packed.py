"""Weights kept smaller than float32 (bf16, fp16, int8) and widened to float32 as they are used.

The default, fp32, keeps every matrix as a plain float32 array and is what model.py reads
first. The other formats exist so that big models fit in memory: an 8B-parameter model is
32 GB in fp32 but 16 GB in bf16 and 8.5 GB in int8.

NumPy can only multiply float32 fast (BLAS); there is no fast float16 or int8 matmul. So a
compressed matrix is widened to float32 a few rows at a time into one small preallocated
scratch buffer, and each piece is multiplied right away, while it is still in the CPU cache.
That is the reference path. With the optional compiled kernels (llama_np/kernels/, numba),
decode's products instead widen each weight inside the dot product: `PackedTransposed`
asks `kernels.compiled` first and falls back to this path.

    bf16  the top 16 bits of a float32: widening is a shift (exact)
    fp16  IEEE half precision: NumPy's cast (exact, but slower than the bf16 shift)
    int8  Q8_0-style: each run of GROUP_SIZE weights along a row shares one float32 scale,
          w ≈ scale * q with q in -127..127 and scale = max|w| / 127 of the group

A `PackedRows` holds an (N, K) matrix as rows, like an embedding table; its `.T` is the (K, N)
matrix that activations multiply, `x @ packed.T`, exactly as the fp32 path does with a
transposed view of the (out, in) checkpoint matrix. So model.py runs the same code either way.
"""

from __future__ import annotations

import functools
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .dtypes import BFLOAT16, bfloat16_from_float32, to_float32
from .errors import ArgumentError
from .kernels import compiled

WEIGHT_DTYPES = ("fp32", "bf16", "fp16", "int8")
GROUP_SIZE = 32  # int8 weights per scale, as llama.cpp's Q8_0
# Floats widened per piece: 1 MiB of float32, small enough to stay in the L2 cache between
# being written and being multiplied.
CHUNK_FLOATS = 1 << 18


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
    """
    check_weights_dtype(weights_dtype)
    if weights_dtype == "int8":
        return n * k + 4 * n * (k // int8_group_size(k))
    return n * k * (4 if weights_dtype == "fp32" else 2)


def check_weights_dtype(weights_dtype: str) -> str:
    if weights_dtype not in WEIGHT_DTYPES:
        raise ArgumentError(
            f"weights_dtype must be one of {', '.join(WEIGHT_DTYPES)}, got {weights_dtype!r}"
        )
    return weights_dtype


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
    """An (N, K) matrix stored as bf16, fp16 or int8 rows; rows widen to float32 on demand."""

    # Makes `ndarray @ packed.T` call our __rmatmul__ instead of converting us to an array.
    __array_ufunc__ = None

    def __init__(self, kind: str, data: np.ndarray, scales: np.ndarray | None, scratch: Scratch):
        self.kind = kind  # "bf16" | "fp16" | "int8"
        self.data = data  # (N, K) BFLOAT16, float16 or int8
        self.scales = scales  # (N, K / group, 1) float32 for int8, else None
        self.scratch = scratch

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
    def shape(self) -> tuple[int, int]:
        return self.data.shape

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + (0 if self.scales is None else self.scales.nbytes)

    @property
    def T(self) -> PackedTransposed:
        return PackedTransposed(self)

    def all_finite(self) -> bool:
        """Whether every weight is finite, widened piece by piece (never the whole matrix)."""
        N, K = self.shape
        step = max(1, CHUNK_FLOATS // K)
        return all(
            np.isfinite(
                self.widen(i, min(N, i + step), self.scratch.rows(min(step, N - i), K))
            ).all()
            for i in range(0, N, step)
        )

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
    elif kind == "fp16":
        np.copyto(out, rows)
    else:  # int8 × its group's scale: one multiply over (rows, groups, GROUP_SIZE)
        n, n_groups = rows.shape[0], scales.shape[1]
        np.multiply(rows.reshape(n, n_groups, -1), scales, out=out.reshape(n, n_groups, -1))
    return out


class PackedTransposed:
    """The (K, N) transpose of a PackedRows, for `x @ w`: widened and multiplied in pieces."""

    __array_ufunc__ = None

    def __init__(self, packed: PackedRows) -> None:
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
        out = np.empty((*x.shape[:-1], N), dtype=np.float32)  # (..., N)
        kernel = compiled(self.packed, x.size // K)
        if kernel is not None:  # compiled: widens each weight inside its dot product (kernels/)
            kernel(x.reshape(-1, K), out.reshape(-1, N))
            return out
        step = max(1, CHUNK_FLOATS // K)  # rows per piece

        def piece(start: int) -> None:
            stop = min(N, start + step)
            w = self.packed.widen(start, stop, self.packed.scratch.rows(stop - start, K))
            np.matmul(x, w.T, out=out[..., start:stop])

        if x.size <= 8 * K:
            # Decode: widening (elementwise NumPy work, one core each) is the bottleneck, and
            # NumPy releases the GIL while it runs, so threads widen pieces side by side.
            list(_widen_pool().map(piece, range(0, N, step)))
        else:  # prefill: the matmuls dominate and BLAS already uses every core
            for start in range(0, N, step):
                piece(start)
        return out


# A weight matrix as the model holds it: a float32 array, or a compressed one that
# multiplies like an array (`x @ w`) and knows its `shape`, `nbytes` and `all_finite()`.
Matrix = np.ndarray | PackedRows | PackedTransposed


def all_finite(w: Matrix) -> bool:
    """Whether every weight of `w` is finite, whatever its storage."""
    return bool(np.isfinite(w).all()) if isinstance(w, np.ndarray) else w.all_finite()


def pack(kind: str, w: np.ndarray, scratch: Scratch) -> np.ndarray | PackedRows:
    """Store an (N, K) float32 or bf16/fp16 checkpoint matrix as `kind`.

    fp32 stays a plain float32 array; bf16/fp16 tensors already in that dtype are kept as they
    are (no float32 copy of the whole matrix is made).
    """
    if kind == "fp32":
        return to_float32(w)
    if kind == "bf16" and w.dtype == BFLOAT16:
        return PackedRows(kind, np.ascontiguousarray(w), None, scratch)
    if kind == "fp16" and w.dtype == np.float16:
        return PackedRows(kind, np.ascontiguousarray(w), None, scratch)
    return PackedRows.from_float32(kind, to_float32(w), scratch)
