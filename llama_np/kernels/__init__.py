"""The kernel layer: compiled matrix products for weights NumPy cannot multiply fast.

A weight matrix stored compressed (packed.py: bf16, fp16, int8, or a GGUF's Q8_0/Q4_K/...
blocks), or float32 rows kept for these kernels (packed kind "fp32"), multiplies activation
rows in one of three ways:

    numpy  the reference, always there, and the code to read (packed.py): widen a few rows
           into a float32 scratch buffer, multiply them with BLAS, repeat. Every weight is
           written once more as float32 and read back, so decode runs at the speed of
           NumPy's widening (~2-3 GB/s), not of memory.
    numba  compiled loops (numba_jit.py) that widen each weight inside the dot product: the
           stored bytes are read once, nothing else is written. Installed by the `fast` extra
           (`pip install -e '.[fast]'`). Results equal the NumPy path's up to float rounding.
    int8   numba, except that this project's int8 and Q8_0, Q4_0, Q5_0, Q4_K, Q5_K and Q6_K
           blocks (Q8_0, Q4_0, Q4_K_M and Q5_K_M files) multiply as integers in decode, their
           activations rounded to int8 first,
           as llama.cpp does (int8.py: AVX2's vpmaddubsw, or AVX-512 VNNI's vpdpbusd): faster
           than their float loops, outputs ~1% off (benchmarks/accuracy.py).

`LLAMA_NP_KERNELS=numpy|numba|int8` (or the CLI's `--kernels`, or `use(...)`) picks one; the
default is int8 on a CPU with AVX2 or AVX-512 VNNI, else numba, when numba is installed;
`describe()` says which runs and whether it rounds activations.

How many activation rows a product has decides how it runs (`few_rows`, TILE_ROWS): decode's
few rows are bound by reading the weights, so a dot product per weight row and activation row
reads each stored byte once; a batch's and prefill's many rows are bound by arithmetic, so
each weight row is widened to float32 once and multiplied by all activation rows, in
registers (numba_jit.TILES) or, for prefill's hundreds, by BLAS's sgemm.

float32 weights take the same road. In decode a compiled dot product per stored row runs
faster than OpenBLAS's matrix-vector product at these sizes (no hand-off of each small
product to its threads; decode: stories15M 1.2-1.3x, stories110M 1.0-1.3x, TinyLlama
~1.05x), so a model loaded with compiled kernels active keeps its fp32 matrices as PackedRows
of kind "fp32" (weights.fp32_matrix); loaded with numpy kernels, they are plain arrays laid out
for BLAS.

The one entry point is `compiled(rows, n_rows)`: packed.py asks it for a kernel before taking
its NumPy path. `warm_up()` starts the compiled runtime when a model that uses it is built.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import reprlib
import threading
from collections.abc import Callable

import numpy as np

from ..errors import ArgumentError

KERNELS = ("numpy", "numba", "int8")
ENV_VAR = "LLAMA_NP_KERNELS"
# How a product runs depends on its number of activation rows; measured on one core of this
# AVX2 machine (thread CPU time, K = 2048, GFLOP/s at 1 / 4 / 8 / 16 / 32 / 128 rows):
#   dot products, one per weight row and activation row, reading each stored byte once per
#     activation row (decode): int8's Q8_0 20-21 at any count, Q4_K 19-20, Q6_K 13-14;
#     numba's float ones Q8_0 7-8, Q4_K 5.4, Q6_K 3-3.6
#   widened tiles (numba_jit.TILES): each weight row widened to float32 once, multiplied by all
#     activation rows in registers: Q8_0 6 / 20 / 27 / 34 / 37 / 37, Q4_K 5 / 15 / 22 / 28 /
#     33 / 35, Q6_K 5 / 14 / 21 / 27 / 31 (fp32 rows: 17 / 28 / 33 / 33 / 34 / 35)
#   tiles widened for BLAS's sgemm (_widened_product): OpenBLAS reaches 11-13 at 4-16 rows, 25
#     at 64, 33-41 from 256 (prefill), where the register tiles fall to ~20 (the activations no
#     longer fit the L2 cache: 1024 rows of K = 2048)
# So: dot products up to DOT_ROWS rows for each kernels' own (the NumPy path: threads widen
# pieces side by side up to its count), register tiles up to TILE_ROWS, BLAS past them.
DOT_ROWS = {"numpy": 8, "numba": 1, "int8": 4}
TILE_ROWS = 128


def few_rows(n_rows: int, kernels: str = "numba") -> bool:
    """Whether a product of this many activation rows is decode-like for `kernels`: each weight
    serves so few rows that reading and widening the weights, not the arithmetic, bounds it."""
    return n_rows <= DOT_ROWS[kernels]


# Without OpenMP or TBB, numba's own thread pool ("workqueue") aborts the process if two Python
# threads launch parallel kernels at once: kernels run one at a time (each uses every core).
_LOCK = threading.Lock()
_selected: str | None = None  # set by use(); None: from the environment / what is installed
_numba_error: str | None = None  # why `import numba` failed, once tried
_int8_reason: str | None = None  # why the int8 kernels cannot run ("": they can), once asked
_default: str | None = None  # the default kernels, once looked up


NUMBA_NOT_INSTALLED = "numba is not installed"


def numba_available() -> bool:
    """Whether the numba kernels can be used (imports numba on first call: ~0.5 s)."""
    return numba_unavailable() is None


def numba_unavailable() -> str | None:
    """Why the numba kernels cannot run here, or None when they can (asked once):
    NUMBA_NOT_INSTALLED, or "numba is installed but broken: ..." with the import's error (e.g.
    a numba too old for this NumPy, or llvmlite's library missing)."""
    global _numba_error
    if _numba_error is None:
        try:
            from . import numba_jit  # noqa: F401
        except (ImportError, OSError) as e:
            # Not installed: nothing named numba to import. Anything else is a broken install
            # (numba refuses this NumPy, a module inside numba or llvmlite fails to load).
            missing = isinstance(e, ImportError) and e.name == "numba"
            if missing and importlib.util.find_spec("numba") is None:
                _numba_error = NUMBA_NOT_INSTALLED
            else:
                _numba_error = f"numba is installed but broken: {type(e).__name__}: {e}"
        else:
            _numba_error = ""
    return _numba_error or None


def int8_available() -> bool:
    """Whether the int8 kernels can be used: numba imports and the CPU has AVX2 or AVX-512
    VNNI (asked once: the default kernels are looked up before every product)."""
    return int8_unavailable() is None


def int8_unavailable() -> str | None:
    """Why the int8 kernels cannot run here, or None (asked once): numba's reason, or e.g.
    "this CPU has no AVX2"."""
    global _int8_reason
    if _int8_reason is None:
        if numba_available():
            from . import int8

            _int8_reason = int8.unavailable_reason() or ""
        else:
            _int8_reason = _numba_error
    return _int8_reason or None


def use(name: str | None) -> str:
    """Select the kernels: "numpy", "numba", "int8", or None for the default ($LLAMA_NP_KERNELS,
    else int8 or numba when numba imports). Returns the name now active."""
    global _selected, _default
    _default = None  # looked up again
    if name is not None:
        _check(name, "kernels")
        _check_installed(name, f"kernels {name!r} requested", "use --kernels ")
    _selected = name
    return active()


def active() -> str:
    """The name of the kernels products use now. $LLAMA_NP_KERNELS is read on the first call
    and again after use() (os.environ costs ~2 us a lookup, and this is asked every product)."""
    global _default
    if _selected is not None:
        return _selected
    if _default is not None:
        return _default
    wanted = os.environ.get(ENV_VAR)
    if wanted:
        _check(wanted, f"${ENV_VAR}")
        _check_installed(wanted, f"${ENV_VAR}={wanted}", f"set {ENV_VAR}=")
        name = wanted
    elif not numba_available():
        name = "numpy"
    else:
        name = "int8" if int8_available() else "numba"
    _default = name
    return name


def rounds_activations() -> bool:
    """Whether the active kernels round activations to int8 in decode's products (int8: for
    int8, Q8_0 and K-quant weights), so that outputs differ from the float path's by ~1%."""
    return active() == "int8"


def describe() -> str:
    """One line for `llama-np info` and the timing lines: the active kernels, whether they
    round activations, and what else there is."""
    name = active()
    if name == "numpy":
        if numba_available():
            return "numpy (widen + BLAS; numba is installed, not selected: --kernels numba)"
        return f"numpy (widen + BLAS; {_numba_error}: pip install -e '.[fast]' for compiled ones)"
    from . import numba_jit

    if name == "int8":
        from . import int8

        return (
            f"int8 ({numba_jit.VERSION}, {int8.ISA.upper()}; decode's activations rounded to int8 "
            f"for {', '.join(int8.KINDS)} weights; float kernels: --kernels numba)"
        )
    other = (
        f"int8: {int8_unavailable()}" if not int8_available() else "int8 kernels: --kernels int8"
    )
    return f"numba ({numba_jit.VERSION}; float activations, {', '.join(numba_jit.KINDS)}; {other})"


def report(kinds: set[str]) -> str:
    """Which kernels multiply weights stored as these packed kinds (a model's: Weights.kinds),
    and whether they round activations to int8: for `llama-np info` and the timing lines."""
    name = active()
    if not kinds:
        return "float32 arrays: BLAS"
    if name == "numpy":
        return f"numpy: {', '.join(sorted(kinds))} widened by NumPy, multiplied by BLAS"
    from . import numba_jit

    kinds = {k for k in kinds if k in numba_jit.KINDS}
    integer = set()
    if name == "int8":
        from . import int8

        integer = {k for k in kinds if k in int8.KINDS}
    parts = []
    if integer:
        parts.append(
            f"{', '.join(sorted(integer))} as int8 dot products ({int8.ISA}; activations "
            f"rounded to int8) up to {DOT_ROWS['int8']} rows"
        )
    if kinds - integer:
        floats = ", ".join(sorted(kinds - integer))
        parts.append(f"{floats} as float dot products up to {DOT_ROWS['numba']} rows")
    return (
        f"{name}: {'; '.join(parts)}; more rows: float32 tiles (activations float32), "
        f"BLAS past {TILE_ROWS}"
    )


def compiled(rows, n_rows: int) -> Callable[[np.ndarray, np.ndarray], None] | None:
    """A compiled `kernel(x, out)` computing out (B, N) = x (B, K) @ rows.T, or None when the
    NumPy path should run (numpy kernels selected, or no kernel for this storage).

    `rows` is a packed.PackedRows (N, K), whose `kind`, `data` and `scales` are read as stored,
    or a packed.StackedRows of them (a fused q/k/v stored in Q4_K and Q6_K): each part then
    fills its own columns of `out`. A few activation rows (few_rows: decode) run a compiled
    dot product per weight row and activation row; more rows widen tiles of the matrix to
    float32 and multiply them with BLAS (float32 rows: BLAS on the rows as they are). The
    choice is made once per matrix, kernels and row count, and kept in the matrix's `plans` (a
    decode step's ~50 products would otherwise spend more time choosing than stories15M's
    kernels take to run).
    """
    name = active()
    if name == "numpy":
        return None
    key = (name, min(n_rows, TILE_ROWS + 1))  # every count past TILE_ROWS runs alike
    plan = rows.plans.get(key, False)  # (None: no compiled product for this matrix)
    if plan is False:
        plan = rows.plans[key] = _plan(rows, name, n_rows)
    return plan


def _plan(rows, name: str, n_rows: int) -> Callable[[np.ndarray, np.ndarray], None] | None:
    """compiled()'s product for `rows` with kernels `name` and row counts like n_rows."""
    from . import numba_jit

    parts = getattr(rows, "parts", [rows])  # a StackedRows' parts, or the one PackedRows
    starts = getattr(rows, "starts", [0])  # the first output column of each part
    if not all(numba_jit.supports(p) for p in parts):
        return None
    columns = [(_kernel(name, p, n_rows), p, s) for p, s in zip(parts, starts, strict=False)]
    # Dot products and register tiles run on numba's threads alone: their count adapts to a
    # busy core (threads.py). BLAS's products run on its own.
    governed = all(kernel is not _widened_product for kernel, _, _ in columns)

    def one(x: np.ndarray, out: np.ndarray) -> None:
        kernel, part, _ = columns[0]
        kernel(part, x, out)

    def stacked(x: np.ndarray, out: np.ndarray) -> None:
        for kernel, part, start in columns:
            # Into a contiguous array, then its columns of `out`: numba compiles a kernel again
            # for each layout of its arguments, and a slice of columns is another layout.
            part_out = np.empty((x.shape[0], part.shape[0]), dtype=np.float32)  # (B, part's N)
            kernel(part, x, part_out)
            out[:, start : start + part.shape[0]] = part_out

    product = one if len(columns) == 1 else stacked

    def run(x: np.ndarray, out: np.ndarray) -> None:
        x = np.ascontiguousarray(x, dtype=np.float32)
        with _LOCK:
            if governed:
                _threads().run((id(rows), len(x)), product, x, out)
            else:
                product(x, out)

    return run


def decode_attention(
    q: np.ndarray,
    k_pool: np.ndarray,
    v_pool: np.ndarray,
    tables: np.ndarray,
    ends: np.ndarray,
    heads_first: bool,
) -> np.ndarray | None:
    """Decode attention of one query per sequence, q (B, 1, H, HD), over a KV cache's blocks
    read in place (attention.py: the pools' layouts, `tables` (B, blocks) and `ends` (B,));
    -> (B, 1, H*HD), or None when the numpy kernels are active (the caches then hand their
    keys and values to layers.attention)."""
    if active() == "numpy":
        return None
    from . import attention

    B, _, H, HD = q.shape
    out = np.empty((B, H, HD), dtype=np.float32)  # (B, H, HD)
    tables = np.ascontiguousarray(tables, dtype=np.int64)
    ends = np.ascontiguousarray(ends, dtype=np.int64)
    q = np.ascontiguousarray(q[:, 0])  # (B, H, HD)
    with _LOCK:
        attention.paged_decode(q, k_pool, v_pool, tables, ends, out, heads_first)
    return out.reshape(B, 1, H * HD)


def threads_used() -> tuple[int, int]:
    """(threads the compiled products run with now, every core they may use): fewer while
    another process keeps a core busy (threads.py). (n, n) before any product has run."""
    if not numba_available():
        return 1, 1
    governor = _threads()
    return governor.count, governor.most


@functools.cache
def _threads():
    """The thread count of the dot products (threads.py), made on first use."""
    from .threads import Threads

    return Threads()


# Weights widened per tile by _widened_product: 1 MiB of float32, which stays in the CPU's
# cache between being written and being multiplied.
TILE_FLOATS = 1 << 18
_tile: np.ndarray | None = None  # the tile buffer (products run one at a time: _LOCK)


def _widened_product(rows, x: np.ndarray, out: np.ndarray) -> None:
    """out (B, N) = x (B, K) @ rows.T for prefill's hundreds of activation rows: each tile of
    rows is widened to float32 once (numba) and multiplied by all B rows at once (BLAS)."""
    global _tile
    from . import numba_jit

    N, K = rows.shape
    if rows.kind == "fp32":  # nothing to widen
        np.matmul(x, rows.data.T, out=out)
        return
    step = max(1, TILE_FLOATS // K)  # rows per tile
    if _tile is None or _tile.size < step * K:
        _tile = np.empty(max(TILE_FLOATS, step * K), dtype=np.float32)
    widen = numba_jit.WIDEN[rows.kind]
    for start in range(0, N, step):
        stop = min(N, start + step)
        w = _tile[: (stop - start) * K].reshape(stop - start, K)  # (n, K)
        widen(rows, start, stop, w)
        np.matmul(x, w.T, out=out[:, start:stop])


def warm_up() -> None:
    """Start the compiled kernels' runtime now, if they are active: a process's first parallel
    kernel spends ~0.4 s starting numba's thread pool and loading cached code, which would
    otherwise land on the first token (fresh-process time to first token measured 1.73x a
    warm one's). The model calls this when it is built; later calls cost microseconds."""
    if active() == "numpy":
        return
    from . import numba_jit

    one = np.ones((1, 1), dtype=np.float32)
    weights = one.view()
    weights.flags.writeable = False  # as packed.PackedRows holds weights: the same signature
    with _LOCK:
        numba_jit.matmul_fp32(weights, one, np.empty((1, 1), dtype=np.float32))
    pool = np.ones((1, 1, 1, 1), dtype=np.float32)  # and decode attention's (~20 ms to load)
    decode_attention(pool, pool, pool, np.zeros((1, 1), np.int64), np.ones(1, np.int64), False)


def _kernel(name: str, rows, n_rows: int) -> Callable:
    """The compiled kernel(rows, x, out) for one PackedRows and n_rows activation rows: int8's
    integer dot products where it has one, else numba's float ones, while the rows are few
    for them (few_rows); then register tiles, up to TILE_ROWS; then tiles for BLAS."""
    from . import numba_jit

    dots, family = numba_jit.KINDS, "numba"
    if name == "int8":
        from . import int8

        if int8.supports(rows):
            dots, family = int8.KINDS, "int8"
    if few_rows(n_rows, family):
        return dots[rows.kind]
    return numba_jit.TILES[rows.kind] if n_rows <= TILE_ROWS else _widened_product


def _check_installed(name: str, what: str, instead: str) -> None:
    """A clear error when the chosen compiled kernels cannot run here."""
    if name != "numpy" and not numba_available():
        fix = (
            "install it with pip install -e '.[fast]'"
            if _numba_error == NUMBA_NOT_INSTALLED
            else "reinstall a numba that fits this NumPy (pip install -U numba)"
        )
        raise ArgumentError(f"{what}, but {_numba_error}: {fix}, or {instead}numpy")
    if name == "int8" and not int8_available():
        raise ArgumentError(f"{what}, but {int8_unavailable()}: {instead}numba")


def _check(name: str, where: str) -> None:
    if not (isinstance(name, str) and name in KERNELS):
        # (not arguments.refuse: the KV cache, which arguments imports, imports this module)
        allowed = ", ".join(KERNELS)
        raise ArgumentError(f"{where} must be one of {allowed}, got {reprlib.repr(name)}")
