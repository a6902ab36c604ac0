"""This machine's limits, measured with NumPy: matmul FLOP/s and memory bandwidth.

Prefill is bound by the first (matrix-matrix products), decode by the second (a
matrix-vector product does 2 FLOPs per weight, and a float32 weight is 4 bytes: 0.5 FLOP per
byte). Measuring both with the same NumPy/BLAS, and the same number of BLAS threads, that runs
the model gives the roofline that llama_np's speed is judged against.

Peaks depend on what produced them, so the cache, ~/.cache/llama_np/machine-peaks.json, keeps one
entry per key: CPU model and core count, NumPy version, BLAS library, version and the core
type it picked at run time, the thread count, and the kernel layer (with compiled kernels,
the bandwidth is the faster of BLAS's read and theirs). `peaks(remeasure=True)` (the CLI's
`--remeasure`) measures again; `llama-np profile` does so by itself when a phase runs faster
than the cached peak says it can. `machine_peaks()` is the machine's roof, the one figure
every tool quotes: the peaks with a BLAS thread per CPU.

BLAS threads are read and set through the BLAS library's own functions (OpenBLAS's
`openblas_set_num_threads`, found in the loaded library with ctypes), so one process can
time the same work with 1 and with 2 threads. With a BLAS that offers no such call, the
thread count is whatever the environment (OPENBLAS_NUM_THREADS, OMP_NUM_THREADS) set when
NumPy loaded.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import platform
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .. import kernels
from ..errors import ArgumentError
from ..packed import PackedRows, Scratch
from ..validate import MACHINE_CACHE, read_json, validate
from .atomic import write_text

CACHE_FILE = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    / "llama_np"
    / "machine-peaks.json"
)


BUSY_CORES = 0.25  # CPUs' worth of other processes' use that disturbs a measurement


@dataclass(frozen=True)
class MachinePeaks:
    matmul_flops: float  # float32 FLOP/s of a large matrix-matrix product (sgemm)
    memory_bandwidth: float  # bytes/s streamed by a large float32 matrix-vector product (sgemv)
    description: str = ""
    threads: int = 0  # BLAS threads the peaks were measured with (0: unknown)
    key: str = ""  # what they were measured on (see `machine_key`)
    others_cores: float = 0.0  # CPUs other processes used while they were measured

    @property
    def busy(self) -> bool:
        """Measured while other processes took CPU: probably too low."""
        return self.others_cores > BUSY_CORES

    @property
    def ridge(self) -> float:
        """FLOPs per byte where the two ceilings meet."""
        return self.matmul_flops / self.memory_bandwidth


# ---------------------------------------------------------------- what NumPy runs on


def cpu_model() -> str:
    """The CPU's marketing name ("AMD EPYC ..."), from /proc/cpuinfo on Linux."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_count() -> int:
    """CPUs this process may run on (its affinity), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_cache_bytes() -> int:
    """Bytes of the largest CPU cache (Linux sysfs; 32 MiB where unknown): data that fits is
    read faster than from main memory."""
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        with contextlib.suppress(OSError, ValueError):
            text = f.read_text().strip()
            unit = {"K": 2**10, "M": 2**20}.get(text[-1:], 1)
            sizes.append(int(text.rstrip("KM")) * unit)
    return max(sizes, default=32 * 2**20)


class Blas:
    """The BLAS library NumPy calls: its name, version, core type and thread count.

    Name and version come from `numpy.show_config`; the core type and threads from the
    library itself when it is an OpenBLAS loaded in this process (found in /proc/self/maps).
    """

    def __init__(self) -> None:
        info = _numpy_blas_info()
        self.name = str(info.get("name", "unknown"))
        self.version = str(info.get("version", ""))
        self._lib, self._prefix = _find_openblas()
        config = str(info.get("openblas configuration", ""))
        # The build's configuration names a target core ("... Haswell MAX_THREADS=64"); with
        # DYNAMIC_ARCH the library picks one at run time, which only it can tell.
        built_for = re.search(r"(\w+) MAX_THREADS", config)
        self.core = self._call_str("get_corename") or (built_for.group(1) if built_for else "")

    @property
    def controllable(self) -> bool:
        """True if the thread count can be changed in this process."""
        return self._lib is not None

    @property
    def threads(self) -> int:
        """Threads the BLAS uses now (from the environment when the library cannot say)."""
        if self._lib is not None:
            return int(getattr(self._lib, self._prefix + "get_num_threads" + self._suffix)())
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            if os.environ.get(var, "").isdigit():
                return int(os.environ[var])
        return cpu_count()

    def check_threads(self, n: int) -> None:
        """Raise ArgumentError unless this process can run its BLAS with n threads."""
        if not (isinstance(n, int) and n >= 1):
            raise ArgumentError(f"--threads must be a positive integer, got {n!r}")
        if self._lib is None and n != self.threads:
            raise ArgumentError(
                f"--threads {n}: NumPy's BLAS ({self.name}) cannot change its thread count in a "
                f"running process; start it with OPENBLAS_NUM_THREADS={n} OMP_NUM_THREADS={n} "
                "instead"
            )

    def set_threads(self, n: int) -> None:
        self.check_threads(n)
        if self._lib is None:
            return
        getattr(self._lib, self._prefix + "set_num_threads" + self._suffix)(ctypes.c_int(n))

    @contextlib.contextmanager
    def using(self, n: int | None) -> Iterator[None]:
        """`with blas.using(1):` runs the block with n BLAS threads (None: leave as is)."""
        before = self.threads
        if n is not None:
            self.set_threads(n)
        try:
            yield
        finally:
            if n is not None and self._lib is not None:
                self.set_threads(before)

    def describe(self) -> str:
        core = f", {self.core} kernels" if self.core else ""
        return f"{self.name} {self.version}{core}".strip()

    @property
    def _suffix(self) -> str:
        return "64_" if self._prefix == "scipy_openblas_" else ""

    def _call_str(self, name: str) -> str:
        if self._lib is None:
            return ""
        fn = getattr(self._lib, self._prefix + name + self._suffix, None)
        if fn is None:
            return ""
        fn.restype = ctypes.c_char_p
        return (fn() or b"").decode(errors="replace").strip()


def _numpy_blas_info() -> dict:
    try:
        config = np.show_config(mode="dicts")  # NumPy >= 1.26
    except TypeError:
        return {}
    return config.get("Build Dependencies", {}).get("blas", {})


def _find_openblas() -> tuple[ctypes.CDLL | None, str]:
    """The OpenBLAS that NumPy loaded, and its symbol prefix, or (None, "")."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None, ""
    for path in sorted(set(re.findall(r"(/\S*openblas\S*\.so[\w.]*)", maps))):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        # NumPy's wheels ship scipy-openblas (symbols scipy_openblas_*64_); others plain openblas_*
        for prefix, suffix in (("scipy_openblas_", "64_"), ("openblas_", "")):
            if hasattr(lib, prefix + "set_num_threads" + suffix):
                return lib, prefix
    return None, ""


_BLAS: Blas | None = None


def blas() -> Blas:
    """The process's BLAS (looked up once)."""
    global _BLAS
    if _BLAS is None:
        _BLAS = Blas()
    return _BLAS


def machine_key(threads: int) -> str:
    """What the peaks depend on: the cache holds one entry per key."""
    b = blas()
    return (
        f"{cpu_model()} | {cpu_count()} cpus | numpy {np.__version__} | {b.describe()} | "
        f"{threads} threads | {kernels.active()} kernels"
    )


# ---------------------------------------------------------------- measuring


def measure(repeats: int = 7, threads: int | None = None) -> MachinePeaks:
    """Time a 2048³ sgemm and a 512 MiB sgemv with `threads` BLAS threads (default: as set);
    report the best of `repeats` runs each (other processes only ever slow a run down)."""
    b = blas()
    with b.using(threads), CpuMeter() as meter:
        n = b.threads
        flops, bandwidth = _sgemm_flops(repeats), _sgemv_bandwidth(repeats)
    return MachinePeaks(
        matmul_flops=flops,
        memory_bandwidth=bandwidth,
        description=f"{cpu_model()}, {cpu_count()} cpus, {b.describe()}, {n} threads",
        threads=n,
        key=machine_key(n),
        others_cores=meter.use.others_cores,
    )


def _sgemm_flops(repeats: int, n: int = 2048) -> float:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)  # (n, n)
    b = rng.standard_normal((n, n), dtype=np.float32)  # (n, n)
    out = np.empty((n, n), dtype=np.float32)  # (n, n)
    return 2 * n**3 / _best_time(lambda: np.matmul(a, b, out=out), repeats)


def _sgemv_bandwidth(repeats: int, rows: int = 32768, cols: int = 4096) -> float:
    # A matrix-vector product reads every byte of the matrix once: that is decode's access
    # pattern, and its rate is the memory bandwidth a decode step can use. 512 MiB is far
    # larger than any cache. Stored (cols, rows) and multiplied from the left, x @ W, as the
    # model stores its fp32 weights for BLAS (in, out).
    w = np.ones((cols, rows), dtype=np.float32)  # (in, out)
    x = np.ones(cols, dtype=np.float32)  # (in,)
    y = np.empty(rows, dtype=np.float32)  # (out,)
    best = w.nbytes / _best_time(lambda: np.matmul(x, w, out=y), repeats)
    # With compiled kernels the model's fp32 decode reads (out, in) rows through them
    # (weights.fp32_matrix), which can stream faster than OpenBLAS: the peak is the faster read.
    as_rows = PackedRows("fp32", w, None, Scratch())  # the same bytes, read as `cols` rows
    kernel = kernels.compiled(as_rows, 1)
    if kernel is not None:
        x_rows = np.ones((1, rows), dtype=np.float32)  # (1, rows)
        out = np.empty((1, cols), dtype=np.float32)  # (1, cols)
        best = max(best, w.nbytes / _best_time(lambda: kernel(x_rows, out), repeats))
    return best


def _best_time(fn, repeats: int) -> float:
    fn()  # warm up: first touch of pages, BLAS thread start
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


# ---------------------------------------------------------------- the cache


def machine_peaks(remeasure: bool = False) -> MachinePeaks:
    """This machine's ceilings: the peaks with a BLAS thread per CPU (where the BLAS lets this
    process choose; else as the environment set it). The one roof every figure is held
    against: `llama-np profile` (every phase, whatever threads it ran with), `llama-np memory
    --hardware this-machine` and the benchmarks."""
    return peaks(remeasure, threads=cpu_count() if blas().controllable else None)


def peaks(remeasure: bool = False, threads: int | None = None) -> MachinePeaks:
    """This machine's peaks with `threads` BLAS threads (default: the current count), from
    the cache file if it holds them for this machine, else measured (a few seconds)."""
    n = blas().threads if threads is None else threads
    key = machine_key(n)
    saved = _read_cache()
    cached = None
    if key in saved:
        try:
            cached = MachinePeaks(**saved[key])
        except TypeError:
            pass  # an entry of another layout is measured again
    if cached is not None and not remeasure and not cached.busy:
        return cached
    result = measure(threads=n)
    if cached is not None and cached.busy:
        # A measurement that other processes disturbed is too low: it is measured again
        # until a quiet one replaces it, keeping the higher of each figure meanwhile.
        result = better_of(result, cached)
    saved[key] = asdict(result)
    try:
        CACHE_FILE.parent.mkdir(parents=True, exist_ok=True)
        write_text(CACHE_FILE, json.dumps({"peaks": saved}, indent=2))
    except OSError as e:  # e.g. HOME unwritable: the result is still good, just not kept
        print(
            f"llama-np: cannot cache the measurement in {CACHE_FILE}: {e.strerror}", file=sys.stderr
        )
    return result


def better_of(a: MachinePeaks, b: MachinePeaks) -> MachinePeaks:
    """The higher of each peak of two measurements of the same key (a disturbed measurement
    only ever reads too low), as quiet as the quieter of the two."""
    if a.busy and not b.busy:
        a, b = b, a
    if not a.busy:
        return a
    return MachinePeaks(
        max(a.matmul_flops, b.matmul_flops),
        max(a.memory_bandwidth, b.memory_bandwidth),
        a.description,
        a.threads,
        a.key,
        min(a.others_cores, b.others_cores),
    )


def _read_cache() -> dict[str, dict]:
    """The cached entries (validate.MACHINE_CACHE); none if absent, and none, with a note,
    if corrupt (zeroed, peaks of 0, ...): a cache is only a cache, it is measured again."""
    if not os.path.lexists(CACHE_FILE):
        return {}
    try:
        data = read_json(CACHE_FILE, ArgumentError)
        return validate(data, MACHINE_CACHE, CACHE_FILE, ArgumentError)["peaks"]
    except ArgumentError as e:
        print(f"llama-np: ignoring the machine cache: {e}", file=sys.stderr)
        return {}


# ---------------------------------------------------------------- is the machine busy?


@dataclass(frozen=True)
class CpuUse:
    """CPU time used by the whole machine and by this process over an interval."""

    seconds: float  # wall time
    machine_busy: float  # CPU-seconds all processes spent busy (None-free: 0 if unknown)
    ours: float  # CPU-seconds this process used
    known: bool  # False where /proc/stat is missing (not Linux)

    @property
    def others_cores(self) -> float:
        """Cores' worth of CPU that other processes used, on average, over the interval."""
        if not self.known or self.seconds <= 0:
            return 0.0
        return max(0.0, self.machine_busy - self.ours) / self.seconds


class CpuMeter:
    """`with CpuMeter() as m: ...` then `m.use.others_cores`: how much of the machine other
    processes took while the block ran (Linux: /proc/stat against our own CPU time)."""

    def __enter__(self) -> CpuMeter:
        self._t0, self._busy0, self._ours0 = time.perf_counter(), _busy_seconds(), _our_seconds()
        return self

    def __exit__(self, *exc) -> None:
        busy1 = _busy_seconds()
        known = self._busy0 is not None and busy1 is not None
        self.use = CpuUse(
            seconds=time.perf_counter() - self._t0,
            machine_busy=(busy1 - self._busy0) if known else 0.0,
            ours=_our_seconds() - self._ours0,
            known=known,
        )


def _busy_seconds() -> float | None:
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    # user nice system idle iowait irq softirq steal ...: busy = all but idle and iowait
    ticks = [int(f) for f in fields]
    busy = sum(ticks) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)
    return busy / os.sysconf("SC_CLK_TCK")


def _our_seconds() -> float:
    t = os.times()
    return t.user + t.system
