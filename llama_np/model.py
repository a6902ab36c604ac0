"""The Llama model: embedding -> N transformer blocks -> final norm and classifier.

Two entry points run it, and they are the heart of inference:

* `Model.prefill(tokens, cache)` — the whole prompt in one pass. Every weight matrix is
  multiplied by a (T, D) block of activations (matrix-matrix: compute-bound), a causal mask
  stops each position from seeing later ones, and K/V of all T positions go into the cache.
* `Model.decode(token, cache)` — one new token. Every weight is multiplied by a single (D,)
  vector (matrix-vector: 2 FLOPs per weight read, 0.5 FLOP per byte in float32, so memory
  bandwidth is the limit), and attention reads the keys and values of all earlier positions
  from the cache.

Both run the same transformer block (`Model.block`); they differ in how many positions go
through it and how the result is used.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .config import LlamaConfig
from .dtypes import to_float32
from .errors import ArgumentError, CheckpointError
from .hooks import Hook, match_points
from .kv_cache import KVCache
from .layers import (
    apply_rope,
    attention,
    attention_batch,
    chunked_attention,
    rms_norm,
    rope_tables,
    swiglu,
)
from .limits import check_kv_cache_fits
from .packed import Scratch, check_weights_dtype, pack

# Prompts longer than this run attention in blocks of this many queries (layers.py).
ATTENTION_CHUNK = 128


@dataclass
class LayerWeights:
    """Weights of one transformer block, stored (in, out) so that activations do x @ W."""

    attn_norm: np.ndarray  # (D,)
    wqkv: np.ndarray  # (D, (H + 2*KVH) * HD)  q, k and v projections side by side: one matmul
    wo: np.ndarray  # (H*HD, D)
    mlp_norm: np.ndarray  # (D,)
    w_gate_up: np.ndarray  # (D, 2F)  gate and up projections side by side: one matmul
    w_down: np.ndarray  # (F, D), in fp32 a view of (D, F) rows: see from_tensors


@dataclass
class Weights:
    embedding: np.ndarray  # (V, D)
    layers: list[LayerWeights]
    final_norm: np.ndarray  # (D,)
    classifier: np.ndarray  # (D, V); `embedding` is its transposed view when tied


def tensor_names(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """The checkpoint tensors a model needs, by Meta's names, with their (out, in) shapes.

    Every loader produces exactly these names, so `Model.from_tensors` has one input format.
    """
    D, F, V, HD = config.dim, config.hidden_dim, config.vocab_size, config.head_dim
    H, KVH = config.n_heads, config.n_kv_heads
    names: dict[str, tuple[int, ...]] = {"tok_embeddings.weight": (V, D), "norm.weight": (D,)}
    if not config.tie_embeddings:
        names["output.weight"] = (V, D)
    for i in range(config.n_layers):
        p = f"layers.{i}."
        names[p + "attention_norm.weight"] = (D,)
        names[p + "attention.wq.weight"] = (H * HD, D)
        names[p + "attention.wk.weight"] = (KVH * HD, D)
        names[p + "attention.wv.weight"] = (KVH * HD, D)
        names[p + "attention.wo.weight"] = (D, H * HD)
        names[p + "ffn_norm.weight"] = (D,)
        names[p + "feed_forward.w1.weight"] = (F, D)  # gate
        names[p + "feed_forward.w2.weight"] = (D, F)  # down
        names[p + "feed_forward.w3.weight"] = (F, D)  # up
    return names


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

    @classmethod
    def from_tensors(
        cls,
        config: LlamaConfig,
        tensors: Mapping[str, np.ndarray],
        tokenizer=None,
        weights_dtype: str = "fp32",
        progress: Callable[[int, int], None] | None = None,
    ) -> Model:
        """Build a model from checkpoint tensors named as in `tensor_names` ((out, in) shapes).

        Tensors may be float32, float16 or bfloat16 (dtypes.BFLOAT16), e.g. memory-mapped from
        the file. Checks every name and shape, converts to float32, fuses q/k/v and gate/up.
        `weights_dtype` "bf16", "fp16" or "int8" keeps the matrices compressed instead and
        widens them piece by piece as they are used (see weight_formats.py); norms stay fp32.
        `progress(tensors_done, n_tensors)`, if given, is called after each tensor is converted.
        """
        check_weights_dtype(weights_dtype)
        expected = tensor_names(config)
        missing = [n for n in expected if n not in tensors]
        extra = [n for n in tensors if n not in expected]
        if missing or extra:
            raise CheckpointError(
                "checkpoint tensors do not match the config: "
                + (f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''} " if missing else "")
                + (f"unexpected {extra[:5]}{' ...' if len(extra) > 5 else ''}" if extra else "")
            )
        for name, shape in expected.items():
            if tuple(tensors[name].shape) != shape:
                raise CheckpointError(
                    f"tensor {name} has shape {tuple(tensors[name].shape)}, expected {shape} "
                    f"from the config"
                )

        done = 0

        def report(n_tensors: int) -> None:
            nonlocal done
            done += n_tensors
            if progress is not None:
                progress(done, len(expected))

        def f32(name: str) -> np.ndarray:
            array = to_float32(tensors[name])
            report(1)
            # One pass over each tensor (~10% of the load time): a corrupt weight otherwise
            # surfaces only later, as NaN logits.
            if not np.isfinite(array).all():
                n_bad = int(array.size - np.isfinite(array).sum())
                raise CheckpointError(
                    f"tensor {name} contains {n_bad} NaN/Inf values: the checkpoint is corrupt; "
                    f"re-download or re-export it"
                )
            return array

        scratch = Scratch()  # shared by every compressed matrix; unused for fp32

        def fused(*names: str) -> np.ndarray:
            # Stack (out, in) matrices along `out` (q, k, v or gate, up: one matmul instead of
            # several), then store them (in, out) contiguous so that x @ W runs down whole
            # rows of W. For decode's matrix-vector product this streams memory up to 2.7x
            # faster than dot products along rows of length D (measured from DRAM at
            # D = 288; ~1.1-1.2x at D = 768-2048). Compressed formats keep (out, in) rows,
            # which they widen piece by piece.
            if weights_dtype == "fp32":
                rows = [tensors[n].shape[0] for n in names]
                out = np.empty((tensors[names[0]].shape[1], sum(rows)), dtype=np.float32)
                for name, start, n in zip(names, np.cumsum([0, *rows]), rows, strict=False):
                    out[:, start : start + n] = f32(name).T  # one tensor at a time: no temp
                return out  # (in, out)
            rows = np.concatenate([tensors[n] for n in names], axis=0)  # storage dtype kept
            report(len(names))
            return pack(weights_dtype, rows, scratch).T

        def rows_kept(name: str) -> np.ndarray:
            # The exception to (in, out) storage: w_down, whose input (F) is wider than its
            # output (D). OpenBLAS's matrix-vector product runs faster through its (D, F) rows
            # (measured: stories110M decode 61 -> 72 tok/s, 15M +3%, TinyLlama unchanged; no
            # such gain for wo, and a loss for wqkv/w_gate_up). Used via the (in, out) view.
            if weights_dtype != "fp32":
                return fused(name)
            array = np.empty(tensors[name].shape, dtype=np.float32)  # (out, in)
            array[...] = f32(name)
            return array.T  # (in, out) view

        layers = []
        for i in range(config.n_layers):
            p = f"layers.{i}."
            layers.append(
                LayerWeights(
                    attn_norm=f32(p + "attention_norm.weight"),
                    wqkv=fused(
                        p + "attention.wq.weight",
                        p + "attention.wk.weight",
                        p + "attention.wv.weight",
                    ),
                    wo=fused(p + "attention.wo.weight"),
                    mlp_norm=f32(p + "ffn_norm.weight"),
                    w_gate_up=fused(p + "feed_forward.w1.weight", p + "feed_forward.w3.weight"),
                    w_down=rows_kept(p + "feed_forward.w2.weight"),
                )
            )
        if weights_dtype == "fp32":
            # The classifier is the largest matrix decode reads. Stored (D, V) contiguous, its
            # product runs ~1.7x faster than through (V, D) rows of length D (measured at
            # V=32000, D=768: 59 vs 35 GB/s). A tied embedding is then looked up as the
            # classifier's columns: a strided gather of D values per token, microseconds.
            table = "tok_embeddings.weight" if config.tie_embeddings else "output.weight"
            classifier = np.ascontiguousarray(f32(table).T)  # (D, V)
            if config.tie_embeddings:
                embedding = classifier.T  # (V, D) view
            else:
                embedding = np.ascontiguousarray(f32("tok_embeddings.weight"))  # (V, D)
        else:
            embedding = pack(weights_dtype, tensors["tok_embeddings.weight"], scratch)
            classifier = embedding.T if config.tie_embeddings else fused("output.weight")
        weights = Weights(embedding, layers, f32("norm.weight"), classifier)
        return cls(config, weights, tokenizer)

    @property
    def weights_nbytes(self) -> int:
        """Bytes the weights occupy in memory (a tied embedding/classifier counted once)."""
        w = self.weights
        arrays = [w.embedding, w.final_norm, *(a for lw in w.layers for a in vars(lw).values())]
        if not self.config.tie_embeddings:
            arrays.append(w.classifier)
        return sum(a.nbytes for a in arrays)

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
        tokens = self._check_tokens(tokens)
        start = cache.lengths[seq]
        cache.check_room(len(tokens), seq)
        x = self.weights.embedding[tokens]  # (T, D) residual stream, one row per token
        if self.hooks:
            self._run_hooks("tokens", tokens)
            self._run_hooks("embed", x)
        for i in range(self.config.n_layers):
            x = self.block(i, x, start, cache, seq)
        cache.lengths[seq] = start + len(tokens)
        # Only the last position predicts the next token: skip the (D, V) classifier for the
        # rest unless they are asked for.
        return self.head(x if all_logits else x[-1])  # (T, V) or (V,)

    def decode(self, token: int, cache: KVCache) -> np.ndarray:
        """Run one token at position cache.length; return (V,) logits for the next position."""
        (token,) = self._check_tokens([token])
        pos = cache.length
        cache.check_room(1)
        x = self.weights.embedding[[token]]  # (1, D): a block of one row, so `block` serves both
        if self.hooks:
            self._run_hooks("tokens", np.array([token]))
            self._run_hooks("embed", x)
        for i in range(self.config.n_layers):
            x = self.block(i, x, pos, cache)
        cache.lengths[0] = pos + 1
        return self.head(x[0])  # (V,)

    def decode_batch(self, tokens: Sequence[int], cache: KVCache) -> np.ndarray:
        """One token for each of the B sequences of a batched cache; -> (B, V) logits.

        Each sequence is at its own position (cache.lengths[b]), so prompts of different
        lengths decode together. Every weight matrix is read once per step for all B tokens,
        which is why servers batch (with OpenBLAS the gain shows from about batch 8: its sgemm
        for 2-4 rows costs 2-3x a matrix-vector product; see benchmarks/).
        """
        ids = self._check_tokens(tokens)
        if len(ids) != cache.batch_size:
            raise ArgumentError(
                f"decode_batch got {len(ids)} tokens for a cache of batch size "
                f"{cache.batch_size}; pass one token per sequence"
            )
        for b in range(cache.batch_size):
            cache.check_room(1, b)
        positions = np.array(cache.lengths)  # (B,) where each sequence's new token goes
        cfg = self.config
        H, KVH, HD = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]  # (B, HD/2) each
        x = self.weights.embedding[ids]  # (B, D): one row per sequence
        for i, lw in enumerate(self.weights.layers):
            h = rms_norm(x, lw.attn_norm, cfg.norm_eps)  # (B, D)
            qkv = h @ lw.wqkv  # (B, (H + 2*KVH) * HD)
            q = qkv[:, : H * HD].reshape(-1, H, HD)  # (B, H, HD)
            k = qkv[:, H * HD : (H + KVH) * HD].reshape(-1, KVH, HD)  # (B, KVH, HD)
            v = qkv[:, (H + KVH) * HD :].reshape(-1, KVH, HD)  # (B, KVH, HD)
            q = apply_rope(q, cos, sin, cfg.rope_interleaved)  # rows are sequences, not times
            k = apply_rope(k, cos, sin, cfg.rope_interleaved)
            k_all, v_all = cache.update_batch(i, positions, k, v)  # (B, KVH, S, HD) views
            x = x + attention_batch(q, k_all, v_all, positions + 1) @ lw.wo  # (B, D)
            x = x + swiglu(rms_norm(x, lw.mlp_norm, cfg.norm_eps), lw.w_gate_up, lw.w_down)
        cache.lengths = [int(p) + 1 for p in positions]
        return self.head(x)  # (B, V)

    # ---------------------------------------------------------------- the pieces

    def block(self, i: int, x: np.ndarray, start: int, cache: KVCache, seq: int = 0) -> np.ndarray:
        """Transformer block i on the rows of x, which sit at positions start, start+1, ...

        x: (T, D) -> (T, D). Writes the block's K/V for these positions into the cache and
        attends over every position up to the last of them.
        """
        cfg, lw = self.config, self.weights.layers[i]
        T = x.shape[0]
        H, KVH, HD = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim

        # --- attention: each position gathers information from itself and earlier positions
        h = rms_norm(x, lw.attn_norm, cfg.norm_eps)  # (T, D)
        qkv = h @ lw.wqkv  # (T, (H + 2*KVH) * HD)
        v = qkv[:, (H + KVH) * HD :].reshape(T, KVH, HD)  # (T, KVH, HD)
        cos = self.rope_cos[start : start + T]  # (T, HD/2)
        sin = self.rope_sin[start : start + T]  # (T, HD/2)
        # q and k heads sit side by side in qkv: rotate them in one call (half the calls in
        # decode, where per-call overhead dominates), then split.
        qk = apply_rope(
            qkv[:, : (H + KVH) * HD].reshape(T, H + KVH, HD), cos, sin, cfg.rope_interleaved
        )
        q = qk[:, :H]  # (T, H, HD)
        k = qk[:, H:]  # (T, KVH, HD)
        # The cache stores (KVH, S, HD) per layer: write the new rows, read all rows so far.
        k_all, v_all = cache.update(i, start, k.transpose(1, 0, 2), v.transpose(1, 0, 2), seq)
        if self.hooks:
            self._run_hooks(f"layers.{i}.attn.q", q)
            self._run_hooks(f"layers.{i}.attn.k", k)
            self._run_hooks(f"layers.{i}.attn.v", v)
        attn_hook = self._attention_hook(i) if self.hooks else None
        if T > ATTENTION_CHUNK and not self.hooks:  # long prompt: blocks that stay in cache
            attn_out = chunked_attention(q, k_all, v_all, ATTENTION_CHUNK) @ lw.wo  # (T, D)
        else:
            attn_out = attention(q, k_all, v_all, attn_hook) @ lw.wo  # (T, D)
        if self.hooks:
            self._run_hooks(f"layers.{i}.attn.out", attn_out)
        x = x + attn_out  # residual connection

        # --- MLP: each position is transformed on its own
        h = rms_norm(x, lw.mlp_norm, cfg.norm_eps)  # (T, D)
        mlp_out = swiglu(h, lw.w_gate_up, lw.w_down)  # (T, D)
        if self.hooks:
            self._run_hooks(f"layers.{i}.mlp.out", mlp_out)
        x = x + mlp_out  # residual connection
        if self.hooks:
            self._run_hooks(f"layers.{i}.resid", x)
        return x

    def head(self, x: np.ndarray) -> np.ndarray:
        """Final RMSNorm and classifier.   (..., D) -> (..., V) logits"""
        logits = (
            rms_norm(x, self.weights.final_norm, self.config.norm_eps) @ self.weights.classifier
        )
        if self.hooks:
            self._run_hooks("logits", logits)
        return logits

    # ---------------------------------------------------------------- hooks

    def add_hook(self, name: str, fn: Hook) -> Callable[[], None]:
        """Call fn(name, array) each time the model reaches hook point `name`.

        `name` may be a pattern such as "layers.*.attn.probs": it is matched once, here,
        against the model's hook points (listed with their shapes in llama_np/hooks.py), so
        the forward pass only does a dict lookup. Returns a function that removes the hook.
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

    def _run_hooks(self, name: str, array: np.ndarray) -> None:
        for fn in self.hooks.get(name, ()):
            fn(name, array)

    def _attention_hook(self, i: int) -> Hook:
        return lambda part, array: self._run_hooks(f"layers.{i}.attn.{part}", array)

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
