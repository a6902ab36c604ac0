"""Hook points: look at the model's intermediates, and change them, without editing it.

    remove = model.add_hook("layers.*.attn.probs", lambda name, a: print(name, a.shape))
    with record(model, ["layers.0.attn.q", "logits"]) as rec:   # copies every array
        model.prefill(tokens, model.new_cache())
    rec["layers.0.attn.q"][0]                                   # (T, H, HD)

A hook is fn(name, array). It runs each time the forward pass reaches its point: in prefill
(T = prompt tokens, S = positions after the write), in decode (T = 1) and in batched decode
(one token of each of B sequences; S = the longest sequence's positions, and a shorter
sequence's keys past its own end are masked: -inf scores, 0 probabilities). `model.step`
says which sequences and positions the rows of the running pass are. A serving step
(engine/) mixes sequences with different numbers of new tokens T_b (a prefill chunk beside
decode tokens): row-wise points hold all R = sum of T_b rows, sequence by sequence
(`model.step.seqs` are request ids, `.starts`, `.counts`), and `scores`/`probs` are called
once per group of sequences with the same T_b (`model.attending`: which of step.seqs), as
(B, H, T, S), or (H, T, S) for a group of one.

The contract: the array a hook receives is a read-only view of the model's working buffer
(reused or overwritten later: `scores` becomes `probs` in place, so copy what you keep —
`Recorder` does). To change the computation, return a replacement of the same shape;
returning None keeps it. q, k and v hooks run before the keys and values are written to the
KV cache, so a replaced k or v is what later positions read. A prompt longer than
model.ATTENTION_CHUNK runs attention in blocks of queries: `scores`/`probs` hooks are then
called once per block with its rows, (H, rows, keys up to the block's last query). With no
hook registered the forward pass only tests `if self.hooks:`, so hooks cost nothing unused.
A hook returning None leaves every number as it was, bit for bit, with one exception: a model
whose products run in the compiled kernels decodes attention in one kernel too
(kernels/attention.py, `model.compiled_attention`), which has no scores or probs to show, so
a `scores` or `probs` hook runs that layer's decode attention in NumPy (layers.attention),
which adds in another order (outputs move by ~1e-6 of their size).
`kv_head(config, h)` names the K/V head that query head h reads (grouped-query attention);
docs/debugging.md has a worked example: ablate a head and measure how the next-token
distribution moves.

point                   prefill         decode        batched decode  what it holds
----------------------  --------------  ------------  --------------  ---------------------------
tokens                  (T,) int        (1,) int      (B,) int        token ids of this pass
embed                   (T, D)          (1, D)        (B, D)          their embeddings: into layer 0
layers.{i}.attn.q       (T, H, HD)      (1, H, HD)    (B, H, HD)      queries, after RoPE
layers.{i}.attn.k       (T, KVH, HD)    (1, KVH, HD)  (B, KVH, HD)    keys of the new positions
layers.{i}.attn.v       (T, KVH, HD)    (1, KVH, HD)  (B, KVH, HD)    values of the new positions
layers.{i}.attn.scores  (H, T, S)       (H, 1, S)     (B, H, 1, S)    q·k/√HD, -inf in the future
layers.{i}.attn.probs   (H, T, S)       (H, 1, S)     (B, H, 1, S)    softmax of scores: sums to 1
layers.{i}.attn.out     (T, D)          (1, D)        (B, D)          attention output, after wo
layers.{i}.mlp.out      (T, D)          (1, D)        (B, D)          SwiGLU MLP output
layers.{i}.resid        (T, D)          (1, D)        (B, D)          residual stream after block i
logits                  (V,) or (T, V)  (V,)          (B, V)          next-token logits

i runs over 0 .. L-1. Names may be fnmatch patterns: `layers.*.attn.probs`, `layers.[01].*`,
`*.resid`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from . import arguments
from .errors import ArgumentError

if TYPE_CHECKING:
    from .config import LlamaConfig
    from .model import Model

Hook = Callable[[str, np.ndarray], "np.ndarray | None"]

MODEL_POINTS = ("tokens", "embed")
LAYER_POINTS = (
    "attn.q",
    "attn.k",
    "attn.v",
    "attn.scores",
    "attn.probs",
    "attn.out",
    "mlp.out",
    "resid",
)
HEAD_POINTS = ("logits",)


def kv_head(config: LlamaConfig, head: int) -> int:
    """The K/V head that query head `head` reads: head // G, with G = H / KVH query heads per
    K/V head (attention stacks those G heads against one K/V head; nothing is copied)."""
    if not 0 <= head < config.n_heads:
        raise ArgumentError(f"query head {head} is not in 0..{config.n_heads - 1}")
    return head // (config.n_heads // config.n_kv_heads)


def hook_points(n_layers: int) -> list[str]:
    """Every hook point name of a model with `n_layers` layers, in forward-pass order."""
    layer_points = [f"layers.{i}.{p}" for i in range(n_layers) for p in LAYER_POINTS]
    return [*MODEL_POINTS, *layer_points, *HEAD_POINTS]


def match_points(pattern: str, n_layers: int) -> list[str]:
    """The hook points that `pattern` (a name or an fnmatch pattern) names.

    Raises ArgumentError when it names none, so that a typo cannot silently record nothing.
    """
    names = [p for p in hook_points(n_layers) if fnmatch.fnmatchcase(p, pattern)]
    if not names:
        raise ArgumentError(
            f"hook point {pattern!r} matches no point of this {n_layers}-layer model; "
            f"points are {', '.join(MODEL_POINTS)}, layers.{{0..{n_layers - 1}}}."
            f"{{{','.join(LAYER_POINTS)}}} and logits (patterns like layers.*.attn.probs work)"
        )
    return names


class Recorder:
    """Copies of the arrays that hook points produce, by point name, in call order.

    with Recorder(model, "layers.*.attn.probs") as rec:
        model.prefill(tokens, cache)
        model.decode(token, cache)
    rec["layers.0.attn.probs"]   # [(H, T, T) from prefill, (H, 1, T+1) from decode]

    Arrays are copied when recorded: hooks see views of buffers the next step overwrites.
    """

    def __init__(self, model: Model, patterns: str | Sequence[str]) -> None:
        self.model = model
        self.patterns = arguments.strings(patterns, "patterns", non_empty=True)
        self.arrays: dict[str, list[np.ndarray]] = {}
        self._removers: list[Callable[[], None]] = []

    def __enter__(self) -> Recorder:
        for pattern in self.patterns:
            self._removers.append(self.model.add_hook(pattern, self._record))
        return self

    def __exit__(self, *exc) -> None:
        for remove in self._removers:
            remove()
        self._removers.clear()

    def _record(self, name: str, array: np.ndarray) -> None:
        self.arrays.setdefault(name, []).append(array.copy())

    def __getitem__(self, name: str) -> list[np.ndarray]:
        return self.arrays.get(name, [])


def record(model: Model, patterns: str | Sequence[str]) -> Recorder:
    """`with record(model, "layers.*.attn.probs") as rec:` records those points (see Recorder)."""
    return Recorder(model, patterns)


class AttentionRecorder(Recorder):
    """Attention probabilities of every layer and head, one full row per token.

    with AttentionRecorder(model) as rec:
        llama_np.generate_text(model, "Once upon a time", 20, temperature=0)
    rec.probs()    # (L, H, N, N): row n is how token n attended to tokens 0..n
    rec.tokens     # (N,) the N token ids the model ran: the prompt, then each decoded token
    rec.pieces()   # their text pieces

    Prefill gives the T×T lower-triangular block at the top left (a long prompt arrives in
    blocks of rows: chunked attention); each decode step adds one row over every cached
    position. Recording must start at an empty cache. In a batch (generate_batch) every
    sequence is recorded on its own: `probs(seq=b)`, `sequence_tokens(b)`, `pieces(b)`.
    `layers` limits which layers are kept (and the L axis follows their order).
    """

    def __init__(self, model: Model, layers: Sequence[int] | None = None) -> None:
        n_layers = model.config.n_layers
        self.layers = list(range(n_layers)) if layers is None else list(layers)
        bad = [i for i in self.layers if not 0 <= i < n_layers]
        if bad or not self.layers:
            raise ArgumentError(
                f"layers {self.layers} are not all in 0..{n_layers - 1}, the model's layers"
            )
        self.steps: list = []  # model.step of each forward pass recorded (its rows)
        self.pass_of: dict[str, list[int]] = {}  # point -> index in steps of each array
        self.groups: dict[str, list[np.ndarray]] = {}  # point -> model.attending of each
        super().__init__(model, ["tokens", *(f"layers.{i}.attn.probs" for i in self.layers)])

    def _record(self, name: str, array: np.ndarray) -> None:
        if name == "tokens":
            self.steps.append(self.model.step)
        else:  # attention probs: of the step's sequences model.attending
            self.groups.setdefault(name, []).append(self.model.attending)
        self.pass_of.setdefault(name, []).append(len(self.steps) - 1)
        super()._record(name, array)

    def sequence_tokens(self, seq: int = 0) -> np.ndarray:
        """(N,) token ids sequence `seq` ran, in order: its prompt, then each decoded token."""
        parts = []
        for step, ids in zip(self.steps, self["tokens"], strict=True):
            for b in np.flatnonzero(step.seqs == seq):
                parts.append(ids[step.first_rows[b] : step.first_rows[b + 1]])
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    @property
    def tokens(self) -> np.ndarray:
        """(N,) token ids of sequence 0, in order."""
        return self.sequence_tokens(0)

    @property
    def n_prompt(self) -> int:
        """Tokens in the first forward pass (the prefilled prompt)."""
        return int(self.steps[0].first_rows[-1]) if self.steps else 0

    def pieces(self, seq: int = 0) -> list[str]:
        """The text each token adds ("" for BOS and other special tokens)."""
        tok = self.model.tokenizer
        return [
            tok.token_bytes(int(t)).decode("utf-8", errors="replace")
            for t in self.sequence_tokens(seq)
        ]

    def probs(self, seq: int = 0) -> np.ndarray:
        """(L, H, N, N) float32: [l, h, n, :n+1] is head h of layer l's attention of token n."""
        N, H = len(self.sequence_tokens(seq)), self.model.config.n_heads
        out = np.zeros((len(self.layers), H, N, N), dtype=np.float32)  # (L, H, N, N)
        for li, layer in enumerate(self.layers):
            name = f"layers.{layer}.attn.probs"
            row = 0
            arrays = zip(self[name], self.pass_of[name], self.groups[name], strict=True)
            for p, index, group in arrays:
                step = self.steps[index]
                found = np.flatnonzero(step.seqs[group] == seq)  # its place in the group
                if not len(found):
                    continue
                if p.ndim == 4:  # several sequences: (B, H, T, S), S the longest's
                    b = int(found[0])
                    p = p[b, :, :, : int(step.ends[group[b]])]
                _, T, S = p.shape  # one sequence: (H, T, S), T rows of a prefill or block
                if S - T != row:
                    raise ArgumentError(
                        f"AttentionRecorder saw queries at positions {S - T}..{S - 1} after "
                        f"{row} recorded positions: record from an empty cache"
                    )
                out[li, :, row : row + T, :S] = p
                row += T
        return out


def break_at(model: Model, pattern: str, step: int = 0) -> Callable[[], None]:
    """Stop in the debugger (`breakpoint()`) when the model reaches the points `pattern` names.

    `step` picks the forward pass: 0 = prefill, k = the k-th decode step. Inside pdb, `array`
    is what the hook received and `up` climbs to the model's frames (attention, Model.block,
    Model.decode): see docs/debugging.md. PYTHONBREAKPOINT chooses the debugger (0: none).
    Returns a function that removes the breakpoint.
    """
    if step < 0:
        raise ArgumentError(f"--break-at-step must be >= 0 (0 = prefill), got {step}")
    decode_steps = 0  # decode passes started (of one sequence, or of a whole batch)

    def count_pass(name: str, array: np.ndarray) -> None:
        nonlocal decode_steps
        if model.step.phase == "decode":
            decode_steps += 1

    def stop(name: str, array: np.ndarray) -> None:
        # step 0: every prefill (each prompt of a batch); step k: the k-th decode pass
        if decode_steps == step:
            breakpoint()  # `array` is `name`'s value; `up` goes to the model's frames

    remove_count = model.add_hook("tokens", count_pass)
    remove_stop = model.add_hook(pattern, stop)

    def remove() -> None:
        remove_stop()
        remove_count()

    return remove
