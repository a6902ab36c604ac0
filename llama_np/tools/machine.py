"""This machine's limits, measured with NumPy: matmul FLOP/s and memory bandwidth.

Prefill is bound by the first (matrix-matrix products), decode by the second (each weight
byte is read once per token for 2 FLOPs). Measuring both with the same NumPy/BLAS that runs
the model gives the roofline that llama_np's speed is judged against. The result is cached
in ~/.cache/llama_np/machine.json (delete it to measure again).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import ArgumentError
from ..validate import MACHINE_CACHE, read_json, validate

CACHE_FILE = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llama_np" / "machine.json"
)


@dataclass(frozen=True)
class MachinePeaks:
    matmul_flops: float  # float32 FLOP/s of a large matrix-matrix product (sgemm)
    memory_bandwidth: float  # bytes/s streamed by a large float32 matrix-vector product (sgemv)
    description: str = ""


def measure(repeats: int = 7) -> MachinePeaks:
    """Time a 2048³ sgemm and a 512 MiB sgemv; report the median of `repeats` runs each."""
    return MachinePeaks(
        matmul_flops=_sgemm_flops(repeats),
        memory_bandwidth=_sgemv_bandwidth(repeats),
        description=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    )


def _sgemm_flops(repeats: int, n: int = 2048) -> float:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    return 2 * n**3 / _median_time(lambda: np.matmul(a, b, out=out), repeats)


def _sgemv_bandwidth(repeats: int, rows: int = 32768, cols: int = 4096) -> float:
    # A matrix-vector product reads every byte of the matrix once: that is decode's access
    # pattern, and its rate is the memory bandwidth a decode step can use. 512 MiB is far
    # larger than any cache.
    w = np.ones((rows, cols), dtype=np.float32)
    x = np.ones(cols, dtype=np.float32)
    y = np.empty(rows, dtype=np.float32)
    return w.nbytes / _median_time(lambda: np.matmul(w, x, out=y), repeats)


def peaks(remeasure: bool = False) -> MachinePeaks:
    """This machine's peaks, from the cache file if present, else measured (a few seconds)."""
    key = cache_key()
    if not remeasure and os.path.lexists(CACHE_FILE):
        try:
            saved = validate(
                read_json(CACHE_FILE, ArgumentError), MACHINE_CACHE, CACHE_FILE, ArgumentError
            )
            if saved["key"] == key:
                return MachinePeaks(**saved["peaks"])
        except ArgumentError as e:  # a cache is only a cache: measure again, and say why
            print(f"llama-np: ignoring the machine cache: {e}", file=sys.stderr)
    result = measure()
    try:
        CACHE_FILE.parent.mkdir(parents=True, exist_ok=True)
        CACHE_FILE.write_text(json.dumps({"key": key, "peaks": asdict(result)}, indent=2))
    except OSError as e:  # e.g. HOME unwritable: the result is still good, just not kept
        print(
            f"llama-np: cannot cache the measurement in {CACHE_FILE}: {e.strerror}", file=sys.stderr
        )
    return result


def cache_key() -> str:
    """What a cached measurement must have been taken on: this host, cores and NumPy."""
    return f"{platform.node()}|{os.cpu_count()}|numpy {np.__version__}"


def _median_time(fn, repeats: int) -> float:
    fn()  # warm up: first touch of pages, BLAS thread start
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))
