"""llama2.c's `tokenizer.bin`, and any SentencePiece-style vocabulary given as pieces + scores.

File format: int32 max_token_length, then for each token: float32 score, int32 byte length,
the piece's bytes. Encoding follows llama2.c's run.c (and SentencePiece's BPE, which llama.cpp
also follows): a leading "dummy prefix" space, one piece per UTF-8 character (or `<0xXX>` byte
pieces for characters not in the vocabulary), then repeatedly merge the adjacent pair whose
merged piece has the highest score (the leftmost on ties).

GGUF files of `tokenizer.ggml.model = llama` (Llama 2, TinyLlama) hold exactly such a
vocabulary plus a type per piece; tokenizers/gguf.py builds this class from them.
"""

from __future__ import annotations

import heapq
import re
import struct
from collections.abc import Sequence
from enum import IntEnum
from pathlib import Path

from .. import arguments
from ..errors import TokenizerError
from ..validate import check_text
from .special import special_token_id

_BYTE_PIECE = re.compile(rb"<0x([0-9A-Fa-f]{2})>")


class PieceType(IntEnum):
    """SentencePiece's piece types; GGUF's `tokenizer.ggml.token_type` uses the same numbers."""

    NORMAL = 1  # text, and the only kind merges produce
    UNKNOWN = 2  # <unk>
    CONTROL = 3  # <s>, </s>, <|eot_id|>: no text of their own
    USER_DEFINED = 4  # added tokens that are text: always matched, decoded as their text
    UNUSED = 5  # padding rows
    BYTE = 6  # <0x00> .. <0xFF>: byte fallback


SPECIAL_TYPES = (PieceType.CONTROL, PieceType.USER_DEFINED)
UNKNOWN_TEXT = " \u2047 ".encode()  # how sentencepiece shows <unk>


def _alternatives(names) -> re.Pattern | None:
    """A regex matching any of `names`, the longest first (None for no names)."""
    names = sorted(names, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, names))) if names else None


def llama2c_piece_types(pieces: Sequence[bytes]) -> list[PieceType]:
    """The layout of a llama2.c vocabulary: <unk>, <s>, </s>, then 256 byte pieces, then text."""
    types = []
    for i, piece in enumerate(pieces):
        if i == 0:
            types.append(PieceType.UNKNOWN)
        elif i < 3:
            types.append(PieceType.CONTROL)
        elif _BYTE_PIECE.fullmatch(piece):
            types.append(PieceType.BYTE)
        else:
            types.append(PieceType.NORMAL)
    return types


class Llama2cTokenizer:
    """Encode text to token ids and back with a scored vocabulary (llama2.c, GGUF `llama`).

    `types` gives each piece's PieceType (default: llama2.c's layout). Control pieces are
    special tokens: never produced from plain text, encoded from their text only with
    allow_special. User-defined pieces (added tokens that are text) are always matched in
    text and decode as their text, as sentencepiece and llama.cpp treat them.
    `add_bos` / `add_eos` say what encode(bos=True) / encode(eos=None) add;
    `adds_dummy_prefix=False` turns off the leading space; `space_symbol` makes "\u2581" in
    text a space, as the sentencepiece library reads it.
    """

    chat_template: str | None = None

    def __init__(
        self,
        pieces: list[bytes],
        scores: Sequence[float],
        bos_id: int | None = 1,
        eos_id: int | None = 2,
        *,
        types: Sequence[int] | None = None,
        add_bos: bool = True,
        add_eos: bool = False,
        adds_dummy_prefix: bool = True,
        space_symbol: bool = False,
        unk_id: int | None = 0,
        name: str = "",
    ):
        if len(pieces) != len(scores):
            raise TokenizerError(f"{name}: {len(pieces)} pieces but {len(scores)} scores")
        self.pieces = pieces
        self.scores = [float(s) for s in scores]
        self.types = [PieceType(t) for t in types] if types is not None else None
        types = self.types or llama2c_piece_types(pieces)
        self.bos_id, self.eos_id, self.unk_id = bos_id, eos_id, unk_id
        self.add_bos, self.add_eos = add_bos, add_eos
        self.adds_dummy_prefix, self.space_symbol = adds_dummy_prefix, space_symbol
        self.name = name
        # First id of each text piece: a dict lookup per merge candidate, never list.index.
        # Only NORMAL pieces are looked up, so plain text never becomes a special token.
        self._ids: dict[bytes, int] = {}
        self._byte_ids: dict[int, int] = {}  # byte value -> id of its <0xXX> piece
        self.special_tokens: dict[str, int] = {}
        self.text_tokens: set[str] = set()  # user-defined pieces (in special_tokens too)
        # What each token contributes to decoded text, without and with special tokens.
        self._bytes: list[bytes] = []
        self._special_bytes: list[bytes] = []
        for i, (piece, kind) in enumerate(zip(pieces, types, strict=True)):
            text = piece
            if kind == PieceType.NORMAL:
                self._ids.setdefault(piece, i)
            elif kind == PieceType.BYTE and (m := _BYTE_PIECE.fullmatch(piece)):
                text = bytes([int(m[1], 16)])
                self._byte_ids.setdefault(text[0], i)
            elif kind == PieceType.UNKNOWN:
                text = UNKNOWN_TEXT
            elif kind in SPECIAL_TYPES:
                # llama2.c's tokenizer.bin spells BOS as "\n<s>\n": the name is "<s>"
                name_text = piece.decode("utf-8", errors="replace").strip() or str(i)
                self.special_tokens.setdefault(name_text, i)
                self._special_bytes.append(name_text.encode())
                if kind == PieceType.USER_DEFINED:
                    self.text_tokens.add(name_text)
                self._bytes.append(name_text.encode() if kind == PieceType.USER_DEFINED else b"")
                continue
            self._bytes.append(text)
            self._special_bytes.append(text)
        # Text of one special token, for encode(allow_special=True), and of one text token,
        # always matched; longest names first
        self._special_re = _alternatives(self.special_tokens)
        self._text_re = _alternatives(self.text_tokens)
        # Most bytes of text one token covers, for min_tokens: a normal piece its own bytes, a
        # byte piece one byte, <unk> one character (at most 4 bytes); with space_symbol a
        # piece's spaces may have been "▁" (3 bytes) in the text.
        longest = max(
            [len(p) for p in self._ids]
            + [len(t.encode()) for t in self.text_tokens]
            + [4 if unk_id is not None else 1]
        )
        self.max_token_bytes = 3 * longest if space_symbol else longest

    @classmethod
    def from_file(cls, path: str | Path, vocab_size: int | None = None) -> Llama2cTokenizer:
        """Read a llama2.c tokenizer.bin. With `vocab_size`, read exactly that many tokens
        (llama2.c takes the count from the model) and reject files with more or fewer."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise TokenizerError(f"{path}: cannot read the tokenizer file: {e.strerror}") from None
        if len(data) < 4:
            raise TokenizerError(f"{path}: too short to be a llama2.c tokenizer.bin")
        pieces, scores, offset = [], [], 4
        max_len = struct.unpack_from("<i", data, 0)[0]
        if not 0 < max_len <= 1 << 16:
            raise TokenizerError(
                f"{path}: max_token_length {max_len} is implausible; not a llama2.c tokenizer.bin"
            )
        while offset < len(data) and (vocab_size is None or len(pieces) < vocab_size):
            if offset + 8 > len(data):
                raise TokenizerError(f"{path}: truncated at token {len(pieces)} (offset {offset})")
            score, n = struct.unpack_from("<fi", data, offset)
            offset += 8
            if not 0 <= n <= max_len or offset + n > len(data):
                raise TokenizerError(
                    f"{path}: token {len(pieces)} has byte length {n} (max_token_length "
                    f"{max_len}, {len(data) - offset} bytes left); file is corrupt or not a "
                    f"llama2.c tokenizer.bin"
                )
            pieces.append(data[offset : offset + n])
            scores.append(score)
            offset += n
        if vocab_size is not None and (len(pieces) != vocab_size or offset != len(data)):
            found = "more" if offset < len(data) else f"only {len(pieces)}"
            raise TokenizerError(
                f"{path}: vocabulary does not match the model: the model has {vocab_size} tokens, "
                f"the file has {found}; use the tokenizer the model was trained with"
            )
        if len(pieces) < 3 + 256:
            raise TokenizerError(
                f"{path}: {len(pieces)} tokens is too few for a llama2.c vocabulary (need "
                f"<unk>, <s>, </s> and 256 byte pieces)"
            )
        return cls(pieces, scores, name=str(path))

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def token_id(self, name: str) -> int:
        """The id of special token `name` (e.g. "</s>")."""
        return special_token_id(self.name, self.special_tokens, name)

    def encode(
        self,
        text: str,
        bos: bool = True,
        eos: bool | None = None,
        *,
        allow_special: bool = False,
        dummy_prefix: bool = True,
    ) -> list[int]:
        """Text -> token ids, as llama2.c's encode().

        `bos` adds BOS if the vocabulary wants one (add_bos); `eos` adds EOS (None: if add_eos).
        With `allow_special`, the text of a special token ("</s>") becomes that token; by
        default it is ordinary text. `dummy_prefix=False` encodes `text` as a continuation.
        """
        check_text(text)
        arguments.flags(bos=bos, allow_special=allow_special, dummy_prefix=dummy_prefix)
        arguments.flag(eos, "eos", optional=True)
        tokens = [self.bos_id] if bos and self.add_bos and self.bos_id is not None else []
        matcher = self._special_re if allow_special else self._text_re
        if matcher is not None:
            pos = 0
            for m in matcher.finditer(text):
                tokens += self._encode_text(text[pos : m.start()], dummy_prefix and pos == 0)
                tokens.append(self.special_tokens[m[0]])
                pos = m.end()
            tokens += self._encode_text(text[pos:], dummy_prefix and pos == 0)
        else:
            tokens += self._encode_text(text, dummy_prefix)
        if (self.add_eos if eos is None else eos) and self.eos_id is not None:
            tokens.append(self.eos_id)
        return tokens

    def min_tokens(self, text: str) -> int:
        """A lower bound on len(encode(text, bos=False)), in linear time: every token covers
        at most max_token_bytes bytes of " " + text."""
        check_text(text)
        return -(-(len(text.encode("utf-8")) + 1) // self.max_token_bytes)

    def _encode_text(self, text: str, dummy_prefix: bool) -> list[int]:
        if not text:
            return []
        if dummy_prefix and self.adds_dummy_prefix:
            text = " " + text  # SentencePiece sees " " + text
        if self.space_symbol:
            text = text.replace("\u2581", " ")
        ids = []
        for char in text:
            piece = char.encode("utf-8")
            if piece in self._ids:
                ids.append(self._ids[piece])
            elif self._byte_ids:  # byte fallback: one <0xXX> piece per UTF-8 byte
                ids.extend(self._byte_ids.get(b, self.unk_id) for b in piece)
            else:
                ids.append(self.unk_id)
        return self._merge(ids)

    def _merge(self, ids: list[int]) -> list[int]:
        """Merge the best-scoring adjacent pair (leftmost on ties) until no pair merges.

        The symbols form a linked list (prev/next indices) and the candidate pairs a heap of
        (-score, left position): O(n log n) instead of run.c's rescan of every pair per merge,
        with the same result. A popped pair is used only if both symbols still hold the ids
        it was made from (merges elsewhere leave stale entries behind).
        """
        n = len(ids)
        nxt = [*range(1, n), -1]
        prev = list(range(-1, n - 1))
        heap: list[tuple[float, int, int, int, int]] = []

        def push(i: int) -> None:
            j = nxt[i] if i >= 0 else -1
            merged = self._ids.get(self.pieces[ids[i]] + self.pieces[ids[j]]) if j >= 0 else None
            if merged is not None:
                heapq.heappush(heap, (-self.scores[merged], i, ids[i], ids[j], merged))

        for i in range(n - 1):
            push(i)
        while heap:
            _, i, left, right, merged = heapq.heappop(heap)
            j = nxt[i]
            if ids[i] != left or j < 0 or ids[j] != right:
                continue  # stale: one of the two symbols has changed since
            ids[i], ids[j] = merged, -1
            nxt[i] = nxt[j]
            if nxt[j] >= 0:
                prev[nxt[j]] = i
            push(prev[i])
            push(i)
        return [t for t in ids if t >= 0]

    def token_bytes(self, token: int, special: bool = False) -> bytes:
        """The bytes token `token` adds to the text: b"" for special tokens (BOS, EOS), or
        their name with `special`."""
        token = arguments.token_id(token, "token", self.vocab_size)
        table = self._special_bytes if arguments.flag(special, "special") else self._bytes
        return table[token]

    def decode(self, ids: list[int], skip_special: bool = False) -> str:
        """Token ids -> text, with special tokens as their names ("<s>") unless
        `skip_special`; the dummy-prefix space at the very start is removed."""
        ids = arguments.token_ids(ids, "ids", self.vocab_size, min_len=0).tolist()
        table = self._bytes if arguments.flag(skip_special, "skip_special") else self._special_bytes
        text = b"".join(table[i] for i in ids).decode("utf-8", errors="replace")
        return text[1:] if self.adds_dummy_prefix and text.startswith(" ") else text
