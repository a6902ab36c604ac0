"""Make the tokenizer.json fixtures in tests/data/tokenizers/ with Hugging Face `tokenizers`.

llama_np reads byte-level BPE tokenizer.json files without the `tokenizers` library; these
fixtures let the default tests check it against that library's own output:

  hf_gpt2/tokenizer.json     a small byte-level BPE trained here, GPT-2 pre-tokenizer
  hf_smollm/tokenizer.json   the same with SmolLM's Digits + ByteLevel pre-tokenizer, ChatML
                             special tokens and a tokenizer_config.json
  hf_expected.json           token ids that `tokenizers` produced for TEXTS with each of them,
                             with a tokenizer.json built from Meta's Llama 3 ranks (too big to
                             commit: the tests rebuild it), and for a ChatML conversation

Regenerate (tokenizers is not a dependency of llama_np):
    pip install tokenizers && python scripts/make_tokenizer_fixtures.py
"""

from __future__ import annotations

import codecs
import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "tokenizers"
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from tokenizer_helpers import bpe_merges, llama3_tokenizer_json  # noqa: E402

from llama_np.tokenizers.tiktoken_bpe import read_tiktoken_ranks  # noqa: E402

TEXTS = [
    "This is a test sentence.",
    "Hello world",
    "  leading spaces, trailing spaces   ",
    "tabs\tand\nnewlines\r\n\n\nand  double  spaces",
    "I'm sure they'll say it's fine, DON'T YOU'VE?",
    "Numbers: 1 12 123 1234 12345 3.14159 -42 1,000,000",
    "spaces before digits:  1   22\t3 x1y22",
    "café naïve résumé Ångström straße",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "emoji 🤗🦙 👩‍👩‍👧‍👦 flags 🇫🇷 and ❤️",
    "code: def f(x):\n    return x ** 2  # square\n",
    "<|im_start|> is plain text here",
    "",
    " ",
    "\n",
]

SMOLLM_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi! 123<|im_end|>\n"
    "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
    "<|im_start|>assistant\n"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def corpus() -> list[str]:
    with contextlib.redirect_stdout(io.StringIO()):  # importing `this` prints the Zen
        import this
    zen = codecs.decode(this.s, "rot13")
    return [zen, *TEXTS] * 3


def train(pre_tokenizer, special: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer)
    return tok


def main() -> None:
    expected: dict[str, object] = {}

    gpt2 = train(pre_tokenizers.ByteLevel(add_prefix_space=False), [])
    (DATA / "hf_gpt2").mkdir(exist_ok=True)
    gpt2.save(str(DATA / "hf_gpt2" / "tokenizer.json"))
    expected["hf_gpt2"] = [gpt2.encode(t).ids for t in TEXTS]

    smollm = train(
        pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False),
            ]
        ),
        SMOLLM_SPECIAL,
    )
    out = DATA / "hf_smollm"
    out.mkdir(exist_ok=True)
    smollm.save(str(out / "tokenizer.json"))
    config = {
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "chat_template": CHATML_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    # Plain text: special-token text is not split out (llama_np's default), so encode with
    # special tokens treated as text.
    smollm.encode_special_tokens = True
    expected["hf_smollm"] = [smollm.encode(t).ids for t in TEXTS]
    smollm.encode_special_tokens = False
    expected["hf_smollm_chatml"] = {"text": CHATML, "ids": smollm.encode(CHATML).ids}

    ranks = read_tiktoken_ranks(DATA / "llama3" / "tokenizer.model")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokenizer.json"
        path.write_text(json.dumps(llama3_tokenizer_json(ranks, bpe_merges(ranks))))
        llama3 = Tokenizer.from_file(str(path))
    expected["llama3_json"] = [llama3.encode(t, add_special_tokens=False).ids for t in TEXTS]

    expected["texts"] = TEXTS
    (DATA / "hf_expected.json").write_text(json.dumps(expected, ensure_ascii=False) + "\n")
    print(f"wrote fixtures to {DATA}")


if __name__ == "__main__":
    main()
