"""llama2.c's `tokenizer.bin`: a SentencePiece-BPE vocabulary with a score per piece.

File format: int32 max_token_length, then for each token: float32 score, int32 byte length,
the piece's bytes. Encoding follows llama2.c's run.c exactly: a leading "dummy prefix" space,
one piece per UTF-8 character (or `<0xXX>` byte pieces for characters not in the vocabulary),
then repeatedly merge the adjacent pair whose merged piece has the highest score.
"""

from __future__ import annotations

import heapq
import re
import struct
from pathlib import Path

from ..errors import TokenizerError
from ..validate import check_text

_BYTE_PIECE = re.compile(rb"<0x([0-9A-Fa-f]{2})>")


class Llama2cTokenizer:
    """Encode text to token ids and back with a llama2.c vocabulary."""

    adds_dummy_prefix = True  # encode() prepends a space; decode() removes it again

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
        self.max_token_bytes = max(1, *map(len, self._bytes))  # most text one token covers

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

    def min_tokens(self, text: str) -> int:
        """A lower bound on len(encode(text, bos=False)), in linear time: every token covers
        at most max_token_bytes bytes of " " + text."""
        return -(-(len(text.encode("utf-8")) + 1) // self.max_token_bytes)

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        """Text -> token ids, as llama2.c's encode()."""
        check_text(text)
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
        """Merge the best-scoring adjacent pair (leftmost on ties) until no pair merges.

        llama2.c rescans every pair after each merge: O(n²), minutes for a long prompt. This
        gives the same result in O(n log n), as sentencepiece does: the symbols form a linked
        list, candidate pairs wait in a heap ordered by (best score, leftmost), and a popped
        pair whose symbols have changed since it was pushed is skipped.
        """
        n = len(ids)
        pieces = [self.pieces[i] for i in ids]  # each symbol's bytes; grows as it merges
        tokens = list(ids)
        alive = [True] * n
        prev = list(range(-1, n - 1))  # linked list over symbol positions; -1 = none
        nxt = [*range(1, n), -1]
        heap: list[tuple[float, int, int, int]] = []  # (-score, left position, size, id)

        def push(left: int) -> None:
            right = nxt[left]
            if right < 0:
                return
            merged = self._ids.get(pieces[left] + pieces[right])
            if merged is not None:
                size = len(pieces[left]) + len(pieces[right])
                heapq.heappush(heap, (-self.scores[merged], left, size, merged))

        for i in range(n - 1):
            push(i)
        while heap:
            _, left, size, merged = heapq.heappop(heap)
            right = nxt[left]
            # Stale: the left symbol was merged away, or one of the two has grown since.
            if not alive[left] or right < 0 or len(pieces[left]) + len(pieces[right]) != size:
                continue
            pieces[left] += pieces[right]
            tokens[left] = merged
            alive[right] = False
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prev[nxt[right]] = left
            if prev[left] >= 0:
                push(prev[left])
            push(left)
        return [t for t, keep in zip(tokens, alive, strict=True) if keep]

    def token_bytes(self, token: int) -> bytes:
        """The bytes token `token` adds to the text (b"" for BOS, EOS and <unk>)."""
        return self._bytes[token]

    def decode(self, ids: list[int]) -> str:
        """Token ids -> text, dropping special tokens and the dummy-prefix space."""
        text = b"".join(self._bytes[i] for i in ids).decode("utf-8", errors="replace")
        return text[1:] if text.startswith(" ") else text
