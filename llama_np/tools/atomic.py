"""Files written whole or not at all: a reader (or a second run writing the same file) never
sees half of one. A device or a pipe (/dev/null, /dev/stdout) is written into, never replaced.

    with atomic_path(out / "attention.npz") as tmp:
        np.savez_compressed(tmp, ...)        # written under a name of this process's own

The data goes to a hidden temporary name beside the target, unique to this process and
thread, and is renamed over the target when the block ends (os.replace: atomic within one
file system); on an error the temporary file is removed and the target is left as it was.
Two `trace --out DIR` runs at once used to write the same attention.npz together, which could
leave it unreadable.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import ArgumentError


def check_file_path(path: str | Path, flag: str = "") -> Path:
    """`path`, if a file can be written there (checked before work that takes minutes): a
    regular file, a device or a pipe, or a new name in an existing directory."""
    path = Path(path)
    where = f"{flag} {path}" if flag else str(path)
    if path.is_dir():
        raise ArgumentError(f"{where} is a directory; give the path of a file to write")
    if path.exists() and not (path.is_file() or path.is_char_device() or path.is_fifo()):
        raise ArgumentError(f"{where} is not a regular file; give the path of a file to write")
    if not path.parent.is_dir():
        raise ArgumentError(f"{where}: the directory {path.parent} does not exist; create it first")
    return path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to, renamed to `path` at the end of the block.
    It keeps `path`'s suffix: NumPy's savez adds ".npz" and matplotlib picks the image format
    by it."""
    path = check_file_path(path)
    if path.exists() and not path.is_file():  # /dev/null, /dev/stdout, a pipe: written into
        yield path  # (renaming a file over it would replace the device itself)
        return
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{threading.get_ident()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    """Path.write_text(text) (UTF-8), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
