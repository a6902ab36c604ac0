"""Storage dtypes of checkpoint tensors, and their conversion to float32 for compute.

NumPy has no bfloat16. A bf16 tensor is kept as its raw 16-bit patterns under a one-field
structured dtype, `BFLOAT16`, so its type stays visible (a plain uint16 array could be
anything) while memory-mapping and slicing work as for any array. bfloat16 is the top half
of a float32, so widening is a 16-bit shift.
"""

from __future__ import annotations

import mmap

import numpy as np

from .quants import QuantizedTensor

BFLOAT16 = np.dtype([("bf16", "<u2")])


def to_float32(array: np.ndarray | QuantizedTensor) -> np.ndarray:
    """float32 copy of a float32/float16/bfloat16 tensor (no copy if it already is float32),
    or of a ggml-block (GGUF) matrix, dequantized."""
    if isinstance(array, QuantizedTensor):
        return array.to_float32()
    if array.dtype == BFLOAT16:
        bits = array.view("<u2").astype(np.uint32)  # (...,) the 16 high bits of each float32
        bits <<= 16
        return bits.view(np.float32)
    if array.dtype.kind != "f":
        raise TypeError(f"cannot convert a tensor of dtype {array.dtype} to float32")
    return np.asarray(array, dtype=np.float32)


def bfloat16_from_float32(array: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (round to nearest even), as BFLOAT16 patterns."""
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    return ((bits + rounding) >> 16).astype("<u2").view(BFLOAT16)


def release_pages(array: np.ndarray) -> None:
    """Drop a memory-mapped tensor's pages from this process's memory, once it is converted.

    Loaders memory-map checkpoint files: the pages of the file a tensor was read from stay
    resident (and count in the process's RSS) while the mapping exists, beside the converted
    copy, unless told otherwise (MADV_DONTNEED). For a read-only file mapping this discards
    nothing: the bytes stay in the OS's file cache and are read back if the tensor is used
    again (as compressed weights used in place are). Arrays not backed by an mmap are left
    alone, as are platforms without madvise.
    """
    base = array
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None)
    if base is None or base.closed or not hasattr(mmap, "MADV_DONTNEED"):
        return
    map_start = np.frombuffer(base, dtype=np.uint8).ctypes.data
    low = high = array.ctypes.data  # the first and one past the last byte it spans
    for n, stride in zip(array.shape, array.strides, strict=True):
        (low, high) = (
            (low + stride * (n - 1), high) if stride < 0 else (low, high + stride * (n - 1))
        )
    high += array.itemsize
    page = mmap.PAGESIZE
    start = (low - map_start) // page * page  # whole pages, rounded outwards
    stop = min(len(base), -(-(high - map_start) // page) * page)
    if stop > start:
        base.madvise(mmap.MADV_DONTNEED, start, stop - start)
