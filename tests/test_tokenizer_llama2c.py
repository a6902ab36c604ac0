"""llama2.c tokenizer: matches SentencePiece on Meta's vocabulary, round-trips, streams."""

from pathlib import Path

import pytest
import sentencepiece as spm
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from llama_np import TextStream, load_tokenizer
from llama_np.tokenizers import Llama2cTokenizer

DATA = Path(__file__).parent / "data" / "tokenizers"
TOK512 = Path(__file__).parents[1] / "weights" / "stories260K" / "tok512.bin"


@pytest.fixture(scope="module")
def sp():
    return spm.SentencePieceProcessor(model_file=str(DATA / "llama2" / "tokenizer.model"))


@pytest.fixture(scope="module")
def llama2_as_llama2c(sp):
    """Meta's Llama 2 vocabulary in llama2.c form: pieces with ▁ as space, and their scores
    (what llama2.c's tokenizer.py exports), so llama2.c's algorithm can be checked against
    the SentencePiece library itself."""
    pieces = [sp.id_to_piece(i).replace("\u2581", " ").encode() for i in range(sp.vocab_size())]
    return Llama2cTokenizer(pieces, [sp.get_score(i) for i in range(sp.vocab_size())])


@pytest.fixture(scope="module")
def tok512():
    return load_tokenizer(TOK512)


TEXTS = [
    "Hello world",
    "Once upon a time, there was a little girl named Lily.",
    "  two leading spaces",
    "tabs\tand\nnew lines\n\n",
    "日本語のテキスト",
    "emoji 🦙🦙 and accents: café, naïve",
    "numbers 1234567890 and symbols {}[]<>#@!",
    "x" * 40,
]


@pytest.mark.parametrize("text", TEXTS)
def test_encoding_matches_sentencepiece_library(text, sp, llama2_as_llama2c):
    assert llama2_as_llama2c.encode(text, bos=True) == sp.encode(text, add_bos=True)
    assert llama2_as_llama2c.decode(sp.encode(text)) == sp.decode(sp.encode(text))


@given(st.text(max_size=40))
@settings(max_examples=150, deadline=None)
def test_matches_sentencepiece_on_arbitrary_text(sp, llama2_as_llama2c, text):
    # U+2581 is SentencePiece's space symbol: the library reads it as a space, while llama2.c
    # (whose vocabulary stores spaces as " ") falls back to its UTF-8 bytes.
    assume("\u2581" not in text)
    assert llama2_as_llama2c.encode(text, bos=False) == sp.encode(text)


def test_known_encodings(tok512):
    assert tok512.encode("Once upon a time", bos=True) == [1, 403, 407, 261, 378]
    assert [tok512.pieces[i] for i in tok512.encode("Once upon a time", bos=False)] == [
        b" Once",
        b" upon",
        b" a",
        b" time",
    ]
    assert tok512.encode("", bos=True, eos=True) == [1, 2]


def test_byte_fallback(tok512):
    ids = tok512.encode("🦙", bos=False)  # not in a 512-piece vocabulary
    assert ids[-4:] == [b + 3 for b in "🦙".encode()]
    assert all(tok512.pieces[i].startswith(b"<0x") for i in ids[-4:])
    assert tok512.decode(ids) == "🦙"


@given(st.text(max_size=60))
@settings(max_examples=200, deadline=None)
def test_round_trip(tok512, text):
    ids = tok512.encode(text, bos=True, eos=True)
    assert tok512.decode(ids, skip_special=True) == text
    assert tok512.decode(ids) == f"<s>{' ' if text else ''}{text}</s>"  # as llama.cpp shows it


@given(st.text(max_size=40))
@settings(max_examples=200, deadline=None)
def test_streaming_yields_exactly_the_full_decode(tok512, text):
    ids = tok512.encode(text, bos=False)
    stream = TextStream(tok512, strip_leading_space=True)
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == tok512.decode(ids)


def test_streaming_holds_back_split_utf8(tok512):
    ids = tok512.encode("🦙", bos=False)[-4:]  # four byte-fallback tokens
    stream = TextStream(tok512)
    assert [stream.push(i) for i in ids[:3]] == ["", "", ""]  # incomplete: nothing to show yet
    assert stream.push(ids[3]) == "🦙"


def test_vocab_size_mismatch_is_refused():
    from llama_np import TokenizerError

    with pytest.raises(TokenizerError, match="512"):
        Llama2cTokenizer.from_file(TOK512, vocab_size=32000)
