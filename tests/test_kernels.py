"""The kernel layer: every compiled kernel against the NumPy path and independent references.

GGUF block kernels are checked against the `gguf` package's own dequantizer (llama.cpp's
Python reference) followed by a float64 product; this project's int8/bf16/fp16 kernels against
its NumPy path (widen + BLAS) and float64. Every product is tried with 1 to 64 activation rows
(decode's dot products, a batch's, prefill's widened tiles), each kernel on its own and through
the dispatch that picks it. The compiled tests skip when numba is not installed (the int8 ones
also on a CPU without AVX2), saying why in the summary; a numba that is installed but does not
import fails test_installed_numba_imports in CI. The NumPy-only tests run everywhere. The int8
kernels run the instruction of the CPU they compile for (AVX2 or AVX-512 VNNI); on a VNNI
machine the AVX2 code is also compiled and checked, in a subprocess.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llama_np
from llama_np import kernels
from llama_np.cli import main as cli_main
from llama_np.errors import ArgumentError
from llama_np.packed import PackedRows, Scratch, StackedRows, pack
from llama_np.quants import Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K, Q8_0

ROOT = Path(__file__).resolve().parents[1]
NUMBA_PROBLEM = kernels.numba_unavailable()  # None, not installed, or a broken install
INT8_PROBLEM = kernels.int8_unavailable()  # ... or this CPU has neither AVX2 nor VNNI
NUMBA_SKIP = f"{NUMBA_PROBLEM}: compiled kernels not tested" + (
    " (pip install -e '.[fast]')" if NUMBA_PROBLEM == kernels.NUMBA_NOT_INSTALLED else ""
)
requires_numba = pytest.mark.skipif(NUMBA_PROBLEM is not None, reason=NUMBA_SKIP)
requires_int8 = pytest.mark.skipif(
    INT8_PROBLEM is not None, reason=f"{INT8_PROBLEM}: int8 kernels not tested"
)
ROWS = st.integers(1, 64)  # activation rows: decode, batches, prefill-sized tiles


def test_installed_numba_imports():
    """The `fast` extra installed but broken (e.g. a numba too old for this NumPy) would skip
    every compiled-kernel test as if numba were absent: in CI ($CI set) that is a failure;
    locally a skip that says so. numba not installed at all is a skip everywhere."""
    if NUMBA_PROBLEM is None:
        assert kernels.numba_available() and kernels.active() in ("numba", "int8")
    elif NUMBA_PROBLEM == kernels.NUMBA_NOT_INSTALLED:
        pytest.skip(NUMBA_SKIP)
    elif os.environ.get("CI"):
        pytest.fail(f"{NUMBA_PROBLEM}: every compiled-kernel test would be skipped")
    else:
        pytest.skip(f"{NUMBA_SKIP}; in CI a failure")


@pytest.mark.parametrize(
    "block, reason",
    [
        ("sys.modules['numba'] = None", "numba is not installed"),  # nothing named numba
        ("class Finder:\n"
         "    def find_spec(self, name, path=None, target=None):\n"
         "        if name == 'numba':\n"
         "            raise ImportError('Numba needs NumPy 2.3 or less. Got NumPy 2.4.')\n"
         "sys.meta_path.insert(0, Finder())", "numba is installed but broken: ImportError: "
         "Numba needs NumPy 2.3 or less"),
    ],
    ids=["not installed", "broken install"],
)  # fmt: skip
def test_unavailable_numba_says_why_and_falls_back_to_numpy(block, reason):
    """numba absent and numba present but failing to import are told apart (what makes the
    test above a failure in CI); either way the NumPy path runs."""
    script = (
        "import sys\n"
        f"{block}\n"
        "from llama_np import kernels\n"
        "print(kernels.numba_unavailable()); print(kernels.int8_unavailable())\n"
        "print(kernels.active()); print(kernels.describe())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    why, int8_why, active, described = done.stdout.splitlines()
    assert why.startswith(reason) and int8_why == why
    assert active == "numpy" and reason in described


@requires_numba
def test_int8_skip_reason_names_the_cpu():
    """Where numba works, the int8 kernels run or the reason names what is missing."""
    assert INT8_PROBLEM is None or INT8_PROBLEM in (
        "this CPU has neither AVX2 nor AVX-512 VNNI",
        "numba compiles for another CPU ($NUMBA_CPU_NAME)",
    )


@pytest.fixture
def use_kernels():
    """kernels.use(name) for one test, then back to the default."""
    yield kernels.use
    kernels.use(None)


def product(packed: PackedRows, x: np.ndarray, name: str) -> np.ndarray:
    """x @ packed.T with the kernels `name`."""
    kernels.use(name)
    try:
        return x @ packed.T
    finally:
        kernels.use(None)


def close(out: np.ndarray, ref: np.ndarray, magnitude: np.ndarray, rtol: float = 1e-5) -> bool:
    """float32 sums agree with float64 up to rtol × the sum of the terms' magnitudes."""
    return bool(np.all(np.abs(out - ref) <= rtol * magnitude + 1e-30))


# ---------------------------------------------------------------- GGUF block formats

# name: (weights per block, bytes per block, byte offsets of the block's fp16 scales/mins)
BLOCKS = {
    name: (layout.weights, layout.bytes, tuple(getattr(layout, f) for f in ("d", "dmin", "m")
                                               if f in layout._fields))
    for name, layout in {"Q8_0": Q8_0, "Q4_0": Q4_0, "Q4_1": Q4_1, "Q5_0": Q5_0, "Q5_1": Q5_1,
                         "Q4_K": Q4_K, "Q5_K": Q5_K, "Q6_K": Q6_K}.items()
}  # fmt: skip
# Largest |weight| per unit of a block's fp16 fields (sub-block scale × quant, or min): bounds
# the terms of a product, to size the float32 rounding allowed.
FIELD_GAIN = {"Q8_0": 128, "Q4_0": 8, "Q4_1": 16, "Q5_0": 16, "Q5_1": 32}
FIELD_GAIN |= {"Q4_K": 63 * 32, "Q5_K": 63 * 32, "Q6_K": 128 * 32}


def random_blocks(kind: str, n: int, k: int, seed: int, scales: str) -> np.ndarray:
    """(n, row_bytes) uint8 rows of random blocks whose fp16 fields are finite: random,
    all zero, or extreme (fp16's largest and smallest subnormal values)."""
    qk, block_bytes, fields = BLOCKS[kind]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (n, k // qk, block_bytes), dtype=np.uint8)  # (n, blocks, bytes)
    for offset in fields:
        if scales == "random":
            d = rng.standard_normal((n, k // qk)) * 0.01
        elif scales == "zero":
            d = np.zeros((n, k // qk))
        else:
            d = rng.choice([65504.0, -65504.0, 6e-8, 0.0], size=(n, k // qk))
        raw[:, :, offset : offset + 2] = d.astype("<f2").view(np.uint8).reshape(n, -1, 2)
    return raw.reshape(n, -1)


def field_magnitude(kind: str, raw: np.ndarray) -> np.ndarray:
    """(n,) the largest |fp16 field| of each row × FIELD_GAIN: no weight exceeds it."""
    _, block_bytes, fields = BLOCKS[kind]
    blocks = raw.reshape(raw.shape[0], -1, block_bytes)
    values = [np.abs(blocks[:, :, o : o + 2].copy().view("<f2").astype(np.float64)) for o in fields]
    return np.max([v.max(axis=(1, 2)) for v in values], axis=0) * FIELD_GAIN[kind]


def gguf_weights(kind: str, raw: np.ndarray) -> np.ndarray:
    """The `gguf` package's dequantization of rows of blocks, as float64 (N, K)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    return dequantize(raw, GGMLQuantizationType[kind]).astype(np.float64)


def block_cases(test):
    """Hypothesis cases for a block-kernel test(kind, blocks, n, b, scales, seed)."""
    cases = given(
        blocks=st.integers(1, 4),
        n=st.integers(1, 9),
        b=ROWS,
        scales=st.sampled_from(["random", "zero", "extreme"]),
        seed=st.integers(0, 2**16),
    )
    return settings(max_examples=10, deadline=None)(cases(test))


@requires_numba
@pytest.mark.parametrize("kind", sorted(BLOCKS))
@block_cases
def test_block_kernels_match_gguf_dequantize(kind, blocks, n, b, scales, seed):
    """numba's float dot products, its widened tiles in registers and those for BLAS, each on
    any number of activation rows, against gguf's dequantizer and a float64 product."""
    from llama_np.kernels import numba_jit

    k = blocks * BLOCKS[kind][0]
    raw = random_blocks(kind, n, k, seed, scales)
    packed = PackedRows(kind, raw, None, Scratch())
    x = np.random.default_rng(seed + 1).standard_normal((b, k)).astype(np.float32)  # (B, K)
    x[:, :3] = [0.0, -1e4, 1e-20][: min(3, k)]  # a zero, a large and a tiny activation

    w = gguf_weights(kind, raw)  # (N, K)
    assert w.shape == (n, k)
    ref = x.astype(np.float64) @ w.T  # (B, N)
    magnitude = np.abs(x).astype(np.float64).sum(axis=1, keepdims=True) * field_magnitude(kind, raw)
    for kernel in (numba_jit.KINDS[kind], numba_jit.TILES[kind], kernels._widened_product):
        out = np.full((b, n), np.nan, dtype=np.float32)  # (B, N)
        kernel(packed, x, out)
        assert close(out, ref, magnitude)


@requires_numba
@pytest.mark.parametrize("kind", [*sorted(BLOCKS), "int8", "bf16", "fp16"])
@settings(max_examples=6, deadline=None)
@given(start=st.integers(0, 5), n=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_widening_equals_the_numpy_path(kind, start, n, seed):
    """numba's widening (for the tiles BLAS multiplies) gives exactly the NumPy path's float32
    weights, any range of rows, extreme scales included."""
    from llama_np.kernels import numba_jit

    if kind in BLOCKS:
        raw = random_blocks(kind, start + n, 512, seed, "extreme" if seed % 2 else "random")
        packed = PackedRows(kind, raw, None, Scratch())
    else:
        values = "extreme" if seed % 2 else "random"
        packed = pack(kind, own_weights(kind, start + n, 512, seed, values), Scratch())
    expected = packed.widen(start, start + n, np.empty((n, 512), dtype=np.float32))
    out = np.full((n, 512), np.nan, dtype=np.float32)
    numba_jit.WIDEN[kind](packed, start, start + n, out)
    np.testing.assert_array_equal(out, expected)


@requires_numba
@settings(max_examples=10, deadline=None)
@given(
    n=st.lists(st.integers(1, 5), min_size=2, max_size=3),
    b=ROWS,
    kernel=st.sampled_from(["numba", "int8"]),
    seed=st.integers(0, 2**16),
)
def test_mixed_kind_stack_runs_each_parts_kernel(n, b, kernel, seed):
    """A fused matrix stored in several kinds (Q4_K_M's q/k in Q4_K, v in Q6_K): each part's
    kernel fills its own columns of the output, for one activation row or many."""
    if kernel == "int8" and not kernels.int8_available():
        kernel = "numba"
    kinds = ["Q4_K", "Q6_K", "Q8_0"][: len(n)]
    raws = [
        random_blocks(kind, rows, 256, seed + i, "random")
        for i, (kind, rows) in enumerate(zip(kinds, n, strict=True))
    ]
    stack = StackedRows(
        [PackedRows(kind, raw, None, Scratch()) for kind, raw in zip(kinds, raws, strict=True)]
    )
    x = np.random.default_rng(seed).standard_normal((b, 256)).astype(np.float32)  # (B, K)
    kernels.use(kernel)
    try:
        run = kernels.compiled(stack, b)
        assert run is not None
        out = np.full((b, sum(n)), np.nan, dtype=np.float32)  # (B, N)
        run(x, out)
    finally:
        kernels.use(None)

    w = np.concatenate([gguf_weights(kind, raw) for kind, raw in zip(kinds, raws, strict=True)])
    magnitude = np.abs(x).astype(np.float64) @ np.abs(w).T
    if kernel == "int8":  # activations rounded to int8 (per 256; per 32 for Q8_0's columns)
        x = x.astype(np.float64)
        half_step = np.abs(x).max(axis=1, keepdims=True) / 127 / 2
        magnitude = magnitude + half_step * np.abs(w).sum(axis=1) * 1e5
    assert close(out, x.astype(np.float64) @ w.T, magnitude)


# ---------------------------------------------------------------- int8: int8 activations


def off_ties(x: np.ndarray, group: int) -> np.ndarray:
    """x with each value that scales to within 1e-3 of a half step (x × 127 / max|x| of its
    group) moved a little further off it. The kernels compute that scaling inside a fastmath
    loop, free to reorder it as (x × 127) / max|x|: at a near tie the two round apart, and
    a whole step of one activation can exceed the tolerance (a Q6_K product, xq -15 or -16)."""
    blocks = x.reshape(x.shape[0], -1, group).copy()  # (B, K/G, G)
    amax = np.abs(blocks).max(axis=-1, keepdims=True)
    scaled = blocks.astype(np.float64) * 127 / np.where(amax > 0, amax, 1)
    tie = np.abs(np.abs(scaled - np.floor(scaled)) - 0.5) < 1e-3
    blocks[tie] *= np.float32(0.99)  # further from the tie, and never the group's max
    return blocks.reshape(x.shape)


def rounded_rows(x: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 (x as the int8 kernels round it, the rounding's bound), both (B, K): each group
    of values scaled by max|x| / 127 and rounded to integers, so off by at most half a step.
    In float32 as the kernels compute it (x × (127 / max|x|)): float64 arithmetic rounded a
    value near a half step the other way, a whole step off (a Q4_0 product with fp16's largest
    scales missed by 1.5e-5 of its magnitude)."""
    blocks = x.reshape(x.shape[0], -1, group)  # (B, K/G, G) float32
    amax = np.abs(blocks).max(axis=-1, keepdims=True)  # (B, K/G, 1)
    inverse = np.float32(127) / np.where(amax > 0, amax, np.float32(1))
    step = (amax / np.float32(127)).astype(np.float64)
    rounded = np.rint(blocks * inverse).astype(np.float64) * step
    return rounded.reshape(x.shape), np.broadcast_to(step / 2, blocks.shape).reshape(x.shape)


@requires_int8
@pytest.mark.parametrize("kind", ["Q4_K", "Q5_K", "Q6_K", "Q8_0", "Q4_0", "Q5_0"])
@block_cases
def test_int8_kernels_are_the_product_with_rounded_activations(kind, blocks, n, b, scales, seed):
    """int8's integer products equal the float64 product of gguf's dequantized weights with
    the activations rounded to int8 per 256 (32-weight blocks: per 32) (float32 rounding
    aside), and so differ from the exact product by no more than the rounding allows: Σ |w| ×
    half a step. Rows of 32-weight blocks whose count 8 does not divide (stories15M's 288)
    end in single blocks."""
    from llama_np.kernels import int8

    small = BLOCKS[kind][0] == 32
    k = blocks * 256 + (32 * (seed % 3) if small else 0)
    raw = random_blocks(kind, n, k, seed, scales)
    x = np.random.default_rng(seed + 1).standard_normal((b, k)).astype(np.float32)  # (B, K)
    x[:, :3] = [0.0, -1e3, 1e-20]  # a zero, a large and a tiny activation
    x = off_ties(x, 32 if small else 256)
    out = np.full((b, n), np.nan, dtype=np.float32)  # (B, N)
    int8.KINDS[kind](PackedRows(kind, raw, None, Scratch()), x, out)

    w = gguf_weights(kind, raw)  # (N, K)
    rounded, half_step = rounded_rows(x, 32 if small else 256)
    magnitude = np.abs(rounded).sum(axis=1, keepdims=True) * field_magnitude(kind, raw)
    assert close(out, rounded @ w.T, magnitude)
    exact = x.astype(np.float64) @ w.T
    assert np.all(np.abs(out - exact) <= half_step @ np.abs(w).T + 1e-5 * magnitude + 1e-30)


@requires_int8
@pytest.mark.parametrize(
    "block",
    [
        "_q4k_block",
        "_q5k_block",
        "_q6k_block",
        "_q8_0_blocks",
        "_q4_0_blocks",
        "_q5_0_blocks",
        "_int8_groups",
    ],
)
def test_int8_block_functions_prefetch_the_weights_ahead(block):
    """Decode streams each weight from memory once: the block functions ask for the bytes
    PREFETCH_AHEAD past their own before they multiply (10-16% faster products on stories15M's
    and stories110M's matrices). Their compiled code must hold the prefetch instructions."""
    import numba

    from llama_np.kernels import int8

    function = getattr(int8, block)
    row, xq = np.zeros(512, dtype=np.uint8), np.zeros(512, dtype=np.int8)
    xs, xd = np.zeros(32, dtype=np.int32), np.ones(16, dtype=np.float32)
    if block == "_int8_groups":  # (q, scales, xq, k, xs, xd)
        call = numba.njit(lambda: function(row.view(np.int8), xd, xq, 0, xs, xd))
    elif block.endswith("_blocks"):  # activation scales per 32: an array
        call = numba.njit(lambda: function(row, 0, xq, 0, xs, xd))
    else:  # K-quants: one activation scale per block
        call = numba.njit(lambda: function(row, 0, xq, 0, xs, xd[0]))
    call()
    assert "prefetchnta" in "".join(call.inspect_asm().values())


@requires_int8
def test_int8_rounding_keeps_zeros_and_nan(use_kernels):
    """A row of zeros gives zeros (scale 0, no division); NaN or Inf in a block of 256
    activations makes the outputs NaN, as a float product would make them NaN or Inf."""
    raw = random_blocks("Q4_K", 3, 512, 0, "random")
    packed = PackedRows("Q4_K", raw, None, Scratch())
    use_kernels("int8")
    x = np.zeros((3, 512), dtype=np.float32)
    x[1, 300], x[2, 5] = np.nan, np.inf
    out = x @ packed.T  # (3, 3)
    assert np.all(out[0] == 0) and np.all(np.isnan(out[1:]))


@requires_int8
@settings(max_examples=15, deadline=None)
@given(
    groups=st.integers(1, 20),  # rows of 32 × groups: whole 256s and single groups after them
    n=st.integers(1, 9),
    b=ROWS,
    values=st.sampled_from(["random", "zero", "extreme"]),
    seed=st.integers(0, 2**16),
)
def test_int8_weights_are_the_product_with_rounded_activations(groups, n, b, values, seed):
    """This project's int8 weights (one float32 scale per 32) through the int8 kernel: the
    float64 product of the stored weights with activations rounded to int8 per 32, as for
    Q8_0 (float32 rounding aside), and within the rounding's bound of the exact product."""
    from llama_np.kernels import int8

    k = 32 * groups
    packed = pack("int8", own_weights("int8", n, k, seed, values), Scratch())
    x = np.random.default_rng(seed + 1).standard_normal((b, k)).astype(np.float32)  # (B, K)
    x[:, :3] = [0.0, -1e3, 1e-20]  # a zero, a large and a tiny activation
    x = off_ties(x, 32)
    out = np.full((b, n), np.nan, dtype=np.float32)  # (B, N)
    int8.KINDS["int8"](packed, x, out)

    w = packed[np.arange(n)].astype(np.float64)  # (N, K) the weights as stored
    rounded, half_step = rounded_rows(x, 32)
    # VNNI multiplies q + 128 (vpdpbusd needs an unsigned side) and subtracts 128 Σ xq after:
    # its float32 terms reach 256 × the weights' scale.
    magnitude = np.abs(rounded).sum(axis=1, keepdims=True) * 256 * packed.scales.max(axis=(1, 2))
    assert close(out, rounded @ w.T, magnitude)
    exact = x.astype(np.float64) @ w.T
    assert np.all(np.abs(out - exact) <= half_step @ np.abs(w).T + 1e-5 * magnitude + 1e-30)


def _int8_isa() -> str | None:
    from llama_np.kernels import int8

    return int8.ISA


@requires_int8
@pytest.mark.skipif(
    not kernels.int8_available() or _int8_isa() != "vnni",
    reason="the CPU's own instruction is AVX2 already: tested above",
)
def test_int8_kernels_compiled_for_avx2_on_a_vnni_cpu():
    """On an AVX-512 VNNI machine, the AVX2 code (numba told the CPU has no VNNI) passes the
    same checks, in a fresh process (numba caches each CPU's code apart)."""
    script = (
        "import numpy as np, test_kernels as t\n"
        "from llama_np.kernels import int8\n"
        "assert int8.ISA == 'avx2', int8.ISA\n"
        "for kind in ('Q4_K', 'Q5_K', 'Q6_K', 'Q8_0', 'Q4_0', 'Q5_0'):\n"
        "    t.test_int8_kernels_are_the_product_with_rounded_activations.hypothesis.inner_test(\n"
        "        kind=kind, blocks=2, n=5, b=9, scales='random', seed=7)\n"
        "t.test_int8_weights_are_the_product_with_rounded_activations.hypothesis.inner_test(\n"
        "    groups=9, n=4, b=3, values='random', seed=3)\n"
    )
    env = {
        **os.environ,
        "NUMBA_CPU_FEATURES": "-avx512vnni",
        "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}",
    }
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]


# ---------------------------------------------------------------- int8 / bf16 / fp16


def own_weights(kind: str, n: int, k: int, seed: int, values: str) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)).astype(np.float32)  # (N, K)
    if values == "zero":
        w[: n // 2 + 1] = 0  # whole rows (and int8 groups) of zeros: scale 0
    elif values == "extreme":
        big = 65504.0 if kind == "fp16" else 1e30  # fp16's largest; huge for bf16/int8
        w.flat[:: max(1, w.size // 5)] = big
        w.flat[1 :: max(1, w.size // 7)] = 6e-8  # an fp16 subnormal
    return w


@pytest.mark.parametrize("kind", ["int8", "bf16", "fp16"])
@settings(max_examples=15, deadline=None)
@given(
    groups=st.integers(1, 4),
    group=st.sampled_from([32, 24, 43]),  # K = 24·g or 43·g: int8 groups other than 32
    n=st.integers(1, 9),
    b=ROWS,
    values=st.sampled_from(["random", "zero", "extreme"]),
    seed=st.integers(0, 2**16),
)
def test_own_format_kernels_match_numpy_path(kind, groups, group, n, b, values, seed):
    """The NumPy path, and numba's float kernels where numba is installed (dot products or
    widened tiles by row count), against a float64 product of the stored weights."""
    k = groups * group
    w = own_weights(kind, n, k, seed, values)
    packed = pack(kind, w, Scratch())
    x = np.random.default_rng(seed + 1).standard_normal((b, k)).astype(np.float32)  # (B, K)
    x[:, 0] = 0.0

    stored = packed[np.arange(n)].astype(np.float64)  # (N, K) the weights as stored
    ref = x.astype(np.float64) @ stored.T  # (B, N)
    magnitude = np.abs(x).astype(np.float64) @ np.abs(stored).T
    assert close(product(packed, x, "numpy"), ref, magnitude)
    if kernels.numba_available():
        assert close(product(packed, x, "numba"), ref, magnitude)


@requires_numba
@pytest.mark.parametrize("name", ["numba", "int8"])
def test_row_count_picks_dot_products_or_widened_tiles(name, use_kernels):
    """Up to few_rows(n) activation rows a product runs dot products (int8's integer ones for
    the kinds it has, numba's float ones for the rest, fp32 rows included); more rows, up to
    TILE_ROWS, widened tiles in registers; more still, widened tiles for BLAS. numpy kernels:
    no compiled kernel at all."""
    from llama_np.kernels import int8, numba_jit

    if name == "int8" and not kernels.int8_available():
        pytest.skip("no AVX2 or AVX-512 VNNI")
    use_kernels(name)
    for kind in ("Q4_K", "Q5_0", "fp32"):
        rows = (
            PackedRows("fp32", np.ones((4, 256), dtype=np.float32), None, Scratch())
            if kind == "fp32"
            else PackedRows(kind, random_blocks(kind, 4, 256, 0, "random"), None, Scratch())
        )
        family = "int8" if name == "int8" and int8.supports(rows) else "numba"
        dots = (int8 if family == "int8" else numba_jit).KINDS[kind]
        last = kernels.DOT_ROWS[family]
        assert kernels._kernel(name, rows, 1) is dots
        assert kernels._kernel(name, rows, last) is dots
        assert kernels._kernel(name, rows, last + 1) is numba_jit.TILES[kind]
        assert kernels._kernel(name, rows, kernels.TILE_ROWS) is numba_jit.TILES[kind]
        assert kernels._kernel(name, rows, kernels.TILE_ROWS + 1) is kernels._widened_product
        # compiled() keeps one product per matrix and row count (every count past TILE_ROWS
        # runs alike): a product made for one count is never reused for another
        plans = [kernels.compiled(rows, n) for n in (1, last + 1, kernels.TILE_ROWS + 1)]
        assert len({id(p) for p in plans}) == 3
        assert plans == [kernels.compiled(rows, n) for n in (1, last + 1, 10_000)]
    use_kernels("numpy")
    assert kernels.compiled(rows, 1) is None


@requires_numba
@pytest.mark.parametrize(("k", "compiled"), [(64, True), (16, False), (43, False), (96, True)])
def test_int8_kernel_needs_groups_of_32(k, compiled, use_kernels):
    """The int8 kernels find a weight's scale by its index over 32: groups of 16 or 43 (a tiny
    model's rows that 32 does not divide) take the NumPy path instead."""
    packed = pack("int8", np.ones((3, k), dtype=np.float32), Scratch())
    use_kernels("numba")
    assert (kernels.compiled(packed, 1) is not None) is compiled
    np.testing.assert_allclose(np.ones((1, k), dtype=np.float32) @ packed.T, [[k] * 3])


# ---------------------------------------------------------------- fp32


@requires_numba
@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(1, 40),
    k=st.integers(1, 300),
    b=st.integers(0, 64),  # 0: one (K,) vector
    special=st.sampled_from([None, np.nan, np.inf, 1e30]),
    seed=st.integers(0, 2**16),
)
def test_fp32_rows_take_the_compiled_dot_products(n, k, b, special, seed):
    """A float32 matrix kept as PackedRows of kind "fp32" multiplies like its (in, out) array:
    few activation rows run numba's dot products, more run BLAS on the rows; the product,
    NaN and Inf included."""
    from llama_np.kernels import numba_jit

    calls, kernel = [], numba_jit.matmul_fp32

    def spy(w, x, out):
        calls.append(w.shape)
        kernel(w, x, out)

    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((n, k)).astype(np.float32)  # (N, K)
    x = rng.standard_normal((b, k) if b else (k,)).astype(np.float32)
    if special is not None:
        x.flat[rng.integers(x.size)] = special
    w = PackedRows("fp32", rows, None, Scratch()).T  # (K, N)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(numba_jit, "matmul_fp32", spy)
        kernels.use("numba")
        try:
            with np.errstate(all="ignore"):  # BLAS's product of Inf warns; NaN/Inf checked below
                out = x @ w
        finally:
            kernels.use(None)
    assert calls == ([(n, k)] if kernels.few_rows(max(b, 1)) else [])
    with np.errstate(all="ignore"):
        ref = x.astype(np.float64) @ rows.T.astype(np.float64)
        magnitude = np.abs(x).astype(np.float64) @ np.abs(rows.T).astype(np.float64)
    assert out.shape == ref.shape and out.dtype == np.float32
    finite, inf = np.isfinite(ref), np.isinf(ref)
    assert np.array_equal(np.isnan(out), np.isnan(ref))
    assert np.array_equal(out[inf], ref[inf])  # ±Inf where the product has it
    assert close(out[finite], ref[finite], magnitude[finite])


@pytest.mark.parametrize("kernel", ["numpy", "numba"])
@pytest.mark.parametrize("storage", ["fp32", "int8"])
def test_a_product_of_mismatched_shapes_is_refused(kernel, storage, use_kernels):
    """x's rows must have as many values as the matrix has rows: a (1, 128) x against a
    (64, N) matrix has the right number of values for two rows, which a compiled kernel would
    have multiplied into an output of one (writing past it)."""
    if kernel == "numba" and NUMBA_PROBLEM:
        pytest.skip(NUMBA_SKIP)
    use_kernels(kernel)
    rows = np.ones((300, 256), dtype=np.float32)  # (N, K)
    w = (
        pack(storage, rows, Scratch())
        if storage == "int8"
        else PackedRows("fp32", rows, None, Scratch())
    )
    for x in (np.ones((1, 512), dtype=np.float32), np.ones((2, 128), dtype=np.float32)):
        with pytest.raises(ValueError, match="last dimension must be 256"):
            x @ w.T
    assert (np.ones(256, dtype=np.float32) @ w.T).shape == (300,)


SMALL_FP32 = llama_np.LlamaConfig(  # matrices of 64Ki weights and more: compiled in decode
    dim=256, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=512, vocab_size=512, max_seq_len=32
)


@requires_numba
def test_fp32_layout_follows_the_kernels_at_load(use_kernels):
    """Loaded with compiled kernels active, fp32 matrices of FP32_KERNEL_MIN weights or more
    are PackedRows of kind "fp32" ((out, in) rows); with numpy kernels, plain arrays laid out
    for BLAS. Same shapes, same logits; a copy of a weight is the same kind of weight."""
    from llama_np.packed import PackedTransposed
    from llama_np.tools.random_model import random_model

    models = {}
    for name in ("numpy", "numba"):
        use_kernels(name)
        models[name] = random_model(SMALL_FP32, std=0.1)
    use_kernels(None)
    blas, rows = models["numpy"].weights, models["numba"].weights
    for field in ("wqkv", "wo", "w_gate_up", "w_down"):
        plain, packed = getattr(blas.layers[0], field), getattr(rows.layers[0], field)
        assert isinstance(plain, np.ndarray) and isinstance(packed, PackedTransposed)
        assert packed.packed.kind == "fp32" and plain.shape == packed.shape
        np.testing.assert_array_equal(plain, packed.packed.data.T)
    assert isinstance(rows.classifier, PackedTransposed)
    use_kernels("numba")
    tied = random_model(SMALL_FP32.replace(tie_embeddings=True)).weights
    assert tied.embedding is tied.classifier.packed  # one copy of the (V, D) rows
    use_kernels(None)
    logits = {}
    for name, model in models.items():
        use_kernels(name)
        cache = model.new_cache(8)
        model.prefill([1, 2, 3], cache)
        logits[name] = np.stack([model.decode(t, cache) for t in (4, 5)])  # (2, V)
    np.testing.assert_allclose(logits["numba"], logits["numpy"], rtol=0, atol=1e-4)
    assert rows.uses_compiled_kernels() and not blas.uses_compiled_kernels()


@requires_numba
@pytest.mark.parametrize("weights_dtype", ["int8", "bf16", "fp16"])
def test_model_decodes_the_same_with_either_kernels(weights_dtype, use_kernels):
    """stories260K (int8 groups of 32 and of 43 in its 172-wide MLP rows): prefill + decode."""
    model = llama_np.load(weights_dtype=weights_dtype)
    logits = {}
    for name in ("numpy", "numba"):
        use_kernels(name)
        cache = model.new_cache(16)
        model.prefill([1, 403, 407], cache)
        logits[name] = np.stack([model.decode(t, cache) for t in (300, 301, 302)])  # (3, V)
    np.testing.assert_allclose(logits["numba"], logits["numpy"], rtol=0, atol=1e-3)


# ---------------------------------------------------------------- a busy core


def simulated_threads(monkeypatch, one_thread: float = 1.8):
    """threads.Threads(most=2) on a simulated clock, and `run(products, busy)`: three products
    of different sizes in turn, each taking its usual time with 2 threads on a quiet machine,
    30x that with 2 threads while another process keeps a core busy (the thread on it waits
    for timeslices), `one_thread` x with 1 thread either way; -> the thread count of each
    product."""
    from llama_np.kernels import threads

    clock, count = [0.0], [None]
    monkeypatch.setattr(threads.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(threads.numba, "set_num_threads", lambda n: count.__setitem__(0, n))
    governor = threads.Threads(most=2)

    def run(products: int, busy: bool) -> list[int]:
        counts = []
        for i in range(products):
            run.started.append(clock[0])  # when each product started (simulated seconds)
            usual = 1e-3 * (1 + i % 3)

            def work(usual=usual):
                clock[0] += usual * ((30 if busy else 1) if count[0] == 2 else one_thread)

            governor.run(i % 3, work)
            counts.append(count[0])
            run.settled.append(governor.count)  # the count kept (count[0] also shows tries)
        return counts

    run.clock, run.started, run.settled = clock, [], []
    return run


@requires_numba
@pytest.mark.parametrize("one_thread", [1.8, 1.08])
def test_threads_drop_a_straggler_and_come_back(monkeypatch, one_thread):
    """The dot products' thread count (threads.py): quiet, all threads (tries of one fewer
    lose, and come seldom); a core turns busy: one thread within a few products, kept while
    tries of two lose; the core is free again: back to two within about a second, also when
    the second thread gains only 8% (stories15M's small products)."""
    run = simulated_threads(monkeypatch, one_thread)
    counts = run(3000, busy=False)  # ~6 s
    assert counts[-50:] == [2] * 50 and counts.count(1) < 200  # tries: < 7% of products
    counts = run(400, busy=True)
    assert counts[10:20] == [1] * 10 and counts[-100:].count(1) >= 95  # tries of 2 aside
    assert 0 < counts.count(2) < 30  # tries of 2 threads, fewer as they keep losing
    counts = run(2500, busy=False)  # ~6 s: longer than the longest wait between tries
    assert counts[-50:] == [2] * 50
    # A long busy spell (~10 s: the wait between tries grows to its longest), then free again:
    # back on both cores within about a second.
    run(3000, busy=True)
    freed = run.clock[0]
    counts = run(1000, busy=False)
    back = run.settled[-len(counts) :].index(2)  # the first product after the count went back
    assert run.started[-len(counts) + back] - freed <= 1.1


@requires_numba
def test_threads_adapt_to_a_machine_busy_from_the_start(monkeypatch):
    """Busy before the first product, all of them straggle alike (no product is slow against
    its own median): a try of one thread fewer finds it faster."""
    run = simulated_threads(monkeypatch)
    counts = run(400, busy=True)
    assert counts[20:40].count(1) >= 15 and counts[-50:] == [1] * 50


@requires_numba
def test_a_try_of_another_count_ends_when_its_products_cannot_be_compared(monkeypatch):
    """A server's steps change their row counts, and each (matrix, rows) is a product of its
    own: a try that waited to compare PROBE_PRODUCTS of them ran on and kept most products on
    one thread. It ends after TRY_AT_MOST products, compared or not."""
    from llama_np.kernels import threads

    clock, count = [0.0], [None]
    monkeypatch.setattr(threads.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(threads.numba, "set_num_threads", lambda n: count.__setitem__(0, n))
    governor = threads.Threads(most=2)

    def work():  # one thread a little faster: the few products compared are wins
        clock[0] += 1e-3 if count[0] == 2 else 0.85e-3

    for _ in range(3):  # three products with usual times: the try compares a few
        for product in range(3):
            governor.run(product, work)
    clock[0] = governor.probe_at  # time for a try
    counts = []
    for i in range(240):  # then mostly products never seen before (a server's row counts)
        governor.run(("new", i) if i % 20 else i % 3, work)
        counts.append(count[0])
    assert counts.count(1) == threads.TRY_AT_MOST and governor.count == 2  # inconclusive


# ---------------------------------------------------------------- selection, NumPy only


def test_numpy_kernels_forced(use_kernels):
    assert use_kernels("numpy") == "numpy" == kernels.active()
    packed = pack("int8", np.ones((4, 64), dtype=np.float32), Scratch())
    assert kernels.compiled(packed, 1) is None
    np.testing.assert_array_equal(np.ones((1, 64), dtype=np.float32) @ packed.T, [[64.0] * 4])


def test_environment_variable(monkeypatch):
    monkeypatch.setenv(kernels.ENV_VAR, "numpy")
    assert kernels.use(None) == "numpy" == kernels.active()  # read again after use()
    monkeypatch.setenv(kernels.ENV_VAR, "cuda")
    with pytest.raises(ArgumentError, match=r"LLAMA_NP_KERNELS must be one of numpy, numba"):
        kernels.use(None)
    monkeypatch.delenv(kernels.ENV_VAR)
    kernels.use(None)


def test_unknown_or_missing_kernels_name_the_fix(monkeypatch, use_kernels):
    with pytest.raises(ArgumentError, match="must be one of numpy, numba, int8, got 'c'"):
        use_kernels("c")
    monkeypatch.setattr(kernels, "_numba_error", "numba is not installed")
    with pytest.raises(ArgumentError, match=r"pip install -e '\.\[fast\]', or use --kernels numpy"):
        use_kernels("numba")
    assert kernels.active() == "numpy"  # the default falls back


def test_int8_needs_the_instruction(monkeypatch, use_kernels):
    """Without AVX2 (or AVX-512 VNNI) the int8 kernels are refused by name and the default is
    numba; numba compiling for another CPU ($NUMBA_CPU_NAME) refuses them too."""
    installed = kernels.numba_available()
    monkeypatch.setattr(kernels, "numba_available", lambda: True)
    monkeypatch.setattr(kernels, "_int8_reason", "this CPU has neither AVX2 nor AVX-512 VNNI")
    with pytest.raises(ArgumentError, match="neither AVX2 nor AVX-512 VNNI: use --kernels numba"):
        use_kernels("int8")
    assert kernels.active() == "numba"
    if installed:  # int8's own check, as numba reads $NUMBA_CPU_NAME into its config
        import numba

        monkeypatch.setattr(numba.config, "CPU_NAME", "generic")
        monkeypatch.setattr(kernels, "_int8_reason", None)  # asked again
        with pytest.raises(ArgumentError, match=r"another CPU \(\$NUMBA_CPU_NAME\)"):
            use_kernels("int8")


def test_cli_kernels_flag_and_info(capsys, tmp_path):
    """`info` names the active kernels and what multiplies this model's weights; generate's
    timing lines say it too, with whether activations were rounded to int8."""
    assert cli_main(["info", "--kernels", "numpy"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^kernels +numpy \(", out, re.M)
    assert re.search(r"^this model's products +float32 arrays: BLAS$", out, re.M)
    kernels.use(None)
    if not kernels.numba_available():
        return
    assert cli_main(["info", "--kernels", "numba"]) == 0  # stories260K: all under the minimum
    assert "(numba unused: fp32 matrices under 65,536 weights)" in capsys.readouterr().out
    kernels.use(None)
    from checkpoint_writers import random_tensors, write_gguf

    from llama_np.cli.main import print_timings
    from llama_np.generate import GenerationStats

    path = tmp_path / "model.gguf"
    write_gguf(path, SMALL_FP32, random_tensors(SMALL_FP32), "Q8_0")
    model = llama_np.load(path)
    for name, rounded in (("numba", False), ("int8", True)):
        if name == "int8" and not kernels.int8_available():
            continue
        kernels.use(name)
        print_timings(GenerationStats(), 1, model)
        kernels.use(None)
        (line,) = [x for x in capsys.readouterr().err.splitlines() if "kernels" in x]
        assert line.startswith(f"llama-np: kernels  {name}: Q8_0 as ")
        assert ("activations rounded to int8" in line) is rounded


def test_numpy_only_install_generates(use_kernels):
    """With numba unimportable (as in a NumPy-only install), everything runs the NumPy path."""
    script = (
        "import sys; sys.modules['numba'] = None\n"  # `import numba` now raises ImportError
        "import llama_np\n"
        "from llama_np import kernels\n"
        "assert not kernels.numba_available() and kernels.active() == 'numpy'\n"
        "model = llama_np.load(weights_dtype='int8')\n"
        "print(llama_np.generate_text(model, 'Once', max_new_tokens=8, temperature=0))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    use_kernels("numpy")
    model = llama_np.load(weights_dtype="int8")
    expected = llama_np.generate_text(model, "Once", max_new_tokens=8, temperature=0)
    assert done.stdout == expected + "\n" and len(expected) > 8


@requires_numba
@pytest.mark.parametrize("type_name", ["Q8_0", "Q4_K", "Q6_K"])
def test_gguf_model_decodes_the_same_with_either_kernels(tmp_path, type_name, use_kernels):
    """A GGUF kept in its blocks: decode with the block kernels equals the NumPy path."""
    from checkpoint_writers import random_tensors, write_gguf

    from llama_np.config import LlamaConfig

    config = LlamaConfig(
        dim=256, n_layers=1, n_heads=4, n_kv_heads=2, hidden_dim=512, vocab_size=96, max_seq_len=32
    )
    path = tmp_path / "model.gguf"
    write_gguf(path, config, random_tensors(config), type_name)
    model = llama_np.load(path)
    assert model.weights.layers[0].w_gate_up.packed.kind == type_name
    use_kernels("numba")
    assert kernels.compiled(model.weights.layers[0].w_gate_up.packed, 1) is not None
    logits = {}
    for name in kernels.KERNELS if kernels.int8_available() else ("numpy", "numba"):
        use_kernels(name)
        cache = model.new_cache(8)
        model.prefill([1, 5, 17], cache)
        logits[name] = np.stack([model.decode(t, cache) for t in (33, 60)])  # (2, V)
    scale = np.abs(logits["numpy"]).max()
    np.testing.assert_allclose(logits["numba"], logits["numpy"], rtol=0, atol=1e-4 * scale)
    if "int8" in logits:  # activations rounded to int8: ~1% of the largest logit
        np.testing.assert_allclose(logits["int8"], logits["numpy"], rtol=0, atol=3e-2 * scale)
        assert np.abs(logits["int8"] - logits["numpy"]).max() > 1e-6 * scale  # rounded: not equal
