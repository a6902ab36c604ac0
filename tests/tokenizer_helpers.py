"""Test helpers: Hugging Face tokenizer.json files built from tiktoken ranks."""

from __future__ import annotations

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
