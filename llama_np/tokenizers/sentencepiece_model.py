"""SentencePiece `tokenizer.model` files (Llama 2, TinyLlama, Mistral-style) via the
sentencepiece library.

The file is a protobuf holding every piece with its score and type. Pieces spell spaces as
"▁" (U+2581); `<0xXX>` byte pieces stand for single raw bytes (byte fallback for characters
not in the vocabulary); control pieces such as <s> and </s> stand for no text at all.
SentencePiece prepends a space to the text before encoding (the "dummy prefix"), so "Hello"
encodes as "▁Hello", the same piece as in "say Hello".
"""

from __future__ import annotations

import re
from pathlib import Path

import sentencepiece

from .. import arguments
from ..errors import TokenizerError
from ..validate import check_text
from .llama2c import Llama2cTokenizer, PieceType
from .special import special_token_id

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class SentencePieceTokenizer:
    """Encode and decode with a SentencePiece model."""

    chat_template: str | None = None  # set by load_tokenizer from tokenizer_config.json

    def __init__(self, processor: sentencepiece.SentencePieceProcessor, name: str = "") -> None:
        self.sp = processor
        self.name = name
        self.bos_id = processor.bos_id()
        self.eos_id = processor.eos_id()
        # Llama's models have the dummy prefix; read it from behaviour, not the protobuf
        # options (that needs the protobuf package): is "a" encoded as "▁a"?
        self.adds_dummy_prefix = processor.id_to_piece(processor.encode("a")[0]).startswith("▁")
        # Control pieces (<s>, </s>, ...) by name; they are never produced from plain text.
        self.special_tokens = {
            processor.id_to_piece(i): i
            for i in range(processor.vocab_size())
            if processor.is_control(i)
        }
        self._bytes = [self._piece_bytes(i) for i in range(processor.vocab_size())]
        # Most bytes of normalized text one token covers; None if <unk> can stand for any
        # run of unknown characters (a model without byte pieces), when no such bound holds.
        sp = processor
        text_ids = [
            i
            for i in range(sp.vocab_size())
            if not (sp.is_unused(i) or sp.is_control(i) or sp.is_unknown(i))
        ]
        has_bytes = any(sp.is_byte(i) for i in text_ids)
        self.max_token_bytes = (
            max(len(sp.id_to_piece(i).encode("utf-8")) for i in text_ids) if has_bytes else None
        )
        self._special_bytes = list(self._bytes)  # the same, with control pieces by name
        for name, i in self.special_tokens.items():
            self._special_bytes[i] = name.encode()
        # Text of one special token, for encode(allow_special=True); longest names first
        self._special_re = (
            re.compile("|".join(re.escape(s) for s in sorted(self.special_tokens, key=len)[::-1]))
            if self.special_tokens
            else None
        )
        self._continuation: Llama2cTokenizer | None = None  # made when first needed

    @classmethod
    def from_file(cls, path: str | Path) -> SentencePieceTokenizer:
        path = Path(path)
        processor = sentencepiece.SentencePieceProcessor()
        try:
            processor.load(str(path))
        except (OSError, RuntimeError) as e:
            raise TokenizerError(
                f"{path}: not a SentencePiece model ({e}); a tokenizer.model must be the "
                f"protobuf file that ships with the model (Llama 2, TinyLlama) or Llama 3's "
                f"tiktoken rank file"
            ) from None
        return cls(processor, name=str(path))

    def _piece_bytes(self, i: int) -> bytes:
        sp = self.sp
        if sp.is_control(i):
            return b""
        if sp.is_unknown(i):
            return " \u2047 ".encode()  # how sentencepiece itself shows <unk>
        piece = sp.id_to_piece(i)
        if sp.is_byte(i) and (m := _BYTE_PIECE.fullmatch(piece)):
            return bytes([int(m[1], 16)])
        return piece.replace("▁", " ").encode("utf-8")

    @property
    def vocab_size(self) -> int:
        return self.sp.vocab_size()

    def token_id(self, name: str) -> int:
        """The id of special token `name` (e.g. "</s>")."""
        return special_token_id(self.name, self.special_tokens, name)

    def encode(
        self,
        text: str,
        bos: bool = True,
        eos: bool = False,
        *,
        allow_special: bool = False,
        dummy_prefix: bool = True,
    ) -> list[int]:
        """Text -> token ids.

        With `allow_special`, the text of a control piece ("</s>") becomes that token; by
        default it is ordinary text. `dummy_prefix=False` encodes `text` as a continuation
        (no space is prepended), as chat templates need for text that follows a special token.
        """
        check_text(text)
        arguments.flags(bos=bos, eos=eos, allow_special=allow_special, dummy_prefix=dummy_prefix)
        tokens = [self.bos_id] if bos and self.bos_id >= 0 else []
        if allow_special and self._special_re is not None:
            pos = 0
            for m in self._special_re.finditer(text):
                tokens += self._encode_text(text[pos : m.start()], dummy_prefix and pos == 0)
                tokens.append(self.special_tokens[m[0]])
                pos = m.end()
            tokens += self._encode_text(text[pos:], dummy_prefix and pos == 0)
        else:
            tokens += self._encode_text(text, dummy_prefix)
        if eos and self.eos_id >= 0:
            tokens.append(self.eos_id)
        return tokens

    def min_tokens(self, text: str) -> int:
        """A lower bound on len(encode(text, bos=False)), in linear time: each token covers
        at most max_token_bytes bytes of the normalized text (0 when nothing bounds it)."""
        check_text(text)
        if self.max_token_bytes is None:
            return 0
        return -(-len(self.sp.normalize(text).encode("utf-8")) // self.max_token_bytes)

    def _encode_text(self, text: str, dummy_prefix: bool) -> list[int]:
        if not text:
            return []
        if dummy_prefix or not self.adds_dummy_prefix:
            return self.sp.encode(text)
        # The library always prepends the space. Encoding a marker + text and dropping the
        # marker's pieces (transformers' trick) loses text when the two merge ("<unk>" + "<"
        # gives "><"), so run the same score-ordered BPE on this vocabulary ourselves.
        if self._continuation is None:
            sp = self.sp
            self._continuation = Llama2cTokenizer(
                [sp.id_to_piece(i).replace("\u2581", " ").encode() for i in range(sp.vocab_size())],
                [sp.get_score(i) for i in range(sp.vocab_size())],
                types=piece_types(sp),
                space_symbol=True,
                unk_id=sp.unk_id(),
                name=self.name,
            )
        return self._continuation.encode(text, bos=False, eos=False, dummy_prefix=False)

    def token_bytes(self, token: int, special: bool = False) -> bytes:
        """The bytes token `token` adds to the text: b"" for control tokens, or their name
        with `special`."""
        token = arguments.token_id(token, "token", self.vocab_size)
        table = self._special_bytes if arguments.flag(special, "special") else self._bytes
        return table[token]

    def decode(self, ids: list[int], skip_special: bool = False) -> str:
        """Token ids -> text, control tokens as their names ("<s>") unless `skip_special`.
        The dummy-prefix space is removed from the very start only, so [<s>, ▁Hello] is
        "<s> Hello" (as llama.cpp and Hugging Face's fast tokenizer show it) and "Hello"
        with skip_special."""
        ids = arguments.token_ids(ids, "ids", self.vocab_size, min_len=0).tolist()
        table = self._bytes if arguments.flag(skip_special, "skip_special") else self._special_bytes
        text = b"".join(table[i] for i in ids).decode("utf-8", errors="replace")
        return text[1:] if self.adds_dummy_prefix and text.startswith(" ") else text


def piece_types(sp: sentencepiece.SentencePieceProcessor) -> list[PieceType]:
    """Each piece's type, from the library's is_* queries (what llama.cpp's converter reads)."""
    types = []
    for i in range(sp.vocab_size()):
        if sp.is_unknown(i):
            types.append(PieceType.UNKNOWN)
        elif sp.is_control(i):
            types.append(PieceType.CONTROL)
        elif sp.is_unused(i):
            types.append(PieceType.UNUSED)
        elif sp.is_byte(i):
            types.append(PieceType.BYTE)
        else:
            types.append(PieceType.NORMAL)
    return types
