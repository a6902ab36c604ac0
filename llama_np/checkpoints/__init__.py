"""Checkpoint loaders: files on disk -> a ready `Model` (config, weights and tokenizer)."""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError
from ..model import Model
from ..tokenizers import find_tokenizer, load_tokenizer
from .llama2c import load_llama2c

__all__ = ["DEFAULT_CHECKPOINT", "load"]

# The small real model shipped with llama_np (see weights/stories260K/PROVENANCE.md).
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[2] / "weights" / "stories260K"


def load(
    path: str | Path = DEFAULT_CHECKPOINT,
    tokenizer: str | Path | None = None,
    weights_dtype: str = "fp32",
) -> Model:
    """Load a checkpoint and its tokenizer.

    `path` is a llama2.c `.bin` file, or a directory holding one. The tokenizer is taken from
    `tokenizer` if given, else from a `tok*.bin` file next to the checkpoint. `weights_dtype`
    "bf16", "fp16" or "int8" keeps the weight matrices compressed in memory (slower, smaller).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_dir():
        bins = [p for p in sorted(path.glob("*.bin")) if not p.name.startswith("tok")]
        if len(bins) != 1:
            found = ", ".join(p.name for p in bins) or "none"
            raise CheckpointError(
                f"{path}: expected exactly one llama2.c checkpoint (.bin, not tok*.bin) in the "
                f"directory, found {found}; pass the file itself"
            )
        path = bins[0]
    if path.suffix != ".bin":
        raise CheckpointError(f"{path}: unknown checkpoint format (expected a llama2.c .bin)")
    config, tensors = load_llama2c(path)
    tokenizer_path = Path(tokenizer) if tokenizer else find_tokenizer(path.parent, exclude=path)
    tok = load_tokenizer(tokenizer_path, config.vocab_size) if tokenizer_path else None
    return Model.from_tensors(config, tensors, tok, weights_dtype)
