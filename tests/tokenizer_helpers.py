"""Test helpers: Hugging Face tokenizer.json files built from tiktoken ranks, and GGUF
tokenizer metadata built from a tokenizer.json as llama.cpp's converter builds it."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np

from llama_np.tokenizers.hf_json import bytes_to_unicode
from llama_np.tokenizers.tiktoken_bpe import LLAMA3_PATTERN, LLAMA3_SPECIAL_TOKENS


def bpe_merges(ranks: dict[bytes, int], all_splits: bool = True) -> list[list[str]]:
    """Every (left, right) split of every token into two tokens, in the order of the merged
    token's rank, as transformers' tiktoken converter writes them; or just the first split
    of each token (enough for llama_np, which only checks their order; much faster)."""
    to_str = bytes_to_unicode()
    text = {token: "".join(to_str[b] for b in token) for token in ranks}
    merges = []
    for token in sorted(ranks, key=ranks.__getitem__):
        for i in range(1, len(token)):
            left, right = token[:i], token[i:]
            if left in ranks and right in ranks:
                merges.append([text[left], text[right]])
                if not all_splits:
                    break
    return merges


def llama3_tokenizer_json(ranks: dict[bytes, int], merges: list[list[str]]) -> dict:
    """A tokenizer.json laid out as the meta-llama/Llama-3.x Hugging Face repos have it."""
    to_str = bytes_to_unicode()
    n = len(ranks)
    added = [
        {
            "id": n + i,
            "content": name,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, name in enumerate(LLAMA3_SPECIAL_TOKENS)
    ]
    return {
        "version": "1.0",
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": LLAMA3_PATTERN},
                    "behavior": "Isolated",
                    "invert": False,
                },
                {
                    "type": "ByteLevel",
                    "add_prefix_space": False,
                    "trim_offsets": True,
                    "use_regex": False,
                },
            ],
        },
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
            ],
            "pair": [],
            "special_tokens": {
                "<|begin_of_text|>": {
                    "id": "<|begin_of_text|>",
                    "ids": [n],
                    "tokens": ["<|begin_of_text|>"],
                }
            },
        },
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": True,
            "use_regex": True,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": True,
            "vocab": {"".join(to_str[b] for b in t): r for t, r in ranks.items()},
            "merges": merges,
        },
    }


K = gguf.Keys.Tokenizer
T = gguf.TokenType


def tokenizer_json_reference(directory: Path, pre: str) -> dict:
    """convert_hf_to_gguf.py's get_vocab_base for a byte-level tokenizer.json."""
    spec = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
    added = {t["id"]: t for t in spec["added_tokens"]}
    vocab = {i: t for t, i in spec["model"]["vocab"].items()}
    tokens, types = [], []
    for i in range(max(vocab) + 1):
        tokens.append(vocab.get(i, f"[PAD{i}]"))
        kind = T.NORMAL if i in vocab else T.UNUSED
        if i in added:
            kind = T.CONTROL if added[i]["special"] else T.USER_DEFINED
        types.append(kind)
    meta = {
        K.MODEL: "gpt2",
        K.PRE: pre,
        K.LIST: tokens,
        K.TOKEN_TYPE: np.array(types, dtype=np.int32),
        K.MERGES: [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]],
        K.ADD_BOS: False,
    }
    config_path = directory / "tokenizer_config.json"
    if config_path.exists():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        ids = {t: i for i, t in vocab.items()}
        meta[K.BOS_ID] = ids[config["bos_token"]]
        meta[K.EOS_ID] = ids[config["eos_token"]]
        meta[K.CHAT_TEMPLATE] = config["chat_template"]
    return meta
