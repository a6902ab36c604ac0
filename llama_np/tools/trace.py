"""`llama-np trace`: record the attention of a generation and draw it.

trace = trace_attention(model, "Once upon a time", 16, temperature=0)
trace.probs        # (L, H, N, N) attention of every token (prompt, then generated)
save_npz(trace, "out/attention.npz")
plot_attention(trace, layer=0, head=3, path="out/layer0_head3.png")   # needs matplotlib

In the pictures, row n is token n's attention over tokens 0..n. The prompt's rows come from
one prefill pass, each generated token's row from one decode step that read the KV cache;
each in its phase's colour (colors.PHASE_COLORS: prefill blue, decode orange), on a scale
from white (probability 0) to that colour (1), as the explorer page draws them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ArgumentError
from ..generate import generate
from ..hooks import AttentionRecorder
from ..model import Model
from .atomic import atomic_path
from .colors import phase_cmap


@dataclass
class AttentionTrace:
    """Attention probabilities of one generation, for some layers, all heads."""

    probs: np.ndarray  # (L', H, N, N) float32, L' = len(layers)
    tokens: np.ndarray  # (N,) prompt tokens, then generated ones
    pieces: list[str]  # text of each token ("" for BOS)
    n_prompt: int  # rows 0..n_prompt-1 come from prefill, the rest from decode steps
    layers: list[int]  # model layer of each entry of probs' first axis
    bos_id: int
    interrupted: bool = False  # Ctrl-C stopped the generation: the trace holds what ran


def trace_attention(
    model: Model,
    prompt: str | Sequence[int],
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    seed: int | None = None,
    layers: Sequence[int] | None = None,
) -> AttentionTrace:
    """Generate up to `max_new_tokens` after `prompt` (greedy by default), recording attention.

    Every generated token is run through the model too, so each has its own row. Ctrl-C
    ends the generation, not the trace: what ran so far is returned, with `interrupted` set
    (a pass stopped midway leaves zero rows in the layers it had not reached).
    """
    interrupted = False
    with AttentionRecorder(model, layers) as rec:
        # generate() samples its last token without running it; asking for one more token
        # runs each of the first max_new_tokens through decode, giving each its row.
        pieces = generate(model, prompt, max_new_tokens + 1, temperature=temperature, seed=seed)
        try:
            for _ in pieces:
                pass
        except KeyboardInterrupt:
            interrupted = True
    return AttentionTrace(
        rec.probs(),
        rec.tokens,
        rec.pieces(),
        rec.n_prompt,
        rec.layers,
        model.config.bos_id,
        interrupted,
    )


_NUMBER = re.compile(r"[0-9]+")


def parse_indices(text: str | None, n: int, flag: str) -> list[int]:
    """'0,2' / '0-3' / '1,4-6' / 'all' (or None) -> sorted indices, each in 0..n-1."""
    if text is None or text == "all":
        return list(range(n))
    indices: set[int] = set()
    for part in text.split(","):
        lo, dash, hi = part.partition("-")
        if not (_NUMBER.fullmatch(lo) and (_NUMBER.fullmatch(hi) or not dash)):
            raise ArgumentError(f"{flag} {text!r}: expected indices like 0,2 or 0-3 or all")
        # Checked before the range is built: "0-1000000000000" must not make a set of 10**12.
        first, last = (int(x) if len(x) <= 9 else n for x in (lo, hi if dash else lo))
        if not first <= last < n:
            raise ArgumentError(f"{flag} {text!r}: indices must be in 0..{n - 1}, got {part!r}")
        indices.update(range(first, last + 1))
    return sorted(indices)


def save_npz(trace: AttentionTrace, path: str | Path, heads: Sequence[int] | None = None) -> Path:
    """Write probs (L', H', N, N), tokens, pieces, n_prompt, layers and heads to `path`."""
    heads = list(range(trace.probs.shape[1])) if heads is None else list(heads)
    path = Path(path)
    with atomic_path(path) as tmp:  # two runs into one --out cannot mix their arrays
        np.savez_compressed(
            tmp,
            probs=trace.probs[:, heads],
            tokens=trace.tokens,
            pieces=np.array(trace.pieces, dtype=str),
            n_prompt=trace.n_prompt,
            layers=np.array(trace.layers),
            heads=np.array(heads),
        )
    return path


def token_labels(trace: AttentionTrace) -> list[str]:
    """Axis labels: each token's text with its position, specials and whitespace made visible."""
    labels = []
    for n, (token, piece) in enumerate(zip(trace.tokens, trace.pieces, strict=True)):
        if not piece:
            piece = "<s>" if token == trace.bos_id else f"<{token}>"
        labels.append(piece.replace("\n", "\\n").replace(" ", "·") + f" {n}")
    return labels


def plot_layer(trace: AttentionTrace, layer: int, heads: Sequence[int], path: str | Path) -> Path:
    """All `heads` of model layer `layer` in one PNG, a small heatmap each; needs matplotlib."""
    path = Path(path)
    with atomic_path(path) as tmp:
        layer_figure(trace, layer, heads).savefig(tmp, dpi=110)
    return path


def layer_figure(trace: AttentionTrace, layer: int, heads: Sequence[int]):
    """The figure of `plot_layer`: prefill rows in the prefill colour, decode rows in the
    decode colour (attention probability, square-root scaled so that small weights stay
    visible)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import PowerNorm
    from matplotlib.figure import Figure

    li = trace.layers.index(layer)
    N, P = trace.probs.shape[2], trace.n_prompt
    rows = np.arange(N)[:, None]  # (N, 1)
    future = np.arange(N)[None, :] > rows  # (N, N) the causal mask
    norm = PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0)
    cols = min(4, len(heads))
    nrows = -(-len(heads) // cols)
    cell = 1.2 + 0.1 * N
    fig = Figure(figsize=(cols * cell + 1.6, nrows * cell + 1.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, cols, squeeze=False)
    labels = token_labels(trace)
    for ax in axes.flat[len(heads) :]:
        ax.set_axis_off()
    for ax, head in zip(axes.flat, heads, strict=False):
        probs = trace.probs[li, head]  # (N, N)
        ax.set_facecolor("#eeeeee")
        ax.imshow(np.ma.masked_where(future | (rows >= P), probs), cmap=phase_cmap("prefill"),
                  norm=norm)  # fmt: skip
        ax.imshow(np.ma.masked_where(future | (rows < P), probs), cmap=phase_cmap("decode"),
                  norm=norm)  # fmt: skip
        if P < N:
            ax.axhline(P - 0.5, color="black", linewidth=0.8)
        ax.set_title(f"head {head}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[:, 0]:  # query labels once per row of heads, on the left
        if ax.has_data() and N <= 40:
            ax.set_yticks(range(N), labels, fontsize=7)
    for ax in axes[-1]:  # key labels once per column of heads, at the bottom
        if ax.has_data() and N <= 40:
            ax.set_xticks(range(N), labels, fontsize=7, rotation=90)
    fig.suptitle(
        f"layer {layer}: attention of every head (rows: queries, prefill blue above the line, "
        "decode orange below; columns: keys)",
        fontsize=10,
    )
    for phase in ("decode", "prefill"):
        fig.colorbar(
            ScalarMappable(norm=norm, cmap=phase_cmap(phase)), ax=axes, shrink=0.6,
            label=f"attention probability, {phase} rows (sqrt scale)",
        )  # fmt: skip
    return fig


def plot_attention(trace: AttentionTrace, layer: int, head: int, path: str | Path) -> Path:
    """Draw head `head` of model layer `layer` as a heatmap PNG; needs matplotlib."""
    path = Path(path)
    with atomic_path(path) as tmp:
        attention_figure(trace, layer, head).savefig(tmp, dpi=110)
    return path


def attention_figure(trace: AttentionTrace, layer: int, head: int):
    """The figure of `plot_attention`: prefill rows in the prefill colour, decode rows in the
    decode colour, a line between them; the empty upper triangle is the causal mask."""
    # matplotlib is optional (pip install -e '.[plot]'); Figure + Agg canvas draws without
    # pyplot, so the user's interactive backend is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import PowerNorm
    from matplotlib.figure import Figure

    probs = trace.probs[trace.layers.index(layer), head]  # (N, N)
    N, P = probs.shape[0], trace.n_prompt
    rows = np.arange(N)[:, None]  # (N, 1)
    future = np.arange(N)[None, :] > rows  # (N, N) the causal mask
    norm = PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0)  # sqrt scale: small weights stay visible

    size = 2.5 + 0.22 * N
    fig = Figure(figsize=(size + 1.8, size), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_facecolor("#eeeeee")
    prefill = ax.imshow(
        np.ma.masked_where(future | (rows >= P), probs), cmap=phase_cmap("prefill"), norm=norm
    )
    decode = ax.imshow(
        np.ma.masked_where(future | (rows < P), probs), cmap=phase_cmap("decode"), norm=norm
    )
    if P < N:
        ax.axhline(P - 0.5, color="black", linewidth=1.2)
        ax.text(N - 0.5, P - 0.4, "decode: one row per step ", ha="right", va="top", fontsize=8)
    ax.text(N - 0.5, -0.4, f"prefill: {P}×{P} block in one pass ", ha="right", va="top", fontsize=8)

    labels = token_labels(trace)
    ax.set_xticks(range(N), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(N), labels, fontsize=7)
    ax.set_xlabel("attended-to token (key)")
    ax.set_ylabel("token (query)")
    ax.set_title(f"layer {layer}, head {head}: attention probabilities", fontsize=10)
    if P < N:  # constrained layout puts the colorbar added last nearest the plot
        fig.colorbar(decode, ax=ax, shrink=0.8, label="attention probability, decode rows")
    fig.colorbar(prefill, ax=ax, shrink=0.8, label="attention probability, prefill rows")
    return fig
