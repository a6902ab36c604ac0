"""The building blocks of a Llama, as pure functions on float32 NumPy arrays.

Nothing here holds weights or state: each function takes arrays and returns arrays, so each
can be read, tested and stepped through on its own. Shapes use the legend in config.py.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from .config import RopeScaling

NEG_INF = np.float32(-np.inf)


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x / sqrt(mean(x²) + eps) * weight over the last axis.   (..., D) -> (..., D)"""
    # Squares and their sum in float64: x² of a float32 overflows past ~1.8e19, float64's
    # only past 1e308, so huge activations stay finite. Sum / D rather than np.mean: in
    # decode (one row) each call's Python overhead costs more than its arithmetic.
    if x.shape[:-1] in ((), (1,)):  # one row (decode): its scale as a Python float, 3 calls
        ms = float(np.vecdot(x.reshape(-1), x.reshape(-1), dtype=np.float64)) / x.shape[-1]
        inv_rms = 1 / math.sqrt(ms + eps) if ms + eps > 0 else math.inf  # (eps = 0: as NumPy)
        return x * np.float32(inv_rms) * weight
    ms = np.square(x, dtype=np.float64).sum(axis=-1, keepdims=True) / x.shape[-1]  # (..., 1)
    inv_rms = (1 / np.sqrt(ms + eps)).astype(np.float32)  # (..., 1)
    return x * inv_rms * weight


def softmax(x: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis, in place.   (..., N) -> (..., N)

    Subtracting the row max makes every exponent <= 0, so exp never overflows; -inf entries
    (masked positions) become exactly 0.
    """
    # x.max / x.sum methods: cheaper to call than np.max / np.sum, which matters in decode.
    x -= x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


def silu(x: np.ndarray) -> np.ndarray:
    """x * sigmoid(x), written with tanh so that no exp can overflow for large |x|.

    x * sigmoid(x) = x/2 * (1 + tanh(x/2)) = x/2 + x/2 * tanh(x/2): four array operations.
    """
    half_x = x * np.float32(0.5)
    return half_x + half_x * np.tanh(half_x)


def rope_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None = None) -> np.ndarray:
    """Rotation speed (radians per position) of each of the HD/2 pairs.   -> (HD/2,) float64"""
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if scaling is None:
        return freqs
    if scaling.kind == "linear":
        return freqs / scaling.factor
    if scaling.kind == "divisors":  # one divisor per pair (GGUF's rope_freqs tensor)
        return freqs / np.array(scaling.divisors, dtype=np.float64)
    # "llama3" (Llama 3.1+): wavelengths longer than the original context / low_freq_factor
    # are slowed by `factor`; shorter than original / high_freq_factor are kept; those in
    # between blend linearly in 1/wavelength.
    old_ctx = scaling.original_max_position_embeddings
    wavelen = 2 * np.pi / freqs
    smooth = (old_ctx / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smooth = np.clip(smooth, 0.0, 1.0)  # 0: long wavelength (scaled), 1: short (kept)
    return (1 - smooth) * freqs / scaling.factor + smooth * freqs


def rope_rotations(
    head_dim: int, max_seq_len: int, theta: float, scaling: RopeScaling | None = None
) -> np.ndarray:
    """e^(i·angle) of every (position, pair) angle: the turn RoPE gives that pair, as a
    complex number cos + i·sin.   -> (S_max, HD/2) complex64"""
    # Angles are computed in float64 and rounded once: pos * freq loses digits in float32
    # at long positions.
    angles = np.outer(
        np.arange(max_seq_len, dtype=np.float64), rope_frequencies(head_dim, theta, scaling)
    )
    rotation = np.empty(angles.shape, dtype=np.complex64)  # (S_max, HD/2)
    # one float64 table at a time (limits.model_bytes counts this peak for long contexts)
    rotation.real = np.cos(angles)
    rotation.imag = np.sin(angles)
    return rotation


def apply_rope(x: np.ndarray, rotation: np.ndarray, interleaved: bool) -> np.ndarray:
    """Rotate each pair of x by its position's angle.   x (T, n_heads, HD), rotation (T, HD/2)

    A pair (a, b) turned by the angle θ is (a cos θ - b sin θ, a sin θ + b cos θ): the complex
    number a + ib times e^(iθ), which `rotation` holds for each row's position and pair
    (rope_rotations). The pairs are (x[2i], x[2i+1]) when `interleaved` (Meta, llama2.c,
    GGUF) and (x[i], x[i + HD/2]) otherwise (Hugging Face, whose checkpoints permute the rows
    of wq and wk so that the same model gives the same result with this split).
    """
    turn = rotation[:, None, :]  # (T, 1, HD/2), the same for every head
    if interleaved:  # each pair's two floats, side by side, read as one complex number a + ib
        complex_type = np.complex128 if x.dtype == np.float64 else np.complex64
        pairs = x.view(complex_type)  # (T, n_heads, HD/2)
        return (pairs * turn).view(x.dtype)  # (T, n_heads, HD)
    half = x.shape[-1] // 2
    turned = (x[..., :half] + 1j * x[..., half:]) * turn  # (T, n_heads, HD/2) complex
    out = np.empty_like(x)  # (T, n_heads, HD)
    out[..., :half], out[..., half:] = turned.real, turned.imag
    return out


def attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, ends: np.ndarray, hook=None
) -> np.ndarray:
    """Causal grouped-query attention of T new queries per sequence over its cached positions.

    q: (B, T, H, HD), the queries of each sequence's last T positions; k, v: (B, KVH, S, HD),
    the cache; ends: (B,), sequence b's queries sit at positions ends[b]-T .. ends[b]-1 and
    its keys 0 .. ends[b]-1 are valid (S = max(ends); a shorter sequence's keys past its end
    are stale and masked). Returns (B, T, H * HD).

    Query head h reads KV head h // G. Instead of repeating K and V G times, the G query heads
    that share a KV head are stacked into one matrix: (KVH, G*T, HD) @ (KVH, HD, S) is one
    batched matmul over (B, KVH), and K/V are never copied.

    `hook(name, array)`, when given, receives "scores" and "probs" as (B, H, T, S) views and
    returns them or a replacement.
    """
    B, T, H, HD = q.shape
    KVH, S = k.shape[1], k.shape[2]
    G = H // KVH
    # (B, T, H, HD) -> (B, KVH, G, T, HD) -> (B, KVH, G*T, HD); scaling q beats scaling scores
    qg = q.reshape(B, T, KVH, G, HD).transpose(0, 2, 3, 1, 4).reshape(B, KVH, G * T, HD)
    qg = qg * np.float32(1.0 / math.sqrt(HD))  # math.sqrt: np.sqrt of an int costs ~1 µs
    scores = np.matmul(qg, k.transpose(0, 1, 3, 2)).reshape(B, KVH, G, T, S)  # (B,KVH,G,T,S)
    if T > 1 or (ends != S).any():  # else every query sees every key: no mask (decode)
        scores += attention_mask(ends, T, S)[:, None, None]  # (B, 1, 1, T, S)
    if hook is not None:
        scores = hook("scores", scores.reshape(B, H, T, S)).reshape(B, KVH, G, T, S)
    probs = softmax(scores)  # (B, KVH, G, T, S)
    if hook is not None:
        probs = hook("probs", probs.reshape(B, H, T, S)).reshape(B, KVH, G, T, S)
    out = np.matmul(probs.reshape(B, KVH, G * T, S), v)  # (B, KVH, G*T, HD)
    return out.reshape(B, KVH, G, T, HD).transpose(0, 3, 1, 2, 4).reshape(B, T, H * HD)


def chunked_attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, ends: np.ndarray, chunk: int = 128, hook=None
) -> np.ndarray:
    """`attention` for long prompts, `chunk` queries at a time.   Same shapes and result.

    Two savings: each block's scores (B, H, chunk, S) stay in the CPU cache through mask,
    softmax and the product with V instead of a (B, H, T, S) array going through memory five
    times; and a block reads only the keys up to its last query, skipping the future half of
    the scores. A hook sees each block's scores and probs: (B, H, chunk, keys up to its end).
    """
    B, T, H, HD = q.shape
    out = np.empty((B, T, H * HD), dtype=np.float32)  # (B, T, H*HD)
    for t0 in range(0, T, chunk):  # blocks of queries, not single positions
        t1 = min(T, t0 + chunk)
        block_ends = ends - (T - t1)  # (B,) the block's last query sits at block_end - 1
        S = int(block_ends.max())  # keys any query of the block can see
        out[:, t0:t1] = attention(q[:, t0:t1], k[:, :, :S], v[:, :, :S], block_ends, hook)
    return out


def attention_mask(ends: np.ndarray, T: int, S: int) -> np.ndarray:
    """0 where a query may attend to a key, -inf where the key is in its future.

    ends (B,) -> (B, T, S). Query t of sequence b sits at position ends[b] - T + t and may see
    keys 0 .. ends[b] - T + t. When the cache already holds earlier positions (a prompt
    appended to a conversation, a prompt prefilled in pieces), the diagonal is offset by them.
    """
    if (ends == S).all():  # every sequence is as long as S: the cached causal mask
        return causal_mask(T, S)[None]
    query_pos = ends[:, None] - T + np.arange(T)  # (B, T)
    visible = np.arange(S) <= query_pos[:, :, None]  # (B, T, S)
    return np.where(visible, np.float32(0), NEG_INF)


@functools.lru_cache(maxsize=32)
def causal_mask(T: int, S: int) -> np.ndarray:
    """0 where query t (at position S-T+t) may attend to key s, -inf where s is in its future.

    -> (T, S) float32, read-only: built once per shape and shared (prefill's blocks reuse it).
    The new queries sit at positions S-T .. S-1: the diagonal is offset by the S-T positions
    already in the cache.
    """
    mask = np.triu(np.full((T, S), NEG_INF, dtype=np.float32), k=S - T + 1)
    mask.flags.writeable = False
    return mask


def swiglu(x: np.ndarray, w_gate_up: np.ndarray, w_down: np.ndarray) -> np.ndarray:
    """SwiGLU MLP: down(silu(gate(x)) * up(x)).   x (T, D) -> (T, D)

    w_gate_up (D, 2F) holds the gate and up projections side by side, so both come from one
    matmul; w_down is (F, D).
    """
    F = w_down.shape[0]
    gate_up = x @ w_gate_up  # (T, 2F)
    hidden = silu(gate_up[..., :F]) * gate_up[..., F:]  # (T, F)
    return hidden @ w_down  # (T, D)
