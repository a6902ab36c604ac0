"""Checkpoint loaders: files on disk -> a ready `Model` (config, weights and tokenizer).

Formats, by what `load(path)` finds:
    directory with config.json                    Hugging Face (hf.py, safetensors.py)
    directory with params.json + consolidated.*.pth   Meta's original download (meta.py, pth.py)
    a .bin file, or a directory holding one       llama2.c (llama2c.py)
Every loader returns tensors under Meta's names (see model.tensor_names), in their file dtype;
`Model.from_tensors` converts them to float32 one at a time.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import LlamaConfig
from ..errors import CheckpointError
from ..limits import check_model_fits
from ..model import Model
from ..packed import check_weights_dtype
from ..tokenizers import find_tokenizer, load_tokenizer
from .hf import load_hf, read_hf_config
from .llama2c import load_llama2c, read_header
from .meta import load_meta

__all__ = ["DEFAULT_CHECKPOINT", "Checkpoint", "load", "open_checkpoint", "read_config"]

# The small real model shipped with llama_np (see weights/stories260K/PROVENANCE.md).
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[2] / "weights" / "stories260K"


@dataclass
class Checkpoint:
    """A checkpoint opened but not yet built into a Model: what loaders and exporters share."""

    path: Path  # the checkpoint file, or its directory
    directory: Path  # where its side files (tokenizer, tokenizer_config.json, ...) live
    config: LlamaConfig
    tensors: dict[str, np.ndarray]  # by Meta name, (out, in), file dtype, memory-mapped
    tokenizer: object | None  # a tokenizer (see tokenizers/), or None when there is none
    tokenizer_path: Path | None  # the file it was read from


def open_checkpoint(path: str | Path, tokenizer: str | Path | None = None) -> Checkpoint:
    """Find a checkpoint's format, config, tensors (memory-mapped) and tokenizer.

    `path` and `tokenizer` as for `load`; nothing is converted to float32 yet.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"{path}: no such file or directory; pass a checkpoint file or a directory holding one"
        )
    if path.is_dir() and (path / "config.json").exists():
        config, tensors = load_hf(path)
        directory, exclude = path, None
    elif path.is_dir() and (path / "params.json").exists():
        config, tensors = load_meta(path)
        directory, exclude = path, None
    else:
        path = _llama2c_file(path)
        config, tensors = load_llama2c(path)
        directory, exclude = path.parent, path
    tokenizer_path = Path(tokenizer) if tokenizer else find_tokenizer(directory, exclude=exclude)
    tok = load_tokenizer(tokenizer_path, config.vocab_size) if tokenizer_path else None
    return Checkpoint(path, directory, config, tensors, tok, tokenizer_path)


def load(
    path: str | Path = DEFAULT_CHECKPOINT,
    tokenizer: str | Path | None = None,
    weights_dtype: str = "fp32",
) -> Model:
    """Load a checkpoint and its tokenizer.

    `path` is a Hugging Face model directory (config.json + safetensors), a Meta download
    (params.json + consolidated.*.pth), or a llama2.c `.bin` file or a directory holding one.
    The tokenizer is taken from `tokenizer` if given, else from the checkpoint's directory.
    `weights_dtype` "bf16", "fp16" or "int8" keeps the weight matrices compressed in memory
    (smaller, slower: see weight_formats.py); the default "fp32" converts them once.
    """
    check_weights_dtype(weights_dtype)  # before any reading
    ckpt = open_checkpoint(path, tokenizer)
    check_model_fits(ckpt.config, str(ckpt.path), weights_dtype)
    progress = _Progress(ckpt.config.name or ckpt.path.name)
    return Model.from_tensors(ckpt.config, ckpt.tensors, ckpt.tokenizer, weights_dtype, progress)


def read_config(path: str | Path) -> LlamaConfig:
    """A checkpoint's config without loading its weights (for calculators and `info`)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_dir() and (path / "config.json").exists():
        return read_hf_config(path)
    if path.is_dir() and (path / "params.json").exists():
        # Llama 2's params.json has vocab_size -1: the embedding's shape says it. The tensors
        # are memory-mapped, so this reads the pickle but not the weights.
        return load_meta(path)[0]
    return read_header(_llama2c_file(path))[1]


def _llama2c_file(path: Path) -> Path:
    if path.is_dir():
        bins = [p for p in sorted(path.glob("*.bin")) if not p.name.startswith("tok")]
        if len(bins) != 1:
            found = ", ".join(p.name for p in bins) or "none"
            raise CheckpointError(
                f"{path}: not a checkpoint directory: looked for config.json (Hugging Face), "
                f"params.json + consolidated.*.pth (Meta) or exactly one llama2.c .bin "
                f"(not tok*.bin); found .bin files: {found}"
            )
        path = bins[0]
    if path.suffix == ".gguf":
        raise CheckpointError(
            f"{path}: GGUF (llama.cpp's format) is not supported; use the model's original "
            f"checkpoint (a Hugging Face directory, a Meta download or a llama2.c .bin)"
        )
    if path.suffix != ".bin":
        raise CheckpointError(
            f"{path}: unknown checkpoint format {path.suffix or '(no suffix)'!r}: expected a "
            f"llama2.c .bin file, or a directory "
            f"with config.json (Hugging Face) or params.json + consolidated.*.pth (Meta)"
        )
    return path


class _Progress:
    """Prints "loading NAME: i/N tensors" on stderr, but only once loading has taken over 1 s."""

    def __init__(self, name: str) -> None:
        self.name, self.start = name, time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        if time.perf_counter() - self.start < 1.0:
            return
        end = "\n" if done == total else ""
        print(
            f"\rloading {self.name}: {done}/{total} tensors", end=end, file=sys.stderr, flush=True
        )
