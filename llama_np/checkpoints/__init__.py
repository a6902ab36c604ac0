"""Checkpoint loaders: files on disk -> a ready `Model` (config, weights and tokenizer).

Formats, by what `load(path)` finds:
    directory with config.json                    Hugging Face (hf.py, safetensors.py)
    directory with params.json + consolidated.*.pth   Meta's original download (meta.py, pth.py)
    a .gguf file, or a directory holding one      GGUF, llama.cpp's format (gguf.py)
    a .bin file, or a directory holding one       llama2.c (llama2c.py)
Every loader returns tensors under Meta's names (see model.tensor_names), in their file dtype;
`Model.from_tensors` converts them to float32 one at a time.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..config import LlamaConfig
from ..errors import CheckpointError
from ..limits import check_model_fits
from ..model import Model
from ..packed import check_weights_dtype
from ..tokenizers import find_tokenizer, load_tokenizer
from .gguf import gguf_file, is_gguf, load_gguf, stored_bytes
from .hf import load_hf, read_hf_config
from .llama2c import load_llama2c, read_header
from .meta import load_meta

__all__ = ["DEFAULT_CHECKPOINT", "load", "read_config"]

# The small real model shipped with llama_np (see weights/stories260K/PROVENANCE.md).
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[2] / "weights" / "stories260K"


def load(
    path: str | Path = DEFAULT_CHECKPOINT,
    tokenizer: str | Path | None = None,
    weights_dtype: str | None = None,
) -> Model:
    """Load a checkpoint and its tokenizer.

    `path` is a Hugging Face model directory (config.json + safetensors), a Meta download
    (params.json + consolidated.*.pth), a GGUF file, or a llama2.c `.bin` file (either alone
    or in a directory). The tokenizer is taken from `tokenizer` if given, else from the
    checkpoint's directory. `weights_dtype` "bf16", "fp16" or "int8" keeps the weight matrices
    compressed in memory (smaller, slower: see packed.py), "stored" keeps them as the file
    stores them (a GGUF's quantized blocks), "fp32" converts them once. The default (None) is
    "stored" for GGUF files and "fp32" for the others.
    """
    if weights_dtype is not None:
        check_weights_dtype(weights_dtype)  # before any reading
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"{path}: no such file or directory; pass a checkpoint file or a directory holding one"
        )
    weights_nbytes = None  # known only for a GGUF kept as stored
    if path.is_dir() and (path / "config.json").exists():
        config, tensors = load_hf(path)
        directory, exclude = path, None
    elif path.is_dir() and (path / "params.json").exists():
        config, tensors = load_meta(path)
        directory, exclude = path, None
    elif is_gguf(path):
        path = gguf_file(path)
        config, tensors, _metadata, _ = load_gguf(path)
        directory, exclude = path.parent, path
        weights_dtype = weights_dtype or "stored"
        if weights_dtype == "stored":
            weights_nbytes = stored_bytes(tensors)
        # The tokenizer stored in the GGUF (_metadata's tokenizer.ggml.* keys) is read by
        # tokenizers/gguf.py when it lands; until then a tokenizer file beside the GGUF is used.
    else:
        path = _llama2c_file(path)
        config, tensors = load_llama2c(path)
        directory, exclude = path.parent, path
    weights_dtype = weights_dtype or "fp32"
    check_model_fits(config, str(path), weights_dtype, weights_nbytes)
    tokenizer_path = Path(tokenizer) if tokenizer else find_tokenizer(directory, exclude=exclude)
    tok = load_tokenizer(tokenizer_path, config.vocab_size) if tokenizer_path else None
    progress = _Progress(config.name or path.name)
    return Model.from_tensors(config, tensors, tok, weights_dtype, progress)


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
    if is_gguf(path):
        return load_gguf(gguf_file(path))[0]  # memory-mapped: reads the header only
    return read_header(_llama2c_file(path))[1]


def _llama2c_file(path: Path) -> Path:
    if path.is_dir():
        bins = [p for p in sorted(path.glob("*.bin")) if not p.name.startswith("tok")]
        if len(bins) != 1:
            found = ", ".join(p.name for p in bins) or "none"
            raise CheckpointError(
                f"{path}: not a checkpoint directory: looked for config.json (Hugging Face), "
                f"params.json + consolidated.*.pth (Meta), exactly one .gguf or exactly one "
                f"llama2.c .bin (not tok*.bin); found .bin files: {found}"
            )
        path = bins[0]
    if path.suffix != ".bin":
        raise CheckpointError(
            f"{path}: unknown checkpoint format {path.suffix or '(no suffix)'!r}: expected a "
            f"GGUF file (.gguf), a llama2.c .bin file, or a directory "
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
