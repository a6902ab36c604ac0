"""Tokenizers stored in GGUF metadata (llama.cpp's files), and llama_np tokenizers written as it.

A GGUF file carries its tokenizer as metadata keys (values: Python str/int/bool, list[str]
for string arrays, numpy arrays for numeric arrays):

tokenizer.ggml.model        "llama": SentencePiece-style pieces + scores + byte fallback
                            (Llama 2, TinyLlama); "gpt2": byte-level BPE with merges (Llama 3,
                            SmolLM, GPT-2)
tokenizer.ggml.pre          the pre-tokenizer (the regex that splits text before BPE), for gpt2
tokenizer.ggml.tokens       every token's text ("▁Hello" for SentencePiece, "ĠHello" for
                            byte-level BPE, "<|eot_id|>" for special tokens)
tokenizer.ggml.scores       SentencePiece merge scores (higher merges first)
tokenizer.ggml.token_type   PieceType per token: 1 normal, 2 unknown, 3 control,
                            4 user-defined, 5 unused, 6 byte
tokenizer.ggml.merges       byte-level BPE merges "a b", first = merged first
tokenizer.ggml.{bos,eos,unknown,padding}_token_id, .add_bos_token, .add_eos_token,
tokenizer.ggml.add_space_prefix (SentencePiece's dummy prefix), tokenizer.chat_template

Nothing new runs the tokens: `llama` vocabularies go through the llama2.c tokenizer (the same
score-ordered merges as SentencePiece and llama.cpp), `gpt2` vocabularies through tiktoken
like tokenizer.json files (rank = id, checked against the merge order).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import TokenizerError
from .hf_json import (
    GPT2_DIGITS_PATTERN,
    GPT2_PATTERN,
    byte_level_ranks,
    bytes_to_unicode,
    check_merge_order,
)
from .llama2c import Llama2cTokenizer, PieceType, llama2c_piece_types
from .sentencepiece_model import SentencePieceTokenizer, piece_types
from .tiktoken_bpe import LLAMA3_PATTERN, TiktokenTokenizer

MODEL = "tokenizer.ggml.model"
PRE = "tokenizer.ggml.pre"
TOKENS = "tokenizer.ggml.tokens"
SCORES = "tokenizer.ggml.scores"
TOKEN_TYPE = "tokenizer.ggml.token_type"
MERGES = "tokenizer.ggml.merges"
BOS_ID = "tokenizer.ggml.bos_token_id"
EOS_ID = "tokenizer.ggml.eos_token_id"
UNK_ID = "tokenizer.ggml.unknown_token_id"
PAD_ID = "tokenizer.ggml.padding_token_id"
ADD_BOS = "tokenizer.ggml.add_bos_token"
ADD_EOS = "tokenizer.ggml.add_eos_token"
ADD_SPACE_PREFIX = "tokenizer.ggml.add_space_prefix"
CHAT_TEMPLATE = "tokenizer.chat_template"

SPACE = "\u2581"  # SentencePiece's "▁"

# llama.cpp's `default` pre-tokenizer for byte-level BPE (what a converter writes when it does
# not know the model's own) runs four regexes one after another, each on the pieces the one
# before made: punctuation runs [\p{P}$+<=>^~|]+; GPT-2's regex; \p{N}+; [0-9]{3}. Written as
# one regex for tiktoken: punctuation runs; words; ASCII digit triples, other digit runs up to
# the next triple; other symbols (not punctuation); whitespace that ends where a piece of the
# first pass ends (before punctuation or at the end) as GPT-2's \s+(?!\S) does; whitespace.
LLAMA_CPP_DEFAULT_PATTERN = (
    r"[\p{P}$+<=>^~|]+| ?\p{L}+|[0-9]{3}|(?:(?![0-9]{3})\p{N})+| ?[^\s\p{L}\p{N}\p{P}$+<=>^~|]+"
    r"|\s+(?![^\s\p{P}$+<=>^~|])|\s+"
)

# tokenizer.ggml.pre -> (split regex, add BOS by default). Names as llama.cpp's
# src/llama-vocab.cpp reads them; convert_hf_to_gguf.py writes "llama-bpe" for Llama 3,
# "smollm" for SmolLM/SmolLM2, "gpt-2" for GPT-2's own regex; BOS as llama.cpp adds it when
# the file does not say (tokenizer.ggml.add_bos_token).
PRE_TOKENIZERS: dict[str, tuple[str, bool]] = {
    "default": (LLAMA_CPP_DEFAULT_PATTERN, False),
    "gpt-2": (GPT2_PATTERN, False),
    "gpt2": (GPT2_PATTERN, False),
    "llama-bpe": (LLAMA3_PATTERN, True),
    "llama3": (LLAMA3_PATTERN, True),
    "llama-v3": (LLAMA3_PATTERN, True),
    "falcon3": (LLAMA3_PATTERN, True),  # Falcon3: Llama's architecture and its regex
    "smaug-bpe": (LLAMA3_PATTERN, False),  # Smaug-Llama-3; llama.cpp: "same as llama3"
    "dbrx": (LLAMA3_PATTERN, False),
    "smollm": (GPT2_DIGITS_PATTERN, False),
}
# The name written for each regex llama_np's tokenizers use.
PRE_NAMES = {GPT2_PATTERN: "gpt-2", LLAMA3_PATTERN: "llama-bpe", GPT2_DIGITS_PATTERN: "smollm"}

MODELS = ("llama", "gpt2")


def load_gguf_tokenizer(
    metadata: Mapping[str, Any], vocab_size: int, *, name: str = "GGUF metadata"
) -> Llama2cTokenizer | TiktokenTokenizer:
    """The tokenizer described by a GGUF file's `tokenizer.*` metadata.

    `vocab_size` is the model's (rows of its embedding): a vocabulary with more tokens
    belongs to another model and is refused. `name` (the file's path) starts every error
    message. The tokenizer's `chat_template` is tokenizer.chat_template, or None.
    """
    model = _value(metadata, MODEL, str, name)
    if model not in MODELS:
        raise TokenizerError(
            f"{name}: {MODEL} is {model!r}, which llama_np cannot run; supported: 'llama' "
            f"(SentencePiece-style scores: Llama 2, TinyLlama) and 'gpt2' (byte-level BPE: "
            f"Llama 3, SmolLM, GPT-2)"
        )
    tokens = _value(metadata, TOKENS, list, name)
    if not tokens or not all(isinstance(t, str) for t in tokens):
        raise TokenizerError(f"{name}: {TOKENS} must be a non-empty list of strings")
    if len(tokens) > vocab_size:
        raise TokenizerError(
            f"{name}: the tokenizer has {len(tokens)} tokens but the model only {vocab_size}; "
            f"the metadata belongs to another model"
        )
    types = _types(metadata, len(tokens), name)
    build = _sentencepiece if model == "llama" else _byte_level
    tokenizer = build(metadata, tokens, types, name)
    template = metadata.get(CHAT_TEMPLATE)
    if template is not None and not isinstance(template, str):
        raise TokenizerError(f"{name}: {CHAT_TEMPLATE} must be a string, got {type(template)}")
    tokenizer.chat_template = template
    tokenizer.chat_template_source = f"{name}: {CHAT_TEMPLATE}" if template else None
    return tokenizer


def _sentencepiece(metadata, tokens: list[str], types: list[PieceType], name: str):
    """A `llama` vocabulary: "▁" is a space in pieces, and in text (as SentencePiece reads
    it). The pre-tokenizer name (converters write "default") plays no part, as in llama.cpp."""
    n = len(tokens)
    scores = _array(metadata, SCORES, n, np.float32, name)
    scores = scores if scores is not None else np.zeros(n, dtype=np.float32)  # (V,)
    return Llama2cTokenizer(
        [t.replace(SPACE, " ").encode("utf-8") for t in tokens],
        scores.tolist(),
        bos_id=_token_id(metadata, BOS_ID, 1, n, name),
        eos_id=_token_id(metadata, EOS_ID, 2, n, name),
        unk_id=_token_id(metadata, UNK_ID, 0, n, name),
        types=types,
        add_bos=_flag(metadata, ADD_BOS, True, name),
        add_eos=_flag(metadata, ADD_EOS, False, name),
        adds_dummy_prefix=_flag(metadata, ADD_SPACE_PREFIX, True, name),
        space_symbol=True,
        name=name,
    )


def _byte_level(metadata, tokens: list[str], types: list[PieceType], name: str):
    """A `gpt2` vocabulary: normal tokens become tiktoken ranks (rank = id), control tokens
    special tokens, user-defined ones text tokens (always matched, decoded as text, as
    llama.cpp does); unused ones (padding) are left out."""
    pre = _value(metadata, PRE, str, name) if PRE in metadata else "default"
    if pre not in PRE_TOKENIZERS:
        raise TokenizerError(
            f"{name}: pre-tokenizer {PRE} = {pre!r} is not supported; llama_np knows "
            f"{', '.join(sorted(PRE_TOKENIZERS))} (Llama 3: llama-bpe, SmolLM: smollm)"
        )
    pattern, pre_adds_bos = PRE_TOKENIZERS[pre]
    merges = _value(metadata, MERGES, list, name)
    if not all(isinstance(m, str) and " " in m for m in merges):
        raise TokenizerError(f"{name}: {MERGES} must be strings 'left right'")
    kinds = list(enumerate(zip(tokens, types, strict=True)))
    normal = {t: i for i, (t, k) in kinds if k == PieceType.NORMAL}
    special = {t: i for i, (t, k) in kinds if k in (PieceType.CONTROL, PieceType.USER_DEFINED)}
    ranks = byte_level_ranks(normal, name)  # may lack some single bytes, as SmolLM2's does
    check_merge_order(name, merges, normal)
    n = len(tokens)
    return TiktokenTokenizer(
        ranks,
        special,
        pattern,
        bos_id=_token_id(metadata, BOS_ID, None, n, name),
        eos_id=_token_id(metadata, EOS_ID, None, n, name),
        add_bos=_flag(metadata, ADD_BOS, pre_adds_bos, name),
        name=name,
        add_eos=_flag(metadata, ADD_EOS, False, name),
        merges=merges,
        text_tokens=[t for t, k in zip(tokens, types, strict=True) if k == PieceType.USER_DEFINED],
    )


# ---------------------------------------------------------------- reading values


def _value(metadata, key: str, kind: type, name: str):
    if key not in metadata:
        raise TokenizerError(f"{name}: metadata key {key} is missing; the tokenizer needs it")
    value = metadata[key]
    if not isinstance(value, kind):
        raise TokenizerError(f"{name}: {key} must be a {kind.__name__}, got {type(value).__name__}")
    return value


def _array(metadata, key: str, n: int, dtype, name: str) -> np.ndarray | None:
    """A numeric array of n entries, or None when the key is absent."""
    if key not in metadata:
        return None
    try:
        values = np.asarray(metadata[key])
    except (TypeError, ValueError):
        values = None
    if values is None or values.shape != (n,) or values.dtype.kind not in "iuf":
        shape = "?" if values is None else f"{values.dtype} {values.shape}"
        raise TokenizerError(f"{name}: {key} must be {n} numbers (one per token), got {shape}")
    return values.astype(dtype)


def _types(metadata, n: int, name: str) -> list[PieceType]:
    types = _array(metadata, TOKEN_TYPE, n, np.int64, name)
    if types is None:
        return [PieceType.NORMAL] * n
    valid = {int(t) for t in PieceType}
    bad = [i for i, t in enumerate(types.tolist()) if t not in valid]
    if bad:
        raise TokenizerError(
            f"{name}: {TOKEN_TYPE} of token {bad[0]} is {int(types[bad[0]])}; expected "
            f"1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused or 6 byte"
        )
    return [PieceType(t) for t in types.tolist()]


def _token_id(metadata, key: str, default: int | None, n: int, name: str) -> int | None:
    if key not in metadata:
        return default
    value = metadata[key]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < n:
        raise TokenizerError(f"{name}: {key} is {value!r}; expected a token id in 0..{n - 1}")
    return int(value)


def _flag(metadata, key: str, default: bool, name: str) -> bool:
    value = metadata.get(key, default)
    if not isinstance(value, (bool, np.bool_)):
        raise TokenizerError(f"{name}: {key} must be true or false, got {value!r}")
    return bool(value)


# ---------------------------------------------------------------- writing


def gguf_tokenizer_metadata(tokenizer) -> dict[str, object]:
    """The `tokenizer.*` GGUF metadata of any llama_np tokenizer, as llama.cpp's
    convert_hf_to_gguf.py writes it, in the value forms load_gguf_tokenizer reads: str, int,
    bool, list[str] (tokens, merges), numpy float32 (scores) and int32 (token types) arrays.

    SentencePiece tokenizer.model and llama2.c tokenizer.bin -> model "llama", pre "default":
    pieces ("▁" for space), scores, types (<s>/</s> control, <0xXX> byte), BOS/EOS/UNK (and
    PAD) ids, add_bos, add_space_prefix. Llama 3 tiktoken and byte-level tokenizer.json ->
    model "gpt2": tokens in GPT-2's byte alphabet ("Ġthe"), special tokens as control tokens,
    ids without a token as "[PAD{id}]" unused ones, the merges (the tokenizer.json's own, or
    every split of each token in rank order as transformers' tiktoken converter makes them),
    the pre-tokenizer name of the split regex (llama-bpe, smollm, gpt-2), BOS/EOS, add_bos.
    The chat template goes to tokenizer.chat_template. The result loads back with
    load_gguf_tokenizer and encodes exactly as `tokenizer` does.

    GGUF value types, as llama.cpp reads them: model, pre, chat_template STRING; tokens,
    merges ARRAY of STRING; scores ARRAY of FLOAT32; token_type ARRAY of INT32; *_token_id
    UINT32; add_bos_token, add_eos_token, add_space_prefix BOOL.
    """
    if isinstance(tokenizer, SentencePieceTokenizer):
        meta = _sentencepiece_metadata(tokenizer)
    elif isinstance(tokenizer, Llama2cTokenizer):
        meta = _llama2c_metadata(tokenizer)
    elif isinstance(tokenizer, TiktokenTokenizer):
        meta = _byte_level_metadata(tokenizer)
    else:
        raise TokenizerError(
            f"cannot write a {type(tokenizer).__name__} as GGUF metadata; supported: "
            f"SentencePiece, llama2.c, tiktoken and byte-level tokenizer.json tokenizers"
        )
    if getattr(tokenizer, "chat_template", None):
        meta[CHAT_TEMPLATE] = tokenizer.chat_template
    return meta


def _sentencepiece_metadata(tok: SentencePieceTokenizer) -> dict[str, object]:
    sp = tok.sp
    V = sp.vocab_size()
    meta: dict[str, object] = {
        MODEL: "llama",
        PRE: "default",
        TOKENS: [sp.id_to_piece(i) for i in range(V)],
        SCORES: np.array([sp.get_score(i) for i in range(V)], dtype=np.float32),  # (V,)
        TOKEN_TYPE: np.array(piece_types(sp), dtype=np.int32),  # (V,)
    }
    for key, i in ((BOS_ID, sp.bos_id()), (EOS_ID, sp.eos_id()), (UNK_ID, sp.unk_id())):
        if i >= 0:
            meta[key] = i
    if sp.pad_id() >= 0:
        meta[PAD_ID] = sp.pad_id()
    meta.update({ADD_BOS: True, ADD_EOS: False, ADD_SPACE_PREFIX: tok.adds_dummy_prefix})
    return meta


def _llama2c_metadata(tok: Llama2cTokenizer) -> dict[str, object]:
    types = tok.types or llama2c_piece_types(tok.pieces)
    names = {i: name for name, i in tok.special_tokens.items()}
    tokens = []
    for i, piece in enumerate(tok.pieces):
        try:
            text = names[i] if i in names else piece.decode("utf-8")
        except UnicodeDecodeError:
            raise TokenizerError(
                f"{tok.name}: piece {i} ({piece!r}) is not UTF-8 text; GGUF stores tokens as "
                f"strings"
            ) from None
        tokens.append(text.replace(" ", SPACE))
    meta: dict[str, object] = {
        MODEL: "llama",
        PRE: "default",
        TOKENS: tokens,
        SCORES: np.array(tok.scores, dtype=np.float32),  # (V,)
        TOKEN_TYPE: np.array(types, dtype=np.int32),  # (V,)
    }
    for key, i in ((BOS_ID, tok.bos_id), (EOS_ID, tok.eos_id), (UNK_ID, tok.unk_id)):
        if i is not None:
            meta[key] = i
    meta.update(
        {ADD_BOS: tok.add_bos, ADD_EOS: tok.add_eos, ADD_SPACE_PREFIX: tok.adds_dummy_prefix}
    )
    return meta


def _byte_level_metadata(tok: TiktokenTokenizer) -> dict[str, object]:
    if tok.pattern not in PRE_NAMES:
        raise TokenizerError(
            f"{tok.name}: its split regex is none of llama.cpp's named pre-tokenizers "
            f"({', '.join(PRE_NAMES.values())}); llama.cpp could not split text the same way"
        )
    to_str = bytes_to_unicode()
    V = tok.vocab_size
    tokens = [f"[PAD{i}]" for i in range(V)]
    types = np.full(V, PieceType.UNUSED, dtype=np.int32)  # (V,)
    text = {}  # token bytes -> its byte-level string
    for token, i in tok.ranks.items():
        text[token] = tokens[i] = "".join(to_str[b] for b in token)
        types[i] = PieceType.NORMAL
    for name, i in tok.special_tokens.items():
        kind = PieceType.USER_DEFINED if name in tok.text_tokens else PieceType.CONTROL
        tokens[i], types[i] = name, kind
    merges = tok.merges if tok.merges is not None else _merges_from_ranks(tok.ranks, text)
    meta: dict[str, object] = {
        MODEL: "gpt2",
        PRE: PRE_NAMES[tok.pattern],
        TOKENS: tokens,
        TOKEN_TYPE: types,
        MERGES: merges,
    }
    for key, i in ((BOS_ID, tok.bos_id), (EOS_ID, tok.eos_id)):
        if i is not None:
            meta[key] = i
    meta.update({ADD_BOS: tok.add_bos, ADD_EOS: tok.add_eos})
    return meta


def _merges_from_ranks(ranks: dict[bytes, int], text: dict[bytes, str]) -> list[str]:
    """BPE merges equivalent to tiktoken's ranks: for each token in rank order, every split
    into two tokens (ordered by their ranks), as transformers' TikTokenConverter makes them.
    A merge's position is then the rank of the token it makes, which is the order tiktoken
    merges in; one merge per token would not do, as BPE can reach a token by several splits."""
    merges = []
    for token in sorted(ranks, key=ranks.__getitem__):
        splits = [
            (ranks[token[:k]], ranks[token[k:]], k)
            for k in range(1, len(token))
            if token[:k] in ranks and token[k:] in ranks
        ]
        t = text[token]  # one character per byte: the split at byte k is the one at char k
        merges += [f"{t[:k]} {t[k:]}" for _, _, k in sorted(splits)]
    return merges
