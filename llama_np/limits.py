"""Memory limits: refuse to load a model or allocate a KV cache that would not fit.

A model too large for the machine does not fail cleanly on its own: the allocation usually
succeeds and the machine swaps until it is unusable. So the loaders and `Model.new_cache`
compare the bytes they are about to allocate with the memory available now, and raise
MemoryLimitError (how much is needed, how much there is, what would reduce it) instead.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np

from .config import LlamaConfig
from .errors import ArgumentError, MemoryLimitError
from .schema import n_params, weights_nbytes


def available_memory() -> int | None:
    """Bytes of memory that can be allocated without swapping, or None if unknown.

    Linux's MemAvailable counts free memory plus reclaimable page cache (e.g. a memory-mapped
    checkpoint that was just read); elsewhere, free physical pages.
    """
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_fits(needed: int, what: str, fixes: Sequence[str]) -> None:
    """Raise MemoryLimitError if `needed` bytes for `what` exceed the available memory."""
    available = available_memory()
    if available is None or needed <= available:
        return
    raise MemoryLimitError(
        f"{what} needs {format_bytes(needed)} but only {format_bytes(available)} of memory is "
        f"available; to reduce it: {'; '.join(fixes)}"
    )


def model_bytes(
    config: LlamaConfig, weights_dtype: str = "fp32", stored_nbytes: int | None = None
) -> int:
    """Bytes a loaded model allocates: its weights plus the RoPE table.

    The weights are `stored_nbytes` when the loader counted them in the file (a GGUF kept as
    stored), else schema.weights_nbytes of the config. The table of rotations is computed
    in float64 (angles, then cos or sin) into complex64: S_max × HD/2 × (8 + 8 + 8) bytes at
    the peak.
    """
    rope = config.max_seq_len * (config.head_dim // 2) * 24
    if stored_nbytes is None:
        stored_nbytes = weights_nbytes(config, weights_dtype)
    return stored_nbytes + rope


def check_model_fits(
    config: LlamaConfig,
    source: str,
    weights_dtype: str = "fp32",
    stored_nbytes: int | None = None,
) -> None:
    """Raise MemoryLimitError if the model in `source` would not fit in memory."""
    needed = model_bytes(config, weights_dtype, stored_nbytes)
    if stored_nbytes is None:
        stored_nbytes = weights_nbytes(config, weights_dtype)
    fixes = ["use a smaller model", "close other programs to free memory"]
    if weights_dtype not in ("int8", "stored"):
        fixes.insert(0, "keep the weights compressed: --weights-dtype int8 (or bf16)")
    if needed > 2 * stored_nbytes:  # the RoPE table dominates
        fixes.insert(
            0, f"a checkpoint with a shorter context (its max_seq_len is {config.max_seq_len:,})"
        )
    check_fits(
        needed,
        f"{source}: the model ({n_params(config):,} parameters as {weights_dtype}, context "
        f"{config.max_seq_len:,})",
        fixes,
    )


def check_kv_cache_fits(
    config: LlamaConfig, max_seq_len: int, batch_size: int, bytes_per_value: int = 4
) -> None:
    """Raise MemoryLimitError if a KV cache of this size would not fit in memory."""
    fixes = [
        f"fewer positions (max_seq_len {max_seq_len:,}: model.new_cache(max_seq_len=...), or "
        f"fewer new tokens with generate's max_new_tokens / the CLI's -n)"
    ]
    if bytes_per_value > 2:
        fixes.append("a float16 cache: model.new_cache(..., dtype=np.float16)")
    if batch_size > 1:
        fixes.append(f"fewer batch rows (batch_size {batch_size})")
    check_fits(
        config.kv_cache_bytes(max_seq_len, batch_size, bytes_per_value),
        f"a KV cache of {max_seq_len:,} positions × {batch_size} sequence(s)",
        fixes,
    )


def format_bytes(n: int) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} bytes"


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6}
_UNITS |= {"mib": 2**20, "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12}
_UNITS |= {"tib": 2**40}


def parse_bytes(text: str | int, what: str = "size") -> int:
    """A byte count from "1GiB", "512 MiB", "1.5GB" or a plain number of bytes."""
    if isinstance(text, int | np.integer) and not isinstance(text, bool | np.bool_):
        value = int(text)
    else:
        match = isinstance(text, str) and re.fullmatch(
            r"\s*([0-9]+(?:\.[0-9]*)?)\s*([a-zA-Z]*)\s*", text
        )
        unit = match and match.group(2).lower()
        if not match or unit not in _UNITS:
            raise ArgumentError(
                f"{what} must be a number of bytes with an optional unit (1GiB, 512MiB, "
                f"2GB, 1000000), got {text!r}"
            )
        value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ArgumentError(f"{what} must be more than 0 bytes, got {text!r}")
    return value
