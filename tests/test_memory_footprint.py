"""Memory is paid for what is used: the KV cache's first write, and one copy of the weights."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from util import small_config

from llama_np import KVCache
from llama_np.model import Step

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
    k = np.ones((T, config.n_kv_heads, config.head_dim), dtype=np.float32)  # (T, KVH, HD)
    step = Step("prefill", np.array([0]), np.array([0]), np.array([T]))
    for layer in range(config.n_layers):
        cache.write(layer, step, k, k)
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


# A model big enough that a second copy of its weights shows clearly (87 MB in float32), small
# enough to load in a fraction of a second.
FOOTPRINT_CONFIG = dict(
    dim=512, n_layers=4, n_heads=8, n_kv_heads=4, hidden_dim=1536, vocab_size=16000,
    max_seq_len=64,
)  # fmt: skip

FIXED_BYTES = 6 * 2**20

# Runs in a fresh interpreter, so that its peak RSS (VmHWM) covers this load alone.
PROBE = """
import json, sys
import os
from pathlib import Path
import numpy as np
import llama_np

def status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

interpreter = status("VmRSS")  # Python, NumPy and llama_np imported, no model yet
model = llama_np.load(sys.argv[1], weights_dtype=sys.argv[2])
maps = Path("/proc/self/maps").read_text()
cache = model.new_cache(16)
logits = model.prefill(list(range(3, 11)), cache)
for _ in range(4):
    logits = model.decode(int(logits.argmax()), cache)
print(json.dumps({
    "interpreter": interpreter,
    "peak": status("VmHWM"),
    "weights": model.weights_nbytes,
    "kv": cache.nbytes,
    "mapped": sys.argv[3] in maps,
}))
"""


@pytest.mark.slow  # ~4 s each: writing the files, a fresh interpreter
@pytest.mark.skipif(not SMAPS.exists(), reason="needs Linux's /proc/self/status")
@pytest.mark.parametrize(
    "file_format, weights_dtype", [("llama2c", "fp32"), ("hf-bf16", "fp32"), ("hf-bf16", "int8")]
)
def test_loading_keeps_one_copy_of_the_weights(tmp_path, file_format, weights_dtype):
    import json
    import subprocess
    import sys

    from checkpoint_writers import write_hf, write_llama2c
    from util import random_tensors

    config = small_config(**FOOTPRINT_CONFIG)
    tensors = random_tensors(config)
    if file_format == "llama2c":
        path = write_llama2c(tmp_path / "model.bin", config, tensors)
        data_file = path
    else:
        dtype = "BF16" if file_format == "hf-bf16" else "F32"
        path = write_hf(tmp_path / "model", config, tensors, dtype=dtype)
        data_file = path / "model.safetensors"
    del tensors
    # The NumPy kernels: numba's compiler (LLVM) alone adds ~130 MB of RSS, a fixed cost that
    # does not grow with the model (README, "The kernel layer"); this test counts weight copies.
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(path), weights_dtype, str(data_file)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "LLAMA_NP_KERNELS": "numpy"},
    )
    r = json.loads(done.stdout)
    # Peak RSS while loading and generating <= weights + KV cache + 10% + the interpreter,
    # which here includes a few MiB that do not grow with the model (each thread's scratch
    # buffers). Before: the float32 copy beside the resident file (+50% from a bf16 file,
    # +100% from f32: 44-87 MB, far over this bound).
    assert r["peak"] - r["interpreter"] <= 1.1 * (r["weights"] + r["kv"]) + FIXED_BYTES, r
    assert not r["mapped"]  # the checkpoint file is unmapped once converted
