"""Read PyTorch `.pth` files without torch and without running any code from the file.

`torch.save` writes a zip archive:

    <prefix>/data.pkl      a pickle of the state dict
    <prefix>/data/<key>    one file per storage: the raw little-endian bytes of a tensor's data
    <prefix>/byteorder     "little" (absent in old files, which are little-endian too)

Unpickling normally imports and calls whatever globals the pickle names, so loading an
untrusted .pth with `pickle` (or `torch.load(weights_only=False)`) can run any code. Here a
restricted Unpickler resolves only the handful of names a state dict of tensors uses, each
mapped to a small function of ours; any other global is refused before anything is called:

    torch._utils._rebuild_tensor_v2   -> _rebuild_tensor: a view of a storage as an ndarray
    torch._utils._rebuild_parameter   -> returns its tensor
    collections.OrderedDict           -> _StateDict, a sealed OrderedDict (the state dict and
                                         empty hook dicts)
    torch.FloatStorage / HalfStorage / BFloat16Storage -> markers naming the storage dtype

Nothing else can be built: the pickle has no way to name numpy or any other module, and our
objects refuse the BUILD opcode (see _Sealed).

Storages are "persistent ids" in the pickle: ('storage', type, key, location, numel). We
memory-map them from the archive (torch stores members uncompressed), so a tensor is a
read-only view into the file, as with safetensors.
"""

from __future__ import annotations

import io
import math
import pickle
import struct
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..dtypes import BFLOAT16
from ..errors import CheckpointError
from ..validate import regular_file

MAX_PICKLE_BYTES = 64 * 2**20
# What zipfile and the unpickler raise on damaged bytes (the fuzz tests feed them thousands).
_DAMAGED = (
    pickle.UnpicklingError,
    zipfile.BadZipFile,
    zlib.error,
    struct.error,
    EOFError,
    OSError,
    ValueError,  # also UnicodeDecodeError
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    OverflowError,
    RecursionError,
    NotImplementedError,  # zipfile: an unsupported compression method
    # A damaged opcode can claim a frame or string of petabytes: the unpickler's allocation
    # fails at once. data.pkl itself is at most MAX_PICKLE_BYTES, so this is a bad length.
    MemoryError,
)

STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": BFLOAT16,
}


class _Sealed:
    """Base of the objects a pickle can reach by name: the BUILD opcode (which normally sets
    an object's state) may not change them, so one file cannot tamper with the next load."""

    __slots__ = ()

    def __setstate__(self, state) -> None:
        raise CheckpointError("the pickle tries to modify a loader object (BUILD opcode)")


class _StorageType(_Sealed):
    """Stands for torch.FloatStorage etc. in the pickle: only its dtype is used."""

    __slots__ = ("dtype",)

    def __init__(self, name: str) -> None:
        self.dtype = STORAGE_DTYPES[name]


class _Storage(_Sealed):
    """A storage read from the archive: 1-D, contiguous, in its dtype."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray) -> None:
        self.array = array


class _Function(_Sealed):
    """One of our functions, callable from the pickle (REDUCE) but not modifiable."""

    __slots__ = ("fn",)

    def __init__(self, fn) -> None:
        self.fn = fn

    def __call__(self, *args):
        return self.fn(*args)


class _StateDict(OrderedDict):
    """What the pickle gets for collections.OrderedDict: an OrderedDict that BUILD may not
    touch. A plain OrderedDict would take any attributes from BUILD, e.g. an `items` that
    shadows the method the loader checks the contents with."""

    def __setstate__(self, state) -> None:
        raise CheckpointError("the pickle tries to modify a state dict (BUILD opcode)")


def _rebuild_tensor(storage, offset, size, stride, requires_grad, hooks, metadata=None):
    """torch._utils._rebuild_tensor_v2: elements `offset + Σ index·stride` of a storage."""
    if not isinstance(storage, _Storage):
        raise CheckpointError(f"tensor storage must come from the archive, found {storage!r:.60}")
    storage = storage.array  # 1-D and contiguous, so element strides can become byte strides
    if not (_is_count(offset) and _is_shape(size) and _is_shape(stride)) or len(size) != len(
        stride
    ):
        raise CheckpointError(
            f"invalid tensor layout: offset {offset!r:.40}, size {size!r:.60}, "
            f"stride {stride!r:.60}"
        )
    n = math.prod(size)
    last = offset + sum((d - 1) * s for d, s in zip(size, stride, strict=True)) if n else offset - 1
    if last >= storage.size:
        raise CheckpointError(
            f"tensor of size {tuple(size)} at offset {offset} needs element {last} of a storage "
            f"with {storage.size}"
        )
    contiguous = tuple(math.prod(size[i + 1 :]) for i in range(len(size)))
    if n == 0 or all(s == c for d, s, c in zip(size, stride, contiguous, strict=True) if d > 1):
        return storage[offset : offset + n].reshape(size)
    item = storage.dtype.itemsize
    return np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=[s * item for s in stride], writeable=False
    )


def _rebuild_parameter(data, requires_grad, hooks):
    """torch._utils._rebuild_parameter: an nn.Parameter is just its tensor here."""
    return data


def _is_count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _is_shape(x) -> bool:
    return isinstance(x, tuple) and all(_is_count(d) for d in x)


SAFE_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _Function(_rebuild_tensor),
    ("torch._utils", "_rebuild_parameter"): _Function(_rebuild_parameter),
    ("collections", "OrderedDict"): _StateDict,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, load_storage) -> None:
        super().__init__(io.BytesIO(data))
        self.load_storage = load_storage

    def find_class(self, module: str, name: str):
        # Every global a pickle uses (GLOBAL, STACK_GLOBAL, INST, OBJ, EXT*) comes through here.
        if (module, name) not in SAFE_GLOBALS:
            raise CheckpointError(
                f"refuses to load global {module}.{name}: a checkpoint of plain "
                f"tensors never needs it, and unpickling it could run code from the file"
            )
        return SAFE_GLOBALS[module, name]

    def persistent_load(self, pid):
        if not (
            isinstance(pid, tuple)
            and len(pid) == 5
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)
            and isinstance(pid[2], str)
            and _is_count(pid[4])
        ):
            raise CheckpointError(f"unexpected persistent id {pid!r:.100}")
        return self.load_storage(pid[2], pid[1].dtype, pid[4])


def read_pth(path: str | Path) -> dict[str, np.ndarray]:
    """The state dict in a `torch.save` zip file: {name: read-only ndarray view}."""
    path = Path(path)
    regular_file(path, CheckpointError, "PyTorch checkpoint")  # a named pipe would block
    try:
        archive = zipfile.ZipFile(path)
    except _DAMAGED as e:
        raise CheckpointError(
            f"{path}: not a PyTorch zip checkpoint ({type(e).__name__}: {e}); files from torch "
            f"< 1.6 (legacy tar/pickle format) are not supported"
        ) from e
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise CheckpointError(
                f"{path}: expected one <prefix>/data.pkl in the archive, found {len(pickles)}"
            )
        prefix = pickles[0][: -len("data.pkl")]
        data = np.memmap(path, dtype=np.uint8, mode="r")  # read-only: never writes to the file
        storages: dict[str, _Storage] = {}  # tensors may share a storage

        def load_storage(key: str, dtype: np.dtype, numel: int) -> _Storage:
            if key not in storages:
                raw = _member_bytes(archive, data, f"{prefix}data/{key}")
                if raw.size != numel * dtype.itemsize:
                    raise CheckpointError(
                        f"storage {key} has {raw.size} bytes, expected {numel} × {dtype.itemsize}"
                    )
                storages[key] = _Storage(raw.view(dtype))
            if storages[key].array.dtype != dtype:
                raise CheckpointError(f"storage {key} is used with two dtypes")
            return storages[key]

        try:
            if f"{prefix}byteorder" in archive.namelist():
                if archive.read(f"{prefix}byteorder") != b"little":
                    raise CheckpointError("big-endian checkpoints are not supported")
            state = _RestrictedUnpickler(_read_pickle(archive, pickles[0]), load_storage).load()
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {e}") from None
        except _DAMAGED as e:
            # The file is untrusted input: what a malformed pickle or archive makes the
            # unpickler or zipfile raise is a broken checkpoint (--debug shows the cause).
            raise CheckpointError(f"{path}: corrupt checkpoint: {type(e).__name__}: {e}") from e
    # Read the contents with dict's own methods, never with the object's (which a pickle
    # could have given attributes of its own).
    if type(state) not in (dict, _StateDict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    tensors = {k: v for k, v in dict.items(state)}
    if not all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in tensors.items()):
        raise CheckpointError(f"{path}: expected a state dict of tensors by name")
    return tensors


def _read_pickle(archive: zipfile.ZipFile, name: str) -> bytes:
    """The bytes of data.pkl, refusing more than MAX_PICKLE_BYTES: a compressed member can
    inflate to gigabytes. (A state dict's pickle is ~200 bytes per tensor.)"""
    with archive.open(name) as f:
        data = f.read(MAX_PICKLE_BYTES + 1)
    if len(data) > MAX_PICKLE_BYTES:
        raise CheckpointError(
            f"{name} inflates to more than {MAX_PICKLE_BYTES:,} bytes; a state dict's pickle "
            f"is far smaller: the file is corrupt or not a checkpoint"
        )
    return data


def _member_bytes(archive: zipfile.ZipFile, data: np.ndarray, name: str) -> np.ndarray:
    """The bytes of one archive member: a view into the memory map when stored uncompressed."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise CheckpointError(f"storage {name} is missing from the archive") from None
    if info.compress_type != zipfile.ZIP_STORED:
        return np.frombuffer(archive.read(name), dtype=np.uint8)
    # The local file header (30 bytes + name + extra field) precedes the data; its extra field
    # can differ from the central directory's (torch pads it to align the data).
    header = bytes(data[info.header_offset : info.header_offset + 30])
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raise CheckpointError(f"bad zip local header for {name}")
    name_len, extra_len = struct.unpack_from("<HH", header, 26)
    start = info.header_offset + 30 + name_len + extra_len
    if start + info.file_size > data.size:
        raise CheckpointError(f"storage {name} runs past the end of the file (truncated?)")
    return data[start : start + info.file_size]
