"""Hugging Face tokenizer files for a vocabulary given as GGUF `tokenizer.*` metadata.

An HF export (checkpoints/export.py) copies the tokenizer files a model came with. A model
without HF tokenizer files — a llama2.c tokenizer.bin, a GGUF file's own vocabulary — gets
them made here from its GGUF-style metadata (tokenizers/gguf.py turns any llama_np tokenizer
into it), as transformers' converters lay them out:

    model "llama" (SentencePiece-style)  tokenizer.model, the SentencePiece protobuf
                                         (sentencepiece_writer.py)
    model "gpt2" (byte-level BPE)        tokenizer.json: BPE vocab and merges, the
                                         pre-tokenizer named by tokenizer.ggml.pre, BOS added
                                         by the post-processor, control tokens as added tokens

and tokenizer_config.json with the BOS/EOS tokens, add_bos/add_eos and the chat template.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from ..errors import TokenizerError
from .sentencepiece_writer import sentencepiece_model_bytes
from .tiktoken_bpe import LLAMA3_PATTERN

CONTROL, USER_DEFINED = 3, 4  # GGUF token types (SentencePiece's piece types)

_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True}
# tokenizer.ggml.pre -> the tokenizer.json pre-tokenizer that splits text the same way.
PRE_TOKENIZERS = {
    "gpt-2": {**_BYTE_LEVEL, "use_regex": True},
    "gpt2": {**_BYTE_LEVEL, "use_regex": True},
    "llama-bpe": {
        "type": "Sequence",
        "pretokenizers": [
            {
                "type": "Split",
                "pattern": {"Regex": LLAMA3_PATTERN},
                "behavior": "Isolated",
                "invert": False,
            },
            {**_BYTE_LEVEL, "use_regex": False},
        ],
    },
    "smollm": {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {**_BYTE_LEVEL, "use_regex": True},
        ],
    },
}
PRE_TOKENIZERS["llama3"] = PRE_TOKENIZERS["llama-v3"] = PRE_TOKENIZERS["llama-bpe"]


def hf_tokenizer_files(meta: Mapping[str, object]) -> dict[str, bytes]:
    """File name -> contents of the HF tokenizer files for GGUF tokenizer metadata `meta`."""
    model = meta["tokenizer.ggml.model"]
    tokens = list(meta["tokenizer.ggml.tokens"])
    types = [int(t) for t in meta["tokenizer.ggml.token_type"]]
    bos, eos = meta.get("tokenizer.ggml.bos_token_id"), meta.get("tokenizer.ggml.eos_token_id")
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", model == "llama"))
    config: dict[str, object] = {
        "add_bos_token": add_bos,
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "bos_token": tokens[bos] if bos is not None else None,
        "eos_token": tokens[eos] if eos is not None else None,
    }
    if meta.get("tokenizer.chat_template"):
        config["chat_template"] = meta["tokenizer.chat_template"]
    if model == "llama":
        unk = meta.get("tokenizer.ggml.unknown_token_id", -1)
        files = {
            "tokenizer.model": sentencepiece_model_bytes(
                tokens,
                list(meta["tokenizer.ggml.scores"]),
                types,
                unk_id=unk,
                bos_id=-1 if bos is None else bos,
                eos_id=-1 if eos is None else eos,
                pad_id=meta.get("tokenizer.ggml.padding_token_id", -1),
                add_dummy_prefix=bool(meta.get("tokenizer.ggml.add_space_prefix", True)),
            )
        }
        config.update(tokenizer_class="LlamaTokenizer", unk_token=tokens[unk] if unk >= 0 else None)
    elif model == "gpt2":
        files = {"tokenizer.json": _byte_level_json(meta, tokens, types, bos, add_bos)}
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
    else:
        raise TokenizerError(f"no Hugging Face tokenizer files for tokenizer.ggml.model {model!r}")
    files["tokenizer_config.json"] = (json.dumps(config, indent=2) + "\n").encode()
    return files


def _byte_level_json(meta, tokens: list[str], types: list[int], bos, add_bos: bool) -> bytes:
    pre = meta.get("tokenizer.ggml.pre", "gpt-2")
    if pre not in PRE_TOKENIZERS:
        raise TokenizerError(
            f"tokenizer.ggml.pre {pre!r} has no tokenizer.json pre-tokenizer here (known: "
            f"{', '.join(PRE_TOKENIZERS)}); the export cannot write this tokenizer"
        )
    added = [
        {
            "id": i,
            "content": token,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": kind == CONTROL,
        }
        for i, (token, kind) in enumerate(zip(tokens, types, strict=True))
        if kind in (CONTROL, USER_DEFINED)
    ]
    post = None
    if add_bos and bos is not None:
        bos_token = {"SpecialToken": {"id": tokens[bos], "type_id": 0}}
        post = {
            "type": "TemplateProcessing",
            "single": [bos_token, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                bos_token,
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": tokens[bos], "type_id": 1}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {
                tokens[bos]: {"id": tokens[bos], "ids": [bos], "tokens": [tokens[bos]]}
            },
        }
    spec = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": PRE_TOKENIZERS[pre],
        "post_processor": post,
        "decoder": {**_BYTE_LEVEL, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": pre in ("llama-bpe", "llama3", "llama-v3"),
            # added tokens are listed above, not in the BPE vocabulary (as in Llama 3's file)
            "vocab": {
                t: i
                for i, (t, kind) in enumerate(zip(tokens, types, strict=True))
                if kind not in (CONTROL, USER_DEFINED)
            },
            "merges": [m.split(" ", 1) for m in meta.get("tokenizer.ggml.merges", [])],
        },
    }
    return json.dumps(spec, ensure_ascii=False).encode("utf-8")
