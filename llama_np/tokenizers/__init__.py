"""Tokenizers: text <-> token ids. Every tokenizer has the interface of `Tokenizer` below,
and encode(..., allow_special=False): special-token text becomes the special token only when
allowed, so text a user types never does. load_tokenizer also sets chat_template_source (where
the chat template came from: chat_template.jinja or tokenizer_config.json) and template_tokens
(the special-token strings of tokenizer_config.json, which a chat template is rendered with).

Kinds: llama2.c tokenizer.bin, SentencePiece tokenizer.model (Llama 2, TinyLlama), tiktoken
tokenizer.model (Llama 3), byte-level BPE tokenizer.json (Llama 3 HF repos, SmolLM), and GGUF
tokenizer metadata (gguf.py: load_gguf_tokenizer, and gguf_tokenizer_metadata to write one).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol

from .. import arguments
from ..errors import TokenizerError
from ..validate import regular_file
from .gguf import gguf_tokenizer_metadata, load_gguf_tokenizer
from .hf_json import load_hf_json, read_chat_template, read_template_tokens
from .llama2c import Llama2cTokenizer
from .sentencepiece_model import SentencePieceTokenizer
from .tiktoken_bpe import TiktokenTokenizer

__all__ = [
    "Llama2cTokenizer",
    "SentencePieceTokenizer",
    "TiktokenTokenizer",
    "Tokenizer",
    "find_tokenizer",
    "gguf_tokenizer_metadata",
    "load_gguf_tokenizer",
    "load_tokenizer",
]


class Tokenizer(Protocol):
    """What every tokenizer provides (the generation loop, chat and tools rely on these).

    Each method checks its arguments first (llama_np/arguments.py): text must be a str,
    flags True or False, ids integers (NumPy's too) in 0..vocab_size-1; ArgumentError names
    the one that is not."""

    vocab_size: int  # ids 0 .. vocab_size - 1
    bos_id: int | None
    eos_id: int | None
    adds_dummy_prefix: bool  # SentencePiece-style: a space is put before the text
    chat_template: str | None  # the checkpoint's (or GGUF file's) Jinja chat template, if any
    special_tokens: dict[str, int]  # name -> id: control tokens (<s>, <|eot_id|>, ...)
    max_token_bytes: int | None  # most bytes of text one token covers (None: no bound)

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]: ...

    def min_tokens(self, text: str) -> int:
        """A lower bound on len(encode(text, bos=False)), in linear time and without
        tokenizing (0 when nothing bounds it): generation refuses, or cuts, a prompt that
        cannot fit before it tokenizes it."""
        ...

    def decode(self, ids: list[int], skip_special: bool = False) -> str:
        """The text of `ids`, special tokens shown by name unless skip_special."""
        ...

    def token_bytes(self, token: int, special: bool = False) -> bytes:
        """The raw bytes one token adds to the text (for streaming): b"" for a special token,
        or its name with `special`."""
        ...


# Looked for in a checkpoint directory, in this order.
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer.bin")

_TIKTOKEN_LINE = re.compile(rb"[A-Za-z0-9+/]+=* \d+\r?\n")


def load_tokenizer(path: str | Path, vocab_size: int | None = None):
    """Load the tokenizer at `path` (a file, or a directory holding one).

    The kind is recognised from the name and content: llama2.c `.bin`, `tokenizer.json`, and
    `tokenizer.model` as SentencePiece (a protobuf) or tiktoken ranks (base64 text). With
    `vocab_size`, a tokenizer with more tokens than the model's embedding has rows is refused
    (it belongs to another model); llama2.c vocabularies must match exactly.
    """
    path = arguments.path(path, "path")
    vocab_size = arguments.integer(vocab_size, "vocab_size", 1, optional=True)
    if path.is_dir():
        found = find_tokenizer(path)
        if found is None:
            raise TokenizerError(
                f"{path}: no tokenizer file found (expected one of {', '.join(TOKENIZER_FILES)} "
                f"or tok*.bin); pass --tokenizer / tokenizer= with its path"
            )
        path = found
    if not path.exists():
        raise TokenizerError(f"{path}: tokenizer file does not exist")
    regular_file(path, TokenizerError, "tokenizer file")  # a named pipe would block
    if path.suffix == ".bin":
        return Llama2cTokenizer.from_file(path, vocab_size)
    if path.suffix == ".json":
        tokenizer = load_hf_json(path)
    else:
        with open(path, "rb") as f:
            head = f.read(256)
        if _TIKTOKEN_LINE.match(head):
            tokenizer = TiktokenTokenizer.from_file(path)
        elif head[:1] == b"\x0a":  # protobuf field 1 (the pieces), length-delimited
            tokenizer = SentencePieceTokenizer.from_file(path)
        else:
            raise TokenizerError(
                f"{path}: unknown tokenizer format: neither a SentencePiece model (protobuf) "
                f"nor tiktoken ranks (`base64 rank` lines); expected a tokenizer.model, "
                f"tokenizer.json or llama2.c tokenizer.bin"
            )
    if vocab_size is not None and tokenizer.vocab_size > vocab_size:
        raise TokenizerError(
            f"{path}: the tokenizer has {tokenizer.vocab_size} tokens but the model only "
            f"{vocab_size}; it belongs to another model: use the tokenizer the model was "
            f"trained with"
        )
    # The checkpoint's chat template and the special-token strings it is rendered with.
    tokenizer.chat_template, tokenizer.chat_template_source = read_chat_template(path.parent)
    tokenizer.template_tokens = read_template_tokens(path.parent)
    return tokenizer


def find_tokenizer(directory: Path, exclude: Path | None = None) -> Path | None:
    """The tokenizer file in `directory`, if there is one."""
    directory = Path(directory)
    for name in TOKENIZER_FILES:
        if (directory / name).is_file() and directory / name != exclude:
            return directory / name
    candidates = sorted(p for p in directory.glob("tok*.bin") if p.is_file() and p != exclude)
    return candidates[0] if candidates else None
