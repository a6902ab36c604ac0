"""Write GGUF v3 files (llama.cpp's format), one tensor at a time.

The layout, from ggml's docs/gguf.md (every number little-endian):

    header        "GGUF", u32 version (3), u64 tensor count, u64 metadata count
    metadata      per entry: key (string), u32 value type, value
    tensor infos  per tensor: name (string), u32 n_dims, u64 dims[n_dims] (fastest-varying
                  first: a NumPy (out, in) matrix is [in, out]), u32 ggml type, u64 offset
                  of its data from the start of the data area (a multiple of the alignment)
    padding       zeros up to a multiple of `general.alignment` (32 unless the file says)
    data          each tensor's bytes, each padded with zeros to the alignment

    string  = u64 length + UTF-8 bytes (no terminator)
    array   = u32 element type + u64 count + the elements (strings, numbers or arrays)

Offsets depend only on each tensor's shape and type, so all the infos are written first and
the data is then produced and written tensor by tensor: a model is never held whole in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import ArgumentError

MAGIC = b"GGUF"
VERSION = 3
ALIGNMENT = 32


class ValueType(IntEnum):
    """GGUF metadata value types (gguf_type)."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# Fixed-size value types as NumPy dtypes (little-endian).
_NUMBER_DTYPES = {
    ValueType.UINT8: np.dtype("<u1"),
    ValueType.INT8: np.dtype("<i1"),
    ValueType.UINT16: np.dtype("<u2"),
    ValueType.INT16: np.dtype("<i2"),
    ValueType.UINT32: np.dtype("<u4"),
    ValueType.INT32: np.dtype("<i4"),
    ValueType.FLOAT32: np.dtype("<f4"),
    ValueType.BOOL: np.dtype("<u1"),
    ValueType.UINT64: np.dtype("<u8"),
    ValueType.INT64: np.dtype("<i8"),
    ValueType.FLOAT64: np.dtype("<f8"),
}


@dataclass(frozen=True)
class TensorType:
    """A ggml tensor type the writer produces: its id and how many bytes a row takes."""

    name: str
    type_id: int  # ggml_type
    block_weights: int  # weights per block (1 for plain floats)
    block_bytes: int

    def nbytes(self, shape: tuple[int, ...]) -> int:
        n = int(np.prod(shape, dtype=np.int64))
        return n // self.block_weights * self.block_bytes


TENSOR_TYPES = {
    t.name: t
    for t in (
        TensorType("F32", 0, 1, 4),
        TensorType("F16", 1, 1, 2),
        TensorType("Q8_0", 8, 32, 34),  # fp16 scale + 32 int8: see export.py
    )
}


@dataclass(frozen=True)
class Value:
    """One metadata value with its GGUF type; arrays (of numbers or strings, not nested) give
    the type of their elements."""

    type: ValueType
    value: object
    element_type: ValueType | None = None  # for ARRAY


def typed(value) -> Value:
    """A Python or NumPy value with the GGUF type llama.cpp expects for it.

    Scalar ints are UINT32 (every integer key llama.cpp reads for a llama model is u32: lengths,
    counts, token ids, file type), INT32 when negative; floats FLOAT32; bools BOOL; str STRING.
    Lists and 1-D arrays are arrays: ints INT32 (token types), floats FLOAT32 (scores),
    strings STRING. NumPy values keep their own dtype. A `Value` passes through unchanged.
    """
    if isinstance(value, Value):
        return value
    if isinstance(value, np.ndarray):
        return Value(ValueType.ARRAY, value.ravel(), _dtype_type(value.dtype))
    if isinstance(value, (list, tuple)):
        items = list(value)
        if all(isinstance(v, str) for v in items):
            element = ValueType.STRING
        elif all(isinstance(v, bool) for v in items):
            element = ValueType.BOOL
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in items):
            element = ValueType.INT32
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
            element = ValueType.FLOAT32
        else:
            raise ArgumentError(f"GGUF arrays hold one type; cannot write {value!r:.80}")
        return Value(ValueType.ARRAY, items, element)
    if isinstance(value, np.generic):
        return Value(_dtype_type(value.dtype), value)
    if isinstance(value, bool):
        return Value(ValueType.BOOL, value)
    if isinstance(value, int):
        return Value(ValueType.UINT32 if value >= 0 else ValueType.INT32, value)
    if isinstance(value, float):
        return Value(ValueType.FLOAT32, value)
    if isinstance(value, str):
        return Value(ValueType.STRING, value)
    raise ArgumentError(f"no GGUF type for metadata value {value!r:.80}")


def _dtype_type(dtype: np.dtype) -> ValueType:
    for kind, candidate in _NUMBER_DTYPES.items():
        if kind != ValueType.BOOL and candidate == dtype.newbyteorder("<"):
            return kind
    if dtype == np.bool_:
        return ValueType.BOOL
    raise ArgumentError(f"no GGUF type for NumPy dtype {dtype}")


@dataclass(frozen=True)
class TensorEntry:
    """A tensor to write: its data is made only when the writer reaches it."""

    name: str
    shape: tuple[int, ...]  # NumPy order: (out, in) for matrices
    type: TensorType
    # () -> the tensor's bytes as a contiguous array: float32/float16 of `shape`, or for
    # block types the (rows, row_bytes) uint8 blocks
    data: Callable[[], np.ndarray]


def write_gguf(
    path: str | Path,
    metadata: Mapping[str, object],
    tensors: list[TensorEntry],
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Write a GGUF v3 file: `metadata` (values as `typed` types them), then `tensors`.

    `general.alignment` is written when given in `metadata` (a u32) and used for padding;
    otherwise the default 32 applies. `progress(done, total)` is called after each tensor.
    """
    alignment = int(typed(metadata.get("general.alignment", ALIGNMENT)).value)
    if alignment <= 0 or alignment % 8:
        raise ArgumentError(f"general.alignment must be a positive multiple of 8, got {alignment}")
    with open(path, "wb") as f:
        f.write(MAGIC)
        _write(f, "<u4", VERSION)
        _write(f, "<u8", len(tensors))
        _write(f, "<u8", len(metadata))
        for key, value in metadata.items():
            _write_string(f, key)
            _write_value(f, typed(value))
        offset = 0
        for t in tensors:
            _write_string(f, t.name)
            _write(f, "<u4", len(t.shape))
            for dim in reversed(t.shape):  # ggml lists the fastest-varying dimension first
                _write(f, "<u8", dim)
            _write(f, "<u4", t.type.type_id)
            _write(f, "<u8", offset)
            offset += _padded(t.type.nbytes(t.shape), alignment)
        _pad(f, alignment)
        for i, t in enumerate(tensors):
            data = np.ascontiguousarray(t.data())
            expected = t.type.nbytes(t.shape)
            if data.nbytes != expected:  # a bug in the caller, not bad user input
                raise AssertionError(f"{t.name}: {data.nbytes} bytes of data, expected {expected}")
            f.write(memoryview(data).cast("B"))
            _pad(f, alignment)
            if progress is not None:
                progress(i + 1, len(tensors))


def _write(f: BinaryIO, dtype: str, value) -> None:
    f.write(np.array(value, dtype=dtype).tobytes())


def _write_string(f: BinaryIO, s: str) -> None:
    data = s.encode("utf-8")
    _write(f, "<u8", len(data))
    f.write(data)


def _write_value(f: BinaryIO, v: Value) -> None:
    _write(f, "<u4", v.type)
    if v.type == ValueType.STRING:
        _write_string(f, v.value)
    elif v.type == ValueType.ARRAY:
        _write(f, "<u4", v.element_type)
        _write(f, "<u8", len(v.value))
        if v.element_type == ValueType.STRING:
            for s in v.value:
                _write_string(f, s)
        else:  # numbers: one contiguous block
            f.write(np.asarray(v.value, dtype=_NUMBER_DTYPES[v.element_type]).tobytes())
    else:
        _write(f, _NUMBER_DTYPES[v.type].str, v.value)


def _padded(n: int, alignment: int) -> int:
    return n + (-n % alignment)


def _pad(f: BinaryIO, alignment: int) -> None:
    f.write(b"\0" * (-f.tell() % alignment))
