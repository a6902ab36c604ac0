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
from .packed import all_finite
from .schema import layer_specs
from .weights import LAYER_FIELDS


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
    # The weights of that sub-layer (schema.py says which tensors belong to it).
    specs = {s.name.split(".", 2)[2]: s for s in layer_specs(model.config, layer)}
    weights = model.weights.layers[layer]
    corrupt = [
        ", ".join(f"layers.{layer}.{n}" for n in names)
        for field, names in LAYER_FIELDS.items()
        if specs[names[0]].sublayer == part
        and getattr(weights, field) is not None
        and not all_finite(getattr(weights, field))
    ]
    if corrupt:
        cause = (
            f"its weights contain NaN/Inf (one of {'; '.join(corrupt)}): the checkpoint is corrupt"
        )
    else:
        cause = (
            "its weights are finite, so the values overflowed float32: the checkpoint's "
            "weights may be corrupt or not in the scale this model expects"
        )
        if model.hooks:  # the first suspect when a hook is registered
            cause += f" (or a hook changed them: {', '.join(sorted(model.hooks))})"
    return NumericalError(f"layer {layer} ({where}) produced NaN/Inf at position {pos}; {cause}")
