"""Compressed matrix products compiled with numba: each weight is widened inside the dot product.

Every kernel computes out (B, N) = x (B, K) @ W.T for a weight matrix W (N, K) stored
compressed, one output row of W per iteration of a parallel loop (`prange`: numba's threads
take rows), reading each stored byte once and never writing a float32 copy of W anywhere.

Three things make LLVM turn these loops into vector code (16 float32 lanes per instruction);
without them a loop runs ~20x slower, one weight at a time:

* `fastmath={"reassoc", "contract"}`: the compiler may add a dot product's terms in a different
  order, which is what vector lanes do (16 partial sums added at the end), and fuse multiply-add.
  Nothing else: no "nnan"/"ninf", so NaN and Inf propagate exactly as in NumPy.
* Computed indices are made unsigned (`row[u(o + j)]`): numba lets a negative signed index
  count from the end, and that possible wrap-around hides from LLVM that neighbouring weights
  sit in neighbouring bytes.
* The length of a block's inner loop arrives as an argument (`qk`, not the literal 32): a loop
  of constant length is unrolled into scalar code first, before it can be vectorized.

Two more make the vector code fast (every kernel here uses them):

* Few horizontal adds. A sum per 32-weight block ends in adding up the 16 lanes, which costs
  about as much as the block's multiplies, and LLVM's 16-lane loop needs 64 or more steps (4
  vectors at a time): a 32-step loop falls back to 8-lane code. So one loop covers several
  blocks (Q8_0, Q4_*, Q5_*: 4; K-quants: a half or a whole 256-weight block), each weight
  multiplied by its own scale.
* Bits unpacked in narrow lanes: numba computes integers in 64 bits (`byte & 15` is an int64),
  8 lanes per vector register. `floor(byte / 16)` in float32 (`_nibbles`) fills 16, and a
  result cast back to uint8 (`_bit`, `_six_bits`) lets the compiler work on bytes.

Block layouts (bytes in order, fp16 = IEEE half little-endian; "nibbles": two 4-bit values per
byte; the weights of one block are consecutive along the row) follow ggml-common.h:

    int8  (this project) q int8 (N, K) + float32 scales (N, K/G, 1)   w = scale * q
    Q8_0  d fp16, q[32] int8                                 w = d * q
    Q4_0  d fp16, 16 bytes: weight j low nibble, j+16 high   w = d * (q - 8)
    Q4_1  d fp16, m fp16, nibbles as Q4_0                     w = d * q + m
    Q5_0  d fp16, qh u32 (bit j: 5th bit of weight j), nibbles    w = d * (q - 16)
    Q5_1  d fp16, m fp16, qh u32, nibbles                     w = d * q + m
    Q4_K  256 weights: d, dmin fp16, 12 bytes of 6-bit (scale, min) for 8 sub-blocks of 32,
          128 bytes of nibbles: bytes 32c..32c+31 hold sub-block 2c (low) and 2c+1 (high)
                                                             w = d * sc * q - dmin * m
    Q5_K  as Q4_K, with qh[32] (bit s of byte l: 5th bit of weight l of sub-block s) before
          the nibbles
    Q6_K  256 weights: ql[128] (low 4 bits), qh[64] (high 2 bits), 16 int8 scales, d fp16
                                                             w = d * sc * (q - 32)
"""

from __future__ import annotations

import os

# numba's OpenMP threads: after a kernel they spin briefly, then sleep. Spinning long (libgomp's
# default, 300,000 spins) starves the NumPy/BLAS work between kernels on a busy machine
# (stories110M bf16 decode: 4.9 tok/s spinning, 82 passive); sleeping at once makes every
# kernel pay a thread wake-up (~50 kernels per token). A short spin (~10-30 µs) keeps the
# threads awake from one kernel to the next: measured on the quiet 2-core machine, stories110M
# int8 decode 96.5 -> 139.6 tok/s, bf16 81.4 -> 99.7. Read when the thread pool starts; values
# the user set are kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("GOMP_SPINCOUNT", "30000")

import numba
import numpy as np
from numba import njit, prange

from ..quants import Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K, Q8_0

u = np.uint64  # index arithmetic (see above)
FASTMATH = {"reassoc", "contract"}
JIT = {"parallel": True, "fastmath": FASTMATH, "cache": True}
# Weight rows per task of the parallel loop: each activation row is multiplied by these rows
# in turn while it sits in the L1 cache, and they stay in the L2 cache for the next activation
# row (one row per task, a batch of 8 rows of K = 768 floats evicted each other from L1).
ROWS = 8
# Tasks of the widened tiles' loops (their `workers` argument): each allocates one buffer for
# the rows it widens (numba's thread id, which would let threads share buffers, is a dynamic
# global that keeps a kernel from being cached on disk), and takes an equal share of the rows.
WORKERS = numba.config.NUMBA_NUM_THREADS
HALF_SCALE = np.float32(2.0**112)  # float32 exponent bias 127 - fp16 bias 15 = 112

VERSION = f"numba {numba.__version__}"


@njit(inline="always")
def half(lo, hi) -> np.float32:
    """The fp16 of two little-endian bytes, as float32 (exact, Inf/NaN kept)."""
    return half_bits(np.uint32(lo) | (np.uint32(hi) << 8))


@njit(inline="always")
def _half_at(row, o) -> np.float32:
    """The fp16 at bytes o, o + 1 of a row, as float32."""
    return half(row[u(o)], row[u(o + 1)])


@njit(inline="always")
def half_bits(h) -> np.float32:
    """fp16 bit pattern -> float32. Sign, exponent and mantissa move to float32 positions;
    multiplying by 2^112 then rebiases the exponent, subnormals included; an all-ones fp16
    exponent (Inf/NaN) becomes float32's all-ones exponent, which the multiply keeps."""
    bits = ((h & 0x8000) << 16) | ((h & 0x7FFF) << 13)
    if (h & 0x7C00) == 0x7C00:
        bits |= 0x7F800000
    return np.uint32(bits).view(np.float32) * HALF_SCALE


# ---------------------------------------------------------------- this project's storage


@njit(**JIT)
def matmul_int8(q, scales, x, out):
    """q (N, K) int8, scales (N, K/32, 1) float32: 32 weights per scale (packed.GROUP_SIZE).

    One loop over the whole row, each weight times its group's scale (`sc[j >> 5]`), rather
    than a loop per group: a per-group sum would end every 32 weights in a horizontal add of
    the vector lanes, which costs more than the scale's multiply (24 -> 27.5 GB/s on
    stories110M's matrices). The shift must be a constant: a shift by a variable is not
    vectorized (5 GB/s)."""
    N, K = q.shape
    for t in prange((N + ROWS - 1) // ROWS):  # tasks of ROWS weight rows
        for b in range(x.shape[0]):
            xb = x[b]
            for n in range(t * ROWS, min(N, t * ROWS + ROWS)):
                row, sc = q[n], scales[n, :, 0]
                total = np.float32(0)
                for j in range(K):
                    total += np.float32(row[u(j)]) * sc[u(j) >> u(5)] * xb[u(j)]
                out[b, n] = total


@njit(**JIT)
def matmul_bf16(w, x, out):
    """w (N, K) uint16: bf16 bits are the high half of a float32's."""
    N, K = w.shape
    for t in prange((N + ROWS - 1) // ROWS):  # tasks of ROWS weight rows
        for b in range(x.shape[0]):
            xb = x[b]
            for n in range(t * ROWS, min(N, t * ROWS + ROWS)):
                row = w[n]
                total = np.float32(0)
                for j in range(K):
                    total += np.uint32(np.uint32(row[u(j)]) << 16).view(np.float32) * xb[u(j)]
                out[b, n] = total


@njit(**JIT)
def matmul_fp16(w, x, out):
    """w (N, K) uint16 fp16 bit patterns."""
    N, K = w.shape
    for t in prange((N + ROWS - 1) // ROWS):  # tasks of ROWS weight rows
        for b in range(x.shape[0]):
            xb = x[b]
            for n in range(t * ROWS, min(N, t * ROWS + ROWS)):
                row = w[n]
                total = np.float32(0)
                for j in range(K):
                    total += half_bits(np.uint32(row[u(j)])) * xb[u(j)]
                out[b, n] = total


@njit(**JIT)
def matmul_fp32(w, x, out):
    """w (N, K) float32 (a GGUF's F32 matrix kept as stored)."""
    N, K = w.shape
    for t in prange((N + ROWS - 1) // ROWS):  # tasks of ROWS weight rows
        for b in range(x.shape[0]):
            xb = x[b]
            for n in range(t * ROWS, min(N, t * ROWS + ROWS)):
                row = w[n]
                total = np.float32(0)
                for j in range(K):
                    total += row[u(j)] * xb[u(j)]
                out[b, n] = total


# ---------------------------------------------------------------- GGUF 32-weight blocks


@njit(inline="always")
def _four_halves(row, o, size):
    """The fp16 at byte o of each of four consecutive blocks of `size` bytes, as float32."""
    return (
        _half_at(row, o),
        _half_at(row, o + size),
        _half_at(row, o + 2 * size),
        _half_at(row, o + 3 * size),
    )


@njit(inline="always")
def _dot4(a0, a1, a2, a3, xs, s0):
    """a0 xs[s0] + ... + a3 xs[s0 + 3]: four blocks' scales or mins times their Σ x."""
    return a0 * xs[u(s0)] + a1 * xs[u(s0 + 1)] + a2 * xs[u(s0 + 2)] + a3 * xs[u(s0 + 3)]


@njit(**JIT)
def matmul_q8_0(raw, x, out, qk):
    """raw (N, K/32*34) uint8 Q8_0 blocks; qk = 32.

    Four blocks per loop of 32 steps, each weight times its block's d: one loop per block
    (32 weights) would be too short for the compiler's 16-lane vector code and end in a
    horizontal add every 32 weights (13-20 -> 24.5 GB/s on stories110M's matrices). A row
    whose block count 4 does not divide ends with single blocks."""
    N, K = raw.shape[0], x.shape[1]
    n_blocks = K // 32
    for t in prange((N + ROWS - 1) // ROWS):  # tasks of ROWS weight rows
        for b in range(x.shape[0]):
            xb = x[b]
            for n in range(t * ROWS, min(N, t * ROWS + ROWS)):
                row = raw[n]
                total = np.float32(0)
                for i in range(n_blocks // 4):
                    o, k0 = i * 4 * Q8_0.bytes, i * 128  # 4 blocks, 128 weights
                    d0, d1, d2, d3 = _four_halves(row, o + Q8_0.d, Q8_0.bytes)
                    q0, q1 = o + Q8_0.qs, o + Q8_0.bytes + Q8_0.qs  # each block's int8s
                    q2, q3 = o + 2 * Q8_0.bytes + Q8_0.qs, o + 3 * Q8_0.bytes + Q8_0.qs
                    s = np.float32(0)
                    for j in range(qk):
                        s += (
                            d0 * np.float32(np.int8(row[u(q0 + j)])) * xb[u(k0 + j)]
                            + d1 * np.float32(np.int8(row[u(q1 + j)])) * xb[u(k0 + 32 + j)]
                            + d2 * np.float32(np.int8(row[u(q2 + j)])) * xb[u(k0 + 64 + j)]
                            + d3 * np.float32(np.int8(row[u(q3 + j)])) * xb[u(k0 + 96 + j)]
                        )
                    total += s
                for i in range(n_blocks // 4 * 4, n_blocks):
                    o, k0 = i * Q8_0.bytes, i * 32
                    s = np.float32(0)
                    for j in range(qk):
                        s += np.float32(np.int8(row[u(o + Q8_0.qs + j)])) * xb[u(k0 + j)]
                    total += _half_at(row, o + Q8_0.d) * s
                out[b, n] = total


@njit(inline="always")
def _nibbles(f):
    """A byte's value as float32 -> (its low 4 bits, its high 4 bits), as float32.

    Float arithmetic, not `& 15` and `>> 4`: numba does integer arithmetic in 64 bits, so
    integer unpacking fills a vector register with 8 lanes; floats give 16."""
    hi = np.floor(f * np.float32(0.0625))
    return f - np.float32(16) * hi, hi


@njit(inline="always")
def _sums_of_32(x):
    """x (B, K) -> (B, K/32): the Σ x of each 32 weights, for the offset and min terms of
    Q4_0, Q4_1 and Q4_K (the same for every row: computed once per call)."""
    B, K = x.shape
    sums = np.empty((B, K // 32), dtype=np.float32)  # (B, K/32)
    for b in range(B):
        for s in range(K // 32):
            t = np.float32(0)
            for j in range(32):
                t += x[b, u(s * 32 + j)]
            sums[b, s] = t
    return sums


@njit(inline="always")
def _nibble_dot(row, o, xb, k0, half_qk):
    """Σ q·x and Σ x over a 32-weight block of nibbles at byte o (weights k0..k0+31)."""
    s = np.float32(0)
    sx = np.float32(0)
    for j in range(half_qk):
        byte = row[u(o + j)]
        lo, hi = xb[u(k0 + j)], xb[u(k0 + half_qk + j)]
        s += np.float32(byte & 0x0F) * lo + np.float32(byte >> 4) * hi
        sx += lo + hi
    return s, sx


@njit(inline="always")
def _four_nibble_blocks(row, q, size, xb, k0, half_qk, d0, d1, d2, d3):
    """Σ_b d_b Σ q·x over four consecutive 32-weight blocks of `size` bytes whose nibbles
    start at byte q (weights k0..k0+127): one 16-step loop for all four (see the docstring
    at the top)."""
    s = np.float32(0)
    for j in range(half_qk):
        l0, h0 = _nibbles(np.float32(row[u(q + j)]))
        l1, h1 = _nibbles(np.float32(row[u(q + size + j)]))
        l2, h2 = _nibbles(np.float32(row[u(q + 2 * size + j)]))
        l3, h3 = _nibbles(np.float32(row[u(q + 3 * size + j)]))
        s += (
            d0 * (l0 * xb[u(k0 + j)] + h0 * xb[u(k0 + 16 + j)])
            + d1 * (l1 * xb[u(k0 + 32 + j)] + h1 * xb[u(k0 + 48 + j)])
            + d2 * (l2 * xb[u(k0 + 64 + j)] + h2 * xb[u(k0 + 80 + j)])
            + d3 * (l3 * xb[u(k0 + 96 + j)] + h3 * xb[u(k0 + 112 + j)])
        )
    return s


@njit(**JIT)
def matmul_q4_0(raw, x, out, half_qk):
    """raw (N, K/32*18) uint8 Q4_0 blocks; half_qk = 16. Σ d(q-8)x = d Σ qx - 8d Σ x, with
    each block's Σ x computed once per call. Four blocks per loop, as Q8_0; a row whose block
    count 4 does not divide ends with single blocks."""
    N, K = raw.shape[0], x.shape[1]
    n_blocks = K // 32
    x_sums = _sums_of_32(x)  # (B, K/32)
    for t in prange((N + ROWS - 1) // ROWS):  # tasks of ROWS weight rows
        for b in range(x.shape[0]):
            xb, xs = x[b], x_sums[b]
            for n in range(t * ROWS, min(N, t * ROWS + ROWS)):
                row = raw[n]
                total = np.float32(0)
                for i in range(n_blocks // 4):
                    o, k0, s0 = i * 4 * Q4_0.bytes, i * 128, i * 4  # 4 blocks, 128 weights
                    d0, d1, d2, d3 = _four_halves(row, o + Q4_0.d, Q4_0.bytes)
                    q = o + Q4_0.qs
                    s = _four_nibble_blocks(row, q, Q4_0.bytes, xb, k0, half_qk, d0, d1, d2, d3)
                    total += s - np.float32(8) * _dot4(d0, d1, d2, d3, xs, s0)
                for i in range(n_blocks // 4 * 4, n_blocks):
                    o, k0 = i * Q4_0.bytes, i * 32
                    s, sx = _nibble_dot(row, o + Q4_0.qs, xb, k0, half_qk)
                    total += _half_at(row, o + Q4_0.d) * (s - 8 * sx)
                out[b, n] = total


@njit(**JIT)
def matmul_q4_1(raw, x, out, half_qk):
    """raw (N, K/32*20) uint8 Q4_1 blocks; half_qk = 16. Σ (dq + m)x = d Σ qx + m Σ x; four
    blocks per loop, as Q4_0."""
    N, K = raw.shape[0], x.shape[1]
    n_blocks = K // 32
    x_sums = _sums_of_32(x)  # (B, K/32)
    for t in prange((N + ROWS - 1) // ROWS):  # tasks of ROWS weight rows
        for b in range(x.shape[0]):
            xb, xs = x[b], x_sums[b]
            for n in range(t * ROWS, min(N, t * ROWS + ROWS)):
                row = raw[n]
                total = np.float32(0)
                for i in range(n_blocks // 4):
                    o, k0, s0 = i * 4 * Q4_1.bytes, i * 128, i * 4  # 4 blocks, 128 weights
                    d0, d1, d2, d3 = _four_halves(row, o + Q4_1.d, Q4_1.bytes)
                    m0, m1, m2, m3 = _four_halves(row, o + Q4_1.m, Q4_1.bytes)
                    q = o + Q4_1.qs
                    s = _four_nibble_blocks(row, q, Q4_1.bytes, xb, k0, half_qk, d0, d1, d2, d3)
                    total += s + _dot4(m0, m1, m2, m3, xs, s0)
                for i in range(n_blocks // 4 * 4, n_blocks):
                    o, k0 = i * Q4_1.bytes, i * 32
                    s, sx = _nibble_dot(row, o + Q4_1.qs, xb, k0, half_qk)
                    total += _half_at(row, o + Q4_1.d) * s + _half_at(row, o + Q4_1.m) * sx
                out[b, n] = total


@njit(inline="always")
def _u32(row, o):
    """The little-endian uint32 at byte o (a Q5 block's qh: bit j is weight j's fifth bit)."""
    return (
        np.uint32(row[u(o)])
        | (np.uint32(row[u(o + 1)]) << 8)
        | (np.uint32(row[u(o + 2)]) << 16)
        | (np.uint32(row[u(o + 3)]) << 24)
    )


@njit(inline="always")
def _fifth_bit(qh, j):
    """16 if bit j of qh is set, else 0, as float32 (kept in byte lanes, as `_bit`)."""
    return np.float32(16) * np.float32(np.uint8((qh >> np.uint32(j)) & np.uint32(1)))


@njit(inline="always")
def _q5_dot(row, o, layout, xb, k0, half_qk):
    """Σ q·x and Σ x over the 32-weight Q5_0/Q5_1 block (`layout`) at byte o."""
    qh = _u32(row, o + layout.qh)
    s = np.float32(0)
    sx = np.float32(0)
    for j in range(half_qk):
        byte = np.uint32(row[u(o + layout.qs + j)])
        lo, hi = xb[u(k0 + j)], xb[u(k0 + half_qk + j)]
        q_lo = (byte & 0x0F) | (((qh >> np.uint32(j)) & 1) << 4)
        q_hi = (byte >> 4) | (((qh >> np.uint32(j + half_qk)) & 1) << 4)
        s += np.float32(q_lo) * lo + np.float32(q_hi) * hi
        sx += lo + hi
    return s, sx


@njit(inline="always")
def _q5_pair(row, q, qh, j, xb, k):
    """Weights j and j + 16 of a Q5 block (nibbles at byte q, weights from k) times x."""
    lo, hi = _nibbles(np.float32(row[u(q + j)]))
    x_lo, x_hi = xb[u(k + j)], xb[u(k + 16 + j)]
    return (lo + _fifth_bit(qh, j)) * x_lo + (hi + _fifth_bit(qh, j + 16)) * x_hi


@njit(inline="always")
def _four_q5_blocks(row, o, layout, xb, k0, half_qk, d0, d1, d2, d3):
    """Σ_b d_b Σ q·x over four consecutive Q5_0/Q5_1 blocks (`layout`) from byte o (weights
    k0..k0+127): one 16-step loop for all four."""
    size, h = layout.bytes, o + layout.qh
    qh0, qh1 = _u32(row, h), _u32(row, h + size)
    qh2, qh3 = _u32(row, h + 2 * size), _u32(row, h + 3 * size)
    q = o + layout.qs
    s = np.float32(0)
    for j in range(half_qk):
        s += (
            d0 * _q5_pair(row, q, qh0, j, xb, k0)
            + d1 * _q5_pair(row, q + size, qh1, j, xb, k0 + 32)
            + d2 * _q5_pair(row, q + 2 * size, qh2, j, xb, k0 + 64)
            + d3 * _q5_pair(row, q + 3 * size, qh3, j, xb, k0 + 96)
        )
    return s


@njit(**JIT)
def matmul_q5_0(raw, x, out, half_qk):
    """raw (N, K/32*22) uint8 Q5_0 blocks; half_qk = 16. Σ d(q-16)x = d Σ qx - 16d Σ x; four
    blocks per loop, as Q4_0 (3.4-4 -> 6 GB/s)."""
    N, K = raw.shape[0], x.shape[1]
    n_blocks = K // 32
    x_sums = _sums_of_32(x)  # (B, K/32)
    for t in prange((N + ROWS - 1) // ROWS):  # tasks of ROWS weight rows
        for b in range(x.shape[0]):
            xb, xs = x[b], x_sums[b]
            for n in range(t * ROWS, min(N, t * ROWS + ROWS)):
                row = raw[n]
                total = np.float32(0)
                for i in range(n_blocks // 4):
                    o, k0, s0 = i * 4 * Q5_0.bytes, i * 128, i * 4  # 4 blocks, 128 weights
                    d0, d1, d2, d3 = _four_halves(row, o + Q5_0.d, Q5_0.bytes)
                    s = _four_q5_blocks(row, o, Q5_0, xb, k0, half_qk, d0, d1, d2, d3)
                    total += s - np.float32(16) * _dot4(d0, d1, d2, d3, xs, s0)
                for i in range(n_blocks // 4 * 4, n_blocks):
                    o, k0 = i * Q5_0.bytes, i * 32
                    s, sx = _q5_dot(row, o, Q5_0, xb, k0, half_qk)
                    total += _half_at(row, o + Q5_0.d) * (s - 16 * sx)
                out[b, n] = total


@njit(**JIT)
def matmul_q5_1(raw, x, out, half_qk):
    """raw (N, K/32*24) uint8 Q5_1 blocks; half_qk = 16. Σ (dq + m)x = d Σ qx + m Σ x; four
    blocks per loop, as Q4_1."""
    N, K = raw.shape[0], x.shape[1]
    n_blocks = K // 32
    x_sums = _sums_of_32(x)  # (B, K/32)
    for t in prange((N + ROWS - 1) // ROWS):  # tasks of ROWS weight rows
        for b in range(x.shape[0]):
            xb, xs = x[b], x_sums[b]
            for n in range(t * ROWS, min(N, t * ROWS + ROWS)):
                row = raw[n]
                total = np.float32(0)
                for i in range(n_blocks // 4):
                    o, k0, s0 = i * 4 * Q5_1.bytes, i * 128, i * 4  # 4 blocks, 128 weights
                    d0, d1, d2, d3 = _four_halves(row, o + Q5_1.d, Q5_1.bytes)
                    m0, m1, m2, m3 = _four_halves(row, o + Q5_1.m, Q5_1.bytes)
                    s = _four_q5_blocks(row, o, Q5_1, xb, k0, half_qk, d0, d1, d2, d3)
                    total += s + _dot4(m0, m1, m2, m3, xs, s0)
                for i in range(n_blocks // 4 * 4, n_blocks):
                    o, k0 = i * Q5_1.bytes, i * 32
                    s, sx = _q5_dot(row, o, Q5_1, xb, k0, half_qk)
                    total += _half_at(row, o + Q5_1.d) * s + _half_at(row, o + Q5_1.m) * sx
                out[b, n] = total


# ---------------------------------------------------------------- GGUF K-quants (256 weights)


@njit(inline="always")
def _scale_min_k4(row, o, s):
    """Sub-block s's 6-bit scale and min from the 12 bytes at o (Q4_K, Q5_K)."""
    if s < 4:
        return np.float32(row[u(o + s)] & 63), np.float32(row[u(o + s + 4)] & 63)
    sc = (row[u(o + s + 4)] & 0x0F) | ((row[u(o + s - 4)] >> 6) << 4)
    m = (row[u(o + s + 4)] >> 4) | ((row[u(o + s)] >> 6) << 4)
    return np.float32(sc), np.float32(m)


@njit(**JIT)
def matmul_q4_k(raw, x, out, sub):
    """raw (N, K/256*144) uint8 Q4_K blocks; sub = 32 weights per sub-block.

    Σ (d sc q - dmin m) x = d Σ sc Σ q x - dmin Σ m Σ x: the Σ x of each sub-block is the
    same for every row, computed once per call. One loop of 32 steps covers a whole block:
    step j reads byte j of each 32-byte chunk (4 bytes, 8 weights, each with its sub-block's
    scale), so the loop is long and wide enough for the compiler's 16-lane vector code (a
    loop per sub-block, 32 weights, fell back to 8-lane code: half the speed)."""
    N, K = raw.shape[0], x.shape[1]
    x_sums = _sums_of_32(x)  # (B, K/32)
    for t in prange((N + ROWS - 1) // ROWS):  # tasks of ROWS weight rows
        for b in range(x.shape[0]):
            xb, xs = x[b], x_sums[b]
            for n in range(t * ROWS, min(N, t * ROWS + ROWS)):
                row = raw[n]
                total = np.float32(0)
                for i in range(K // 256):
                    o, k0, s0 = i * Q4_K.bytes, i * 256, i * 8
                    d, dmin = _half_at(row, o + Q4_K.d), _half_at(row, o + Q4_K.dmin)
                    sc0, m0 = _scale_min_k4(row, o + Q4_K.scales, 0)
                    sc1, m1 = _scale_min_k4(row, o + Q4_K.scales, 1)
                    sc2, m2 = _scale_min_k4(row, o + Q4_K.scales, 2)
                    sc3, m3 = _scale_min_k4(row, o + Q4_K.scales, 3)
                    sc4, m4 = _scale_min_k4(row, o + Q4_K.scales, 4)
                    sc5, m5 = _scale_min_k4(row, o + Q4_K.scales, 5)
                    sc6, m6 = _scale_min_k4(row, o + Q4_K.scales, 6)
                    sc7, m7 = _scale_min_k4(row, o + Q4_K.scales, 7)
                    q = o + Q4_K.qs  # chunk c: bytes q+32c..; low nibbles sub-block 2c, high 2c+1
                    s = np.float32(0)
                    for j in range(sub):
                        l0, h0 = _nibbles(np.float32(row[u(q + j)]))
                        l1, h1 = _nibbles(np.float32(row[u(q + 32 + j)]))
                        l2, h2 = _nibbles(np.float32(row[u(q + 64 + j)]))
                        l3, h3 = _nibbles(np.float32(row[u(q + 96 + j)]))
                        s += (
                            sc0 * l0 * xb[u(k0 + j)]
                            + sc1 * h0 * xb[u(k0 + 32 + j)]
                            + sc2 * l1 * xb[u(k0 + 64 + j)]
                            + sc3 * h1 * xb[u(k0 + 96 + j)]
                            + sc4 * l2 * xb[u(k0 + 128 + j)]
                            + sc5 * h2 * xb[u(k0 + 160 + j)]
                            + sc6 * l3 * xb[u(k0 + 192 + j)]
                            + sc7 * h3 * xb[u(k0 + 224 + j)]
                        )
                    mins = _dot4(m0, m1, m2, m3, xs, s0) + _dot4(m4, m5, m6, m7, xs, s0 + 4)
                    total += d * s - dmin * mins
                out[b, n] = total


@njit(inline="always")
def _bit(byte, k):
    """Bit k of a byte, as float32. The uint8 cast lets the compiler keep the byte arithmetic
    in 8-bit lanes (numba would otherwise widen it to 64 bits)."""
    return np.float32(np.uint8((byte >> np.uint8(k)) & np.uint8(1)))


@njit(**JIT)
def matmul_q5_k(raw, x, out, sub):
    """raw (N, K/256*176) uint8 Q5_K blocks; sub = 32. As Q4_K, with each weight's fifth
    bit from qh: bit s of byte j is that of weight j of sub-block s (3.6 -> 7-10 GB/s)."""
    N, K = raw.shape[0], x.shape[1]
    x_sums = _sums_of_32(x)  # (B, K/32)
    for t in prange((N + ROWS - 1) // ROWS):  # tasks of ROWS weight rows
        for b in range(x.shape[0]):
            xb, xs = x[b], x_sums[b]
            for n in range(t * ROWS, min(N, t * ROWS + ROWS)):
                row = raw[n]
                total = np.float32(0)
                for i in range(K // 256):
                    o, k0, s0 = i * Q5_K.bytes, i * 256, i * 8
                    d, dmin = _half_at(row, o + Q5_K.d), _half_at(row, o + Q5_K.dmin)
                    sc0, m0 = _scale_min_k4(row, o + Q5_K.scales, 0)
                    sc1, m1 = _scale_min_k4(row, o + Q5_K.scales, 1)
                    sc2, m2 = _scale_min_k4(row, o + Q5_K.scales, 2)
                    sc3, m3 = _scale_min_k4(row, o + Q5_K.scales, 3)
                    sc4, m4 = _scale_min_k4(row, o + Q5_K.scales, 4)
                    sc5, m5 = _scale_min_k4(row, o + Q5_K.scales, 5)
                    sc6, m6 = _scale_min_k4(row, o + Q5_K.scales, 6)
                    sc7, m7 = _scale_min_k4(row, o + Q5_K.scales, 7)
                    q, qh = o + Q5_K.qs, o + Q5_K.qh  # nibbles as Q4_K's; qh[32] before them
                    sixteen = np.float32(16)
                    s = np.float32(0)
                    for j in range(sub):
                        h = row[u(qh + j)]
                        l0, h0 = _nibbles(np.float32(row[u(q + j)]))
                        l1, h1 = _nibbles(np.float32(row[u(q + 32 + j)]))
                        l2, h2 = _nibbles(np.float32(row[u(q + 64 + j)]))
                        l3, h3 = _nibbles(np.float32(row[u(q + 96 + j)]))
                        s += (
                            sc0 * (l0 + sixteen * _bit(h, 0)) * xb[u(k0 + j)]
                            + sc1 * (h0 + sixteen * _bit(h, 1)) * xb[u(k0 + 32 + j)]
                            + sc2 * (l1 + sixteen * _bit(h, 2)) * xb[u(k0 + 64 + j)]
                            + sc3 * (h1 + sixteen * _bit(h, 3)) * xb[u(k0 + 96 + j)]
                            + sc4 * (l2 + sixteen * _bit(h, 4)) * xb[u(k0 + 128 + j)]
                            + sc5 * (h2 + sixteen * _bit(h, 5)) * xb[u(k0 + 160 + j)]
                            + sc6 * (l3 + sixteen * _bit(h, 6)) * xb[u(k0 + 192 + j)]
                            + sc7 * (h3 + sixteen * _bit(h, 7)) * xb[u(k0 + 224 + j)]
                        )
                    mins = _dot4(m0, m1, m2, m3, xs, s0) + _dot4(m4, m5, m6, m7, xs, s0 + 4)
                    total += d * s - dmin * mins
                out[b, n] = total


@njit(inline="always")
def _int8(row, o):
    """Byte o of a row read as a signed int8, as float32 (Q6_K's scales)."""
    return np.float32(np.int8(row[u(o)]))


@njit(inline="always")
def _six_bits(low, low_shift, high, high_shift):
    """A Q6_K weight (0..63) as float32: 4 bits of `low` from low_shift, 2 of `high` from
    high_shift. Byte arithmetic in 8-bit lanes, as `_bit`."""
    q_low = np.uint8((low >> np.uint8(low_shift)) & np.uint8(15))
    q_high = np.uint8((high >> np.uint8(high_shift)) & np.uint8(3))
    return np.float32(q_low) + np.float32(16) * np.float32(q_high)


@njit(**JIT)
def matmul_q6_k(raw, x, out, sub):
    """raw (N, K/256*210) uint8 Q6_K blocks; sub = 32 (one loop step per byte l of a half).

    Each half h of a block holds 128 weights: ql bytes 64h + l and 64h + 32 + l (l < 32) give
    the low 4 bits of weights l, l + 32 (low nibbles) and l + 64, l + 96 (high nibbles); qh
    byte 32h + l gives their high 2 bits (bits 0-1, 2-3, 4-5, 6-7); weight t of the half has
    scale 8h + t // 16, so steps l < 16 and l >= 16 pick different scales.
    Σ d sc (q - 32) x = d Σ sc q x - 32 d Σ sc Σx, with each 16 weights' Σx once per call.
    """
    N, K = raw.shape[0], x.shape[1]
    B = x.shape[0]
    x_sums = np.empty((B, K // 16), dtype=np.float32)  # (B, K/16): one per scale
    for b in range(B):
        for g in range(K // 16):
            t = np.float32(0)
            for j in range(16):
                t += x[b, u(g * 16 + j)]
            x_sums[b, g] = t
    for t in prange((N + ROWS - 1) // ROWS):  # tasks of ROWS weight rows
        for b in range(B):
            xb, xs = x[b], x_sums[b]
            for n in range(t * ROWS, min(N, t * ROWS + ROWS)):
                row = raw[n]
                total = np.float32(0)
                for i in range(K // 256):
                    o, k0 = i * Q6_K.bytes, i * 256
                    d, sc = _half_at(row, o + Q6_K.d), o + Q6_K.scales
                    offsets = np.float32(0)
                    for g in range(16):
                        offsets += _int8(row, sc + g) * xs[u(i * 16 + g)]
                    for h in range(2):
                        ql, qh = o + Q6_K.ql + 64 * h, o + Q6_K.qh + 32 * h
                        kh, sh = k0 + 128 * h, sc + 8 * h
                        # scales of weights l, l + 32, l + 64, l + 96: (for l < 16, for l >= 16)
                        a1, b1 = _int8(row, sh), _int8(row, sh + 1)
                        a2, b2 = _int8(row, sh + 2), _int8(row, sh + 3)
                        a3, b3 = _int8(row, sh + 4), _int8(row, sh + 5)
                        a4, b4 = _int8(row, sh + 6), _int8(row, sh + 7)
                        s = np.float32(0)
                        for l in range(sub):
                            first = l < 16
                            c1 = a1 if first else b1
                            c2 = a2 if first else b2
                            c3 = a3 if first else b3
                            c4 = a4 if first else b4
                            qa, qc, hb = row[u(ql + l)], row[u(ql + 32 + l)], row[u(qh + l)]
                            s += (
                                c1 * _six_bits(qa, 0, hb, 0) * xb[u(kh + l)]
                                + c2 * _six_bits(qc, 0, hb, 2) * xb[u(kh + 32 + l)]
                                + c3 * _six_bits(qa, 4, hb, 4) * xb[u(kh + 64 + l)]
                                + c4 * _six_bits(qc, 4, hb, 6) * xb[u(kh + 96 + l)]
                            )
                        total += d * s
                    total -= np.float32(32) * d * offsets
                out[b, n] = total


# ---------------------------------------------------------------- many rows: widened tiles
#
# A product of many activation rows (a batch, prefill) does many multiply-adds per weight:
# arithmetic bounds it, not reading the weights. So each weight is widened to float32 once
# (each as quants.py widens it: the `_*_row` functions), and the float32 rows are multiplied
# by every activation row: in registers by `_tile` (the `tiles_*` kernels: each task of the
# parallel loop widens its ROWS weight rows into a buffer of its thread, in the L1 cache), or,
# for prefill's hundreds of rows, by BLAS's sgemm (the `widen_*` kernels fill a tile of rows
# that kernels/__init__.py hands to BLAS).


@njit(inline="always")
def _tile(w, x, out, lo):
    """out[:, lo : lo + n] = x (B, K) @ w (n, K).T for float32 weight rows w: two weight rows
    by four activation rows per pass over K, their eight sums in registers (vectorized along
    K). Measured on one core of this AVX2 machine (thread CPU time, K = 768-5632): ~35
    GFLOP/s from 4 to 128 activation rows, where OpenBLAS's sgemm reaches 11-13 at 4-16 rows,
    25 at 64, 31-34 at 128-256 (four weight rows by four spilled registers: 22)."""
    n, K = w.shape
    B = x.shape[0]
    for r in range(0, n - n % 2, 2):
        w0, w1 = w[r], w[r + 1]
        for b in range(0, B - B % 4, 4):
            x0, x1, x2, x3 = x[b], x[b + 1], x[b + 2], x[b + 3]
            s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = np.float32(0)
            for j in range(K):
                v0, v1 = w0[u(j)], w1[u(j)]
                a0, a1, a2, a3 = x0[u(j)], x1[u(j)], x2[u(j)], x3[u(j)]
                s00 += v0 * a0
                s01 += v0 * a1
                s02 += v0 * a2
                s03 += v0 * a3
                s10 += v1 * a0
                s11 += v1 * a1
                s12 += v1 * a2
                s13 += v1 * a3
            out[b, lo + r], out[b, lo + r + 1] = s00, s10
            out[b + 1, lo + r], out[b + 1, lo + r + 1] = s01, s11
            out[b + 2, lo + r], out[b + 2, lo + r + 1] = s02, s12
            out[b + 3, lo + r], out[b + 3, lo + r + 1] = s03, s13
        for b in range(B - B % 4, B):  # the last activation rows, 4 not dividing B
            xb = x[b]
            s0 = s1 = np.float32(0)
            for j in range(K):
                s0 += w0[u(j)] * xb[u(j)]
                s1 += w1[u(j)] * xb[u(j)]
            out[b, lo + r], out[b, lo + r + 1] = s0, s1
    if n % 2:  # an odd weight row
        wl = w[n - 1]
        for b in range(B):
            xb = x[b]
            s = np.float32(0)
            for j in range(K):
                s += wl[u(j)] * xb[u(j)]
            out[b, lo + n - 1] = s


@njit(**JIT)
def tiles_fp32(w, x, out):
    """w (N, K) float32 rows: nothing to widen, each task multiplies its ROWS rows.

    The weights come from memory, not from a widened buffer in the L1 cache: up to four
    activation rows, reading them is what bounds the product, and one weight row at a time
    against four activation rows (missing ones zero) streams them ~1.3x faster than _tile's
    pairs of rows (measured on this AVX2 machine, 2-4 rows, stories110M's matrices)."""
    N, K = w.shape
    B = x.shape[0]
    if B <= 4:
        xs = np.zeros((4, K), dtype=np.float32)  # (4, K) the rows, zeros past B
        xs[:B] = x
        x0, x1, x2, x3 = xs[0], xs[1], xs[2], xs[3]
        for t in prange((N + ROWS - 1) // ROWS):  # tasks of ROWS weight rows
            for n in range(t * ROWS, min(N, t * ROWS + ROWS)):
                row = w[n]
                s0 = s1 = s2 = s3 = np.float32(0)
                for j in range(K):
                    v = row[u(j)]
                    s0 += v * x0[u(j)]
                    s1 += v * x1[u(j)]
                    s2 += v * x2[u(j)]
                    s3 += v * x3[u(j)]
                out[0, n] = s0
                if B > 1:
                    out[1, n] = s1
                if B > 2:
                    out[2, n] = s2
                if B > 3:
                    out[3, n] = s3
        return
    for t in prange((N + ROWS - 1) // ROWS):  # tasks of ROWS weight rows
        lo = t * ROWS
        _tile(w[lo : min(N, lo + ROWS)], x, out, lo)


@njit(inline="always")
def _int8_row(q, sc, w, group):
    """One row of this project's int8 (K,) and its scales (K/32,) -> w (K,) float32."""
    for g in range(q.shape[0] // group):
        for j in range(group):
            w[u(g * group + j)] = np.float32(q[u(g * group + j)]) * sc[u(g)]


@njit(inline="always")
def _bf16_row(bits, w):
    """bf16 bits (K,) uint16 -> w (K,) float32: the high halves of float32s."""
    for j in range(bits.shape[0]):
        w[u(j)] = np.uint32(np.uint32(bits[u(j)]) << 16).view(np.float32)


@njit(inline="always")
def _fp16_row(bits, w):
    """fp16 bits (K,) uint16 -> w (K,) float32."""
    for j in range(bits.shape[0]):
        w[u(j)] = half_bits(np.uint32(bits[u(j)]))


@njit(inline="always")
def _q8_0_row(row, w, qk):
    """A row of Q8_0 blocks -> w (K,) float32; qk = 32."""
    for i in range(w.shape[0] // 32):
        o, k0 = i * Q8_0.bytes, i * 32
        d = _half_at(row, o + Q8_0.d)
        for j in range(qk):
            w[u(k0 + j)] = d * np.float32(np.int8(row[u(o + Q8_0.qs + j)]))


@njit(inline="always")
def _widen_nibbles(row, q, w, k0, a, m, half_qk):
    """A 32-weight block's nibbles at byte q -> w[k0:k0+32] = a * nibble + m."""
    for j in range(half_qk):
        lo, hi = _nibbles(np.float32(row[u(q + j)]))
        w[u(k0 + j)] = a * lo + m
        w[u(k0 + half_qk + j)] = a * hi + m


@njit(inline="always")
def _q4_0_row(row, w, half_qk):
    """A row of Q4_0 blocks -> w: d * (q - 8); half_qk = 16."""
    for i in range(w.shape[0] // 32):
        o = i * Q4_0.bytes
        d = _half_at(row, o + Q4_0.d)
        _widen_nibbles(row, o + Q4_0.qs, w, i * 32, d, np.float32(-8) * d, half_qk)


@njit(inline="always")
def _q4_1_row(row, w, half_qk):
    """A row of Q4_1 blocks -> w: d * q + m; half_qk = 16."""
    for i in range(w.shape[0] // 32):
        o = i * Q4_1.bytes
        d, m = _half_at(row, o + Q4_1.d), _half_at(row, o + Q4_1.m)
        _widen_nibbles(row, o + Q4_1.qs, w, i * 32, d, m, half_qk)


@njit(inline="always")
def _widen_q5(row, o, layout, w, k0, d, m, half_qk):
    """The 32-weight Q5_0/Q5_1 block (`layout`) at byte o -> w[k0:k0+32] = d * q + m."""
    qh, q = _u32(row, o + layout.qh), o + layout.qs
    for j in range(half_qk):
        lo, hi = _nibbles(np.float32(row[u(q + j)]))
        w[u(k0 + j)] = d * (lo + _fifth_bit(qh, j)) + m
        w[u(k0 + half_qk + j)] = d * (hi + _fifth_bit(qh, j + 16)) + m


@njit(inline="always")
def _q5_0_row(row, w, half_qk):
    """A row of Q5_0 blocks -> w: d * (q - 16); half_qk = 16."""
    for i in range(w.shape[0] // 32):
        o = i * Q5_0.bytes
        d = _half_at(row, o + Q5_0.d)
        _widen_q5(row, o, Q5_0, w, i * 32, d, np.float32(-16) * d, half_qk)


@njit(inline="always")
def _q5_1_row(row, w, half_qk):
    """A row of Q5_1 blocks -> w: d * q + m; half_qk = 16."""
    for i in range(w.shape[0] // 32):
        o = i * Q5_1.bytes
        d, m = _half_at(row, o + Q5_1.d), _half_at(row, o + Q5_1.m)
        _widen_q5(row, o, Q5_1, w, i * 32, d, m, half_qk)


@njit(inline="always")
def _q4_k_row(row, w, sub):
    """A row of Q4_K blocks -> w: d sc q - dmin m per sub-block of 32; chunk c of 32 bytes
    holds sub-block 2c in its low nibbles, 2c + 1 in its high ones. sub = 32."""
    for i in range(w.shape[0] // 256):
        o, k0 = i * Q4_K.bytes, i * 256
        d, dmin = _half_at(row, o + Q4_K.d), _half_at(row, o + Q4_K.dmin)
        for c in range(4):
            sc_lo, m_lo = _scale_min_k4(row, o + Q4_K.scales, 2 * c)
            sc_hi, m_hi = _scale_min_k4(row, o + Q4_K.scales, 2 * c + 1)
            a_lo, b_lo, a_hi, b_hi = d * sc_lo, dmin * m_lo, d * sc_hi, dmin * m_hi
            q, k = o + Q4_K.qs + 32 * c, k0 + 64 * c
            for j in range(sub):
                lo, hi = _nibbles(np.float32(row[u(q + j)]))
                w[u(k + j)] = a_lo * lo - b_lo
                w[u(k + 32 + j)] = a_hi * hi - b_hi


@njit(inline="always")
def _q5_k_row(row, w, sub):
    """A row of Q5_K blocks -> w: as Q4_K, the fifth bit of weight j of sub-block s in bit s
    of qh byte j. sub = 32."""
    sixteen = np.float32(16)
    for i in range(w.shape[0] // 256):
        o, k0 = i * Q5_K.bytes, i * 256
        d, dmin = _half_at(row, o + Q5_K.d), _half_at(row, o + Q5_K.dmin)
        for c in range(4):
            sc_lo, m_lo = _scale_min_k4(row, o + Q5_K.scales, 2 * c)
            sc_hi, m_hi = _scale_min_k4(row, o + Q5_K.scales, 2 * c + 1)
            a_lo, b_lo, a_hi, b_hi = d * sc_lo, dmin * m_lo, d * sc_hi, dmin * m_hi
            q, qh, k = o + Q5_K.qs + 32 * c, o + Q5_K.qh, k0 + 64 * c
            for j in range(sub):
                lo, hi = _nibbles(np.float32(row[u(q + j)]))
                h = row[u(qh + j)]
                w[u(k + j)] = a_lo * (lo + sixteen * _bit(h, 2 * c)) - b_lo
                w[u(k + 32 + j)] = a_hi * (hi + sixteen * _bit(h, 2 * c + 1)) - b_hi


@njit(inline="always")
def _q6_k_row(row, w, sub):
    """A row of Q6_K blocks -> w: d sc (q - 32), 16 weights per scale (the bit layout:
    matmul_q6_k). sub = 32: byte l of each 32 holds weights whose scales change at l = 16, so
    the loop runs twice over 16 bytes, its four scales fixed (per byte: 0.75 -> 1.4 Gw/s)."""
    half = sub // 2
    for i in range(w.shape[0] // 256):
        o, k0 = i * Q6_K.bytes, i * 256
        d = _half_at(row, o + Q6_K.d)
        for h in range(2):
            ql, qh, kh = o + Q6_K.ql + 64 * h, o + Q6_K.qh + 32 * h, k0 + 128 * h
            sh = o + Q6_K.scales + 8 * h
            for g in range(2):  # bytes 16g..16g+15: weights l, l+32, l+64, l+96 take scales
                c1, c2 = d * _int8(row, sh + g), d * _int8(row, sh + g + 2)  # g, g+2, g+4, g+6
                c3, c4 = d * _int8(row, sh + g + 4), d * _int8(row, sh + g + 6)
                for j in range(half):
                    l = g * half + j
                    qa, qc, hb = row[u(ql + l)], row[u(ql + 32 + l)], row[u(qh + l)]
                    w[u(kh + l)] = c1 * (_six_bits(qa, 0, hb, 0) - np.float32(32))
                    w[u(kh + 32 + l)] = c2 * (_six_bits(qc, 0, hb, 2) - np.float32(32))
                    w[u(kh + 64 + l)] = c3 * (_six_bits(qa, 4, hb, 4) - np.float32(32))
                    w[u(kh + 96 + l)] = c4 * (_six_bits(qc, 4, hb, 6) - np.float32(32))


@njit(**JIT)
def tiles_int8(q, scales, x, out, group, workers):
    """This project's int8, q (N, K) and scales (N, K/32, 1): out (B, N) = x (B, K) @ W.T,
    each task's rows widened, then _tile (the other tiles_* kernels likewise)."""
    N, K = q.shape[0], x.shape[1]
    tasks = (N + ROWS - 1) // ROWS  # of ROWS weight rows each
    for worker in prange(workers):  # one buffer each, for the widened rows of its tasks
        w = np.empty((ROWS, K), dtype=np.float32)
        for t in range(worker * tasks // workers, (worker + 1) * tasks // workers):
            lo, hi = t * ROWS, min(N, t * ROWS + ROWS)
            for n in range(lo, hi):
                _int8_row(q[n], scales[n, :, 0], w[n - lo], group)
            _tile(w[: hi - lo], x, out, lo)


@njit(**JIT)
def widen_int8(q, scales, out, group):
    """This project's int8, q (n, K) and scales (n, K/32, 1) -> out (n, K) float32, for BLAS."""
    for n in prange(out.shape[0]):
        _int8_row(q[n], scales[n, :, 0], out[n], group)


@njit(**JIT)
def tiles_bf16(bits, x, out, workers):
    """bf16 bits (N, K) uint16: out (B, N) = x (B, K) @ W.T, widened per task, then _tile."""
    N, K = bits.shape[0], x.shape[1]
    tasks = (N + ROWS - 1) // ROWS  # of ROWS weight rows each
    for worker in prange(workers):  # one buffer each, for the widened rows of its tasks
        w = np.empty((ROWS, K), dtype=np.float32)
        for t in range(worker * tasks // workers, (worker + 1) * tasks // workers):
            lo, hi = t * ROWS, min(N, t * ROWS + ROWS)
            for n in range(lo, hi):
                _bf16_row(bits[n], w[n - lo])
            _tile(w[: hi - lo], x, out, lo)


@njit(**JIT)
def widen_bf16(bits, out):
    """bf16 bits (N, K) uint16 -> out (n, K) float32, for BLAS."""
    for n in prange(out.shape[0]):
        _bf16_row(bits[n], out[n])


@njit(**JIT)
def tiles_fp16(bits, x, out, workers):
    """fp16 bits (N, K) uint16: out (B, N) = x (B, K) @ W.T, widened per task, then _tile."""
    N, K = bits.shape[0], x.shape[1]
    tasks = (N + ROWS - 1) // ROWS  # of ROWS weight rows each
    for worker in prange(workers):  # one buffer each, for the widened rows of its tasks
        w = np.empty((ROWS, K), dtype=np.float32)
        for t in range(worker * tasks // workers, (worker + 1) * tasks // workers):
            lo, hi = t * ROWS, min(N, t * ROWS + ROWS)
            for n in range(lo, hi):
                _fp16_row(bits[n], w[n - lo])
            _tile(w[: hi - lo], x, out, lo)


@njit(**JIT)
def widen_fp16(bits, out):
    """fp16 bits (N, K) uint16 -> out (n, K) float32, for BLAS."""
    for n in prange(out.shape[0]):
        _fp16_row(bits[n], out[n])


@njit(**JIT)
def tiles_q8_0(raw, x, out, qk, workers):
    """Q8_0 blocks (N, row bytes) uint8: out (B, N) = x (B, K) @ W.T, widened, then _tile."""
    N, K = raw.shape[0], x.shape[1]
    tasks = (N + ROWS - 1) // ROWS  # of ROWS weight rows each
    for worker in prange(workers):  # one buffer each, for the widened rows of its tasks
        w = np.empty((ROWS, K), dtype=np.float32)
        for t in range(worker * tasks // workers, (worker + 1) * tasks // workers):
            lo, hi = t * ROWS, min(N, t * ROWS + ROWS)
            for n in range(lo, hi):
                _q8_0_row(raw[n], w[n - lo], qk)
            _tile(w[: hi - lo], x, out, lo)


@njit(**JIT)
def widen_q8_0(raw, out, qk):
    """Q8_0 blocks (N, row bytes) uint8 -> out (n, K) float32, for BLAS."""
    for n in prange(out.shape[0]):
        _q8_0_row(raw[n], out[n], qk)


@njit(**JIT)
def tiles_q4_0(raw, x, out, half_qk, workers):
    """Q4_0 blocks: out (B, N) = x (B, K) @ W.T, widened per task, then _tile."""
    N, K = raw.shape[0], x.shape[1]
    tasks = (N + ROWS - 1) // ROWS  # of ROWS weight rows each
    for worker in prange(workers):  # one buffer each, for the widened rows of its tasks
        w = np.empty((ROWS, K), dtype=np.float32)
        for t in range(worker * tasks // workers, (worker + 1) * tasks // workers):
            lo, hi = t * ROWS, min(N, t * ROWS + ROWS)
            for n in range(lo, hi):
                _q4_0_row(raw[n], w[n - lo], half_qk)
            _tile(w[: hi - lo], x, out, lo)


@njit(**JIT)
def widen_q4_0(raw, out, half_qk):
    """Q4_0 blocks -> out (n, K) float32, for BLAS."""
    for n in prange(out.shape[0]):
        _q4_0_row(raw[n], out[n], half_qk)


@njit(**JIT)
def tiles_q4_1(raw, x, out, half_qk, workers):
    """Q4_1 blocks: out (B, N) = x (B, K) @ W.T, widened per task, then _tile."""
    N, K = raw.shape[0], x.shape[1]
    tasks = (N + ROWS - 1) // ROWS  # of ROWS weight rows each
    for worker in prange(workers):  # one buffer each, for the widened rows of its tasks
        w = np.empty((ROWS, K), dtype=np.float32)
        for t in range(worker * tasks // workers, (worker + 1) * tasks // workers):
            lo, hi = t * ROWS, min(N, t * ROWS + ROWS)
            for n in range(lo, hi):
                _q4_1_row(raw[n], w[n - lo], half_qk)
            _tile(w[: hi - lo], x, out, lo)


@njit(**JIT)
def widen_q4_1(raw, out, half_qk):
    """Q4_1 blocks -> out (n, K) float32, for BLAS."""
    for n in prange(out.shape[0]):
        _q4_1_row(raw[n], out[n], half_qk)


@njit(**JIT)
def tiles_q5_0(raw, x, out, half_qk, workers):
    """Q5_0 blocks: out (B, N) = x (B, K) @ W.T, widened per task, then _tile."""
    N, K = raw.shape[0], x.shape[1]
    tasks = (N + ROWS - 1) // ROWS  # of ROWS weight rows each
    for worker in prange(workers):  # one buffer each, for the widened rows of its tasks
        w = np.empty((ROWS, K), dtype=np.float32)
        for t in range(worker * tasks // workers, (worker + 1) * tasks // workers):
            lo, hi = t * ROWS, min(N, t * ROWS + ROWS)
            for n in range(lo, hi):
                _q5_0_row(raw[n], w[n - lo], half_qk)
            _tile(w[: hi - lo], x, out, lo)


@njit(**JIT)
def widen_q5_0(raw, out, half_qk):
    """Q5_0 blocks -> out (n, K) float32, for BLAS."""
    for n in prange(out.shape[0]):
        _q5_0_row(raw[n], out[n], half_qk)


@njit(**JIT)
def tiles_q5_1(raw, x, out, half_qk, workers):
    """Q5_1 blocks: out (B, N) = x (B, K) @ W.T, widened per task, then _tile."""
    N, K = raw.shape[0], x.shape[1]
    tasks = (N + ROWS - 1) // ROWS  # of ROWS weight rows each
    for worker in prange(workers):  # one buffer each, for the widened rows of its tasks
        w = np.empty((ROWS, K), dtype=np.float32)
        for t in range(worker * tasks // workers, (worker + 1) * tasks // workers):
            lo, hi = t * ROWS, min(N, t * ROWS + ROWS)
            for n in range(lo, hi):
                _q5_1_row(raw[n], w[n - lo], half_qk)
            _tile(w[: hi - lo], x, out, lo)


@njit(**JIT)
def widen_q5_1(raw, out, half_qk):
    """Q5_1 blocks -> out (n, K) float32, for BLAS."""
    for n in prange(out.shape[0]):
        _q5_1_row(raw[n], out[n], half_qk)


@njit(**JIT)
def tiles_q4_k(raw, x, out, sub, workers):
    """Q4_K blocks: out (B, N) = x (B, K) @ W.T, widened per task, then _tile."""
    N, K = raw.shape[0], x.shape[1]
    tasks = (N + ROWS - 1) // ROWS  # of ROWS weight rows each
    for worker in prange(workers):  # one buffer each, for the widened rows of its tasks
        w = np.empty((ROWS, K), dtype=np.float32)
        for t in range(worker * tasks // workers, (worker + 1) * tasks // workers):
            lo, hi = t * ROWS, min(N, t * ROWS + ROWS)
            for n in range(lo, hi):
                _q4_k_row(raw[n], w[n - lo], sub)
            _tile(w[: hi - lo], x, out, lo)


@njit(**JIT)
def widen_q4_k(raw, out, sub):
    """Q4_K blocks -> out (n, K) float32, for BLAS."""
    for n in prange(out.shape[0]):
        _q4_k_row(raw[n], out[n], sub)


@njit(**JIT)
def tiles_q5_k(raw, x, out, sub, workers):
    """Q5_K blocks: out (B, N) = x (B, K) @ W.T, widened per task, then _tile."""
    N, K = raw.shape[0], x.shape[1]
    tasks = (N + ROWS - 1) // ROWS  # of ROWS weight rows each
    for worker in prange(workers):  # one buffer each, for the widened rows of its tasks
        w = np.empty((ROWS, K), dtype=np.float32)
        for t in range(worker * tasks // workers, (worker + 1) * tasks // workers):
            lo, hi = t * ROWS, min(N, t * ROWS + ROWS)
            for n in range(lo, hi):
                _q5_k_row(raw[n], w[n - lo], sub)
            _tile(w[: hi - lo], x, out, lo)


@njit(**JIT)
def widen_q5_k(raw, out, sub):
    """Q5_K blocks -> out (n, K) float32, for BLAS."""
    for n in prange(out.shape[0]):
        _q5_k_row(raw[n], out[n], sub)


@njit(**JIT)
def tiles_q6_k(raw, x, out, sub, workers):
    """Q6_K blocks: out (B, N) = x (B, K) @ W.T, widened per task, then _tile."""
    N, K = raw.shape[0], x.shape[1]
    tasks = (N + ROWS - 1) // ROWS  # of ROWS weight rows each
    for worker in prange(workers):  # one buffer each, for the widened rows of its tasks
        w = np.empty((ROWS, K), dtype=np.float32)
        for t in range(worker * tasks // workers, (worker + 1) * tasks // workers):
            lo, hi = t * ROWS, min(N, t * ROWS + ROWS)
            for n in range(lo, hi):
                _q6_k_row(raw[n], w[n - lo], sub)
            _tile(w[: hi - lo], x, out, lo)


@njit(**JIT)
def widen_q6_k(raw, out, sub):
    """Q6_K blocks -> out (n, K) float32, for BLAS."""
    for n in prange(out.shape[0]):
        _q6_k_row(raw[n], out[n], sub)


# ---------------------------------------------------------------- by storage kind


def supports(rows) -> bool:
    """Whether a kernel here multiplies this packed.PackedRows (int8 only in groups of 32:
    tiny models' rows that 32 does not divide have other group sizes and take the NumPy path)."""
    if rows.kind == "int8":
        return rows.shape[1] == 32 * rows.scales.shape[1]
    return rows.kind in KINDS


# packed.PackedRows kind -> widen(rows, start, stop, out): rows start..stop-1 of the PackedRows
# -> out (stop - start, K) float32 C-contiguous. fp32 needs none: BLAS multiplies its rows.
WIDEN = {
    "int8": lambda r, i, j, out: widen_int8(r.data[i:j], r.scales[i:j], out, 32),
    "bf16": lambda r, i, j, out: widen_bf16(r.data[i:j].view(np.uint16), out),
    "fp16": lambda r, i, j, out: widen_fp16(r.data[i:j].view(np.uint16), out),
    "Q8_0": lambda r, i, j, out: widen_q8_0(r.data[i:j], out, 32),
    "Q4_0": lambda r, i, j, out: widen_q4_0(r.data[i:j], out, 16),
    "Q4_1": lambda r, i, j, out: widen_q4_1(r.data[i:j], out, 16),
    "Q5_0": lambda r, i, j, out: widen_q5_0(r.data[i:j], out, 16),
    "Q5_1": lambda r, i, j, out: widen_q5_1(r.data[i:j], out, 16),
    "Q4_K": lambda r, i, j, out: widen_q4_k(r.data[i:j], out, 32),
    "Q5_K": lambda r, i, j, out: widen_q5_k(r.data[i:j], out, 32),
    "Q6_K": lambda r, i, j, out: widen_q6_k(r.data[i:j], out, 32),
}

# packed.PackedRows kind -> tiles(rows, x, out): out (B, N) = x (B, K) @ rows.T in widened
# tiles multiplied in registers, for a batch's rows; x (B, K) float32 C-contiguous.
TILES = {
    "int8": lambda r, x, out: tiles_int8(r.data, r.scales, x, out, 32, WORKERS),
    "bf16": lambda r, x, out: tiles_bf16(r.data.view(np.uint16), x, out, WORKERS),
    "fp16": lambda r, x, out: tiles_fp16(r.data.view(np.uint16), x, out, WORKERS),
    "fp32": lambda r, x, out: tiles_fp32(r.data, x, out),
    "Q8_0": lambda r, x, out: tiles_q8_0(r.data, x, out, 32, WORKERS),
    "Q4_0": lambda r, x, out: tiles_q4_0(r.data, x, out, 16, WORKERS),
    "Q4_1": lambda r, x, out: tiles_q4_1(r.data, x, out, 16, WORKERS),
    "Q5_0": lambda r, x, out: tiles_q5_0(r.data, x, out, 16, WORKERS),
    "Q5_1": lambda r, x, out: tiles_q5_1(r.data, x, out, 16, WORKERS),
    "Q4_K": lambda r, x, out: tiles_q4_k(r.data, x, out, 32, WORKERS),
    "Q5_K": lambda r, x, out: tiles_q5_k(r.data, x, out, 32, WORKERS),
    "Q6_K": lambda r, x, out: tiles_q6_k(r.data, x, out, 32, WORKERS),
}

# packed.PackedRows kind -> kernel(rows, x, out): x (B, K) float32 C-contiguous, out (B, N).
KINDS = {
    "int8": lambda r, x, out: matmul_int8(r.data, r.scales, x, out),
    "bf16": lambda r, x, out: matmul_bf16(r.data.view(np.uint16), x, out),
    "fp16": lambda r, x, out: matmul_fp16(r.data.view(np.uint16), x, out),
    "fp32": lambda r, x, out: matmul_fp32(r.data, x, out),
    "Q8_0": lambda r, x, out: matmul_q8_0(r.data, x, out, 32),
    "Q4_0": lambda r, x, out: matmul_q4_0(r.data, x, out, 16),
    "Q4_1": lambda r, x, out: matmul_q4_1(r.data, x, out, 16),
    "Q5_0": lambda r, x, out: matmul_q5_0(r.data, x, out, 16),
    "Q5_1": lambda r, x, out: matmul_q5_1(r.data, x, out, 16),
    "Q4_K": lambda r, x, out: matmul_q4_k(r.data, x, out, 32),
    "Q5_K": lambda r, x, out: matmul_q5_k(r.data, x, out, 32),
    "Q6_K": lambda r, x, out: matmul_q6_k(r.data, x, out, 32),
}
