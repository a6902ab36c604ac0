"""NaN and Inf in the activations: detect them cheaply, then find where they came from.

Checking every activation of every layer would slow the hot path, so generation only checks
the logits, (V,) floats per step. Only when they are not finite is the sequence run again
with hooks on every layer's attention and MLP output, to name the first place where a
non-finite value appeared.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import NumericalError

# Which weights feed each sub-layer, as (LayerWeights field, checkpoint tensors)
_SUBLAYER_WEIGHTS = {
    "attn": [
        ("attn_norm", "attention_norm"),
        ("wqkv", "attention.wq/wk/wv"),
        ("wo", "attention.wo"),
    ],
    "mlp": [
        ("mlp_norm", "ffn_norm"),
        ("w_gate_up", "feed_forward.w1/w3"),
        ("w_down", "feed_forward.w2"),
    ],
}


def check_logits(model, logits: np.ndarray, tokens: Sequence[int]) -> None:
    """Raise NumericalError, naming its origin, if `logits` (of the last of `tokens`) hold
    NaN or Inf."""
    if not np.isfinite(logits).all():
        raise locate_non_finite(model, tokens)


def locate_non_finite(model, tokens: Sequence[int]) -> NumericalError:
    """Run `tokens` again on a fresh cache and return an error naming the first embedding,
    layer or classifier whose output is not finite, and the position where it happened."""
    tokens = list(tokens)
    embedded = model.weights.embedding[tokens]  # (T, D)
    bad_rows = ~np.isfinite(embedded).all(axis=1)
    if bad_rows.any():
        pos = int(np.argmax(bad_rows))
        return NumericalError(
            f"the embedding of token {tokens[pos]} (position {pos}) contains NaN/Inf; the "
            f"checkpoint's tok_embeddings weights are corrupt"
        )

    first: list[tuple[int, str, int]] = []  # (layer, "attn" or "mlp", position)

    def watch(name: str, out: np.ndarray) -> None:
        rows = ~np.isfinite(out).all(axis=1)  # out: (T, D)
        if rows.any() and not first:
            layer, part = name.split(".")[1:3]
            first.append((int(layer), part, int(np.argmax(rows))))

    removers = [
        model.add_hook(f"layers.{i}.{part}.out", watch)
        for i in range(model.config.n_layers)
        for part in ("attn", "mlp")
    ]
    try:
        with np.errstate(all="ignore"):
            model.prefill(tokens, model.new_cache(len(tokens)))
    finally:
        for remove in removers:
            remove()

    if not first:
        return NumericalError(
            f"the logits after {len(tokens)} tokens contain NaN/Inf, but every layer's output "
            f"is finite: the final norm or classifier (output.weight) overflowed or is corrupt"
        )
    layer, part, pos = first[0]
    where = "attention" if part == "attn" else "MLP"
    weights = model.weights.layers[layer]
    corrupt = [
        tensor
        for field, tensor in _SUBLAYER_WEIGHTS[part]
        if not np.isfinite(getattr(weights, field)).all()
    ]
    if corrupt:
        cause = (
            f"its weights contain NaN/Inf (layers.{layer}.{', '.join(corrupt)}): the "
            f"checkpoint is corrupt"
        )
    else:
        cause = (
            "its weights are finite, so the values overflowed float32: the checkpoint's "
            "weights may be corrupt or not in the scale this model expects"
        )
    return NumericalError(f"layer {layer} ({where}) produced NaN/Inf at position {pos}; {cause}")
