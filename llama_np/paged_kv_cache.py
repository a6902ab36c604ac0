"""The paged KV cache: one pool of fixed-size blocks of K/V that many sequences share.

A KVCache reserves max_seq_len positions for every sequence up front, which is what a
server cannot afford: most requests are short, and memory reserved for the tokens they never
reach holds no one else's. Here the memory is a pool of blocks of `block_size` positions
(vLLM's paged attention). A sequence owns a list of blocks, its block table, which grows as
the sequence does: position p sits at offset p % block_size of block table[p // block_size].
A request that ends returns its blocks to the pool, and requests whose prompts start alike
share the full blocks of that prefix.

This file only stores and reads. Which sequence owns which block is the serving engine's
business (engine/blocks.py), and a Step carries each sequence's table to the model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from . import kernels
from .config import LlamaConfig
from .errors import ArgumentError
from .kv_cache import lazy_zeros

if TYPE_CHECKING:
    from .model import Step

BLOCK_SIZE = 16  # positions per block, vLLM's default


class PagedKVCache:
    """K and V of `n_blocks` blocks of `block_size` positions, shared by every sequence.

    k, v: (L, KVH, n_blocks, block_size, HD). A block's positions are contiguous per head, so
    the blocks of a sequence, gathered in table order, read as (KVH, S, HD) like a KVCache.
    """

    def __init__(
        self,
        config: LlamaConfig,
        n_blocks: int,
        block_size: int = BLOCK_SIZE,
        dtype=np.float32,
    ) -> None:
        if not (isinstance(n_blocks, int) and n_blocks > 0):
            raise ArgumentError(f"n_blocks must be a positive integer, got {n_blocks!r}")
        if not (isinstance(block_size, int) and block_size > 0):
            raise ArgumentError(f"block_size must be a positive integer, got {block_size!r}")
        shape = (config.n_layers, config.n_kv_heads, n_blocks, block_size, config.head_dim)
        self.k = lazy_zeros(shape, dtype)  # (L, KVH, n_blocks, block_size, HD)
        self.v = lazy_zeros(shape, dtype)  # (L, KVH, n_blocks, block_size, HD)

    @property
    def n_blocks(self) -> int:
        return self.k.shape[2]

    @property
    def block_size(self) -> int:
        return self.k.shape[3]

    @property
    def nbytes(self) -> int:
        """Bytes of the whole pool, K and V: the KV memory budget."""
        return self.k.nbytes + self.v.nbytes

    @property
    def block_nbytes(self) -> int:
        """Bytes one block holds across all layers, K and V."""
        return self.nbytes // self.n_blocks

    def write(self, layer: int, step: Step, k: np.ndarray, v: np.ndarray) -> None:
        """Write the keys and values k, v (R, KVH, HD) of the step's rows into layer `layer`:
        row r at offset p % block_size of its sequence's block table[p // block_size]."""
        positions = step.positions  # (R,)
        blocks = step.block_tables[step.row_seqs, positions // self.block_size]  # (R,)
        offsets = positions % self.block_size  # (R,)
        self.k[layer][:, blocks, offsets] = k.transpose(1, 0, 2)  # (KVH, R, HD)
        self.v[layer][:, blocks, offsets] = v.transpose(1, 0, 2)

    def read(self, layer: int, step: Step, group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Keys and values of the step's sequences `group` (indices into step.seqs) through
        the furthest position any of them holds after the step, their blocks gathered in
        table order: 2 × (B, KVH, S, HD).

        A copy (NumPy cannot multiply scattered blocks in place, as vLLM's kernel reads
        them); a shorter sequence's positions past its own end are padding, and attention
        masks them.
        """
        S = int(step.ends[group].max())
        n = -(-S // self.block_size)  # blocks to read
        tables = step.block_tables[group, :n]  # (B, n)
        k = self.k[layer][:, tables]  # (KVH, B, n, block_size, HD)
        v = self.v[layer][:, tables]
        KVH, B, HD = k.shape[0], len(group), k.shape[-1]
        shape = (KVH, B, n * self.block_size, HD)
        return (
            k.reshape(shape)[:, :, :S].transpose(1, 0, 2, 3),  # (B, KVH, S, HD)
            v.reshape(shape)[:, :, :S].transpose(1, 0, 2, 3),
        )

    def attend(self, layer: int, step: Step, group: np.ndarray, q: np.ndarray) -> np.ndarray | None:
        """Decode: attention of one query per sequence, q (B, 1, H, HD), over the group's
        blocks read where they lie by the compiled kernel (kernels/attention.py), no gather;
        -> (B, 1, H*HD). None when no compiled kernel is active or the pool is float16: then
        `read` gathers the blocks and layers.attention runs (the same arithmetic)."""
        if self.k.dtype != np.float32:
            return None
        tables = step.block_tables[group]  # (B, blocks)
        k, v = self.k[layer], self.v[layer]  # (KVH, n_blocks, block_size, HD)
        return kernels.decode_attention(q, k, v, tables, step.ends[group], heads_first=True)

    def zero(self, blocks: list[int]) -> None:
        """Clear blocks about to be handed to a new sequence. A freed block still holds its
        last owner's K/V; attention masks what a sequence has not written, but 0 × NaN is
        NaN, so a broken request must not leave values behind for the next one."""
        self.k[:, :, blocks] = 0
        self.v[:, :, blocks] = 0


def blocks_for(n_positions: int, block_size: int) -> int:
    """Blocks needed to hold `n_positions` positions."""
    return -(-n_positions // block_size)
