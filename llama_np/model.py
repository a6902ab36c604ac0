"""The Llama model: embedding -> N transformer blocks -> final norm and classifier.

Two entry points run it, and they are the heart of inference:

* `Model.prefill(tokens, cache)` — the whole prompt in one pass. Every weight matrix is
  multiplied by a (T, D) block of activations (matrix-matrix: compute-bound), a causal mask
  stops each position from seeing later ones, and K/V of all T positions go into the cache.
* `Model.decode(token, cache)` — one new token. Every weight is multiplied by a single (D,)
  vector (matrix-vector: 2 FLOPs per weight read, 0.5 FLOP per byte in float32, so memory
  bandwidth is the limit), and attention reads the keys and values of all earlier positions
  from the cache.

`Model.decode_batch(tokens, cache)` is decode for B sequences at once. All three run the same
`Model.block` on the rows of a `Step` (which sequence and positions the rows are); they differ
in how many rows go through it and how the result is used.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from . import kernels
from .config import LlamaConfig
from .errors import ArgumentError
from .hooks import Hook, match_points
from .kv_cache import KVCache
from .layers import apply_rope, attention, chunked_attention, rms_norm, rope_tables, swiglu
from .limits import check_kv_cache_fits
from .weights import Weights, build_weights

# Prompts longer than this run attention in blocks of this many queries (layers.py).
ATTENTION_CHUNK = 128


__all__ = ["Model", "Step"]


@dataclass(frozen=True)
class Step:
    """The rows of one forward pass: `n_tokens` new tokens of each of B sequences of a cache.

    Prefill and decode run one sequence (B = 1, T = prompt length or 1); batched decode runs
    one token of every sequence (B = batch size, T = 1). The residual stream x holds R = B*T
    rows, sequence by sequence. Hooks can read `model.step` to know which rows they see.
    """

    phase: str  # "prefill" | "decode"
    seqs: slice  # the cache rows (sequences) this pass writes: B = seqs.stop - seqs.start
    starts: np.ndarray  # (B,) position of each sequence's first new token
    n_tokens: int  # T

    @functools.cached_property  # computed once per pass, read by every block
    def positions(self) -> np.ndarray:
        """(R,) the position of every row, sequence by sequence."""
        return (self.starts[:, None] + np.arange(self.n_tokens)).ravel()

    @functools.cached_property
    def ends(self) -> np.ndarray:
        """(B,) positions each sequence holds after this pass: its keys 0..end-1 are visible."""
        return self.starts + self.n_tokens


class Model:
    """A Llama model ready to run: config, float32 weights, RoPE tables and its tokenizer."""

    def __init__(self, config: LlamaConfig, weights: Weights, tokenizer=None) -> None:
        self.config = config
        self.weights = weights
        self.tokenizer = tokenizer
        # cos/sin of every (position, pair) angle, computed once: (S_max, HD/2) each
        self.rope_cos, self.rope_sin = rope_tables(
            config.head_dim, config.max_seq_len, config.rope_theta, config.rope_scaling
        )
        self.hooks: dict[str, list[Hook]] = {}
        self.step: Step | None = None  # the rows of the forward pass running now (for hooks)
        if self.uses_compiled_kernels:
            kernels.warm_up()  # now, rather than in the first token

    @classmethod
    def from_tensors(
        cls,
        config: LlamaConfig,
        tensors: Mapping[str, np.ndarray],
        tokenizer=None,
        weights_dtype: str = "fp32",
        progress: Callable[[int, int], None] | None = None,
    ) -> Model:
        """Build a model from checkpoint tensors named as in schema.py ((out, in) shapes):
        weights.build_weights checks, converts and fuses them (its docstring says how)."""
        return cls(config, build_weights(config, tensors, weights_dtype, progress), tokenizer)

    @property
    def uses_compiled_kernels(self) -> bool:
        """Whether decode multiplies weights with the compiled kernels (kernels/)."""
        return self.weights.uses_compiled_kernels()

    @property
    def weights_nbytes(self) -> int:
        """Bytes the weights occupy in memory (a tied embedding/classifier counted once)."""
        return self.weights.nbytes(self.config.tie_embeddings)

    # ---------------------------------------------------------------- the KV cache

    def new_cache(
        self, max_seq_len: int | None = None, batch_size: int = 1, dtype=np.float32
    ) -> KVCache:
        """A preallocated KV cache for up to `max_seq_len` positions (default: the context).

        `dtype` np.float16 halves the cache's memory; attention then widens K/V to float32.
        """
        max_seq_len = self.config.max_seq_len if max_seq_len is None else max_seq_len
        if not (
            isinstance(max_seq_len, (int, np.integer))
            and 0 < max_seq_len <= self.config.max_seq_len
        ):
            raise ArgumentError(
                f"max_seq_len must be in 1..{self.config.max_seq_len} (the model's context), "
                f"got {max_seq_len!r}"
            )
        if not (isinstance(batch_size, (int, np.integer)) and batch_size > 0):
            raise ArgumentError(f"batch_size must be a positive integer, got {batch_size!r}")
        if np.dtype(dtype) not in (np.float32, np.float16):
            raise ArgumentError(f"KV cache dtype must be float32 or float16, got {dtype}")
        check_kv_cache_fits(self.config, max_seq_len, batch_size, np.dtype(dtype).itemsize)
        return KVCache(self.config, max_seq_len, batch_size, dtype)

    # ---------------------------------------------------------------- prefill and decode

    def prefill(
        self, tokens: Sequence[int], cache: KVCache, all_logits: bool = False, seq: int = 0
    ) -> np.ndarray:
        """Run the prompt (or the next chunk of it) in one pass and store its K/V in the cache.

        Returns logits for the position after the last token, (V,), or for every position,
        (T, V), with `all_logits=True`. The tokens go at positions cache.lengths[seq] onwards,
        so a prompt can be prefilled in pieces, or appended to an earlier conversation. `seq`
        picks the sequence of a batched cache (each prompt of a batch is prefilled alone).
        """
        ids = self._check_tokens(tokens)
        cache.check_room(len(ids), seq)
        step = Step("prefill", slice(seq, seq + 1), np.array([cache.lengths[seq]]), len(ids))
        x = self.forward(ids, step, cache)  # (T, D)
        # Only the last position predicts the next token: skip the (D, V) classifier for the
        # rest unless they are asked for.
        return self.head(x if all_logits else x[-1])  # (T, V) or (V,)

    def decode(self, token: int, cache: KVCache) -> np.ndarray:
        """Run one token at position cache.length; return (V,) logits for the next position."""
        ids = self._check_tokens([token])
        cache.check_room(1)
        step = Step("decode", slice(0, 1), np.array([cache.length]), 1)
        return self.head(self.forward(ids, step, cache)[0])  # (V,)

    def decode_batch(self, tokens: Sequence[int], cache: KVCache) -> np.ndarray:
        """One token for each of the B sequences of a batched cache; -> (B, V) logits.

        Each sequence is at its own position (cache.lengths[b]), so prompts of different
        lengths decode together. Every weight matrix is read once per step for all B tokens,
        which is why servers batch (stories110M with the kernel layer: 2.4x the tokens/s of
        batch 1 at batch 2, 3.5x at 4; with OpenBLAS alone the gain shows from about batch 8,
        its sgemm for 2-4 rows costing 2-3x a matrix-vector product; see benchmarks/).
        """
        ids = self._check_tokens(tokens)
        if len(ids) != cache.batch_size:
            raise ArgumentError(
                f"decode_batch got {len(ids)} tokens for a cache of batch size "
                f"{cache.batch_size}; pass one token per sequence"
            )
        for b in range(cache.batch_size):
            cache.check_room(1, b)
        step = Step("decode", slice(0, cache.batch_size), np.array(cache.lengths), 1)
        return self.head(self.forward(ids, step, cache))  # (B, V)

    def forward(self, ids: np.ndarray, step: Step, cache: KVCache) -> np.ndarray:
        """Embed the step's tokens and run every block; the cache then holds their K/V.

        ids (R,) -> the residual stream after the last block, (R, D), before the final norm.
        """
        x = self.weights.embedding[ids]  # (R, D) residual stream, one row per token
        self.step = step
        if self.hooks:
            self._run_hooks("tokens", ids)
            x = self._run_hooks("embed", x)
        for i in range(self.config.n_layers):
            x = self.block(i, x, step, cache)
        for b, end in zip(range(step.seqs.start, step.seqs.stop), step.ends, strict=True):
            cache.lengths[b] = int(end)
        return x

    # ---------------------------------------------------------------- the pieces

    def block(self, i: int, x: np.ndarray, step: Step, cache: KVCache) -> np.ndarray:
        """Transformer block i on the R = B*T rows of x (which sequences and positions: `step`).

        x: (R, D) -> (R, D). Writes the block's K/V for these positions into the cache and
        attends over every cached position up to each row's own.
        """
        cfg, lw = self.config, self.weights.layers[i]
        B, T = step.starts.shape[0], step.n_tokens
        H, KVH, HD = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim

        # --- attention: each position gathers information from itself and earlier positions
        h = rms_norm(x, lw.attn_norm, cfg.norm_eps)  # (R, D)
        qkv = h @ lw.wqkv  # (R, (H + 2*KVH) * HD)
        if lw.bqkv is not None:
            qkv += lw.bqkv
        positions = step.positions  # (R,)
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]  # (R, HD/2) each
        # q and k heads sit side by side in qkv: rotate them in one call (half the calls in
        # decode, where per-call overhead dominates), then split.
        qk = apply_rope(
            qkv[:, : (H + KVH) * HD].reshape(-1, H + KVH, HD), cos, sin, cfg.rope_interleaved
        )
        q = qk[:, :H]  # (R, H, HD)
        k_new = qk[:, H:]  # (R, KVH, HD) keys of the new positions
        v_new = qkv[:, (H + KVH) * HD :].reshape(-1, KVH, HD)  # (R, KVH, HD)
        if self.hooks:  # before the cache write, so that a hook's edit reaches the cache
            q = self._run_hooks(f"layers.{i}.attn.q", q)
            k_new = self._run_hooks(f"layers.{i}.attn.k", k_new)
            v_new = self._run_hooks(f"layers.{i}.attn.v", v_new)
        # The cache stores (KVH, S, HD) per layer and sequence: write the new rows, read every
        # row so far. (B, T, KVH, HD) -> (B, KVH, T, HD)
        k_cache, v_cache = cache.update(
            i,
            step.seqs,
            step.starts,
            k_new.reshape(B, T, KVH, HD).transpose(0, 2, 1, 3),
            v_new.reshape(B, T, KVH, HD).transpose(0, 2, 1, 3),
        )  # (B, KVH, S, HD) views
        q = q.reshape(B, T, H, HD)
        hook = self._attention_hook(i, B) if self.hooks else None
        if T > ATTENTION_CHUNK:  # long prompt: blocks of queries whose scores stay in cache
            attn = chunked_attention(q, k_cache, v_cache, step.ends, ATTENTION_CHUNK, hook)
        else:
            attn = attention(q, k_cache, v_cache, step.ends, hook)  # (B, T, H*HD)
        attn_out = attn.reshape(B * T, H * HD) @ lw.wo  # (R, D)
        if lw.bo is not None:
            attn_out += lw.bo
        if self.hooks:
            attn_out = self._run_hooks(f"layers.{i}.attn.out", attn_out)
        x = x + attn_out  # residual connection

        # --- MLP: each position is transformed on its own
        h = rms_norm(x, lw.mlp_norm, cfg.norm_eps)  # (R, D)
        mlp_out = swiglu(h, lw.w_gate_up, lw.w_down)  # (R, D)
        if self.hooks:
            mlp_out = self._run_hooks(f"layers.{i}.mlp.out", mlp_out)
        x = x + mlp_out  # residual connection
        if self.hooks:
            x = self._run_hooks(f"layers.{i}.resid", x)
        return x

    def head(self, x: np.ndarray) -> np.ndarray:
        """Final RMSNorm and classifier.   (..., D) -> (..., V) logits"""
        h = rms_norm(x, self.weights.final_norm, self.config.norm_eps)  # (..., D)
        logits = h @ self.weights.classifier  # (..., V)
        if self.hooks:
            logits = self._run_hooks("logits", logits)
        return logits

    # ---------------------------------------------------------------- hooks

    def add_hook(self, name: str, fn: Hook) -> Callable[[], None]:
        """Call fn(name, array) each time the model reaches hook point `name`.

        `name` may be a pattern such as "layers.*.attn.probs": it is matched once, here,
        against the model's hook points (listed with their shapes in llama_np/hooks.py), so
        the forward pass only does a dict lookup. The array is read-only: to change the
        model's computation, return a replacement of the same shape (None keeps it).
        Returns a function that removes the hook.
        """
        names = match_points(name, self.config.n_layers)
        for point in names:
            self.hooks.setdefault(point, []).append(fn)

        def remove() -> None:
            for point in names:
                self.hooks[point].remove(fn)
                if not self.hooks[point]:
                    del self.hooks[point]

        return remove

    def _run_hooks(self, name: str, array: np.ndarray) -> np.ndarray:
        """Show `array` to the hooks of `name`; -> it, or the replacement a hook returned."""
        for fn in self.hooks.get(name, ()):
            view = array.view()
            view.flags.writeable = False  # the contract: replace by returning, never in place
            replaced = fn(name, view)
            if replaced is not None:
                replaced = np.asarray(replaced, dtype=array.dtype)
                if replaced.shape != array.shape:
                    raise ArgumentError(
                        f"a hook on {name} returned shape {replaced.shape}; it must return an "
                        f"array of the activation's shape {array.shape}, or None"
                    )
                array = replaced
        return array

    def _attention_hook(self, i: int, batch: int) -> Callable[[str, np.ndarray], np.ndarray]:
        """The hook attention calls with "scores" and "probs", as (B, H, T, S) arrays.

        One sequence (prefill, decode) shows them as (H, T, S); batched decode as (B, H, 1, S).
        """

        def hook(part: str, array: np.ndarray) -> np.ndarray:
            name = f"layers.{i}.attn.{part}"
            if name not in self.hooks:
                return array
            if batch == 1:
                return self._run_hooks(name, array[0])[None]
            return self._run_hooks(name, array)

        return hook

    def _check_tokens(self, tokens: Sequence[int]) -> np.ndarray:
        ids = np.asarray(tokens)
        if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
            raise ArgumentError(f"tokens must be a non-empty sequence of ints, got {tokens!r:.80}")
        if ids.min() < 0 or ids.max() >= self.config.vocab_size:
            bad = ids[(ids < 0) | (ids >= self.config.vocab_size)][0]
            raise ArgumentError(
                f"token id {bad} is outside the vocabulary 0..{self.config.vocab_size - 1}"
            )
        return ids
