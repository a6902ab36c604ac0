"""Byte-level BPE through tiktoken: Llama 3's `tokenizer.model` (and, via hf_json, tokenizer.json).

Llama 3's tokenizer.model is a text file, one `base64(token bytes) rank` a line: 128000
ranks. Text is first split by a regex (words, numbers of up to 3 digits, punctuation runs,
whitespace), then each piece is merged from single bytes, lowest rank first; a token's id is
its rank. The 256 special tokens (<|begin_of_text|> = 128000, ...) are not in the file.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

import tiktoken

from ..errors import TokenizerError

# The split regex of Meta's llama3 tokenizer.py (the same as OpenAI's cl100k_base).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Llama 3.1's names for the 256 special tokens from id 128000 (Meta's llama-models and the
# Hugging Face tokenizer.json agree). Llama 3.0 called 128004/128005/128008/128010
# reserved tokens; 128000/128001 (BOS/EOS), the header ids and <|eot_id|> are the same.
_LLAMA3_NAMED = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",  # end of message (tool calls)
    "<|eot_id|>",  # end of turn
    "<|python_tag|>",
]
LLAMA3_SPECIAL_TOKENS = _LLAMA3_NAMED + [
    f"<|reserved_special_token_{3 + i}|>" for i in range(256 - len(_LLAMA3_NAMED))
]


class TiktokenTokenizer:
    """Byte-level BPE with tiktoken: mergeable ranks + a split regex + special tokens.

    `bos` adds `bos_id` only if `add_bos` (models like SmolLM start without one); `eos=None`
    adds `eos_id` if `add_eos`. `merges` keeps a tokenizer.json's merge list ("a b" strings in
    GPT-2's byte alphabet), for writing the vocabulary out again (GGUF).
    """

    adds_dummy_prefix = False
    chat_template: str | None = None  # set by load_tokenizer from tokenizer_config.json

    def __init__(
        self,
        mergeable_ranks: dict[bytes, int],
        special_tokens: dict[str, int],
        pat_str: str,
        bos_id: int | None,
        eos_id: int | None,
        add_bos: bool = True,
        name: str = "",
        *,
        add_eos: bool = False,
        merges: list[str] | None = None,
    ) -> None:
        self.name = name
        self.special_tokens = dict(special_tokens)
        self.bos_id, self.eos_id, self.add_bos, self.add_eos = bos_id, eos_id, add_bos, add_eos
        self.ranks, self.pattern, self.merges = mergeable_ranks, pat_str, merges
        self.encoding = tiktoken.Encoding(
            name or "llama_np",
            pat_str=pat_str,
            mergeable_ranks=mergeable_ranks,
            special_tokens=self.special_tokens,
        )
        self.vocab_size = max(max(mergeable_ranks.values()), *special_tokens.values(), -1) + 1
        # What each id adds to the text: its bytes, or nothing (special tokens, unused ids);
        # and the same with special tokens shown by name.
        self._bytes = [b""] * self.vocab_size
        for token, rank in mergeable_ranks.items():
            self._bytes[rank] = token
        self._special_bytes = list(self._bytes)
        for name, i in self.special_tokens.items():
            self._special_bytes[i] = name.encode()

    @classmethod
    def from_file(cls, path: str | Path) -> TiktokenTokenizer:
        """Read Meta's Llama 3 tokenizer.model and add Llama 3's special tokens."""
        path = Path(path)
        ranks = read_tiktoken_ranks(path)
        special = {name: len(ranks) + i for i, name in enumerate(LLAMA3_SPECIAL_TOKENS)}
        return cls(
            ranks,
            special,
            LLAMA3_PATTERN,
            bos_id=special["<|begin_of_text|>"],
            eos_id=special["<|end_of_text|>"],
            name=str(path),
        )

    def token_id(self, name: str) -> int:
        """The id of special token `name` (e.g. "<|eot_id|>")."""
        if name not in self.special_tokens:
            raise TokenizerError(f"{self.name}: no special token {name!r}")
        return self.special_tokens[name]

    def encode(
        self, text: str, bos: bool = True, eos: bool | None = None, *, allow_special: bool = False
    ) -> list[int]:
        """Text -> token ids. Special-token text such as "<|eot_id|>" is encoded as ordinary
        text unless `allow_special` is set (so user text cannot inject control tokens).
        `eos=None` adds EOS only if the tokenizer says so (add_eos)."""
        tokens = [self.bos_id] if bos and self.add_bos and self.bos_id is not None else []
        tokens += self.encoding.encode(
            text, allowed_special="all" if allow_special else set(), disallowed_special=()
        )
        if (self.add_eos if eos is None else eos) and self.eos_id is not None:
            tokens.append(self.eos_id)
        return tokens

    def token_bytes(self, token: int, special: bool = False) -> bytes:
        """The bytes token `token` adds to the text: b"" for special tokens, or their name
        with `special`."""
        return self._special_bytes[token] if special else self._bytes[token]

    def decode(self, ids: list[int], skip_special: bool = False) -> str:
        """Token ids -> text, special tokens as their names ("<|eot_id|>") unless
        `skip_special`."""
        table = self._bytes if skip_special else self._special_bytes
        return b"".join(table[i] for i in ids).decode("utf-8", errors="replace")


def read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """Parse a tiktoken rank file: one `base64(token) rank` a line."""
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                token, rank = base64.b64decode(parts[0], validate=True), int(parts[1])
                if len(parts) != 2:
                    raise ValueError
            except (binascii.Error, ValueError, IndexError):
                raise TokenizerError(
                    f"{path}: line {n} is not `base64-token rank` ({line[:60]!r}); not a "
                    f"tiktoken tokenizer.model"
                ) from None
            ranks[token] = rank
    if not ranks:
        raise TokenizerError(f"{path}: empty tiktoken rank file")
    if len(set(ranks.values())) != len(ranks):
        raise TokenizerError(f"{path}: two tokens share a rank; the file is corrupt")
    return ranks
