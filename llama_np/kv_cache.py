"""The KV cache: keys and values of every past position, preallocated once.

Decode attends each new token to all earlier positions. Their keys and values do not change,
so they are computed once (in prefill, or in the decode step that produced them) and kept
here. Memory is allocated up front for `max_seq_len` positions and never grows: writes are
slice assignments, reads are views.
"""

from __future__ import annotations

import math
import mmap
from typing import TYPE_CHECKING

import numpy as np

from . import kernels
from .config import LlamaConfig
from .errors import ArgumentError, ContextLengthError

if TYPE_CHECKING:
    from .model import Step


def lazy_zeros(shape: tuple[int, ...], dtype) -> np.ndarray:
    """A zero-filled array whose memory is only paid for where it is written.

    np.zeros of a big array is lazy too (calloc -> fresh pages from the OS), but Linux may back
    it with 2 MiB transparent huge pages: the first write into each (layer, head) slab of the
    cache then faults in and zeroes a whole 2 MiB page, however few rows it writes. With an
    8192-token context that stalled the first prefill of a process (SmolLM2-135M, 256 tokens:
    368 MiB of pages zeroed for 11 MiB of K/V, 1.6x the CPU time of the next prefill). An
    anonymous mapping advised MADV_NOHUGEPAGE faults 4 KiB pages instead: writing T rows costs
    T rows.
    """
    dtype = np.dtype(dtype)
    count = math.prod(shape)
    buffer = mmap.mmap(-1, max(count * dtype.itemsize, 1))  # anonymous, zero-filled on use
    if hasattr(mmap, "MADV_NOHUGEPAGE"):  # Linux only; elsewhere pages are small anyway
        buffer.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(buffer, dtype=dtype, count=count).reshape(shape)


class KVCache:
    """Keys and values of up to `max_seq_len` positions of `batch_size` sequences.

    k, v: (L, B, KVH, S_max, HD) float32. One (KVH, S, HD) slab per layer and sequence keeps
    each head's keys contiguous over positions, which is the layout attention reads:
    (KVH, G*T, HD) @ (KVH, HD, S).
    """

    def __init__(
        self, config: LlamaConfig, max_seq_len: int, batch_size: int = 1, dtype=np.float32
    ) -> None:
        shape = (config.n_layers, batch_size, config.n_kv_heads, max_seq_len, config.head_dim)
        self.k = lazy_zeros(shape, dtype)  # (L, B, KVH, S_max, HD)
        self.v = lazy_zeros(shape, dtype)  # (L, B, KVH, S_max, HD)
        self.lengths = [0] * batch_size  # positions filled, per sequence

    @property
    def max_seq_len(self) -> int:
        return self.k.shape[3]

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    @property
    def length(self) -> int:
        """Positions filled (batch size 1)."""
        if self.batch_size != 1:
            raise ArgumentError(
                f"this cache holds {self.batch_size} sequences: cache.length, decode and "
                f"generate's cache= take a cache of batch size 1; use cache.lengths[b], "
                f"decode_batch, or prefill(..., seq=b)"
            )
        return self.lengths[0]

    @property
    def nbytes(self) -> int:
        """Bytes allocated for K and V at full length."""
        return self.k.nbytes + self.v.nbytes

    @property
    def bytes_per_token(self) -> int:
        """Bytes one position occupies across all layers, K and V."""
        return self.nbytes // (self.max_seq_len * self.batch_size)

    def check_room(self, n_new: int, seq: int = 0) -> None:
        """Raise ContextLengthError unless `n_new` more positions fit in sequence `seq`."""
        if self.lengths[seq] + n_new > self.max_seq_len:
            raise ContextLengthError(
                f"KV cache full: {self.lengths[seq]} positions used + {n_new} new > "
                f"max_seq_len {self.max_seq_len}; use a shorter prompt or fewer new tokens, or "
                f"a larger cache (model.new_cache(max_seq_len=...), up to the model's context)"
            )

    def write(self, layer: int, step: Step, k: np.ndarray, v: np.ndarray) -> None:
        """Write the keys and values k, v (R, KVH, HD) of the step's rows into layer `layer`,
        each at its sequence's row and position."""
        if step.positions[-1] >= self.max_seq_len:  # the model checks room; this is a guard
            raise ContextLengthError(
                f"KV cache write at position {step.positions[-1]} is past max_seq_len "
                f"{self.max_seq_len}"
            )
        if len(step.seqs) == 1:  # one sequence, T consecutive positions: a slice assignment
            b, start, end = step.seqs[0], step.starts[0], step.ends[0]
            self.k[layer, b, :, start:end] = k.transpose(1, 0, 2)  # (KVH, T, HD)
            self.v[layer, b, :, start:end] = v.transpose(1, 0, 2)
        else:  # several sequences (batched decode): each row to its (sequence, position)
            seq_of_row = step.seqs[step.row_seqs]  # (R,)
            self.k[layer, seq_of_row, :, step.positions] = k  # (R, KVH, HD)
            self.v[layer, seq_of_row, :, step.positions] = v

    def read(self, layer: int, step: Step, group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Keys and values of the step's sequences `group` (indices into step.seqs) through
        the furthest position any of them holds after the step: 2 × (B, KVH, S, HD).

        Views of the cache when the sequences are neighbouring rows (prefill, decode and
        batched decode are); a shorter sequence's rows beyond its own end are stale, and
        attention masks them.
        """
        rows = step.seqs[group]  # (B,) cache rows
        S = int(step.ends[group].max())
        if len(rows) == 1 or (np.diff(rows) == 1).all():  # neighbours, in order: a view
            rows = slice(int(rows[0]), int(rows[-1]) + 1)
        return self.k[layer, rows, :, :S], self.v[layer, rows, :, :S]

    def attend(self, layer: int, step: Step, group: np.ndarray, q: np.ndarray) -> np.ndarray | None:
        """Decode: attention of one query per sequence, q (B, 1, H, HD), over the group's
        cached positions by the compiled kernel that reads a paged cache (here each sequence
        is one block of max_seq_len positions); -> (B, 1, H*HD). NumPy's ~12 calls
        (layers.attention) cost more than the arithmetic in decode: the kernel made stories15M
        Q8_0 decode 10% faster, stories110M F32 4% (interleaved runs); batched, NumPy would
        multiply the (B, KVH) pairs' small matrices one by one (~2x the time at 4-16
        sequences).

        None, so that `read`'s views go to layers.attention, without compiled kernels (the
        NumPy path a learner steps through) or for a float16 cache. The model also runs
        layers.attention when its products run in BLAS (model.compiled_attention) and in a
        layer whose scores or probabilities a hook watches: it sums in another order, so
        outputs move in their last bits (~1e-6 of their size).
        """
        if self.k.dtype != np.float32:
            return None
        tables = step.seqs[group][:, None]  # (B, 1): each sequence's one block, its cache row
        k, v = self.k[layer], self.v[layer]  # (B_cache, KVH, S_max, HD)
        return kernels.decode_attention(q, k, v, tables, step.ends[group], heads_first=False)

    def advance(self, step: Step) -> None:
        """After a pass: each sequence of the step now holds positions up to its end."""
        for b, end in zip(step.seqs, step.ends, strict=True):
            self.lengths[b] = int(end)

    def reset(self) -> None:
        """Forget every position (the memory stays allocated)."""
        self.lengths = [0] * self.batch_size
