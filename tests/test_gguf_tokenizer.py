"""Tokenizers from GGUF metadata encode exactly as the files they were made from.

The metadata is built twice: by llama_np's gguf_tokenizer_metadata, and here, independently,
the way llama.cpp's convert_hf_to_gguf.py builds it (the sentencepiece library's
piece/score/type API for Llama 2; byte-level token strings, control tokens and every-split
merges for Llama 3's tiktoken ranks; tokenizer.json's vocab, added tokens and merges). Both
must encode a few hundred varied strings as the original tokenizer does. The `gguf` package
writes and reads a real .gguf file for the round trip.
"""

from __future__ import annotations

import base64
import io
import random
import sys
from contextlib import redirect_stdout
from pathlib import Path

import gguf
import numpy as np
import pytest
import regex
import sentencepiece
from tokenizer_helpers import bpe_merges, tokenizer_json_reference
from util import random_tensors

import llama_np
from llama_np import TextStream, TokenizerError, load_tokenizer
from llama_np.chat import make_chat_format
from llama_np.checkpoints import DEFAULT_CHECKPOINT
from llama_np.cli import main
from llama_np.tokenizers.gguf import (
    LLAMA_CPP_DEFAULT_PATTERN,
    gguf_tokenizer_metadata,
    load_gguf_tokenizer,
)
from llama_np.tokenizers.tiktoken_bpe import LLAMA3_SPECIAL_TOKENS

DATA = Path(__file__).parent / "data" / "tokenizers"
LLAMA2 = DATA / "llama2" / "tokenizer.model"
LLAMA3 = DATA / "llama3" / "tokenizer.model"
K = gguf.Keys.Tokenizer
T = gguf.TokenType


def varied_texts(n: int = 300) -> list[str]:
    """Deterministic mixes of unicode, emoji, CJK, digit runs, code, whitespace runs,
    newlines and special-token text."""
    fragments = [
        "Hello world", "The quick brown fox", "naïve café", "Ünïcödé", "日本語のテキスト",
        "中文字符", "한국어", "Привет", "مرحبا", "🦙", "👩‍👩‍👧", "🎉🎉", "1234567890", "3.14159",
        "2024-05-01", "٣٤٥", "½²", "def f(x):\n    return x ** 2", "if (a && b) { c++; }",
        "<div class=\"x\">", "x = [1, 2, 3]", "   ", "\t\t", "\n", "\n\n\n", "\r\n", " ",
        "  a", "it's", "we'll", "I'M", "DON'T", "$100", "a+b=c", "~/path|pipe", "--flag",
        "<|begin_of_text|>", "<|eot_id|>", "<s>", "</s>", "<|im_start|>", "<|endoftext|>",
        "<0x41>", "«quote»", "…", "\u00a0", "\u3000", "e\u0301", "ℌ", "x" * 40, "99999999",
    ]  # fmt: skip
    rng = random.Random(1234)
    texts = list(fragments)
    while len(texts) < n:
        texts.append("".join(rng.choice(fragments) for _ in range(rng.randint(2, 6))))
    return texts


TEXTS = varied_texts()


# ---------------------------------------------------------------- the reference builders


def gpt2_byte_alphabet() -> dict[int, str]:
    """OpenAI's bytes_to_unicode (GPT-2's encoder.py), written out here: printable Latin-1
    bytes stand for themselves, the other 68 for chr(256), chr(257), ... in byte order."""
    keep = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)}
    keep |= set(range(ord("®"), ord("ÿ") + 1))
    others = [b for b in range(256) if b not in keep]
    return {b: chr(b) if b in keep else chr(256 + others.index(b)) for b in range(256)}


def llama2_reference() -> dict:
    """convert_hf_to_gguf.py's _create_vocab_sentencepiece + SpecialVocab, for Llama 2."""
    sp = sentencepiece.SentencePieceProcessor(model_file=str(LLAMA2))
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            types.append(T.UNKNOWN)
        elif sp.is_control(i):
            types.append(T.CONTROL)
        elif sp.is_unused(i):
            types.append(T.UNUSED)
        elif sp.is_byte(i):
            types.append(T.BYTE)
        else:
            types.append(T.NORMAL)
    return {
        K.MODEL: "llama",
        K.PRE: "default",
        K.LIST: tokens,
        K.SCORES: np.array(scores, dtype=np.float32),
        K.TOKEN_TYPE: np.array(types, dtype=np.int32),
        K.BOS_ID: sp.bos_id(),
        K.EOS_ID: sp.eos_id(),
        K.UNK_ID: sp.unk_id(),
        K.ADD_BOS: True,
        K.ADD_EOS: False,
    }


def llama3_reference() -> dict:
    """Meta's ranks as llama.cpp stores Llama 3 (via its Hugging Face tokenizer.json)."""
    ranks = {}
    for line in LLAMA3.read_bytes().splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    alphabet = gpt2_byte_alphabet()
    tokens = [""] * len(ranks)
    for token, rank in ranks.items():
        tokens[rank] = "".join(alphabet[b] for b in token)
    tokens += LLAMA3_SPECIAL_TOKENS
    types = [T.NORMAL] * len(ranks) + [T.CONTROL] * len(LLAMA3_SPECIAL_TOKENS)
    return {
        K.MODEL: "gpt2",
        K.PRE: "llama-bpe",
        K.LIST: tokens,
        K.TOKEN_TYPE: np.array(types, dtype=np.int32),
        K.MERGES: [" ".join(m) for m in bpe_merges(ranks)],
        K.BOS_ID: 128000,
        K.EOS_ID: 128001,
        K.ADD_BOS: True,
    }


# ---------------------------------------------------------------- fixtures

ORIGINALS = {
    "llama2": LLAMA2,
    "llama3": LLAMA3,
    "hf_gpt2": DATA / "hf_gpt2" / "tokenizer.json",
    "hf_smollm": DATA / "hf_smollm",
    "stories": DEFAULT_CHECKPOINT / "tok512.bin",
}
REFERENCES = {
    "llama2": llama2_reference,
    "llama3": llama3_reference,
    "hf_gpt2": lambda: tokenizer_json_reference(DATA / "hf_gpt2", "gpt-2"),
    "hf_smollm": lambda: tokenizer_json_reference(DATA / "hf_smollm", "smollm"),
}


@pytest.fixture(scope="module")
def originals():
    return {kind: load_tokenizer(path) for kind, path in ORIGINALS.items()}


@pytest.fixture(scope="module")
def ours(originals):
    return {kind: gguf_tokenizer_metadata(tok) for kind, tok in originals.items()}


@pytest.fixture(scope="module")
def references():
    return {kind: build() for kind, build in REFERENCES.items()}


@pytest.fixture(scope="module")
def gguf_llama3(references):
    return load_gguf_tokenizer(references["llama3"], 128256)


def assert_same_tokenizer(original, tok, texts=TEXTS):
    """Same ids for every text, with and without allow_special, and the same decode."""
    assert tok.vocab_size == original.vocab_size
    assert (tok.bos_id, tok.eos_id) == (original.bos_id, original.eos_id)
    assert tok.special_tokens == getattr(original, "special_tokens", tok.special_tokens)
    for text in texts:
        if "\u2581" in text:  # the space symbol: the sentencepiece library reads it as a space
            continue
        ids = original.encode(text)
        assert tok.encode(text) == ids, text
        assert tok.encode(text, bos=False, eos=True) == original.encode(text, bos=False, eos=True)
        if hasattr(original, "special_tokens"):
            special = original.encode(text, allow_special=True)
            assert tok.encode(text, allow_special=True) == special, text
            assert tok.decode(special) == original.decode(special)
        assert tok.decode(ids) == original.decode(ids)
        assert tok.decode(ids, skip_special=True) == original.decode(ids, skip_special=True)


# ---------------------------------------------------------------- same encodings


@pytest.mark.parametrize("kind", list(ORIGINALS))
def test_our_metadata_encodes_as_the_original(kind, originals, ours):
    original = originals[kind]
    tok = load_gguf_tokenizer(ours[kind], original.vocab_size, name=kind)
    assert_same_tokenizer(original, tok)
    assert tok.chat_template == original.chat_template


@pytest.mark.parametrize("kind", list(REFERENCES))
def test_converter_style_metadata_encodes_as_the_original(kind, originals, references, gguf_llama3):
    original = originals[kind]
    tok = (
        gguf_llama3
        if kind == "llama3"
        else load_gguf_tokenizer(references[kind], original.vocab_size, name=kind)
    )
    assert_same_tokenizer(original, tok)
    assert tok.chat_template == original.chat_template


def test_known_vectors_through_gguf(references, gguf_llama3):
    llama3 = gguf_llama3
    ids = llama3.encode("This is a test sentence.", eos=True)
    assert ids == [128000, 2028, 374, 264, 1296, 11914, 13, 128001]
    assert llama3.decode(ids) == "<|begin_of_text|>This is a test sentence.<|end_of_text|>"
    llama2 = load_gguf_tokenizer(references["llama2"], 32000)
    assert llama2.encode("Hello world") == [1, 15043, 3186]
    assert llama2.decode([1, 15043, 3186, 2]) == "<s> Hello world</s>"
    assert llama2.decode([1, 15043, 3186, 2], skip_special=True) == "Hello world"


@pytest.mark.parametrize("pre, bos", [("smaug-bpe", False), ("dbrx", False), ("falcon3", True)])
def test_llama3s_regex_under_other_names(pre, bos, references):
    """Llama-architecture GGUFs whose converter names the Llama 3 regex otherwise (Smaug-Llama-3,
    Falcon3) encode as Llama 3; BOS as llama.cpp adds it when the file does not say."""
    meta = {k: v for k, v in references["llama3"].items() if k != K.ADD_BOS}
    tok = load_gguf_tokenizer({**meta, K.PRE: pre}, 128256)
    ids = tok.encode("This is a test sentence.")
    assert ids == [128000] * bos + [2028, 374, 264, 1296, 11914, 13]


def test_sentencepiece_metadata_is_the_converters(ours, references):
    """For SentencePiece the two builders must agree entry by entry."""
    mine, ref = ours["llama2"], references["llama2"]
    assert mine[K.LIST] == ref[K.LIST]
    np.testing.assert_array_equal(mine[K.SCORES], ref[K.SCORES])
    np.testing.assert_array_equal(mine[K.TOKEN_TYPE], ref[K.TOKEN_TYPE])
    assert {k: mine[k] for k in (K.BOS_ID, K.EOS_ID, K.UNK_ID, K.MODEL, K.PRE)} == {
        k: ref[k] for k in (K.BOS_ID, K.EOS_ID, K.UNK_ID, K.MODEL, K.PRE)
    }


def test_byte_level_metadata_is_the_converters(ours, references):
    for kind in ("llama3", "hf_gpt2", "hf_smollm"):
        mine, ref = ours[kind], references[kind]
        assert mine[K.LIST] == ref[K.LIST], kind
        assert mine[K.PRE] == ref[K.PRE]
        np.testing.assert_array_equal(mine[K.TOKEN_TYPE], ref[K.TOKEN_TYPE])
    # tokenizer.json's own merges are kept; Llama 3's are every split, in rank order
    assert ours["hf_gpt2"][K.MERGES] == references["hf_gpt2"][K.MERGES]
    assert sorted(ours["llama3"][K.MERGES]) == sorted(references["llama3"][K.MERGES])


def test_add_bos_and_add_eos_are_honoured(references):
    meta = dict(references["llama2"], **{K.ADD_BOS: False, K.ADD_EOS: True})
    tok = load_gguf_tokenizer(meta, 32000)
    assert tok.encode("Hello world") == [15043, 3186, 2]
    assert tok.encode("Hello world", eos=False) == [15043, 3186]
    smollm = load_gguf_tokenizer(dict(references["hf_smollm"], **{K.ADD_BOS: True}), 420)
    assert smollm.encode("hi")[0] == smollm.bos_id == 1
    no_prefix = load_gguf_tokenizer(dict(references["llama2"], **{K.ADD_PREFIX: False}), 32000)
    assert no_prefix.encode("Hello", bos=False) != tok.encode("Hello", bos=False, eos=False)


def test_special_tokens_come_only_from_allowed_text(references, gguf_llama3):
    tok = gguf_llama3
    plain = tok.encode("<|eot_id|>", bos=False)
    assert 128009 not in plain and tok.decode(plain) == "<|eot_id|>"
    assert tok.encode("<|eot_id|>", bos=False, allow_special=True) == [128009]
    # User-defined tokens (convert_hf_to_gguf.py's non-special added tokens, a fine-tune's
    # tool-call tags) are text: always matched, decoded as their text, as llama.cpp does;
    # control tokens only with allow_special.
    meta = dict(references["hf_gpt2"])
    meta[K.LIST] = [*meta[K.LIST], "<tool>", "<|ctl|>"]
    kinds = np.array([T.USER_DEFINED, T.CONTROL], dtype=np.int32)
    meta[K.TOKEN_TYPE] = np.append(meta[K.TOKEN_TYPE], kinds)
    tool = load_gguf_tokenizer(meta, 422)
    ids = tool.encode("a <tool> b<|ctl|>")
    assert 420 in ids and 421 not in ids
    assert tool.decode(ids, skip_special=True) == "a <tool> b<|ctl|>"
    assert tool.encode("a <tool> b<|ctl|>", allow_special=True)[-1] == 421
    assert tool.decode([420, 421], skip_special=True) == "<tool>"
    assert gguf_tokenizer_metadata(tool)[K.TOKEN_TYPE][420:].tolist() == kinds.tolist()
    # the same in a SentencePiece-style (`llama`) vocabulary
    meta = dict(references["llama2"])
    meta[K.LIST] = [*meta[K.LIST], "<tool>"]
    meta[K.SCORES] = np.append(meta[K.SCORES], np.float32(0))
    meta[K.TOKEN_TYPE] = np.append(meta[K.TOKEN_TYPE], np.int32(T.USER_DEFINED))
    spm = load_gguf_tokenizer(meta, 32001)
    ids = spm.encode("Hello <tool> world</s>", bos=False)
    assert 32000 in ids and spm.eos_id not in ids
    assert spm.decode(ids, skip_special=True) == "Hello <tool> world</s>"


# ---------------------------------------------------------------- a real .gguf file


def write_and_read(tmp_path: Path, meta: dict) -> dict:
    """Write `meta` with gguf's GGUFWriter, read it back with GGUFReader, as a dict."""
    path = tmp_path / "tokenizer.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    for key, value in meta.items():
        if isinstance(value, np.ndarray):
            writer.add_array(key, value.tolist())  # floats are written as FLOAT32, ints INT32
        elif isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_array(key, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    reader = gguf.GGUFReader(str(path))
    out = {}
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY and field.types[-1] == gguf.GGUFValueType.STRING:
            out[key] = field.contents()
        elif kind == gguf.GGUFValueType.ARRAY:
            out[key] = np.array(field.contents())
        else:
            out[key] = field.contents()
    return out


@pytest.mark.parametrize("kind", ["stories", "hf_smollm"])  # small: GGUFReader is slow
def test_round_trip_through_a_gguf_file(kind, tmp_path, originals, ours):
    original = originals[kind]
    read = write_and_read(tmp_path, ours[kind])
    assert set(read) == set(ours[kind])
    tok = load_gguf_tokenizer(read, original.vocab_size, name=str(tmp_path))
    assert_same_tokenizer(original, tok, TEXTS[:100])
    assert tok.chat_template == original.chat_template


# ---------------------------------------------------------------- llama.cpp's default


def llama_cpp_default_split(text: str) -> list[str]:
    """llama.cpp's `default` BPE pre-tokenizer: four regexes, each run on every piece the
    previous ones made; matched and unmatched stretches both become pieces."""
    steps = [
        r"[\p{P}\$\+<=>\^~\|]+",
        r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
        r"\p{N}+",
        r"[0-9][0-9][0-9]",
    ]
    pieces = [text]
    for step in steps:
        out = []
        for piece in pieces:
            pos = 0
            for m in regex.finditer(step, piece):
                out += [piece[pos : m.start()], m[0]] if m.start() > pos else [m[0]]
                pos = m.end()
            out += [piece[pos:]] if pos < len(piece) else []
        pieces = out
    return pieces


def test_default_pre_tokenizer_is_llama_cpps_cascade(references):
    rng = random.Random(7)
    alphabet = [*"ab Z\t\n\r  ,.!?'\"$+<=>^~|`€©§-_()[]{}0123456789٣²½日🦙é\u00a0", "'s"]
    texts = TEXTS + ["".join(rng.choice(alphabet) for _ in range(12)) for _ in range(3000)]
    for text in texts:
        assert regex.findall(LLAMA_CPP_DEFAULT_PATTERN, text) == llama_cpp_default_split(text)
    # and tiktoken splits the same way: encoding piece by piece gives the same ids
    tok = load_gguf_tokenizer(dict(references["hf_gpt2"], **{K.PRE: "default"}), 420)
    for text in TEXTS[:100]:
        pieces = llama_cpp_default_split(text)
        assert tok.encode(text) == [i for p in pieces for i in tok.encode(p)], text


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({K.MODEL: "bert"}, r"tokenizer.ggml.model is 'bert'.*supported: 'llama'.*'gpt2'"),
        ({K.PRE: "qwen2"}, r"tokenizer.ggml.pre = 'qwen2' is not supported.*llama-bpe"),
        ({K.MERGES: None}, "metadata key tokenizer.ggml.merges is missing"),
        ({K.LIST: "abc"}, "tokenizer.ggml.tokens must be a list, got str"),
        ({K.TOKEN_TYPE: np.zeros(3, dtype=np.int32)}, "token_type must be 420 numbers"),
        ({K.BOS_ID: 999}, "bos_token_id is 999; expected a token id in 0..419"),
        ({K.ADD_BOS: "yes"}, "add_bos_token must be true or false"),
    ],
)
def test_bad_metadata_is_refused_by_name(change, message, references):
    meta = dict(references["hf_smollm"], **change)
    meta = {k: v for k, v in meta.items() if v is not None}
    with pytest.raises(TokenizerError, match=message) as e:
        load_gguf_tokenizer(meta, 420, name="model.gguf")
    assert str(e.value).startswith("model.gguf: ")


def test_bad_token_type_and_sizes_are_refused(references):
    meta = dict(references["hf_smollm"])
    meta[K.TOKEN_TYPE] = meta[K.TOKEN_TYPE].copy()
    meta[K.TOKEN_TYPE][7] = 9
    with pytest.raises(TokenizerError, match="token_type of token 7 is 9"):
        load_gguf_tokenizer(meta, 420)
    with pytest.raises(TokenizerError, match="420 tokens but the model only 100"):
        load_gguf_tokenizer(references["hf_smollm"], 100)


def test_a_single_byte_without_a_token_is_left_out(references, capsys):
    """As SmolLM2's vocabulary lacks 21 bytes (tests/test_real_files.py has the real one):
    the vocabulary loads, and the byte contributes no token, as in transformers."""
    meta = dict(references["hf_smollm"])
    meta[K.TOKEN_TYPE] = meta[K.TOKEN_TYPE].copy()
    byte = meta[K.LIST].index("A")
    meta[K.TOKEN_TYPE][byte] = T.UNUSED  # hide a single-byte token
    tok = load_gguf_tokenizer(meta, 420, name="model.gguf")
    assert tok.missing_bytes == b"A"
    full = load_gguf_tokenizer(references["hf_smollm"], 420)
    assert tok.encode("x A y", bos=False) == full.encode("x  y", bos=False)
    assert "model.gguf: the text contains byte 0x41" in capsys.readouterr().err


# ---------------------------------------------------------------- special tokens in text


@pytest.mark.parametrize("kind", ["llama2", "llama3", "hf_smollm", "stories"])  # have an EOS
def test_decode_shows_special_tokens_unless_skipped(kind, originals):
    tok = originals[kind]
    ids = tok.encode("Hi there", eos=True)
    assert ids[-1] == tok.eos_id
    eos_name = {i: n for n, i in tok.special_tokens.items()}[tok.eos_id]
    assert tok.decode(ids).endswith("Hi there" + eos_name)
    assert tok.decode(ids, skip_special=True) == "Hi there"
    assert tok.token_bytes(tok.eos_id) == b""
    assert tok.token_bytes(tok.eos_id, special=True) == eos_name.encode()
    stream = TextStream(tok, special=True)
    assert stream.push(tok.eos_id) == eos_name
    assert TextStream(tok).push(tok.eos_id) == ""


def force_token(model, token: int):
    """A logits hook that makes `token` the greedy choice."""

    def hook(name, logits):
        forced = np.full_like(logits, -1e9)  # same shape as the logits
        forced[..., token] = 0.0
        return forced

    return model.add_hook("logits", hook)


def test_generate_streams_special_tokens_only_when_asked(stories260k):
    remove = force_token(stories260k, 2)  # </s>, kept going by stop_ids=()
    try:
        args = dict(temperature=0, stop_ids=())
        assert llama_np.generate_text(stories260k, "Once", 3, **args) == ""
        shown = llama_np.generate_text(stories260k, "Once", 3, special=True, **args)
        assert shown == "</s></s></s>"
    finally:
        remove()


def tiny_model(tokenizer) -> llama_np.Model:
    """A random-weight dim-16 model around `tokenizer`."""
    config = llama_np.LlamaConfig(
        dim=16,
        n_layers=1,
        n_heads=2,
        n_kv_heads=1,
        hidden_dim=32,
        vocab_size=tokenizer.vocab_size,
        max_seq_len=64,
        tie_embeddings=True,
        bos_id=tokenizer.bos_id,
        stop_ids=(tokenizer.eos_id,),
    )
    return llama_np.Model.from_tensors(config, random_tensors(config), tokenizer)


def test_cli_special_flag(gguf_llama3, monkeypatch):
    """--special on generate and chat, with a model whose tokenizer came from GGUF metadata."""
    model = tiny_model(gguf_llama3)
    monkeypatch.setattr(sys.modules["llama_np.cli.main"], "load", lambda *a, **k: model)
    remove = force_token(model, 128006)  # <|start_header_id|>: special, not an end token
    try:
        for flags, expected in (([], ""), (["--special"], "<|start_header_id|>" * 3)):
            out = io.StringIO()
            with redirect_stdout(out):
                main(["generate", "-p", "Hi", "-n", "3", "--temp", "0", *flags])
            assert out.getvalue() == f"Hi{expected}\n"
            monkeypatch.setattr("sys.stdin", io.StringIO("Hello\n"))
            out = io.StringIO()
            with redirect_stdout(out):
                main(["chat", "-n", "3", "--temp", "0", *flags])
            assert out.getvalue() == f"{expected}\n"
    finally:
        remove()


@pytest.mark.parametrize("chat_format", ["llama2", "zephyr"])
def test_chat_formats_with_a_gguf_sentencepiece_vocabulary(chat_format, originals, references):
    """The continuation encoding (no dummy prefix after a special token) works the same."""
    dialog = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi! <s> 1 2 3"},
        {"role": "assistant", "content": "Hello.\n  How can I help?"},
        {"role": "user", "content": "日本語 🦙"},
    ]
    tok = load_gguf_tokenizer(references["llama2"], 32000)
    expected = make_chat_format(originals["llama2"], chat_format).dialog(dialog)
    assert make_chat_format(tok, chat_format).dialog(dialog) == expected
