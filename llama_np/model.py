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
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from . import kernels
from .config import LlamaConfig
from .dtypes import release_pages, to_float32
from .errors import ArgumentError, CheckpointError
from .hooks import Hook, match_points
from .kv_cache import KVCache
from .layers import apply_rope, attention, chunked_attention, rms_norm, rope_tables, swiglu
from .limits import check_kv_cache_fits
from .packed import (
    FP32_KERNEL_MIN,
    Matrix,
    Scratch,
    check_weights_dtype,
    fp32_rows,
    matmul,
    pack,
)
from .schema import tensor_specs

# Prompts longer than this run attention in blocks of this many queries (layers.py).
ATTENTION_CHUNK = 128
# Loading converts checkpoint tensors this many rows at a time (16 float32 = one cache line of
# each row of a transposed target), in this many threads, one layer each.
CONVERT_ROWS = 16
RELEASE_ROWS = 64 * CONVERT_ROWS  # converted rows whose file pages are dropped at once
LOAD_THREADS = min(4, os.cpu_count() or 1)


__all__ = ["LAYER_FIELDS", "LayerWeights", "Model", "Step", "Weights"]


@dataclass
class LayerWeights:
    """Weights of one transformer block. Matrices are (in, out), so that activations do x @ W;
    fp32 ones are laid out in memory for the product that runs them (fp32_matrix)."""

    attn_norm: np.ndarray  # (D,)
    wqkv: Matrix  # (D, (H + 2*KVH) * HD)  q, k and v projections side by side: one matmul
    wo: Matrix  # (H*HD, D)
    mlp_norm: np.ndarray  # (D,)
    w_gate_up: Matrix  # (D, 2F)  gate and up projections side by side: one matmul
    w_down: Matrix  # (F, D), in fp32 always a view of (D, F) rows: see from_tensors
    bqkv: np.ndarray | None = None  # ((H + 2*KVH) * HD,) optional q/k/v biases (schema.py)
    bo: np.ndarray | None = None  # (D,) optional output-projection bias


# Each LayerWeights field and the checkpoint tensors (schema.py names after "layers.{i}.")
# it is built from: several tensors are stacked into one matrix, multiplied at once.
LAYER_FIELDS: dict[str, tuple[str, ...]] = {
    "attn_norm": ("attention_norm.weight",),
    "wqkv": ("attention.wq.weight", "attention.wk.weight", "attention.wv.weight"),
    "bqkv": ("attention.wq.bias", "attention.wk.bias", "attention.wv.bias"),
    "wo": ("attention.wo.weight",),
    "bo": ("attention.wo.bias",),
    "mlp_norm": ("ffn_norm.weight",),
    "w_gate_up": ("feed_forward.w1.weight", "feed_forward.w3.weight"),
    "w_down": ("feed_forward.w2.weight",),
}


def fp32_matrix(n_out: int, n_in: int) -> np.ndarray:
    """An empty float32 (out, in) matrix, laid out in memory for the product that will run it
    in decode.   -> (n_out, n_in); the model uses its (in, out) transpose, x @ W.

    With numpy kernels, BLAS: the transposed view of (in, out) rows, which OpenBLAS's
    matrix-vector product streams fastest (measured from DRAM at D = 288: up to 2.7x faster
    than dot products along rows of length D; ~1.1-1.2x at D = 768-2048; the classifier at
    V=32000, D=768: 59 vs 35 GB/s). With compiled kernels active when the model is loaded,
    and at least packed.FP32_KERNEL_MIN weights: (out, in) rows, one compiled dot product each
    (packed.matmul), faster still (decode: stories15M 1.2-1.3x, stories110M 1.0-1.3x as the
    machine's load varies, TinyLlama ~1.05x).
    """
    # size first: a small model never imports numba (kernels.active's first call, ~0.3 s)
    if n_out * n_in >= FP32_KERNEL_MIN and kernels.active() != "numpy":
        return np.empty((n_out, n_in), dtype=np.float32)
    return np.empty((n_in, n_out), dtype=np.float32).T


@dataclass
class Weights:
    embedding: Matrix  # (V, D)
    layers: list[LayerWeights]
    final_norm: np.ndarray  # (D,)
    classifier: Matrix  # (D, V); `embedding` is its transposed view when tied


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
        """Build a model from checkpoint tensors named as in schema.py ((out, in) shapes).

        Tensors may be float32, float16 or bfloat16 (dtypes.BFLOAT16), e.g. memory-mapped from
        the file, or GGUF block matrices (quants.QuantizedTensor). Checks every name and shape,
        converts to float32, fuses q/k/v and gate/up. `weights_dtype` "bf16", "fp16" or "int8"
        keeps the matrices compressed instead, "stored" keeps each as the file stores it, and
        both widen them piece by piece as they are used (see packed.py); norms stay fp32.
        `progress(tensors_done, n_tensors)`, if given, is called after each tensor is converted.
        """
        check_weights_dtype(weights_dtype)
        if weights_dtype == "stored" and all(
            isinstance(t, np.ndarray) and t.dtype == np.float32 for t in tensors.values()
        ):
            weights_dtype = "fp32"  # stored as float32: the fastest layout
        specs = tensor_specs(config)
        missing = [n for n, spec in specs.items() if spec.required and n not in tensors]
        extra = [n for n in tensors if n not in specs]
        if missing or extra:
            raise CheckpointError(
                "checkpoint tensors do not match the config: "
                + (f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''} " if missing else "")
                + (f"unexpected {extra[:5]}{' ...' if len(extra) > 5 else ''}" if extra else "")
            )
        for name in tensors:
            if tuple(tensors[name].shape) != specs[name].shape:
                raise CheckpointError(
                    f"tensor {name} has shape {tuple(tensors[name].shape)}, expected "
                    f"{specs[name].shape} from the config"
                )

        done, lock = 0, threading.Lock()

        def report(n_tensors: int) -> None:
            nonlocal done
            with lock:  # layers are converted by several threads
                done += n_tensors
                if progress is not None:
                    progress(done, len(tensors))

        def convert(name: str, out: np.ndarray) -> None:
            # tensors[name] -> float32 in `out` (its shape; a transposed view for (in, out)
            # storage), CONVERT_ROWS rows at a time: no float32 temporary of the whole tensor,
            # and the transposed writes fill whole cache lines (3x faster than widening the
            # tensor, then copying it transposed). Then its mapped file pages are dropped, so
            # the checkpoint is never in memory beside its converted copy.
            source, target = tensors[name], np.atleast_2d(out)
            source = source if source.ndim == 2 else np.atleast_2d(source)  # GGUF blocks: 2-D
            for start in range(0, source.shape[0], CONVERT_ROWS):
                block = to_float32(source[start : start + CONVERT_ROWS])  # (rows, in)
                # A corrupt weight otherwise surfaces only later, as NaN logits.
                if not np.isfinite(block).all():
                    n_bad = np.count_nonzero(~np.isfinite(to_float32(tensors[name])))
                    raise CheckpointError(
                        f"tensor {name} contains {n_bad} NaN/Inf values: the checkpoint is "
                        f"corrupt; re-download or re-export it"
                    )
                target[start : start + CONVERT_ROWS] = block
                if start % RELEASE_ROWS == 0:  # now and then, not at the end: a big tensor
                    release_pages(source[: start + CONVERT_ROWS])  # is a lot of pages
            release_pages(tensors[name])
            report(1)

        def f32(name: str) -> np.ndarray:
            array = np.empty(tensors[name].shape, dtype=np.float32)  # its own memory, never a
            convert(name, array)  # view of the file, which would keep the mapping resident
            return array

        scratch = Scratch()  # shared by every compressed matrix; unused for fp32

        def fused(*names: str) -> Matrix:
            # Stack (out, in) matrices along `out` (q, k, v or gate, up: one matmul instead of
            # several). Compressed formats keep (out, in) rows, which they widen piece by piece.
            if weights_dtype != "fp32":
                packed = pack(weights_dtype, [tensors[n] for n in names], scratch)
                report(len(names))
                return packed.T
            rows = [tensors[n].shape[0] for n in names]
            stacked = fp32_matrix(sum(rows), tensors[names[0]].shape[1])  # (out, in)
            for name, start, n in zip(names, np.cumsum([0, *rows]), rows, strict=False):
                convert(name, stacked[start : start + n])
            return stacked.T  # (in, out)

        def rows_kept(name: str) -> Matrix:
            # w_down, whose input (F) is wider than its output (D), is kept as (D, F) rows for
            # BLAS too: OpenBLAS's matrix-vector product runs faster through them (measured:
            # stories110M decode 61 -> 72 tok/s, 15M +3%, TinyLlama unchanged; no such gain
            # for wo, and a loss for wqkv/w_gate_up).
            if weights_dtype != "fp32":
                return fused(name)
            return f32(name).T  # (out, in) array, used as its (in, out) view

        def bias(*names: str) -> np.ndarray | None:
            # Optional in the schema: a checkpoint has all of a group's biases or none.
            present = [n for n in names if n in tensors]
            if not present:
                return None
            if len(present) < len(names):
                raise CheckpointError(
                    f"checkpoint has {', '.join(present)} but not "
                    f"{', '.join(n for n in names if n not in tensors)}: biases come together"
                )
            return np.concatenate([f32(n) for n in names])  # (sum of outs,)

        def layer(i: int) -> LayerWeights:
            fields = {}
            for field, names in LAYER_FIELDS.items():
                names = tuple(f"layers.{i}.{n}" for n in names)
                role = specs[names[0]].role
                if role == "norm":
                    fields[field] = f32(names[0])
                elif role == "bias":
                    fields[field] = bias(*names)
                elif field == "w_down":
                    fields[field] = rows_kept(names[0])
                else:
                    fields[field] = fused(*names)
            return LayerWeights(**fields)

        # Layers convert side by side: NumPy releases the GIL while it widens and copies.
        with ThreadPoolExecutor(LOAD_THREADS, thread_name_prefix="llama_np-load") as pool:
            layers = list(pool.map(layer, range(config.n_layers)))
        if weights_dtype == "fp32":
            # The classifier is the largest matrix decode reads. A tied embedding is looked up
            # as its rows (V, D): with the BLAS layout a strided gather of D values per token,
            # microseconds.
            table = "tok_embeddings.weight" if config.tie_embeddings else "output.weight"
            rows = fp32_matrix(config.vocab_size, config.dim)  # (V, D)
            convert(table, rows)
            classifier = rows.T  # (D, V)
            if config.tie_embeddings:
                embedding = rows  # (V, D)
            else:
                embedding = f32("tok_embeddings.weight")  # (V, D)
        else:
            embedding = pack(weights_dtype, tensors["tok_embeddings.weight"], scratch)
            report(1)
            classifier = embedding.T if config.tie_embeddings else fused("output.weight")
        weights = Weights(embedding, layers, f32("norm.weight"), classifier)
        return cls(config, weights, tokenizer)

    @property
    def uses_compiled_kernels(self) -> bool:
        """Whether decode multiplies weights with the compiled kernels (kernels/): compressed
        ones, or fp32 matrices laid out as rows for them (fp32_matrix)."""
        w = self.weights
        matrices = [w.classifier, *(m for lw in w.layers for m in (lw.wqkv, lw.wo, lw.w_gate_up))]
        candidates = any(not isinstance(m, np.ndarray) or fp32_rows(m) for m in matrices)
        return candidates and kernels.active() != "numpy"

    @property
    def weights_nbytes(self) -> int:
        """Bytes the weights occupy in memory (a tied embedding/classifier counted once)."""
        w = self.weights
        per_layer = (a for lw in w.layers for a in vars(lw).values() if a is not None)
        arrays = [w.embedding, w.final_norm, *per_layer]
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
        qkv = matmul(h, lw.wqkv)  # (R, (H + 2*KVH) * HD)
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
        attn_out = matmul(attn.reshape(B * T, H * HD), lw.wo)  # (R, D)
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
        logits = matmul(h, self.weights.classifier)  # (..., V)
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
