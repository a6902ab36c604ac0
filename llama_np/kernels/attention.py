"""Decode attention over a paged KV cache, reading the blocks where they lie (numba).

NumPy can only multiply arrays: to attend over a sequence whose keys sit in scattered blocks of
the pool, PagedKVCache.read first gathers them into one (B, KVH, S, HD) copy, then
layers.attention multiplies it. In decode that copy costs more than the attention itself: every
cached key and value is read, written and read again (measured on 16 sequences of 300
positions, stories110M's heads: gather + attention 2.3-2.7x this kernel). Here, as in vLLM's
paged attention kernel, each (sequence, KV head) walks its block table and reads every key and
value once, in place.

One query per sequence (decode): for each of the G query heads that share a KV head, the
scores of every position 0..end-1, a softmax, and the sum of the values weighted by it —
exactly layers.attention's arithmetic for T = 1 (tested against it). The contiguous KVCache
decodes with it too, as a pool of one block per sequence: NumPy's batched matmul over (B, KVH)
tiny matrices took ~2x as long (stories110M's heads, 1-8 sequences of ~100 positions).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .numba_jit import FASTMATH


@njit(parallel=True, fastmath=FASTMATH, cache=True)
def paged_decode(q, k_pool, v_pool, tables, ends, out, heads_first):
    """out (B, H, HD) = attention of q (B, H, HD) over k_pool, v_pool (KVH, n_blocks,
    block_size, HD), or (n_blocks, KVH, block_size, HD) when not `heads_first`: sequence b's
    position p in block tables[b, p // block_size], positions 0 .. ends[b]-1 visible.

    The contiguous KVCache's layer, (B, KVH, S_max, HD), is such a pool, not heads first, with
    one block of S_max positions per sequence."""
    B, H, HD = q.shape
    KVH = k_pool.shape[0] if heads_first else k_pool.shape[1]
    block_size = k_pool.shape[2]
    G = H // KVH
    scale = np.float32(1.0 / math.sqrt(HD))
    for bk in prange(B * KVH):  # numba's threads take (sequence, KV head) pairs
        b = bk // KVH
        kvh = bk - b * KVH
        S = ends[b]
        n_blocks = (S + block_size - 1) // block_size
        queries = q[b, kvh * G : (kvh + 1) * G] * scale  # (G, HD) the heads sharing kvh
        scores = np.empty((G, S), dtype=np.float32)  # (G, S): not the cache's S_max
        for j in range(n_blocks):  # the sequence's blocks, where they lie
            block = tables[b, j]
            keys = k_pool[kvh, block] if heads_first else k_pool[block, kvh]  # (block_size, HD)
            for o in range(min(block_size, S - j * block_size)):
                for g in range(G):  # each key is read once for the G heads that share it
                    dot = np.float32(0)
                    for d in range(HD):
                        dot += queries[g, d] * keys[o, d]
                    scores[g, j * block_size + o] = dot
        total = np.zeros(G, dtype=np.float32)
        for g in range(G):  # softmax, normalized at the end: subtract the max, exponentiate
            top = scores[g, 0]
            for s in range(1, S):
                top = max(top, scores[g, s])
            for s in range(S):
                scores[g, s] = np.exp(scores[g, s] - top)
                total[g] += scores[g, s]
        summed = np.empty(HD, dtype=np.float32)  # (HD,) in registers, not in `out`
        for g in range(G):
            summed[:] = 0
            for j in range(n_blocks):  # the values weighted by the scores
                block = tables[b, j]
                values = v_pool[kvh, block] if heads_first else v_pool[block, kvh]
                for o in range(min(block_size, S - j * block_size)):
                    p = scores[g, j * block_size + o]
                    for d in range(HD):
                        summed[d] += p * values[o, d]
            out[b, kvh * G + g] = summed / total[g]
    return out
