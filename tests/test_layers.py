"""The pure building blocks, each against an independent reference or a mathematical property."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llama_np.config import RopeScaling
from llama_np.layers import (
    apply_rope,
    attention,
    causal_mask,
    chunked_attention,
    rms_norm,
    rope_frequencies,
    rope_rotations,
    silu,
    softmax,
    swiglu,
)

rng = np.random.default_rng(0)


def naive_attention(q, k, v):
    """Plain multi-head causal attention, one head and one query at a time (float64).

    q: (T, H, HD); k, v: (H, S, HD) with one K/V head per query head.
    """
    T, H, HD = q.shape
    S = k.shape[1]
    out = np.zeros((T, H, HD))
    for h in range(H):
        for t in range(T):
            visible = S - T + t + 1
            scores = k[h, :visible].astype(np.float64) @ q[t, h] / np.sqrt(HD)
            p = np.exp(scores - scores.max())
            out[t, h] = (p / p.sum()) @ v[h, :visible]
    return out.reshape(T, H * HD)


@pytest.mark.parametrize("H,KVH", [(4, 4), (4, 2), (8, 1), (6, 3)])
@pytest.mark.parametrize("T,S", [(1, 1), (1, 9), (5, 5), (3, 11)])
def test_gqa_equals_multi_head_attention_with_repeated_kv(H, KVH, T, S):
    HD = 8
    q = rng.standard_normal((T, H, HD), dtype=np.float32)
    k = rng.standard_normal((KVH, S, HD), dtype=np.float32)
    v = rng.standard_normal((KVH, S, HD), dtype=np.float32)
    # Reference: repeat each KV head for its H/KVH query heads (what GQA avoids doing).
    expected = naive_attention(q, np.repeat(k, H // KVH, axis=0), np.repeat(v, H // KVH, axis=0))
    got = attention(q[None], k[None], v[None], np.array([S]))[0]
    assert got.dtype == np.float32 and got.shape == (T, H * HD)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("T", [1, 3])
def test_batched_attention_masks_each_sequence_at_its_own_end(T):
    """Sequences of a batch end at different positions: each equals its own attention alone,
    and keys past its end (another sequence's length) are never seen."""
    B, H, KVH, HD, S = 3, 4, 2, 8, 9
    ends = np.array([9, 4, 6])
    q = rng.standard_normal((B, T, H, HD), dtype=np.float32)
    k = rng.standard_normal((B, KVH, S, HD), dtype=np.float32)
    v = rng.standard_normal((B, KVH, S, HD), dtype=np.float32)
    got = attention(q, k, v, ends)
    for b, end in enumerate(ends):
        rep = H // KVH
        kb, vb = np.repeat(k[b, :, :end], rep, axis=0), np.repeat(v[b, :, :end], rep, axis=0)
        np.testing.assert_allclose(got[b], naive_attention(q[b], kb, vb), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("T,chunk", [(7, 3), (9, 4), (5, 5), (6, 1)])
def test_chunked_attention_equals_attention_and_shows_hooks_every_block(T, chunk):
    H, KVH, HD, S = 4, 2, 8, 11  # T queries after S - T cached positions
    q = rng.standard_normal((1, T, H, HD), dtype=np.float32)
    k = rng.standard_normal((1, KVH, S, HD), dtype=np.float32)
    v = rng.standard_normal((1, KVH, S, HD), dtype=np.float32)
    seen = []
    got = chunked_attention(q, k, v, np.array([S]), chunk, lambda n, a: seen.append(a.copy()) or a)
    np.testing.assert_allclose(got, attention(q, k, v, np.array([S])), rtol=1e-5, atol=1e-6)
    probs = [a for i, a in enumerate(seen) if i % 2]  # scores, probs, scores, probs, ...
    assert sum(p.shape[2] for p in probs) == T and all(p.shape[:2] == (1, H) for p in probs)
    full = np.zeros((H, T, S), dtype=np.float32)  # the blocks' rows, put together
    row = 0
    for p in probs:
        full[:, row : row + p.shape[2], : p.shape[3]] = p[0]
        row += p.shape[2]
    hooked = []
    attention(q, k, v, np.array([S]), lambda n, a: hooked.append(a.copy()) or a)
    np.testing.assert_allclose(full, hooked[1][0], rtol=1e-5, atol=1e-7)


def test_attention_on_strided_cache_views():
    """Attention reads the cache through views with strides over max_seq_len: the result is
    the reference attention of the positions the views show (and nothing past them)."""
    k_cache = rng.standard_normal((2, 16, 8), dtype=np.float32)  # (KVH, S_max, HD)
    v_cache = rng.standard_normal((2, 16, 8), dtype=np.float32)
    q = rng.standard_normal((1, 3, 4, 8), dtype=np.float32)  # (B, T, H, HD)
    k_view, v_view = k_cache[None, :, :7], v_cache[None, :, :7]  # (1, KVH, 7, HD), strided
    assert not k_view.flags.c_contiguous
    got = attention(q, k_view, v_view, np.array([7]))[0]
    k, v = np.repeat(k_cache[:, :7], 2, axis=0), np.repeat(v_cache[:, :7], 2, axis=0)
    np.testing.assert_allclose(got, naive_attention(q[0], k, v), rtol=1e-4, atol=1e-5)


def test_causal_mask_offset_by_cached_positions():
    mask = causal_mask(2, 5)  # two new queries at positions 3 and 4
    assert mask.dtype == np.float32
    assert np.array_equal(np.isinf(mask), [[0, 0, 0, 0, 1], [0, 0, 0, 0, 0]])


@given(
    st.integers(1, 64),
    st.floats(1e-30, 1e30),
    st.integers(0, 2**32 - 1),
    st.sampled_from([(), (1,), (3,), (2, 1)]),  # one row (decode's own path) or several
)
@settings(max_examples=60, deadline=None)
def test_rms_norm_unit_rms_and_finite_at_any_scale(D, scale, seed, rows):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((*rows, D)) * scale).astype(np.float32)
    weight = rng.uniform(0.5, 2, D).astype(np.float32)
    y = rms_norm(x, weight, 1e-5)
    assert y.shape == x.shape and y.dtype == np.float32 and np.isfinite(y).all()
    rms = np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(y, x / rms * weight, rtol=1e-4, atol=1e-6)


def test_rms_norm_extreme_values_stay_finite():
    x = np.array([[3e38, -3e38, 1.0], [0.0, 0.0, 0.0], [1e-40, 0, 0]], dtype=np.float32)
    y = rms_norm(x, np.ones(3, dtype=np.float32), 1e-5)
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y[0], [np.sqrt(1.5), -np.sqrt(1.5), 0.0], rtol=1e-5, atol=1e-6)
    assert (y[1] == 0).all()
    for i, row in enumerate(x):  # one row at a time, as decode normalizes: the same values
        one = rms_norm(row[None], np.ones(3, dtype=np.float32), 1e-5)
        np.testing.assert_allclose(one[0], y[i], rtol=1e-6, atol=0)


def test_softmax_stable_on_extreme_inputs():
    x = np.array([[1e30, 0, -1e30], [-np.inf, 0, 0], [3e38, 3e38, -np.inf]], dtype=np.float32)
    p = softmax(x.copy())
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p, [[1, 0, 0], [0, 0.5, 0.5], [0.5, 0.5, 0]])


def test_silu_finite_for_large_inputs():
    x = np.array([-1e30, -100, 0, 100, 1e30], dtype=np.float32)
    y = silu(x)
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y, [0, 0, 0, 100, 1e30], atol=1e-30)


def test_swiglu_matches_formula():
    D, F = 8, 12
    x = rng.standard_normal((3, D), dtype=np.float32)
    gate, up = (
        rng.standard_normal((D, F), dtype=np.float32),
        rng.standard_normal((D, F), dtype=np.float32),
    )
    down = rng.standard_normal((F, D), dtype=np.float32)
    g = x.astype(np.float64) @ gate
    expected = (g / (1 + np.exp(-g)) * (x.astype(np.float64) @ up)) @ down
    np.testing.assert_allclose(
        swiglu(x, np.hstack([gate, up]), down), expected, rtol=1e-4, atol=1e-5
    )


def _rotate(x, pos, interleaved, HD=16, theta=10000.0):
    return apply_rope(x, rope_rotations(HD, 64, theta)[pos], interleaved)


@pytest.mark.parametrize("interleaved", [True, False])
def test_rope_preserves_norms(interleaved):
    x = rng.standard_normal((5, 3, 16), dtype=np.float32)
    y = _rotate(x, np.arange(10, 15), interleaved)
    assert y.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)


@pytest.mark.parametrize("interleaved", [True, False])
def test_rope_scores_depend_only_on_relative_position(interleaved):
    q = rng.standard_normal((1, 1, 16), dtype=np.float32)
    k = rng.standard_normal((1, 1, 16), dtype=np.float32)
    scores = [
        float(_rotate(q, [m], interleaved).ravel() @ _rotate(k, [n], interleaved).ravel())
        for m, n in [(5, 2), (13, 10), (40, 37)]
    ]
    np.testing.assert_allclose(scores, scores[0], rtol=1e-4)


def test_rope_conventions_agree_after_permutation():
    """Half-split RoPE on HF-permuted rows equals interleaved RoPE on the original rows."""
    HD = 16
    x = rng.standard_normal((4, 2, HD), dtype=np.float32)
    # Hugging Face's permutation moves the even dims first, then the odd ones.
    perm = np.concatenate([np.arange(0, HD, 2), np.arange(1, HD, 2)])
    interleaved = _rotate(x, np.arange(4), True)
    half_split = _rotate(x[..., perm], np.arange(4), False)
    np.testing.assert_allclose(half_split, interleaved[..., perm], rtol=1e-6)


def test_rope_position_zero_is_identity():
    x = rng.standard_normal((1, 2, 16), dtype=np.float32)
    np.testing.assert_array_equal(_rotate(x, [0], True), x)


def test_rope_rotations_complex64_and_match_formula():
    rotation = rope_rotations(8, 100, 10000.0)
    assert rotation.dtype == np.complex64 and rotation.shape == (100, 4)
    freqs = 10000.0 ** (-np.arange(0, 8, 2) / 8)
    np.testing.assert_allclose(rotation[77].real, np.cos(77 * freqs), atol=1e-6)
    np.testing.assert_allclose(rotation[77].imag, np.sin(77 * freqs), atol=1e-6)


def reference_rope(x, positions, theta, interleaved):
    """RoPE one number at a time, from its definition: pair i of a head rotates by the angle
    position × theta^(-2i/HD), counter-clockwise: (a, b) -> (a cos - b sin, a sin + b cos).
    Pairs are (2i, 2i+1) interleaved (Meta, llama2.c, GGUF), (i, i + HD/2) half-split (HF)."""
    T, n_heads, HD = x.shape
    out = np.zeros((T, n_heads, HD))
    for t, pos in enumerate(positions):
        for h in range(n_heads):
            for i in range(HD // 2):
                a, b = (2 * i, 2 * i + 1) if interleaved else (i, i + HD // 2)
                angle = pos * theta ** (-2 * i / HD)
                xa, xb = float(x[t, h, a]), float(x[t, h, b])
                out[t, h, a] = xa * math.cos(angle) - xb * math.sin(angle)
                out[t, h, b] = xa * math.sin(angle) + xb * math.cos(angle)
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("interleaved", [True, False], ids=["interleaved", "half-split"])
def test_rope_matches_the_definition(interleaved, dtype):
    """float64 too (a learner's arrays): interleaved pairs are read as complex numbers of x's
    own precision, never float64 bytes as complex64."""
    x = rng.standard_normal((6, 3, 16)).astype(dtype)
    positions = [0, 1, 2, 7, 40, 63]
    got = apply_rope(x, rope_rotations(16, 64, 10000.0)[positions], interleaved)
    assert got.dtype == dtype and got.shape == x.shape
    np.testing.assert_allclose(got, reference_rope(x, positions, 10000.0, interleaved), atol=2e-6)


@pytest.mark.parametrize(
    "interleaved, expected",
    [
        (True, [-1.14264, 1.922076, 2.959851, 4.0298]),  # pairs (0, 1) and (2, 3)
        (False, [-1.984111, 1.959901, 2.462378, 4.0198]),  # pairs (0, 2) and (1, 3)
    ],
    ids=["interleaved", "half-split"],
)
def test_rope_values_by_hand(interleaved, expected):
    """HD = 4, theta = 10000, position 1: pair 0 turns by 1 radian, pair 1 by 0.01, both
    counter-clockwise: x = (1, 2) -> (cos 1 - 2 sin 1, sin 1 + 2 cos 1) = (-1.14264, 1.92208)."""
    x = np.array([1, 2, 3, 4], dtype=np.float32).reshape(1, 1, 4)
    rotation = rope_rotations(4, 2, 10000.0)
    np.testing.assert_allclose(apply_rope(x, rotation[1:], interleaved).ravel(), expected,
                               atol=1e-5)  # fmt: skip


def reference_llama3_frequencies(head_dim, theta, factor, low_freq_factor, high_freq_factor,
                                 original):  # fmt: skip
    """Meta's llama3 `apply_scaling` (llama/model.py), one frequency at a time."""
    low_freq_wavelen = original / low_freq_factor
    high_freq_wavelen = original / high_freq_factor
    out = []
    for i in range(0, head_dim, 2):
        freq = 1.0 / theta ** (i / head_dim)
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            out.append(freq)
        elif wavelen > low_freq_wavelen:
            out.append(freq / factor)
        else:
            smooth = (original / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            out.append((1 - smooth) * freq / factor + smooth * freq)
    return out


# Llama 3.1 (HD 128, theta 500000, factor 8, low 1, high 4, original 8192): frequencies of
# pairs in each band, computed with the formula above. Wavelengths under 2048 positions are
# kept (pairs 0-28), over 8192 divided by 8 (35-63), and blended between (29-34).
LLAMA31 = {
    0: 1.0,  # kept: wavelength 6.28
    28: 0.0032114459947525913,  # kept: wavelength 1956.5, just under 2048
    29: 0.002166570763503359,  # blended: wavelength 2401.7, smooth 0.8036
    31: 0.0008567514129196321,  # blended: wavelength 3619.2, smooth 0.4212
    34: 0.00017850781276799638,  # blended: wavelength 6695.1, smooth 0.0745
    35: 9.556212353964683e-05,  # divided by 8: wavelength 8218.7, just over 8192
    63: 3.068925988914511e-07,  # divided by 8
}


def test_llama3_rope_scaling_matches_reference_values():
    """Llama 3.1 scaling: high frequencies kept, low ones divided by 8, a blend between."""
    scaled = rope_frequencies(128, 500000.0, RopeScaling("llama3", 8.0, 1.0, 4.0, 8192))
    for pair, value in LLAMA31.items():
        assert scaled[pair] == pytest.approx(value, rel=1e-12), pair
    np.testing.assert_allclose(
        scaled, reference_llama3_frequencies(128, 500000.0, 8.0, 1.0, 4.0, 8192), rtol=1e-12
    )


@pytest.mark.parametrize(
    "head_dim, theta, factor, low, high, original",
    [(64, 500000.0, 32.0, 1.0, 4.0, 8192), (128, 10000.0, 4.0, 2.0, 8.0, 4096)],
)
def test_llama3_rope_scaling_other_settings(head_dim, theta, factor, low, high, original):
    """Llama 3.2's factor 32, and settings whose bands fall elsewhere: every pair equals the
    published formula, and each of the three bands holds some pairs."""
    scaling = RopeScaling("llama3", factor, low, high, original)
    scaled = rope_frequencies(head_dim, theta, scaling)
    expected = reference_llama3_frequencies(head_dim, theta, factor, low, high, original)
    np.testing.assert_allclose(scaled, expected, rtol=1e-12)
    base = rope_frequencies(head_dim, theta)
    kept, divided = scaled == base, np.isclose(scaled, base / factor, rtol=1e-15)
    assert kept.any() and divided.any() and (~kept & ~divided).any()


def test_linear_rope_scaling_divides_every_frequency():
    np.testing.assert_allclose(
        rope_frequencies(64, 1e4, RopeScaling("linear", 4.0)), rope_frequencies(64, 1e4) / 4
    )
