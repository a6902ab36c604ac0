"""The kernel layer: compressed matrix products that NumPy cannot express.

A compressed weight matrix (packed.py: bf16, fp16, int8, or a GGUF's Q8_0/Q4_K/... blocks)
multiplies a few activation rows (decode: one token, or a small batch) in one of two ways:

    numpy  the reference, always there, and the code to read (packed.py): widen a few rows
           into a float32 scratch buffer, multiply them with BLAS, repeat. Every weight is
           written once more as float32 and read back, so decode runs at the speed of
           NumPy's widening (~2-3 GB/s), not of memory.
    numba  compiled loops (numba_jit.py) that widen each weight inside the dot product: the
           stored bytes are read once, nothing else is written. Installed by the `fast` extra
           (`pip install -e '.[fast]'`) and used automatically when numba imports.

`LLAMA_NP_KERNELS=numpy|numba` (or the CLI's `--kernels`, or `use(...)`) picks one; numba is
the default when installed. Compiled kernels run for up to MAX_ROWS activation rows; prefill's
larger blocks stay with BLAS, which then does many FLOPs per widened weight.

The one entry point is `compiled(rows, n_rows)`: packed.py asks it for a kernel before taking
its NumPy path.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import numpy as np

from ..errors import ArgumentError

KERNELS = ("numpy", "numba")
ENV_VAR = "LLAMA_NP_KERNELS"
# Activation rows up to which a compiled kernel runs (decode, batched decode). A kernel re-reads
# its row of weights once per activation row; past a few rows BLAS on widened pieces wins.
MAX_ROWS = 8

# Without OpenMP or TBB, numba's own thread pool ("workqueue") aborts the process if two Python
# threads launch parallel kernels at once: kernels run one at a time (each uses every core).
_LOCK = threading.Lock()
_selected: str | None = None  # set by use(); None: from the environment / what is installed
_numba_error: str | None = None  # why `import numba` failed, once tried


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


def use(name: str | None) -> str:
    """Select the kernels: "numpy", "numba", or None for the default ($LLAMA_NP_KERNELS, else
    numba when it imports). Returns the name now active."""
    global _selected
    if name is not None:
        _check(name, "kernels")
        if name == "numba" and not numba_available():
            raise ArgumentError(
                f"kernels 'numba' requested, but {_numba_error}: install it with "
                "pip install -e '.[fast]', or use --kernels numpy"
            )
    _selected = name
    return active()


def active() -> str:
    """The name of the kernels compressed products use now."""
    if _selected is not None:
        return _selected
    wanted = os.environ.get(ENV_VAR)
    if wanted:
        _check(wanted, f"${ENV_VAR}")
        if wanted == "numba" and not numba_available():
            raise ArgumentError(
                f"${ENV_VAR}=numba, but {_numba_error}: install it with "
                f"pip install -e '.[fast]', or set {ENV_VAR}=numpy"
            )
        return wanted
    return "numba" if numba_available() else "numpy"


def describe() -> str:
    """One line for `llama-np info`: the active kernels and what else there is."""
    name = active()
    if name == "numba":
        from . import numba_jit

        return f"numba ({numba_jit.VERSION}; {', '.join(numba_jit.KINDS)})"
    if numba_available():
        return "numpy (widen + BLAS; numba is installed, not selected: --kernels numba)"
    return f"numpy (widen + BLAS; {_numba_error}: pip install -e '.[fast]' for compiled ones)"


def compiled(rows, n_rows: int) -> Callable[[np.ndarray, np.ndarray], None] | None:
    """A compiled `kernel(x, out)` computing out (B, N) = x (B, K) @ rows.T, or None when the
    NumPy path should run (numpy kernels selected, no kernel for this storage, B > MAX_ROWS).

    `rows` is a packed.PackedRows (N, K), whose `kind`, `data` and `scales` are read as
    stored, or a packed.StackedRows of them (a fused q/k/v stored in Q4_K and Q6_K): each part
    then fills its own columns of `out` with its own kernel.
    """
    if n_rows > MAX_ROWS or active() != "numba":
        return None
    from . import numba_jit

    parts = getattr(rows, "parts", [rows])  # a StackedRows' parts, or the one PackedRows
    starts = getattr(rows, "starts", [0])  # the first output column of each part
    if not all(numba_jit.supports(p) for p in parts):
        return None
    columns = [(numba_jit.KINDS[p.kind], p, start) for p, start in zip(parts, starts, strict=False)]

    def run(x: np.ndarray, out: np.ndarray) -> None:
        x = np.ascontiguousarray(x, dtype=np.float32)
        with _LOCK:
            for kernel, part, start in columns:
                kernel(part, x, out[:, start : start + part.shape[0]])  # (B, rows of the part)

    return run


def _check(name: str, where: str) -> None:
    if name not in KERNELS:
        raise ArgumentError(f"{where} must be one of {', '.join(KERNELS)}, got {name!r}")
