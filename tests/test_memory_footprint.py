"""Memory is paid for what is used: the KV cache's first write, and one copy of the weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from util import small_config

from llama_np import KVCache

SMAPS = Path("/proc/self/smaps")
PAGE = 4096


def resident_bytes(*arrays: np.ndarray) -> int:
    """Resident bytes of the memory mappings that hold these arrays (from /proc/self/smaps)."""
    addresses = {a.ctypes.data for a in arrays}
    total, inside = 0, False
    for line in SMAPS.read_text().splitlines():
        first = line.split()[0]
        if "-" in first and not first.endswith(":"):  # a mapping's header: "start-end perms ..."
            start, end = (int(x, 16) for x in first.split("-"))
            inside = any(start <= a < end for a in addresses)
        elif inside and first == "Rss:":
            total += int(line.split()[1]) * 1024
    return total


@pytest.mark.skipif(not SMAPS.exists(), reason="needs Linux's /proc/self/smaps")
def test_kv_cache_first_write_touches_only_the_rows_written():
    # Each (layer, head) slab is 8192 positions x 64 x 4 bytes = 2 MiB: with transparent huge
    # pages, one write per slab would make all of it resident (32 MiB for K and V here).
    config = small_config(dim=256, n_heads=4, n_kv_heads=2, n_layers=4, max_seq_len=8192)
    cache = KVCache(config, max_seq_len=8192)
    assert resident_bytes(cache.k, cache.v) == 0  # creating it touches nothing
    T = 16  # positions written: 16 x 64 x 4 bytes = one 4 KiB page per slab
    k = np.ones((1, config.n_kv_heads, T, config.head_dim), dtype=np.float32)  # (B, KVH, T, HD)
    for layer in range(config.n_layers):
        cache.update(layer, slice(0, 1), np.array([0]), k, k)
    n_slabs = 2 * config.n_layers * config.n_kv_heads  # K and V
    written = n_slabs * T * config.head_dim * 4
    assert written == n_slabs * PAGE
    assert resident_bytes(cache.k, cache.v) <= written + 4 * PAGE
    assert cache.nbytes == 32 * 2**20  # the whole context is still allocated and counted
    np.testing.assert_array_equal(cache.k[3, 0, 1, :T], 1)
    assert not cache.k[:, :, :, T:].any()


def test_kv_cache_arrays_are_ordinary_writable_float_arrays():
    cache = KVCache(small_config(), max_seq_len=8, dtype=np.float16)
    assert cache.k.dtype == cache.v.dtype == np.float16 and cache.k.flags.writeable
    assert cache.k.shape == (2, 1, 2, 8, 8) and not cache.v.any()
