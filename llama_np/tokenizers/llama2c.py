"""llama2.c's `tokenizer.bin`: a SentencePiece-BPE vocabulary with a score per piece.

File format: int32 max_token_length, then for each token: float32 score, int32 byte length,
the piece's bytes. Encoding follows llama2.c's run.c exactly: a leading "dummy prefix" space,
one piece per UTF-8 character (or `<0xXX>` byte pieces for characters not in the vocabulary),
then repeatedly merge the adjacent pair whose merged piece has the highest score.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

from ..errors import TokenizerError

_BYTE_PIECE = re.compile(rb"<0x([0-9A-Fa-f]{2})>")


class Llama2cTokenizer:
    """Encode text to token ids and back with a llama2.c vocabulary."""

    adds_dummy_prefix = True  # encode() prepends a space; decode() removes it again
    chat_template: str | None = None  # llama2.c vocabularies come without one

    def __init__(self, pieces: list[bytes], scores: list[float], bos_id: int = 1, eos_id: int = 2):
        if len(pieces) != len(scores):
            raise TokenizerError(f"{len(pieces)} pieces but {len(scores)} scores")
        self.pieces = pieces
        self.scores = scores
        self.bos_id, self.eos_id = bos_id, eos_id
        # First id of each piece: a dict lookup per merge candidate, never list.index
        self._ids: dict[bytes, int] = {}
        for i, piece in enumerate(pieces):
            self._ids.setdefault(piece, i)
        # What each token contributes to decoded text: `<0xXX>` pieces are that raw byte;
        # <unk>, BOS and EOS (ids 0-2) contribute nothing.
        self._bytes = [
            b"" if i < 3 else (bytes([int(m[1], 16)]) if (m := _BYTE_PIECE.fullmatch(p)) else p)
            for i, p in enumerate(pieces)
        ]

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
        return cls(pieces, scores)

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        """Text -> token ids, as llama2.c's encode()."""
        tokens = [self.bos_id] if bos else []
        if text:
            # the dummy prefix: SentencePiece sees " " + text (byte fallback if " " is no piece)
            ids = [self._ids.get(b" ", ord(" ") + 3)]
            for char in text:
                piece = char.encode("utf-8")
                if piece in self._ids:
                    ids.append(self._ids[piece])
                else:  # byte fallback: <0x00> .. <0xFF> are ids 3 .. 258
                    ids.extend(b + 3 for b in piece)
            tokens += self._merge(ids)
        if eos:
            tokens.append(self.eos_id)
        return tokens

    def _merge(self, ids: list[int]) -> list[int]:
        """Merge the best-scoring adjacent pair (leftmost on ties) until no pair merges."""
        while True:
            best_score, best_i, best_id = -1e10, -1, -1
            for i in range(len(ids) - 1):
                merged = self._ids.get(self.pieces[ids[i]] + self.pieces[ids[i + 1]])
                if merged is not None and self.scores[merged] > best_score:
                    best_score, best_i, best_id = self.scores[merged], i, merged
            if best_i < 0:
                return ids
            ids[best_i : best_i + 2] = [best_id]

    def token_bytes(self, token: int) -> bytes:
        """The bytes token `token` adds to the text (b"" for BOS, EOS and <unk>)."""
        return self._bytes[token]

    def decode(self, ids: list[int]) -> str:
        """Token ids -> text, dropping special tokens and the dummy-prefix space."""
        text = b"".join(self._bytes[i] for i in ids).decode("utf-8", errors="replace")
        return text[1:] if text.startswith(" ") else text
