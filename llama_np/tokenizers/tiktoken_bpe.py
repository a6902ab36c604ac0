"""Byte-level BPE through tiktoken: Llama 3's `tokenizer.model` (and, via hf_json, tokenizer.json).

Llama 3's tokenizer.model is a text file, one `base64(token bytes) rank` a line: 128000
ranks. Text is first split by a regex (words, numbers of up to 3 digits, punctuation runs,
whitespace), then each piece is merged from single bytes, lowest rank first; a token's id is
its rank. The 256 special tokens (<|begin_of_text|> = 128000, ...) are not in the file.
"""

from __future__ import annotations

import base64
import binascii
import re
import sys
import unicodedata
from collections.abc import Collection, Iterator
from pathlib import Path

import regex  # tiktoken's own dependency: the split regexes use \p{L}, which `re` lacks
import tiktoken

from .. import arguments
from ..errors import TokenizerError
from ..validate import check_text, read_bytes
from .special import special_token_id

MAX_RANK_FILE_BYTES = 64 * 2**20  # Llama 3's is 2.2 MB

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

    `text_tokens` names added tokens that are text, not special (tokenizer.json's
    `"special": false`, GGUF's user-defined type: tool-call tags of fine-tunes): as
    transformers and llama.cpp treat them, their text always becomes them, and they decode as
    their text.

    A vocabulary may lack some single bytes: SmolLM2's (StarCoder's) has no token for 21 bytes
    that (almost) never occur in UTF-8 text, 0x04 and 0xF5-0xFF among them. Hugging Face's
    BPE leaves such a byte out of its word before merging (no unk token, no byte fallback),
    and so does `encode`, saying so once on stderr. tiktoken itself would panic on the byte.
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
        normalization: tuple[str, ...] = (),
        text_tokens: Collection[str] = (),
    ) -> None:
        self.name = name
        self.normalization = normalization  # Unicode forms applied to text first ("NFC", ...)
        self.special_tokens = dict(special_tokens)
        self.text_tokens = frozenset(t for t in text_tokens if t in self.special_tokens and t)
        self.bos_id, self.eos_id, self.add_bos, self.add_eos = bos_id, eos_id, add_bos, add_eos
        self.ranks, self.pattern, self.merges = mergeable_ranks, pat_str, merges
        _check_vocabulary(name, mergeable_ranks, self.special_tokens)
        # Single bytes without a token (SmolLM2's 0x04, 0xF5-0xFF, ...), and whether a text
        # has contained one yet (said once, on stderr).
        self.missing_bytes = bytes(b for b in range(256) if bytes([b]) not in mergeable_ranks)
        self._warned_missing = False
        ids = [*mergeable_ranks.values(), *special_tokens.values()]
        self.vocab_size = max(ids) + 1
        # An added token with empty text (a fuzzed tokenizer.json had one) cannot occur in
        # text, and tiktoken's matcher loops forever on it: it keeps its id, not a match.
        matchable = {text: i for text, i in self.special_tokens.items() if text}
        try:
            self.encoding = tiktoken.Encoding(
                name or "llama_np",
                pat_str=pat_str,
                mergeable_ranks=mergeable_ranks,
                special_tokens=matchable,
            )
        except ValueError as e:  # the split regex does not compile
            raise TokenizerError(f"{name}: the pre-tokenizer's split regex: {e}") from e
        # Most bytes one token covers (special tokens only with allow_special).
        self.max_token_bytes = max(map(len, [*mergeable_ranks, *map(str.encode, self.text_tokens)]))
        # What each id adds to the text: its bytes, or nothing (special tokens, unused ids);
        # and the same with special tokens shown by name.
        self._bytes = [b""] * self.vocab_size
        for token, rank in mergeable_ranks.items():
            self._bytes[rank] = token
        self._special_bytes = list(self._bytes)
        for name, i in self.special_tokens.items():
            self._special_bytes[i] = name.encode()
            if name in self.text_tokens:
                self._bytes[i] = name.encode()

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
        return special_token_id(self.name, self.special_tokens, name)

    def encode(
        self, text: str, bos: bool = True, eos: bool | None = None, *, allow_special: bool = False
    ) -> list[int]:
        """Text -> token ids. Special-token text such as "<|eot_id|>" is encoded as ordinary
        text unless `allow_special` is set (so user text cannot inject control tokens).
        `eos=None` adds EOS only if the tokenizer says so (add_eos)."""
        check_text(text)
        arguments.flags(bos=bos, allow_special=allow_special)
        arguments.flag(eos, "eos", optional=True)
        text = self._normalize(text)
        tokens = [self.bos_id] if bos and self.add_bos and self.bos_id is not None else []
        allowed = "all" if allow_special else self.text_tokens
        for piece in _split_for_tiktoken(text):
            if self.missing_bytes and self._has_missing_byte(piece):
                tokens += self._encode_dropping_missing_bytes(piece, allow_special)
            else:
                tokens += self.encoding.encode(
                    piece, allowed_special=allowed, disallowed_special=()
                )
        if (self.add_eos if eos is None else eos) and self.eos_id is not None:
            tokens.append(self.eos_id)
        return tokens

    def _normalize(self, text: str) -> str:
        for form in self.normalization:
            text = unicodedata.normalize(form, text)
        return text

    def _has_missing_byte(self, text: str) -> bool:
        """Whether `text` holds a byte that has no token (and say so, the first time)."""
        data = text.encode("utf-8")
        if len(data.translate(None, self.missing_bytes)) == len(data):
            return False
        if not self._warned_missing:
            self._warned_missing = True
            byte = next(b for b in data if b in self.missing_bytes)
            print(
                f"llama-np: warning: {self.name}: the text contains byte 0x{byte:02X}, which "
                f"has no token in this vocabulary ({len(self.missing_bytes)} of the 256 bytes "
                f"have none); such bytes are left out of the tokens, as transformers does",
                file=sys.stderr,
            )
        return True

    def _encode_dropping_missing_bytes(self, text: str, allow_special: bool) -> list[int]:
        """What tiktoken's encode does, with every byte that has no token left out of the
        words after the split and before the merges, as Hugging Face's BPE does: "!\x04!"
        is one word, which becomes "!!" and merges as such."""
        tokens: list[int] = []
        for segment, special_id in self._special_segments(text, allow_special):
            if special_id is not None:
                tokens.append(special_id)
                continue
            for word in regex.findall(self.pattern, segment):
                kept = word.encode("utf-8").translate(None, self.missing_bytes)
                if kept:
                    # tiktoken's BPE of one word, without its split: the public encode takes
                    # text, and `kept` may no longer be UTF-8 (0xF1 gone from a 4-byte char).
                    tokens += self.encoding._encode_single_piece(kept)
        return tokens

    def _special_segments(self, text: str, allow_special: bool) -> Iterator[tuple[str, int | None]]:
        """`text` as (ordinary text, None) and (added token text, its id) pieces; special
        tokens only with `allow_special`, the longest first where two start at one place."""
        names = sorted(self.special_tokens if allow_special else self.text_tokens, key=len)[::-1]
        if not names:
            yield text, None
            return
        done = 0
        for match in re.finditer("|".join(map(re.escape, names)), text):
            if match.start() > done:
                yield text[done : match.start()], None
            yield match.group(), self.special_tokens[match.group()]
            done = match.end()
        if done < len(text):
            yield text[done:], None

    def min_tokens(self, text: str) -> int:
        """A lower bound on len(encode(text, bos=False)), in linear time: every token covers
        at most max_token_bytes bytes of the (normalized) text, bytes without a token none."""
        check_text(text)
        data = self._normalize(text).encode("utf-8").translate(None, self.missing_bytes)
        return -(-len(data) // self.max_token_bytes)

    def token_bytes(self, token: int, special: bool = False) -> bytes:
        """The bytes token `token` adds to the text: b"" for special tokens, or their name
        with `special` (text tokens: always their text)."""
        token = arguments.token_id(token, "token", self.vocab_size)
        table = self._special_bytes if arguments.flag(special, "special") else self._bytes
        return table[token]

    def decode(self, ids: list[int], skip_special: bool = False) -> str:
        """Token ids -> text, special tokens as their names ("<|eot_id|>") unless
        `skip_special`."""
        ids = arguments.token_ids(ids, "ids", self.vocab_size, min_len=0).tolist()
        table = self._bytes if arguments.flag(skip_special, "skip_special") else self._special_bytes
        return b"".join(table[i] for i in ids).decode("utf-8", errors="replace")


def _check_vocabulary(name: str, ranks: dict[bytes, int], special: dict[str, int]) -> None:
    """Refuse what tiktoken would panic on (a Rust panic, not an exception one can name) or
    what would make the tables below huge: every id used once, ids numbered densely from 0
    (one id near 2**32 would otherwise allocate gigabytes). A single byte without a token is
    allowed (real vocabularies lack some): encode keeps such bytes away from tiktoken."""
    if not ranks:
        raise TokenizerError(f"{name}: the vocabulary has no tokens")
    ids = [*ranks.values(), *special.values()]
    if len(set(ids)) != len(ids):
        raise TokenizerError(f"{name}: two tokens share an id; the vocabulary is corrupt")
    if max(ids) + 1 > 2 * len(ids) + 1024:
        raise TokenizerError(
            f"{name}: token id {max(ids):,} is far beyond the {len(ids):,} tokens of the "
            f"vocabulary (ids must be numbered densely from 0); corrupt file"
        )


# tiktoken's split regex backtracks through a run of whitespace (or of anything else) and
# fails on runs of ~100k characters ("Max stack size exceeded"), and its merge is slow on
# very long pieces. Meta's llama3 tokenizer.py encodes slices of at most 400k characters,
# each cut into runs of at most 25k whitespace or non-whitespace characters; so do we.
MAX_ENCODE_CHARS = 400_000
MAX_RUN_CHARS = 25_000


# A run of more than MAX_RUN_CHARS whitespace, or non-whitespace, characters. The lookbehind
# anchors each match at the start of a run, so the scan is linear.
_LONG_RUN = re.compile(rf"(?<!\s)\s{{{MAX_RUN_CHARS + 1},}}|(?<!\S)\S{{{MAX_RUN_CHARS + 1},}}")


def _split_for_tiktoken(text: str) -> Iterator[str]:
    """`text` in consecutive pieces that tiktoken encodes safely (as Meta's tokenizer.py)."""
    for start in range(0, len(text), MAX_ENCODE_CHARS):
        chunk = text[start : start + MAX_ENCODE_CHARS]
        done = 0
        for run in _LONG_RUN.finditer(chunk):
            if run.start() > done:
                yield chunk[done : run.start()]
            for cut in range(run.start(), run.end(), MAX_RUN_CHARS):
                yield chunk[cut : min(cut + MAX_RUN_CHARS, run.end())]
            done = run.end()
        if done < len(chunk) or not chunk:
            yield chunk[done:]


def read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """Parse a tiktoken rank file: one `base64(token) rank` a line."""
    ranks: dict[bytes, int] = {}
    lines = read_bytes(path, TokenizerError, MAX_RANK_FILE_BYTES, "tiktoken rank file").splitlines()
    for n, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        try:
            if len(parts) != 2 or not parts[1].isdigit() or len(parts[1]) > 9:
                raise ValueError
            token, rank = base64.b64decode(parts[0], validate=True), int(parts[1])
        except (binascii.Error, ValueError):
            raise TokenizerError(
                f"{path}: line {n} is not `base64-token rank` with a rank below 10**9 "
                f"({line[:60]!r}); not a tiktoken tokenizer.model"
            ) from None
        ranks[token] = rank
    if not ranks:
        raise TokenizerError(f"{path}: empty tiktoken rank file")
    if len(set(ranks.values())) != len(ranks):
        raise TokenizerError(f"{path}: two tokens share a rank; the file is corrupt")
    return ranks
