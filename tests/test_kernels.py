"""The kernel layer: every compiled kernel against the NumPy path and independent references.

GGUF block kernels are checked against the `gguf` package's own dequantizer (llama.cpp's
Python reference) followed by a float64 product; this project's int8/bf16/fp16 kernels against
its NumPy path (widen + BLAS) and float64. The compiled tests skip when numba is not installed
(the vnni ones also on a CPU without AVX-512 VNNI), saying why in the summary; a numba that is
installed but does not import fails test_installed_numba_imports in CI. The NumPy-only tests
run everywhere.
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

ROOT = Path(__file__).resolve().parents[1]
NUMBA_PROBLEM = kernels.numba_unavailable()  # None, not installed, or a broken install
VNNI_PROBLEM = kernels.vnni_unavailable()  # ... or this CPU has no AVX-512 VNNI
NUMBA_SKIP = f"{NUMBA_PROBLEM}: compiled kernels not tested" + (
    " (pip install -e '.[fast]')" if NUMBA_PROBLEM == kernels.NUMBA_NOT_INSTALLED else ""
)
requires_numba = pytest.mark.skipif(NUMBA_PROBLEM is not None, reason=NUMBA_SKIP)
requires_vnni = pytest.mark.skipif(
    VNNI_PROBLEM is not None, reason=f"{VNNI_PROBLEM}: vnni kernels not tested"
)


def test_installed_numba_imports():
    """The `fast` extra installed but broken (e.g. a numba too old for this NumPy) would skip
    every compiled-kernel test as if numba were absent: in CI ($CI set) that is a failure;
    locally a skip that says so. numba not installed at all is a skip everywhere."""
    if NUMBA_PROBLEM is None:
        assert kernels.numba_available() and kernels.active() in ("numba", "vnni")
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
        "print(kernels.numba_unavailable()); print(kernels.vnni_unavailable())\n"
        "print(kernels.active()); print(kernels.describe())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    why, vnni_why, active, described = done.stdout.splitlines()
    assert why.startswith(reason) and vnni_why == why
    assert active == "numpy" and reason in described


@requires_numba
def test_vnni_skip_reason_names_the_cpu():
    """Where numba works, the vnni kernels run or the reason names what is missing."""
    assert VNNI_PROBLEM is None or VNNI_PROBLEM in (
        "this CPU has no AVX-512 VNNI",
        "numba compiles for another CPU ($NUMBA_CPU_NAME)",
        "numba compiles for other CPU features ($NUMBA_CPU_FEATURES)",
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
    "Q8_0": (32, 34, (0,)),
    "Q4_0": (32, 18, (0,)),
    "Q4_1": (32, 20, (0, 2)),
    "Q5_0": (32, 22, (0,)),
    "Q5_1": (32, 24, (0, 2)),
    "Q4_K": (256, 144, (0, 2)),
    "Q5_K": (256, 176, (0, 2)),
    "Q6_K": (256, 210, (208,)),
}
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


def block_cases(test):
    """Hypothesis cases for a block-kernel test(kind, blocks, n, b, scales, seed)."""
    cases = given(
        blocks=st.integers(1, 4),
        n=st.integers(1, 9),
        b=st.integers(1, 8),
        scales=st.sampled_from(["random", "zero", "extreme"]),
        seed=st.integers(0, 2**16),
    )
    return settings(max_examples=10, deadline=None)(cases(test))


@requires_numba
@pytest.mark.parametrize("kind", sorted(BLOCKS))
@block_cases
def test_block_kernels_match_gguf_dequantize(kind, blocks, n, b, scales, seed):
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    k = blocks * BLOCKS[kind][0]
    raw = random_blocks(kind, n, k, seed, scales)
    x = np.random.default_rng(seed + 1).standard_normal((b, k)).astype(np.float32)  # (B, K)
    x[:, :3] = [0.0, -1e4, 1e-20][: min(3, k)]  # a zero, a large and a tiny activation

    out = np.empty((b, n), dtype=np.float32)  # (B, N)
    kernels.use("numba")  # float activations (vnni's: test_vnni_kernels_...)
    try:
        kernels.compiled(PackedRows(kind, raw, None, Scratch()), b)(x, out)
    finally:
        kernels.use(None)

    w = dequantize(raw, GGMLQuantizationType[kind]).astype(np.float64)  # (N, K)
    assert w.shape == (n, k)
    ref = x.astype(np.float64) @ w.T  # (B, N)
    magnitude = np.abs(x).astype(np.float64).sum(axis=1, keepdims=True) * field_magnitude(kind, raw)
    assert close(out, ref, magnitude)


@requires_numba
@settings(max_examples=10, deadline=None)
@given(
    n=st.lists(st.integers(1, 5), min_size=2, max_size=3),
    b=st.integers(1, 8),
    seed=st.integers(0, 2**16),
)
def test_mixed_kind_stack_runs_each_parts_kernel(n, b, seed):
    """A fused matrix stored in several kinds (Q4_K_M's q/k in Q4_K, v in Q6_K): each part's
    kernel fills its own columns of the output, for one activation row or several."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    kinds = ["Q4_K", "Q6_K", "Q8_0"][: len(n)]
    raws = [
        random_blocks(kind, rows, 256, seed + i, "random")
        for i, (kind, rows) in enumerate(zip(kinds, n, strict=True))
    ]
    stack = StackedRows(
        [PackedRows(kind, raw, None, Scratch()) for kind, raw in zip(kinds, raws, strict=True)]
    )
    x = np.random.default_rng(seed).standard_normal((b, 256)).astype(np.float32)  # (B, K)
    kernels.use("numba")
    try:
        kernel = kernels.compiled(stack, b)
        assert kernel is not None
        out = np.full((b, sum(n)), np.nan, dtype=np.float32)  # (B, N)
        kernel(x, out)
    finally:
        kernels.use(None)

    w = np.concatenate(
        [dequantize(raw, GGMLQuantizationType[kind]) for kind, raw in zip(kinds, raws, strict=True)]
    ).astype(np.float64)  # (N, K)
    ref = x.astype(np.float64) @ w.T  # (B, N)
    magnitude = np.abs(x).astype(np.float64) @ np.abs(w).T
    assert close(out, ref, magnitude)


# ---------------------------------------------------------------- vnni: int8 activations


def rounded_rows(x: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 (x as the vnni kernels round it, the rounding's bound), both (B, K): each group
    of values scaled by max|x| / 127 and rounded to integers, so off by at most half a step."""
    blocks = x.astype(np.float64).reshape(x.shape[0], -1, group)  # (B, K/G, G)
    step = np.abs(blocks).max(axis=-1, keepdims=True) / 127  # (B, K/G, 1)
    rounded = np.rint(blocks / np.where(step > 0, step, 1)) * step
    return rounded.reshape(x.shape), np.broadcast_to(step / 2, blocks.shape).reshape(x.shape)


@requires_vnni
@pytest.mark.parametrize("kind", ["Q4_K", "Q5_K", "Q6_K", "Q8_0"])
@block_cases
def test_vnni_kernels_are_the_product_with_rounded_activations(kind, blocks, n, b, scales, seed):
    """vnni's integer products equal the float64 product of gguf's dequantized weights with
    the activations rounded to int8 per 256 (Q8_0: per 32) (float32 rounding aside), and so
    differ from the exact product by no more than the rounding allows: Σ |w| × half a step."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    k = blocks * 256
    raw = random_blocks(kind, n, k, seed, scales)
    x = np.random.default_rng(seed + 1).standard_normal((b, k)).astype(np.float32)  # (B, K)
    x[:, :3] = [0.0, -1e3, 1e-20]  # a zero, a large and a tiny activation
    out = np.empty((b, n), dtype=np.float32)  # (B, N)
    kernels.use("vnni")
    try:
        kernels.compiled(PackedRows(kind, raw, None, Scratch()), b)(x, out)
    finally:
        kernels.use(None)

    w = dequantize(raw, GGMLQuantizationType[kind]).astype(np.float64)  # (N, K)
    rounded, half_step = rounded_rows(x, 32 if kind == "Q8_0" else 256)
    magnitude = np.abs(rounded).sum(axis=1, keepdims=True) * field_magnitude(kind, raw)
    assert close(out, rounded @ w.T, magnitude)
    exact = x.astype(np.float64) @ w.T
    assert np.all(np.abs(out - exact) <= half_step @ np.abs(w).T + 1e-5 * magnitude + 1e-30)


@requires_vnni
def test_vnni_rounding_keeps_zeros_and_nan(use_kernels):
    """A row of zeros gives zeros (scale 0, no division); NaN or Inf in a block of 256
    activations makes the outputs NaN, as a float product would make them NaN or Inf."""
    raw = random_blocks("Q4_K", 3, 512, 0, "random")
    packed = PackedRows("Q4_K", raw, None, Scratch())
    use_kernels("vnni")
    x = np.zeros((3, 512), dtype=np.float32)
    x[1, 300], x[2, 5] = np.nan, np.inf
    out = x @ packed.T  # (3, 3)
    assert np.all(out[0] == 0) and np.all(np.isnan(out[1:]))


@requires_vnni
@pytest.mark.parametrize("kind", ["Q8_0", "int8"])
@pytest.mark.parametrize(("k", "integer"), [(512, True), (288, False)])
def test_vnni_q8_0_and_int8_need_rows_of_whole_256s(kind, k, integer, use_kernels):
    """vnni's Q8_0 and int8 kernels take 256 weights at a time: rows of another length
    (stories15M's 288) keep numba's float kernel."""
    from llama_np.kernels import numba_jit, vnni

    if kind == "Q8_0":
        packed = PackedRows("Q8_0", random_blocks("Q8_0", 3, k, 0, "random"), None, Scratch())
    else:
        packed = pack("int8", np.ones((3, k), dtype=np.float32), Scratch())
    assert vnni.supports(packed) is integer
    use_kernels("vnni")
    kernel = kernels._kernel("vnni", packed)
    expected = vnni.KINDS[kind] if integer else numba_jit.KINDS[kind]
    assert kernel is expected


@requires_vnni
@settings(max_examples=15, deadline=None)
@given(
    blocks=st.integers(1, 3),
    n=st.integers(1, 9),
    b=st.integers(1, 8),
    values=st.sampled_from(["random", "zero", "extreme"]),
    seed=st.integers(0, 2**16),
)
def test_vnni_int8_is_the_product_with_rounded_activations(blocks, n, b, values, seed):
    """This project's int8 weights (one float32 scale per 32) through vnni: the float64
    product of the stored weights with activations rounded to int8 per 32, as for Q8_0 (float32
    rounding aside), and within the rounding's bound of the exact product."""
    k = 256 * blocks
    packed = pack("int8", own_weights("int8", n, k, seed, values), Scratch())
    x = np.random.default_rng(seed + 1).standard_normal((b, k)).astype(np.float32)  # (B, K)
    x[:, :3] = [0.0, -1e3, 1e-20]  # a zero, a large and a tiny activation
    out = product(packed, x, "vnni")  # (B, N)

    w = packed[np.arange(n)].astype(np.float64)  # (N, K) the weights as stored
    rounded, half_step = rounded_rows(x, 32)
    # The kernel multiplies q + 128 (vpdpbusd needs an unsigned side) and subtracts 128 Σ xq
    # after: its float32 terms reach 256 × the weights' scale.
    magnitude = np.abs(rounded).sum(axis=1, keepdims=True) * 256 * packed.scales.max(axis=(1, 2))
    assert close(out, rounded @ w.T, magnitude)
    exact = x.astype(np.float64) @ w.T
    assert np.all(np.abs(out - exact) <= half_step @ np.abs(w).T + 1e-5 * magnitude + 1e-30)


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


@requires_numba
@pytest.mark.parametrize("kind", ["int8", "bf16", "fp16"])
@settings(max_examples=15, deadline=None)
@given(
    groups=st.integers(1, 4),
    group=st.sampled_from([32, 24, 43]),  # K = 24·g or 43·g: int8 groups other than 32
    n=st.integers(1, 9),
    b=st.integers(1, 8),
    values=st.sampled_from(["random", "zero", "extreme"]),
    seed=st.integers(0, 2**16),
)
def test_own_format_kernels_match_numpy_path(kind, groups, group, n, b, values, seed):
    k = groups * group
    w = own_weights(kind, n, k, seed, values)
    packed = pack(kind, w, Scratch())
    x = np.random.default_rng(seed + 1).standard_normal((b, k)).astype(np.float32)  # (B, K)
    x[:, 0] = 0.0

    numpy_out = product(packed, x, "numpy")
    numba_out = product(packed, x, "numba")
    stored = packed[np.arange(n)].astype(np.float64)  # (N, K) the weights as stored
    ref = x.astype(np.float64) @ stored.T  # (B, N)
    magnitude = np.abs(x).astype(np.float64) @ np.abs(stored).T
    assert close(numba_out, ref, magnitude)
    assert close(numpy_out, ref, magnitude)


@requires_numba
def test_compiled_kernels_only_for_small_batches(use_kernels):
    packed = pack("int8", np.ones((4, 64), dtype=np.float32), Scratch())
    use_kernels("numba")
    assert kernels.compiled(packed, kernels.MAX_ROWS) is not None
    assert kernels.compiled(packed, kernels.MAX_ROWS + 1) is None  # prefill: BLAS on pieces
    use_kernels("numpy")
    assert kernels.compiled(packed, 1) is None


@requires_numba
@pytest.mark.parametrize(("k", "compiled"), [(64, True), (16, False), (43, False), (96, True)])
def test_int8_kernel_needs_groups_of_32(k, compiled, use_kernels):
    """The int8 kernel finds a weight's scale by shifting its index by 5: groups of 16 or 43
    (a tiny model's rows that 32 does not divide) take the NumPy path instead."""
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
    b=st.integers(0, kernels.MAX_ROWS + 2),  # 0: one (K,) vector; past MAX_ROWS: BLAS
    special=st.sampled_from([None, np.nan, np.inf, 1e30]),
    seed=st.integers(0, 2**16),
)
def test_fp32_rows_take_the_compiled_dot_products(n, k, b, special, seed):
    """packed.matmul with a float32 matrix stored as (out, in) rows (its F-contiguous
    transposed view, as fp32_matrix lays out weights for the compiled kernels): up to MAX_ROWS
    activation rows run numba's kernel, and it gives the product, NaN and Inf included."""
    from llama_np import packed as packed_module
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
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(packed_module, "FP32_KERNEL_MIN", 0)  # small shapes too
        patch.setattr(numba_jit, "matmul_fp32", spy)
        kernels.use("numba")
        try:
            out = packed_module.matmul(x, rows.T)
        finally:
            kernels.use(None)
    assert calls == ([(n, k)] if b <= kernels.MAX_ROWS else [])
    with np.errstate(all="ignore"):
        ref = x.astype(np.float64) @ rows.T.astype(np.float64)
        magnitude = np.abs(x).astype(np.float64) @ np.abs(rows.T).astype(np.float64)
    assert out.shape == ref.shape and out.dtype == np.float32
    finite, inf = np.isfinite(ref), np.isinf(ref)
    assert np.array_equal(np.isnan(out), np.isnan(ref))
    assert np.array_equal(out[inf], ref[inf])  # ±Inf where the product has it
    assert close(out[finite], ref[finite], magnitude[finite])


@pytest.mark.parametrize("kernel", ["numpy", "numba"])
@pytest.mark.parametrize("storage", ["fp32 rows", "int8"])
def test_a_product_of_mismatched_shapes_is_refused(kernel, storage, use_kernels):
    """x's rows must have as many values as the matrix has rows: a (1, 128) x against a
    (64, N) matrix has the right number of values for two rows, which a compiled kernel would
    have multiplied into an output of one (writing past it)."""
    from llama_np import packed as packed_module

    if kernel == "numba" and NUMBA_PROBLEM:
        pytest.skip(NUMBA_SKIP)
    use_kernels(kernel)
    rows = np.ones((300, 256), dtype=np.float32)  # (N, K): FP32_KERNEL_MIN weights and more
    w = rows.T if storage == "fp32 rows" else pack("int8", rows, Scratch()).T  # (K, N)
    for x in (np.ones((1, 512), dtype=np.float32), np.ones((2, 128), dtype=np.float32)):
        with pytest.raises(ValueError, match="last dimension must be 256"):
            packed_module.matmul(x, w)
    assert packed_module.matmul(np.ones(256, dtype=np.float32), w).shape == (300,)


SMALL_FP32 = llama_np.LlamaConfig(  # matrices of 64Ki weights and more: compiled in decode
    dim=256, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=512, vocab_size=512, max_seq_len=32
)


@requires_numba
def test_fp32_layout_follows_the_kernels_at_load(use_kernels):
    """Loaded with compiled kernels active, fp32 matrices of FP32_KERNEL_MIN weights or more
    are (out, in) rows (F-contiguous (in, out) views); with numpy kernels, (in, out) rows for
    BLAS (w_down: (out, in) either way). Same shapes, same logits, and weights edited in place
    act the same in both."""
    from llama_np.tools.random_model import random_model

    models = {}
    for name in ("numpy", "numba"):
        use_kernels(name)
        models[name] = random_model(SMALL_FP32, std=0.1)
    use_kernels(None)
    blas, rows = models["numpy"].weights, models["numba"].weights
    for field in ("wqkv", "wo", "w_gate_up"):
        assert getattr(blas.layers[0], field).flags.c_contiguous
        assert getattr(rows.layers[0], field).flags.f_contiguous
        assert getattr(blas.layers[0], field).shape == getattr(rows.layers[0], field).shape
    assert blas.layers[0].w_down.flags.f_contiguous and rows.layers[0].w_down.flags.f_contiguous
    assert blas.classifier.flags.c_contiguous and rows.classifier.flags.f_contiguous
    for weights in (blas, rows):
        weights.layers[1].wo[:, :7] = 0  # an edit in place, through the (in, out) view
    logits = {}
    for name, model in models.items():
        use_kernels(name)
        cache = model.new_cache(8)
        model.prefill([1, 2, 3], cache)
        logits[name] = np.stack([model.decode(t, cache) for t in (4, 5)])  # (2, V)
    np.testing.assert_allclose(logits["numba"], logits["numpy"], rtol=0, atol=1e-4)


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


# ---------------------------------------------------------------- selection, NumPy only


def test_numpy_kernels_forced(use_kernels):
    assert use_kernels("numpy") == "numpy" == kernels.active()
    packed = pack("int8", np.ones((4, 64), dtype=np.float32), Scratch())
    assert kernels.compiled(packed, 1) is None
    np.testing.assert_array_equal(np.ones((1, 64), dtype=np.float32) @ packed.T, [[64.0] * 4])


def test_environment_variable(monkeypatch):
    monkeypatch.setenv(kernels.ENV_VAR, "numpy")
    assert kernels.active() == "numpy"
    monkeypatch.setenv(kernels.ENV_VAR, "cuda")
    with pytest.raises(ArgumentError, match=r"LLAMA_NP_KERNELS must be one of numpy, numba"):
        kernels.active()


def test_unknown_or_missing_kernels_name_the_fix(monkeypatch, use_kernels):
    with pytest.raises(ArgumentError, match="must be one of numpy, numba, vnni, got 'c'"):
        use_kernels("c")
    monkeypatch.setattr(kernels, "_numba_error", "numba is not installed")
    with pytest.raises(ArgumentError, match=r"pip install -e '\.\[fast\]', or use --kernels numpy"):
        use_kernels("numba")
    assert kernels.active() == "numpy"  # the default falls back


def test_vnni_needs_the_instruction(monkeypatch, use_kernels):
    """Without AVX-512 VNNI the vnni kernels are refused by name and the default is numba."""
    installed = kernels.numba_available()
    monkeypatch.setattr(kernels, "numba_available", lambda: True)
    monkeypatch.setattr(kernels, "_vnni_reason", "this CPU has no AVX-512 VNNI")
    with pytest.raises(ArgumentError, match="no AVX-512 VNNI: use --kernels numba"):
        use_kernels("vnni")
    assert kernels.active() == "numba"
    if installed:  # vnni's own check, as numba reads $NUMBA_CPU_NAME into its config
        import numba

        monkeypatch.setattr(numba.config, "CPU_NAME", "generic")
        monkeypatch.setattr(kernels, "_vnni_reason", None)  # asked again
        with pytest.raises(ArgumentError, match=r"another CPU \(\$NUMBA_CPU_NAME\)"):
            use_kernels("vnni")


def test_cli_kernels_flag_and_info(capsys):
    assert cli_main(["info", "--kernels", "numpy"]) == 0
    assert re.search(r"kernels \(decode products\) +numpy \(", capsys.readouterr().out)
    kernels.use(None)
    if kernels.numba_available():  # stories260K's matrices are all under FP32_KERNEL_MIN
        assert cli_main(["info", "--kernels", "numba"]) == 0
        assert "; unused by this model (fp32 matrices under 65,536" in capsys.readouterr().out
        kernels.use(None)


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
    for name in kernels.KERNELS if kernels.vnni_available() else ("numpy", "numba"):
        use_kernels(name)
        cache = model.new_cache(8)
        model.prefill([1, 5, 17], cache)
        logits[name] = np.stack([model.decode(t, cache) for t in (33, 60)])  # (2, V)
    scale = np.abs(logits["numpy"]).max()
    np.testing.assert_allclose(logits["numba"], logits["numpy"], rtol=0, atol=1e-4 * scale)
    if "vnni" in logits:  # activations rounded to int8: ~1% of the largest logit
        np.testing.assert_allclose(logits["vnni"], logits["numpy"], rtol=0, atol=3e-2 * scale)
        assert np.abs(logits["vnni"] - logits["numpy"]).max() > 1e-6 * scale  # rounded: not equal
