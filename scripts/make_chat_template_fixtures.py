"""Render conversations through real chat templates with transformers' apply_chat_template.

Writes tests/data/chat_templates/expected.json: for each template in that directory (the
real templates of Llama 2 chat, Llama 3.1 / 3.2 Instruct, TinyLlama chat and SmolLM2
Instruct; where each came from: PROVENANCE.md; and jinja-features.jinja, written here to
exercise the Jinja features templates use) and each conversation below, the text
transformers renders (or the message of the exception the template raises), and for the
templates whose tokenizer is available here as a Hugging Face tokenizer.json, the token ids
transformers makes of it (apply_chat_template(tokenize=True)):

  Llama 3.x   a tokenizer.json built from Meta's Llama 3 ranks (tests/data/tokenizers/llama3),
              as the meta-llama HF repos lay it out
  SmolLM2     tests/data/tokenizers/hf_smollm (a small test vocabulary with SmolLM's special
              tokens and pre-tokenizer)

Llama 2 and TinyLlama are SentencePiece models; transformers would need the protobuf package
to convert their tokenizer.model, so only their text is recorded.

strftime_now (Llama 3.2 writes today's date) is pinned to DATE.

Regenerate (transformers is not a dependency of llama_np, and needs no torch for this):
    pip install transformers && python scripts/make_chat_template_fixtures.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from datetime import datetime
from pathlib import Path

import jinja2
import transformers
import transformers.utils.chat_template_utils as chat_template_utils
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "chat_templates"
TOKENIZERS = ROOT / "tests" / "data" / "tokenizers"
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from tokenizer_helpers import bpe_merges, llama3_tokenizer_json  # noqa: E402

from llama_np.tokenizers.tiktoken_bpe import read_tiktoken_ranks  # noqa: E402

DATE = datetime(2024, 9, 25, 12, 0, 0)

# The special-token strings each model's tokenizer_config.json sets (what the template sees).
LLAMA2_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
LLAMA3_TOKENS = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
TEMPLATES = {
    "llama-2-chat": ("llama-2-chat.jinja", LLAMA2_TOKENS, None),
    "llama-3.1-instruct": ("llama-3.1-instruct.jinja", LLAMA3_TOKENS, "llama3"),
    "llama-3.2-instruct": ("llama-3.2-instruct.jinja", LLAMA3_TOKENS, "llama3"),
    "tinyllama-chat": ("tinyllama-chat.jinja", {**LLAMA2_TOKENS, "pad_token": "</s>"}, None),
    "smollm2-instruct": (
        "smollm2-instruct.jinja",
        {
            "bos_token": "<|im_start|>",
            "eos_token": "<|im_end|>",
            "unk_token": "<|endoftext|>",
            "pad_token": "<|im_end|>",
        },
        "smollm",
    ),
    # written here: namespace, loop controls, trim_blocks/lstrip_blocks, filters, tojson options
    "jinja-features": ("jinja-features.jinja", LLAMA2_TOKENS, None),
}

SYSTEM = {"role": "system", "content": "You are a terse assistant."}
USER1 = {"role": "user", "content": "Hi! What is 2+2?"}
REPLY1 = {"role": "assistant", "content": "2+2 is 4. Anything else?"}
USER2 = {"role": "user", "content": "  Café, naïve — 日本語 and 🦙?\n"}  # untrimmed, unicode
REPLY2 = {"role": "assistant", "content": "Yes: all of them.\n\nBye."}

# (messages, add_generation_prompt)
CONVERSATIONS = [
    ([USER1], True),  # no system prompt (SmolLM2 adds its default one)
    ([SYSTEM, USER1], True),
    ([SYSTEM, USER1], False),
    ([USER1, REPLY1, USER2], True),  # multi-turn, no system
    ([SYSTEM, USER1, REPLY1, USER2], True),
    ([SYSTEM, USER1, REPLY1, USER2, REPLY2], False),  # ends with the assistant
    ([USER1, REPLY1], False),
    ([SYSTEM, USER1, USER2], True),  # roles do not alternate: Llama 2's template refuses
]


class FixedDatetime(datetime):
    """What strftime_now sees while rendering."""

    @classmethod
    def now(cls, tz=None):
        return DATE


def hf_tokenizer(kind: str | None, special: dict, tmp: Path) -> PreTrainedTokenizerFast:
    """A transformers tokenizer carrying the model's special-token strings: the real
    vocabulary where one is available here, else a stand-in (only its special tokens matter
    for rendering text)."""
    if kind == "llama3":
        ranks = read_tiktoken_ranks(TOKENIZERS / "llama3" / "tokenizer.model")
        path = tmp / "llama3.json"
        path.write_text(json.dumps(llama3_tokenizer_json(ranks, bpe_merges(ranks))))
        return PreTrainedTokenizerFast(tokenizer_file=str(path), **special)
    if kind == "smollm":
        path = TOKENIZERS / "hf_smollm" / "tokenizer.json"
        return PreTrainedTokenizerFast(tokenizer_file=str(path), **special)
    vocab = {name: i for i, name in enumerate(dict.fromkeys(special.values()))}
    stand_in = Tokenizer(models.WordLevel(vocab, unk_token=special["unk_token"]))
    return PreTrainedTokenizerFast(tokenizer_object=stand_in, **special)


def main() -> None:
    chat_template_utils.datetime = FixedDatetime  # strftime_now's clock
    expected = {
        "generated_by": f"transformers {transformers.__version__}, jinja2 {jinja2.__version__}",
        "strftime_now": DATE.isoformat(),
        "templates": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, (file, special, kind) in TEMPLATES.items():
            template = (OUT / file).read_text(encoding="utf-8")
            tokenizer = hf_tokenizer(kind, special, Path(tmp))
            cases = []
            for messages, add_generation_prompt in CONVERSATIONS:
                case = {"messages": messages, "add_generation_prompt": add_generation_prompt}
                kwargs = dict(chat_template=template, add_generation_prompt=add_generation_prompt)
                try:
                    case["text"] = tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
                except jinja2.TemplateError as e:
                    case["error"] = str(e)
                else:
                    if kind is not None:
                        ids = tokenizer.apply_chat_template(messages, tokenize=True, **kwargs)
                        case["ids"] = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
                cases.append(case)
            expected["templates"][name] = {"file": file, "special_tokens": special, "cases": cases}
            print(f"{name}: {len(cases)} conversations")
    path = OUT / "expected.json"
    path.write_text(json.dumps(expected, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
