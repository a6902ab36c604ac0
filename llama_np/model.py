"""The Llama model: embedding -> N transformer blocks -> final norm and classifier.

Two entry points run it, and they are the heart of inference:

* `Model.prefill(tokens, cache)` — the whole prompt in one pass. Every weight matrix is
  multiplied by a (T, D) block of activations (matrix-matrix: compute-bound), a causal mask
  stops each position from seeing later ones, and K/V of all T positions go into the cache.
* `Model.decode(token, cache)` — one new token. Every weight is multiplied by a single (D,)
  vector (matrix-vector: 2 FLOPs per weight read, 0.5 FLOP per byte in float32, so memory
  bandwidth is the limit), and attention reads the keys and values of all earlier positions
  from the cache.

`Model.decode_batch(tokens, cache)` is decode for B sequences at once, and `Model.run(ids,
step, cache)` runs a serving engine's step (engine/): a chunk of one prompt beside the next
token of each of many others, over a paged KV cache. All four run the same `Model.block` on
the rows of a `Step` (which sequences and positions the rows are); they differ in how many
rows go through it and how the result is used.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from . import arguments, kernels
from .config import LlamaConfig
from .errors import ArgumentError
from .hooks import Hook, match_points
from .kv_cache import KVCache
from .layers import apply_rope, attention, chunked_attention, rms_norm, rope_rotations, swiglu
from .limits import check_kv_cache_fits
from .paged_kv_cache import PagedKVCache
from .weights import Weights, build_weights

# Prompts longer than this run attention in blocks of this many queries (layers.py).
ATTENTION_CHUNK = 128


__all__ = ["Model", "Step"]


@dataclass(frozen=True, eq=False)
class Step:
    """The rows of one forward pass: T_b new tokens of each of B sequences.

    Prefill runs one sequence (B = 1, T = the prompt, or a chunk of it), decode one token of
    one sequence, batched decode one token of each of B sequences; a serving step (engine/)
    mixes them: a prefill chunk of one request beside single decode tokens of others. The
    residual stream x holds R = sum of T_b rows, sequence by sequence. Hooks read
    `model.step` to know which rows they see.
    """

    phase: str  # "prefill" | "decode" | "mixed" (a serving step with both)
    seqs: np.ndarray  # (B,) the sequences: rows of a KVCache, request ids in a paged cache
    starts: np.ndarray  # (B,) position of each sequence's first new token
    counts: np.ndarray  # (B,) T_b >= 1, new tokens of each sequence
    # (B, blocks) a paged cache's blocks of each sequence, position p in block p // block_size
    # (paged_kv_cache.py); None for a KVCache
    block_tables: np.ndarray | None = None

    @functools.cached_property  # computed once per pass, read by every block
    def ends(self) -> np.ndarray:
        """(B,) positions each sequence holds after this pass: its keys 0..end-1 are visible."""
        return self.starts + self.counts

    @functools.cached_property
    def first_rows(self) -> np.ndarray:
        """(B + 1,) where each sequence's rows start in x, and R at the end."""
        first = np.zeros(len(self.counts) + 1, dtype=np.int64)
        np.cumsum(self.counts, out=first[1:])
        return first

    @functools.cached_property
    def positions(self) -> np.ndarray:
        """(R,) the position of every row, sequence by sequence."""
        if len(self.counts) == self.first_rows[-1]:  # one row per sequence (decode)
            return self.starts
        shift = np.repeat(self.starts - self.first_rows[:-1], self.counts)  # (R,)
        return shift + np.arange(self.first_rows[-1])

    @functools.cached_property
    def row_seqs(self) -> np.ndarray:
        """(R,) which of the B sequences each row belongs to (0..B-1)."""
        return np.repeat(np.arange(len(self.counts)), self.counts)

    @functools.cached_property
    def groups(self) -> list[tuple[np.ndarray, slice | np.ndarray]]:
        """[(sequences, their rows of x)] of the sequences that attend together: those with
        the same number of new tokens (one batched attention over their caches). Prefill,
        decode and batched decode are one group; a serving step has a group of decode tokens
        and one per distinct prefill chunk length. Rows are a slice when they are one run."""
        counts = set(self.counts.tolist())
        if len(counts) == 1:  # prefill, decode, batched decode: every row, in order
            return [(np.arange(len(self.counts)), slice(0, int(self.first_rows[-1])))]
        groups = []
        for t in sorted(counts):
            seqs = np.flatnonzero(self.counts == t)  # (B_g,)
            rows = (self.first_rows[seqs, None] + np.arange(t)).ravel()  # (B_g * T,)
            run = rows[-1] - rows[0] + 1 == len(rows)
            groups.append((seqs, slice(int(rows[0]), int(rows[-1]) + 1) if run else rows))
        return groups


class Model:
    """A Llama model ready to run: config, float32 weights, the RoPE table and its tokenizer."""

    def __init__(self, config: LlamaConfig, weights: Weights, tokenizer=None) -> None:
        self.config = config
        self.weights = weights
        self.tokenizer = tokenizer
        # e^(i·angle) of every (position, pair) angle, computed once: (S_max, HD/2) complex64
        self.rope = rope_rotations(
            config.head_dim, config.max_seq_len, config.rope_theta, config.rope_scaling
        )
        self.hooks: dict[str, list[Hook]] = {}
        self.step: Step | None = None  # the rows of the forward pass running now (for hooks)
        self.attending: np.ndarray | None = None  # which of step's sequences attention runs for
        # Decode attends in the compiled kernel when the products run compiled: a model whose
        # products all run in BLAS (stories260K's small matrices) would otherwise load numba's
        # runtime (~1 s, ~130 MB) for attention alone, to save ~0.1 ms a token.
        self.compiled_attention = self.uses_compiled_kernels
        if self.compiled_attention:
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
        S = self.config.max_seq_len
        max_seq_len = S if max_seq_len is None else max_seq_len
        allowed = f"in 1..{S} (the model's context), or None for all of it"
        max_seq_len = arguments.integer(max_seq_len, "max_seq_len", 1, S, allowed=allowed)
        batch_size = arguments.integer(batch_size, "batch_size", 1, allowed="a positive integer")
        dtype = arguments.dtype(dtype, "dtype", (np.float32, np.float16))
        check_kv_cache_fits(self.config, max_seq_len, batch_size, dtype.itemsize)
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
        cache = arguments.kv_cache(cache, "cache", self.config)
        arguments.flag(all_logits, "all_logits")
        seq = arguments.integer(seq, "seq", 0, cache.batch_size - 1)
        cache.check_room(len(ids), seq)
        step = Step(
            "prefill", np.array([seq]), np.array([cache.lengths[seq]]), np.array([len(ids)])
        )
        x = self.forward(ids, step, cache)  # (T, D)
        cache.advance(step)
        # Only the last position predicts the next token: skip the (D, V) classifier for the
        # rest unless they are asked for.
        return self.head(x if all_logits else x[-1])  # (T, V) or (V,)

    def decode(self, token: int, cache: KVCache) -> np.ndarray:
        """Run one token at position cache.length; return (V,) logits for the next position."""
        ids = np.array([arguments.token_id(token, "token", self.config.vocab_size)])
        cache = arguments.kv_cache(cache, "cache", self.config)
        cache.check_room(1)
        step = Step("decode", np.array([0]), np.array([cache.length]), np.array([1]))
        x = self.forward(ids, step, cache)  # (1, D)
        cache.advance(step)
        return self.head(x[0])  # (V,)

    def decode_batch(self, tokens: Sequence[int], cache: KVCache) -> np.ndarray:
        """One token for each of the B sequences of a batched cache; -> (B, V) logits.

        Each sequence is at its own position (cache.lengths[b]), so prompts of different
        lengths decode together. Every weight matrix is read once per step for all B tokens,
        which is why servers batch (measured up to 32 rows: the README's batched decode
        table, benchmarks/run.py). A serving engine keeps such a batch full as requests come
        and go: engine/.
        """
        ids = self._check_tokens(tokens)
        cache = arguments.kv_cache(cache, "cache", self.config)
        B = cache.batch_size
        if len(ids) != B:
            raise ArgumentError(
                f"decode_batch got {len(ids)} tokens for a cache of batch size {B}; pass one "
                f"token per sequence"
            )
        for b in range(B):
            cache.check_room(1, b)
        step = Step("decode", np.arange(B), np.array(cache.lengths), np.ones(B, dtype=np.int64))
        x = self.forward(ids, step, cache)  # (B, D)
        cache.advance(step)
        return self.head(x)  # (B, V)

    def run(self, ids: np.ndarray, step: Step, cache: KVCache | PagedKVCache) -> np.ndarray:
        """One serving step (engine/): the step's rows through every block, their K/V into
        the cache; -> (B, V) logits of each sequence's last new token. The caller (the engine)
        tracks where each sequence is; nothing is checked here."""
        x = self.forward(ids, step, cache)  # (R, D)
        return self.head(x[step.first_rows[1:] - 1])  # (B, V)

    def forward(self, ids: np.ndarray, step: Step, cache: KVCache | PagedKVCache) -> np.ndarray:
        """Embed the step's tokens and run every block; the cache then holds their K/V.

        ids (R,) -> the residual stream after the last block, (R, D), before the final norm.
        """
        self.step = step
        if self.hooks:  # a hook may replace the ids, as any other activation
            ids = self._run_hooks("tokens", ids)
            bad = ids[(ids < 0) | (ids >= self.config.vocab_size)]
            if len(bad):
                raise ArgumentError(
                    f"a hook on tokens returned id {int(bad[0])}, outside the vocabulary "
                    f"0..{self.config.vocab_size - 1}"
                )
        x = self.weights.embedding[ids]  # (R, D) residual stream, one row per token
        if self.hooks:
            x = self._run_hooks("embed", x)
        for i in range(self.config.n_layers):
            x = self.block(i, x, step, cache)
        return x

    # ---------------------------------------------------------------- the pieces

    def block(self, i: int, x: np.ndarray, step: Step, cache: KVCache | PagedKVCache) -> np.ndarray:
        """Transformer block i on the R rows of x (which sequences and positions: `step`).

        x: (R, D) -> (R, D). Writes the block's K/V for these positions into the cache and
        attends over every cached position up to each row's own.
        """
        cfg, lw = self.config, self.weights.layers[i]
        H, KVH, HD = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim

        # --- attention: each position gathers information from itself and earlier positions
        h = rms_norm(x, lw.attn_norm, cfg.norm_eps)  # (R, D)
        qkv = h @ lw.wqkv  # (R, (H + 2*KVH) * HD)
        if lw.bqkv is not None:
            qkv += lw.bqkv
        positions = step.positions  # (R,)
        rotation = self.rope[positions]  # (R, HD/2) complex64
        # q and k heads sit side by side in qkv: rotate them in one call (half the calls in
        # decode, where per-call overhead dominates), then split.
        qk = apply_rope(
            qkv[:, : (H + KVH) * HD].reshape(-1, H + KVH, HD), rotation, cfg.rope_interleaved
        )
        q = qk[:, :H]  # (R, H, HD)
        k_new = qk[:, H:]  # (R, KVH, HD) keys of the new positions
        v_new = qkv[:, (H + KVH) * HD :].reshape(-1, KVH, HD)  # (R, KVH, HD)
        if self.hooks:  # before the cache write, so that a hook's edit reaches the cache
            q = self._run_hooks(f"layers.{i}.attn.q", q)
            k_new = self._run_hooks(f"layers.{i}.attn.k", k_new)
            v_new = self._run_hooks(f"layers.{i}.attn.v", v_new)
        cache.write(i, step, k_new, v_new)  # every row's K/V at its sequence's position
        attn = np.empty((len(x), H * HD), dtype=np.float32)  # (R, H*HD)
        # Sequences with as many new tokens attend together: (B, T, H, HD) queries against
        # their cached (B, KVH, S, HD) keys and values. Prefill and decode are one group.
        for seqs, rows in step.groups:
            B, T = len(seqs), int(step.counts[seqs[0]])
            hook = self._attention_hook(i, seqs) if self._hooks_attention(i) else None
            q_group, ends = q[rows].reshape(B, T, H, HD), step.ends[seqs]
            # decode: a compiled kernel, when the products run compiled (None: NumPy's code)
            compiled = T == 1 and hook is None and self.compiled_attention
            out = cache.attend(i, step, seqs, q_group) if compiled else None
            if out is None:
                k_cache, v_cache = cache.read(i, step, seqs)  # (B, KVH, S, HD)
                if T > ATTENTION_CHUNK:  # long prompt: blocks of queries, scores kept in cache
                    out = chunked_attention(q_group, k_cache, v_cache, ends, ATTENTION_CHUNK, hook)
                else:
                    out = attention(q_group, k_cache, v_cache, ends, hook)  # (B, T, H*HD)
            attn[rows] = out.reshape(B * T, H * HD)
        attn_out = attn @ lw.wo  # (R, D)
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
        arguments.function(fn, "fn")
        names = match_points(arguments.string(name, "name"), self.config.n_layers)
        for point in names:
            self.hooks.setdefault(point, []).append(fn)

        def remove() -> None:  # a second call does nothing
            for point in names:
                if fn in self.hooks.get(point, ()):
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

    def _hooks_attention(self, i: int) -> bool:
        """Whether a hook watches layer i's attention scores or probabilities: then attention
        runs in layers.attention's NumPy code, which computes them as arrays."""
        return bool(self.hooks) and (
            f"layers.{i}.attn.scores" in self.hooks or f"layers.{i}.attn.probs" in self.hooks
        )

    def _attention_hook(self, i: int, seqs: np.ndarray) -> Callable[[str, np.ndarray], np.ndarray]:
        """The hook attention calls with "scores" and "probs", as (B, H, T, S) arrays.

        One sequence (prefill, decode) shows them as (H, T, S); several (batched decode, a
        serving step's group `seqs` of model.step's sequences, kept in model.attending) as
        (B, H, T, S).
        """
        self.attending = seqs

        def hook(part: str, array: np.ndarray) -> np.ndarray:
            name = f"layers.{i}.attn.{part}"
            if name not in self.hooks:
                return array
            if len(seqs) == 1:
                return self._run_hooks(name, array[0])[None]
            return self._run_hooks(name, array)

        return hook

    def _check_tokens(self, tokens: Sequence[int]) -> np.ndarray:
        return arguments.token_ids(tokens, "tokens", self.config.vocab_size)  # (T,) int64
