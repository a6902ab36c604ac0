"""Round-to-nearest Q4_K and Q6_K quantizers, so benchmarks/accuracy.py can store a float model
as Q4_K_M blocks (the `gguf` package dequantizes K-quants but cannot make them).

They are the plain version of ggml's: each sub-block's scale (and Q4_K's min) from its range,
the scales themselves rounded to 6 or 8 bits against the block's fp16 d. llama.cpp searches
for scales that lower the squared error; these do not, so their error is somewhat larger.
Block layouts: llama_np/kernels/numba_jit.py.
"""

from __future__ import annotations

import numpy as np


def _fp16(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bytes (..., 2) of the fp16, the fp16 value as float32)."""
    half = values.astype("<f2")
    return half.view(np.uint8).reshape(*values.shape[:-1], 2), half.astype(np.float32)


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros(np.broadcast(a, b).shape, np.float32), where=b != 0)


def quantize_q4_k(w: np.ndarray) -> np.ndarray:
    """float32 (N, K), K a multiple of 256 -> Q4_K rows (N, K/256*144) uint8."""
    N, K = w.shape
    sub = w.astype(np.float32).reshape(-1, 8, 32)  # (blocks, sub-block, weight)
    low = np.minimum(sub.min(axis=2), 0)  # (blocks, 8): w = scale q - min, q in 0..15
    scale = (sub.max(axis=2) - low) / 15
    d_bytes, d = _fp16(scale.max(axis=1, keepdims=True) / 63)  # (blocks, 1)
    dmin_bytes, dmin = _fp16(-low.min(axis=1, keepdims=True) / 63)
    sc = np.clip(np.rint(_divide(scale, d)), 0, 63).astype(np.uint8)  # (blocks, 8)
    m = np.clip(np.rint(_divide(-low, dmin)), 0, 63).astype(np.uint8)
    step = (d * sc)[..., None]  # (blocks, 8, 1)
    offset = (dmin * m)[..., None]
    q = np.clip(np.rint(_divide(sub + offset, step)), 0, 15).astype(np.uint8)  # (blocks, 8, 32)

    blocks = np.empty((sub.shape[0], 144), dtype=np.uint8)
    blocks[:, 0:2], blocks[:, 2:4] = d_bytes, dmin_bytes
    # 6-bit scales and mins: sub-blocks 0-3 whole in bytes 0-7; 4-7 split: low 4 bits in bytes
    # 8-11, high 2 bits on top of bytes 0-7
    blocks[:, 4:8] = (sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6)
    blocks[:, 8:12] = (m[:, :4] & 63) | ((m[:, 4:] >> 4) << 6)
    blocks[:, 12:16] = (sc[:, 4:] & 15) | ((m[:, 4:] & 15) << 4)
    # byte 32c + j: weight j of sub-block 2c (low nibble) and of 2c + 1 (high nibble)
    blocks[:, 16:] = (q[:, 0::2] | (q[:, 1::2] << 4)).reshape(-1, 128)
    return blocks.reshape(N, K // 256 * 144)


def quantize_q6_k(w: np.ndarray) -> np.ndarray:
    """float32 (N, K), K a multiple of 256 -> Q6_K rows (N, K/256*210) uint8."""
    N, K = w.shape
    groups = w.astype(np.float32).reshape(-1, 16, 16)  # (blocks, group, weight)
    scale = np.abs(groups).max(axis=2) / 31  # (blocks, 16): w = scale (q - 32), |q - 32| <= 31
    d_bytes, d = _fp16(scale.max(axis=1, keepdims=True) / 127)  # (blocks, 1)
    sc = np.clip(np.rint(_divide(scale, d)), -128, 127).astype(np.int8)  # (blocks, 16)
    step = (d * sc)[..., None]  # (blocks, 16, 1)
    q = np.clip(np.rint(_divide(groups, step)) + 32, 0, 63).astype(np.uint8)
    q = q.reshape(-1, 2, 4, 32)  # (blocks, half, quarter, l): weight 32 quarter + l of a half

    blocks = np.empty((q.shape[0], 210), dtype=np.uint8)
    ql = (q[:, :, 0:2] & 15) | ((q[:, :, 2:4] & 15) << 4)  # (blocks, half, 2, 32)
    blocks[:, :128] = ql.reshape(-1, 128)
    qh = (q[:, :, 0] >> 4) | ((q[:, :, 1] >> 4) << 2) | ((q[:, :, 2] >> 4) << 4)
    qh |= (q[:, :, 3] >> 4) << 6  # (blocks, half, 32)
    blocks[:, 128:192] = qh.reshape(-1, 64)
    blocks[:, 192:208] = sc.view(np.uint8)
    blocks[:, 208:210] = d_bytes
    return blocks.reshape(N, K // 256 * 210)
