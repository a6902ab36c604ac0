"""Who owns which block of the paged KV cache: allocation, sharing by prefix, and eviction.

The pool's blocks (paged_kv_cache.py holds their K/V; this file only counts) are handed out
to sequences as they grow and come back when a sequence ends. Three rules:

* A block in use has a reference count: how many sequences' block tables list it.
* A full block is known by its content, a key chained over the tokens it holds and every
  token before it (vLLM's prefix caching). Two requests whose prompts start with the same
  16 · n tokens can share those n blocks, whoever computed them first: the second one
  prefills only the rest.
* A freed block keeps its K/V and its key until the memory is needed: the free list is in
  the order blocks were freed (least recently used first), so a prefix used a moment ago is
  still there for the next request, and the oldest is the first to go.

Pure bookkeeping on integers: no arrays here (the engine clears a block's K/V when it is
handed out fresh).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from ..errors import ArgumentError


def block_key(parent: bytes, tokens: Sequence[int]) -> bytes:
    """The key of a full block: a hash of its tokens and of its parent's key, so it names the
    whole prefix up to the block's end. SHA-256, so two different prefixes do not collide."""
    return hashlib.sha256(parent + np.asarray(tokens, dtype=np.int64).tobytes()).digest()


class BlockPool:
    """`n_blocks` blocks of `block_size` positions: reference counts, an LRU free list, and the
    keys of cached full blocks (with `prefix_caching`)."""

    def __init__(self, n_blocks: int, block_size: int, prefix_caching: bool = True) -> None:
        if n_blocks < 1 or block_size < 1:
            raise ArgumentError(f"a block pool needs blocks, got {n_blocks} of {block_size}")
        self.n_blocks = n_blocks
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self.ref_counts = [0] * n_blocks
        self.keys: list[bytes | None] = [None] * n_blocks  # of full, computed blocks
        self.tokens: list[tuple[int, ...]] = [()] * n_blocks  # what a keyed block holds
        self.cached: dict[bytes, int] = {}  # key -> block
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(n_blocks))  # LRU first
        self.hit_tokens = 0  # prompt tokens found in the cache, over all lookups
        self.queried_tokens = 0  # prompt tokens looked up

    @property
    def n_free(self) -> int:
        """Blocks that can be handed out now (cached ones included: they would be evicted)."""
        return len(self.free)

    @property
    def n_used(self) -> int:
        return self.n_blocks - len(self.free)

    @property
    def n_cached(self) -> int:
        """Blocks holding a known prefix, in use or free."""
        return len(self.cached)

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.queried_tokens if self.queried_tokens else 0.0

    def allocate(self, n: int) -> list[int]:
        """n fresh blocks, least recently freed first (a cached one loses its key)."""
        if n > len(self.free):
            raise ArgumentError(f"{n} blocks asked, {len(self.free)} free")  # the scheduler
            # checks first: this is a guard
        blocks = []
        for _ in range(n):
            block, _ = self.free.popitem(last=False)
            if self.keys[block] is not None:  # evict the prefix it held
                del self.cached[self.keys[block]]
                self.keys[block], self.tokens[block] = None, ()
            self.ref_counts[block] = 1
            blocks.append(block)
        return blocks

    def release(self, blocks: Sequence[int]) -> None:
        """A sequence lets go of its blocks. Those no one else holds become free, in reverse
        order, so that a prefix's last blocks are evicted before its first (which more
        requests share)."""
        for block in reversed(blocks):
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                self.free[block] = None  # most recently freed: evicted last

    def lookup(self, keys: Sequence[bytes], tokens: Sequence[int]) -> list[int]:
        """The cached blocks of the longest prefix: blocks whose keys are keys[0], keys[1], ...
        and that hold the same `tokens` (a check that costs little beside the hash)."""
        found = []
        if self.prefix_caching:
            size = self.block_size
            for b, key in enumerate(keys):
                block = self.cached.get(key)
                if block is None or self.tokens[block] != tuple(tokens[b * size : (b + 1) * size]):
                    break
                found.append(block)
        return found

    def count_lookup(self, n_tokens: int, n_hit: int) -> None:
        """Count one request's prompt lookup, for the hit rate."""
        self.queried_tokens += n_tokens
        self.hit_tokens += n_hit

    def share(self, blocks: Sequence[int]) -> None:
        """Another sequence holds these cached blocks (out of the free list if they were)."""
        for block in blocks:
            if self.ref_counts[block] == 0:
                del self.free[block]
            self.ref_counts[block] += 1

    def register(self, block: int, key: bytes, tokens: Sequence[int]) -> None:
        """A block just became full: remember its prefix (unless another block holds it)."""
        if self.prefix_caching and key not in self.cached and self.keys[block] is None:
            self.cached[key] = block
            self.keys[block], self.tokens[block] = key, tuple(tokens)

    def check(self) -> None:
        """Assert the bookkeeping is consistent (tests call it after every step)."""
        free = set(self.free)
        for block in range(self.n_blocks):
            assert self.ref_counts[block] >= 0, block
            assert (self.ref_counts[block] == 0) == (block in free), block
        for key, block in self.cached.items():
            assert self.keys[block] == key, block
