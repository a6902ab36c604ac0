"""Checkpoint loaders: files on disk -> a ready `Model` (config, weights and tokenizer).

`load(path)` asks each entry of FORMATS, in order, whether `path` is its kind, and the first
that says yes reads it. A format is a module with a detector and a reader, and one entry here:

    Hugging Face   directory with config.json                       hf.py, safetensors.py
    Meta           directory with params.json + consolidated.*.pth  meta.py, pth.py
    GGUF           a .gguf file (or GGUF bytes), or a directory      gguf.py, ../quants.py
                   holding one .gguf
    llama2.c       a .bin file, or a directory holding one          llama2c.py

Every reader returns tensors under Meta's names with (out, in) shapes (schema.py), in their
file dtype; `Model.from_tensors` checks them against the schema and converts them.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .. import arguments
from ..config import LlamaConfig
from ..errors import CheckpointError
from ..limits import check_model_fits
from ..model import Model
from ..packed import check_weights_dtype
from ..tokenizers import Tokenizer, find_tokenizer, load_tokenizer
from ..tokenizers.gguf import load_gguf_tokenizer
from .gguf import gguf_file, is_gguf, load_gguf
from .hf import load_hf, read_hf_config
from .llama2c import llama2c_file, load_llama2c, read_header
from .meta import load_meta

__all__ = [
    "DEFAULT_CHECKPOINT",
    "FORMATS",
    "Checkpoint",
    "CheckpointFormat",
    "checkpoint_tokenizer",
    "load",
    "read_checkpoint",
    "read_config",
]

# The small real model shipped with llama_np (see weights/stories260K/PROVENANCE.md).
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[2] / "weights" / "stories260K"


@dataclass
class Checkpoint:
    """What a format's reader found: the config and tensors, and where a tokenizer may be."""

    config: LlamaConfig
    tensors: Mapping[str, object]  # Meta names -> arrays (or packed tensors) in file dtypes
    directory: Path  # where to look for a tokenizer file
    exclude: Path | None = None  # a file in `directory` that is the checkpoint, not a tokenizer
    tokenizer: Tokenizer | None = None  # one the checkpoint carries itself, if any
    # How the weights are kept in memory unless the caller says: "stored" keeps a GGUF's
    # quantized blocks (memory ≈ file size), "fp32" converts once (fastest).
    weights_dtype: str = "fp32"


@dataclass(frozen=True)
class CheckpointFormat:
    name: str
    detect: Callable[[Path], bool]  # is `path` (an existing file or directory) this format?
    read: Callable[[Path], Checkpoint]
    read_config: Callable[[Path], LlamaConfig]  # the config alone, without the weights


def _read_hf(path: Path) -> Checkpoint:
    config, tensors = load_hf(path)
    return Checkpoint(config, tensors, path)


def _read_meta(path: Path) -> Checkpoint:
    config, tensors = load_meta(path)
    return Checkpoint(config, tensors, path)


def _read_llama2c(path: Path) -> Checkpoint:
    file = llama2c_file(path)
    config, tensors = load_llama2c(file)
    return Checkpoint(config, tensors, file.parent, exclude=file)


def _read_gguf(path: Path) -> Checkpoint:
    file = gguf_file(path)
    config, tensors, metadata, _ = load_gguf(file)
    tokenizer = None
    if "tokenizer.ggml.model" in metadata:  # the vocabulary the file carries
        tokenizer = load_gguf_tokenizer(metadata, config.vocab_size, name=str(file))
    return Checkpoint(config, tensors, file.parent, file, tokenizer, weights_dtype="stored")


FORMATS: list[CheckpointFormat] = [
    CheckpointFormat(
        "Hugging Face",
        lambda p: p.is_dir() and (p / "config.json").exists(),
        _read_hf,
        read_hf_config,
    ),
    CheckpointFormat(
        "Meta",
        lambda p: p.is_dir() and (p / "params.json").exists(),
        _read_meta,
        # Llama 2's params.json has vocab_size -1: the embedding's shape says it. The tensors
        # are memory-mapped, so this reads the pickle but not the weights.
        lambda p: load_meta(p)[0],
    ),
    CheckpointFormat("GGUF", is_gguf, _read_gguf, lambda p: load_gguf(gguf_file(p))[0]),
    # Last: it takes any file, and refuses what is not a llama2.c .bin by name.
    CheckpointFormat(
        "llama2.c",
        lambda p: p.is_file() or p.is_dir(),
        _read_llama2c,
        lambda p: read_header(llama2c_file(p))[1],
    ),
]


def load(
    path: str | Path = DEFAULT_CHECKPOINT,
    tokenizer: str | Path | None = None,
    weights_dtype: str | None = None,
) -> Model:
    """Load a checkpoint and its tokenizer.

    `path` is a Hugging Face model directory (config.json + safetensors), a Meta download
    (params.json + consolidated.*.pth), a GGUF file, or a llama2.c `.bin` file (either alone
    or in a directory). The tokenizer is taken from `tokenizer` if given, else the one the
    checkpoint carries (GGUF), else a file in the checkpoint's directory. `weights_dtype`
    "bf16", "fp16" or "int8" keeps the weight matrices compressed in memory (smaller; see
    packed.py), "stored" keeps them as the file stores them (a GGUF's quantized blocks), "fp32"
    converts them once. The default (None) is "stored" for GGUF files, "fp32" for the others.
    """
    path = arguments.path(path, "path")  # every argument before any reading
    tokenizer = arguments.path(tokenizer, "tokenizer", optional=True)
    if weights_dtype is not None:
        check_weights_dtype(weights_dtype)
    found = read_checkpoint(path)
    config = found.config
    weights_dtype = weights_dtype or found.weights_dtype
    # Kept as stored, the weights take what the file's tensors take.
    stored = sum(t.nbytes for t in found.tensors.values()) if weights_dtype == "stored" else None
    check_model_fits(config, str(path), weights_dtype, stored)
    tok = checkpoint_tokenizer(found, tokenizer)
    progress = _Progress(config.name or path.name)
    try:
        return Model.from_tensors(config, found.tensors, tok, weights_dtype, progress)
    except CheckpointError as error:  # a tensor's values (NaN, ...): name the file too
        raise CheckpointError(f"{path}: {error}") from None


def read_checkpoint(path: str | Path) -> Checkpoint:
    """A checkpoint's config and tensors (memory-mapped, in file dtypes), not yet a Model."""
    path = Path(path)
    return _format_of(path).read(path)


def checkpoint_tokenizer(
    found: Checkpoint, tokenizer: str | Path | None = None
) -> Tokenizer | None:
    """The tokenizer of a checkpoint: `tokenizer` (a path) if given, else the one the
    checkpoint carries, else a tokenizer file in its directory, else None."""
    if tokenizer:
        return load_tokenizer(tokenizer, found.config.vocab_size)
    if found.tokenizer is not None:
        return found.tokenizer
    tokenizer_path = find_tokenizer(found.directory, exclude=found.exclude)
    return load_tokenizer(tokenizer_path, found.config.vocab_size) if tokenizer_path else None


def read_config(path: str | Path) -> LlamaConfig:
    """A checkpoint's config without loading its weights (for calculators and `info`)."""
    path = Path(path)
    return _format_of(path).read_config(path)


def _format_of(path: Path) -> CheckpointFormat:
    if not path.exists():
        raise CheckpointError(
            f"{path}: no such file or directory; pass a checkpoint file or a directory holding one"
        )
    if not (path.is_dir() or path.is_file()):  # a named pipe or a device would block
        raise CheckpointError(
            f"{path}: not a regular file or a directory (a named pipe or a device?); pass a "
            f"checkpoint file or a directory holding one"
        )
    for fmt in FORMATS:
        if fmt.detect(path):
            return fmt
    raise CheckpointError(
        f"{path}: not a file or directory that holds a checkpoint; formats read: "
        f"{', '.join(f.name for f in FORMATS)}"
    )


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
