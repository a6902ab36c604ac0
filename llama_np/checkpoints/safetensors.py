"""A strict, memory-mapping reader for `.safetensors` files (Hugging Face's weight format).

The format is simple enough to read directly, which lets us memory-map the file and keep
bfloat16 tensors as their raw bits (the safetensors library's NumPy API has no bfloat16):

    8 bytes     N, little-endian u64: length of the JSON header
    N bytes     JSON {"name": {"dtype": "BF16", "shape": [out, in], "data_offsets": [b, e]},
                      ..., optional "__metadata__": {str: str}}
    rest        the data area: tensor `name` is bytes [b, e) of it, row-major, little-endian

Every tensor comes back as a read-only view into the memory map, in the file's dtype
(float32, float16 or dtypes.BFLOAT16): nothing is read from disk until it is used, so the
model is never held twice in memory while it is converted to float32.

A sharded checkpoint has a `model.safetensors.index.json` whose "weight_map" says which shard
file holds each tensor.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..dtypes import BFLOAT16
from ..errors import CheckpointError
from ..validate import (
    SAFETENSORS_HEADER,
    SAFETENSORS_INDEX,
    SAFETENSORS_METADATA,
    parse_json,
    read_json,
    regular_file,
    validate,
)

DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": BFLOAT16}
MAX_HEADER_BYTES = 100 * 2**20  # real headers are a few hundred KB; more means a broken file
INDEX_FILE = "model.safetensors.index.json"


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """All tensors of one `.safetensors` file, as read-only memory-mapped views."""
    path = Path(path)
    size = regular_file(path, CheckpointError, "safetensors file").st_size
    if size < 8:
        raise CheckpointError(f"{path}: {size} bytes is too short for a safetensors file (8+)")
    data = np.memmap(path, dtype=np.uint8, mode="r")  # read-only: never writes to the file
    header_len = int(data[:8].view("<u8")[0])
    if header_len > min(size - 8, MAX_HEADER_BYTES):
        raise CheckpointError(
            f"{path}: safetensors header claims {header_len} bytes, but the file has "
            f"{size - 8} after the length field (limit {MAX_HEADER_BYTES}); the file is truncated "
            f"or not a safetensors file"
        )
    source = f"{path}: safetensors header"
    header = parse_json(bytes(data[8 : 8 + header_len]), source, CheckpointError)
    if not isinstance(header, dict):
        raise CheckpointError(f"{source} must be a JSON object, found {type(header).__name__}")
    metadata = header.pop("__metadata__", None)
    validate(metadata, SAFETENSORS_METADATA, f"{source} __metadata__", CheckpointError)
    header = validate(header, SAFETENSORS_HEADER, source, CheckpointError)

    data_start = 8 + header_len
    data_size = size - data_start
    spans = []  # (begin, end, name) to check that tensors do not overlap
    tensors: dict[str, np.ndarray] = {}
    for name, entry in header.items():
        dtype, shape, begin, end = _parse_entry(path, name, entry)
        if not 0 <= begin <= end <= data_size:
            raise CheckpointError(
                f"{path}: tensor {name!r} has data_offsets [{begin}, {end}] outside the data area "
                f"of {data_size} bytes; the file is truncated or corrupt"
            )
        n_bytes = math.prod(shape) * dtype.itemsize
        if end - begin != n_bytes:
            raise CheckpointError(
                f"{path}: tensor {name!r} has {end - begin} bytes of data, but dtype "
                f"{entry['dtype']} × shape {shape} needs {n_bytes}"
            )
        spans.append((begin, end, name))
        tensors[name] = data[data_start + begin : data_start + end].view(dtype).reshape(shape)
    spans.sort()
    for (_, end0, name0), (begin1, _, name1) in itertools.pairwise(spans):
        if begin1 < end0:
            raise CheckpointError(f"{path}: tensors {name0!r} and {name1!r} overlap in the file")
    return tensors


def _parse_entry(path: Path, name: str, entry: dict) -> tuple[np.dtype, tuple[int, ...], int, int]:
    """One header entry (checked by validate.SAFETENSORS_ENTRY); -> (dtype, shape, begin, end)."""
    if entry["dtype"] not in DTYPES:
        raise CheckpointError(
            f"{path}: tensor {name!r} has dtype {entry['dtype']!r}; supported: "
            f"{', '.join(DTYPES)} (quantized checkpoints are not)"
        )
    begin, end = entry["data_offsets"]
    return DTYPES[entry["dtype"]], tuple(entry["shape"]), begin, end


def read_safetensors_dir(directory: Path) -> dict[str, np.ndarray]:
    """The tensors of a model directory: sharded (index file) or one `model.safetensors`."""
    if not (directory / INDEX_FILE).exists():
        files = sorted(directory.glob("*.safetensors"))
        if len(files) != 1:
            found = ", ".join(p.name for p in files) or "none"
            raise CheckpointError(
                f"{directory}: expected model.safetensors, or {INDEX_FILE} for a sharded "
                f"checkpoint; found .safetensors files: {found}"
            )
        return read_safetensors(files[0])
    return read_shards(directory, INDEX_FILE, read_safetensors)


def read_shards(
    directory: Path, index_file: str, read: Callable[[Path], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """The tensors of a sharded checkpoint: `index_file`'s weight_map says which shard holds
    each; `read` reads one shard (safetensors, or PyTorch's .bin)."""
    index_path = directory / index_file
    index = read_json(index_path, CheckpointError)
    weight_map = validate(index, SAFETENSORS_INDEX, index_path, CheckpointError)["weight_map"]
    tensors: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = directory / shard  # validated: relative, no "..": inside `directory`
        if not shard_path.exists():
            raise CheckpointError(
                f"{shard_path}: shard listed in {index_file} is missing; download it again"
            )
        for name, array in read(shard_path).items():
            if weight_map.get(name) != shard:
                raise CheckpointError(
                    f"{shard_path}: holds tensor {name!r}, which {index_file} puts in "
                    f"{weight_map.get(name)!r}; the index does not describe these shards"
                )
            tensors[name] = array
    absent = [n for n in weight_map if n not in tensors]
    if absent:
        raise CheckpointError(
            f"{directory}: tensors listed in {index_file} are in none of the shards: {absent[:5]}"
        )
    return tensors


def write_safetensors(
    path: str | Path,
    tensors: list[tuple[str, tuple[int, ...], str, Callable[[], np.ndarray]]],
    metadata: dict[str, str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Write a `.safetensors` file, making and writing one tensor at a time.

    `tensors` is a list of (name, shape, dtype, make): dtype "F32", "F16" or "BF16", and
    make() returns the tensor's data in that dtype (BF16 as dtypes.BFLOAT16). The header
    needs only shapes and dtypes, so it is written first and no two tensors are ever held
    in memory together. `progress(done, total)` is called after each tensor.
    """
    header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, shape, dtype, _ in tensors:
        n_bytes = math.prod(shape) * DTYPES[dtype].itemsize
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + n_bytes],
        }
        offset += n_bytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # pad with spaces so that the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for i, (name, shape, dtype, make) in enumerate(tensors):
            data = np.ascontiguousarray(make())
            if data.dtype != DTYPES[dtype] or data.shape != tuple(shape):  # a caller's bug
                raise AssertionError(
                    f"{name}: made {data.dtype} {data.shape}, expected {dtype} {shape}"
                )
            f.write(memoryview(data.view(np.uint8)).cast("B"))
            if progress is not None:
                progress(i + 1, len(tensors))
