"""The kernel layer: compressed matrix products that NumPy cannot express.

A compressed weight matrix (packed.py: bf16, fp16, int8, or a GGUF's Q8_0/Q4_K/... blocks)
multiplies a few activation rows (decode: one token, or a small batch) in one of three ways:

    numpy  the reference, always there, and the code to read (packed.py): widen a few rows
           into a float32 scratch buffer, multiply them with BLAS, repeat. Every weight is
           written once more as float32 and read back, so decode runs at the speed of
           NumPy's widening (~2-3 GB/s), not of memory.
    numba  compiled loops (numba_jit.py) that widen each weight inside the dot product: the
           stored bytes are read once, nothing else is written. Installed by the `fast` extra
           (`pip install -e '.[fast]'`). Results equal the NumPy path's up to float rounding.
    vnni   numba, except that this project's int8 and Q8_0, Q4_K, Q5_K and Q6_K blocks (Q8_0,
           Q4_K_M and Q5_K_M files) multiply as integers with AVX-512 VNNI, activations rounded
           to int8 first, as llama.cpp does (vnni.py): 1.5-8x faster than their float loops,
           outputs ~1% off (benchmarks/accuracy.py).

`LLAMA_NP_KERNELS=numpy|numba|vnni` (or the CLI's `--kernels`, or `use(...)`) picks one; the
default is vnni on a CPU that has AVX-512 VNNI, else numba, when numba is installed. Compiled
kernels run for up to MAX_ROWS activation rows; prefill's larger blocks stay with BLAS, which
then does many FLOPs per widened weight.

The same compiled loops multiply float32 weights too, in decode: a dot product per stored row
runs faster than OpenBLAS's matrix-vector product at these sizes (no hand-off of each small
product to its threads; decode: stories15M 1.2-1.3x, stories110M 1.0-1.3x, TinyLlama
~1.05x). So the model stores its fp32 matrices as (out, in) rows when it is loaded with
compiled kernels active (weights.fp32_matrix); loaded with numpy kernels, they are laid out for
BLAS.

The one entry point is `compiled(rows, n_rows)`: packed.py asks it for a kernel before taking
its NumPy path. `warm_up()` starts the compiled runtime when a model that uses it is built.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import numpy as np

from .. import arguments
from ..errors import ArgumentError

KERNELS = ("numpy", "numba", "vnni")
ENV_VAR = "LLAMA_NP_KERNELS"
# Activation rows up to which a compiled kernel runs (decode, batched decode). A kernel re-reads
# its row of weights once per activation row; past a few rows BLAS on widened pieces wins.
MAX_ROWS = 8

# Without OpenMP or TBB, numba's own thread pool ("workqueue") aborts the process if two Python
# threads launch parallel kernels at once: kernels run one at a time (each uses every core).
_LOCK = threading.Lock()
_selected: str | None = None  # set by use(); None: from the environment / what is installed
_numba_error: str | None = None  # why `import numba` failed, once tried
_vnni_reason: str | None = None  # why the vnni kernels cannot run ("": they can), once asked


def numba_available() -> bool:
    """Whether the numba kernels can be used (imports numba on first call: ~0.5 s)."""
    global _numba_error
    if _numba_error is None:
        try:
            from . import numba_jit  # noqa: F401
        except ImportError as e:  # not installed, or e.g. a numba too old for this NumPy
            _numba_error = "numba is not installed" if e.name == "numba" else f"{e}"
        else:
            _numba_error = ""
    return not _numba_error


def vnni_available() -> bool:
    """Whether the vnni kernels can be used: numba imports and the CPU has AVX-512 VNNI
    (asked once: the default kernels are looked up before every product)."""
    return _vnni_unavailable() is None


def _vnni_unavailable() -> str | None:
    """Why the vnni kernels cannot run here, or None (asked once)."""
    global _vnni_reason
    if _vnni_reason is None:
        if numba_available():
            from . import vnni

            _vnni_reason = vnni.unavailable_reason() or ""
        else:
            _vnni_reason = _numba_error
    return _vnni_reason or None


def use(name: str | None) -> str:
    """Select the kernels: "numpy", "numba", "vnni", or None for the default ($LLAMA_NP_KERNELS,
    else vnni or numba when numba imports). Returns the name now active."""
    global _selected
    if name is not None:
        _check(name, "kernels")
        _check_installed(name, f"kernels {name!r} requested", "use --kernels ")
    _selected = name
    return active()


def active() -> str:
    """The name of the kernels compressed products use now."""
    if _selected is not None:
        return _selected
    wanted = os.environ.get(ENV_VAR)
    if wanted:
        _check(wanted, f"${ENV_VAR}")
        _check_installed(wanted, f"${ENV_VAR}={wanted}", f"set {ENV_VAR}=")
        return wanted
    if not numba_available():
        return "numpy"
    return "vnni" if vnni_available() else "numba"


def describe() -> str:
    """One line for `llama-np info`: the active kernels and what else there is."""
    name = active()
    if name in ("numba", "vnni"):
        from . import numba_jit

        line = f"{name} ({numba_jit.VERSION}; {', '.join(numba_jit.KINDS)}"
        if name == "vnni":
            return line + "; int8, Q8_0, Q4_K, Q5_K and Q6_K as int8 dot products, AVX-512 VNNI)"
        other = "vnni: this CPU has AVX-512 VNNI" if vnni_available() else "no AVX-512 VNNI"
        return f"{line}; {other})"
    if numba_available():
        return "numpy (widen + BLAS; numba is installed, not selected: --kernels numba)"
    return f"numpy (widen + BLAS; {_numba_error}: pip install -e '.[fast]' for compiled ones)"


def compiled(rows, n_rows: int) -> Callable[[np.ndarray, np.ndarray], None] | None:
    """A compiled `kernel(x, out)` computing out (B, N) = x (B, K) @ rows.T, or None when the
    NumPy path should run (numpy kernels selected, no kernel for this storage, B > MAX_ROWS).

    `rows` is a C-contiguous float32 array (N, K), a packed.PackedRows (N, K), whose `kind`,
    `data` and `scales` are read as stored, or a packed.StackedRows of them (a fused q/k/v
    stored in Q4_K and Q6_K): each part then fills its own columns of `out` with its own kernel.
    """
    name = active()
    if n_rows > MAX_ROWS or name == "numpy":
        return None
    from . import numba_jit

    if isinstance(rows, np.ndarray):  # float32 rows: one kernel, nothing stored to decode
        columns = [(numba_jit.matmul_fp32, rows, 0)]
    else:
        parts = getattr(rows, "parts", [rows])  # a StackedRows' parts, or the one PackedRows
        starts = getattr(rows, "starts", [0])  # the first output column of each part
        if not all(numba_jit.supports(p) for p in parts):
            return None
        columns = [(_kernel(name, p), p, s) for p, s in zip(parts, starts, strict=False)]

    def run(x: np.ndarray, out: np.ndarray) -> None:
        x = np.ascontiguousarray(x, dtype=np.float32)
        with _LOCK:
            for kernel, part, start in columns:
                kernel(part, x, out[:, start : start + part.shape[0]])  # (B, rows of the part)

    return run


def paged_attention() -> Callable | None:
    """Decode attention over a paged KV cache's blocks, read in place (attention.py):
    `run(q, k_pool, v_pool, tables, ends, out)`, or None when the numpy kernels are active
    (PagedKVCache then gathers the blocks for layers.attention)."""
    if active() == "numpy":
        return None
    from . import attention

    def run(q, k_pool, v_pool, tables, ends, out) -> None:
        with _LOCK:
            attention.paged_decode(q, k_pool, v_pool, tables, ends, out)

    return run


def warm_up() -> None:
    """Start the compiled kernels' runtime now, if they are active: a process's first parallel
    kernel spends ~0.4 s starting numba's thread pool and loading cached code, which would
    otherwise land on the first token (fresh-process time to first token measured 1.73x a
    warm one's). The model calls this when it is built; later calls cost microseconds."""
    if active() == "numpy":
        return
    from . import numba_jit

    one = np.ones((1, 1), dtype=np.float32)
    with _LOCK:
        numba_jit.matmul_fp32(one, one, np.empty((1, 1), dtype=np.float32))


def _kernel(name: str, rows) -> Callable:
    """The compiled kernel for one PackedRows: vnni's integer one where it has one."""
    from . import numba_jit

    if name == "vnni":
        from . import vnni

        if vnni.supports(rows):
            return vnni.KINDS[rows.kind]
    return numba_jit.KINDS[rows.kind]


def _check_installed(name: str, what: str, instead: str) -> None:
    """A clear error when the chosen compiled kernels cannot run here."""
    if name != "numpy" and not numba_available():
        raise ArgumentError(
            f"{what}, but {_numba_error}: install it with pip install -e '.[fast]', "
            f"or {instead}numpy"
        )
    if name == "vnni" and not vnni_available():
        raise ArgumentError(f"{what}, but {_vnni_unavailable()}: {instead}numba")


def _check(name: str, where: str) -> None:
    if not (isinstance(name, str) and name in KERNELS):
        raise arguments.refuse(where, name, f"one of {', '.join(KERNELS)}")
