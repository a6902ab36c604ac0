"""Tokenizers: text <-> token ids. Every tokenizer has the same small interface:

encode(text, bos=True, eos=False) -> list[int]
decode(ids) -> str
token_bytes(id) -> bytes      the raw bytes one token adds (for streaming)
vocab_size, bos_id, eos_id, adds_dummy_prefix
"""

from __future__ import annotations

from pathlib import Path

from ..errors import TokenizerError
from .llama2c import Llama2cTokenizer

__all__ = ["Llama2cTokenizer", "find_tokenizer", "load_tokenizer"]


def load_tokenizer(path: str | Path, vocab_size: int | None = None):
    """Load the tokenizer at `path` (a file, or a directory holding one).

    Supported: llama2.c `tokenizer.bin` files. With `vocab_size`, a tokenizer whose vocabulary
    has a different size is refused (it belongs to another model).
    """
    path = Path(path)
    if path.is_dir():
        found = find_tokenizer(path)
        if found is None:
            raise TokenizerError(
                f"{path}: no tokenizer file found (expected tokenizer.bin or tok*.bin)"
            )
        path = found
    if not path.exists():
        raise TokenizerError(f"{path}: tokenizer file does not exist")
    if path.suffix == ".bin":
        return Llama2cTokenizer.from_file(path, vocab_size)
    raise TokenizerError(
        f"{path}: unknown tokenizer format {path.suffix or '(no suffix)'!r}; expected a llama2.c "
        f"tokenizer .bin"
    )


def find_tokenizer(directory: Path, exclude: Path | None = None) -> Path | None:
    """The tokenizer file in `directory`, if there is one."""
    candidates = sorted(p for p in directory.glob("tok*.bin") if p.is_file() and p != exclude)
    return candidates[0] if candidates else None
