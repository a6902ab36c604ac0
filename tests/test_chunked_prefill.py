"""generate(prefill_chunk=N) / --prefill-chunk: the prompt in passes of N tokens, same text."""

import pytest

import llama_np
from llama_np.cli import main
from llama_np.errors import ArgumentError
from llama_np.generate import generate
from llama_np.hooks import record

PROMPT = "Once upon a time, there was a little girl"


@pytest.fixture(scope="module")
def model():
    return llama_np.load()


@pytest.mark.parametrize("chunk", [1, 2, 3, 100])
def test_chunked_prefill_gives_the_same_text_in_passes_of_chunk(model, chunk):
    whole = llama_np.generate_text(model, PROMPT, 12, temperature=0)
    n = len(model.tokenizer.encode(PROMPT))
    with record(model, "tokens") as rec:
        pieces = generate(model, PROMPT, 12, temperature=0, prefill_chunk=chunk)
        assert "".join(pieces) == whole
    prefill_passes = [len(t) for t in rec["tokens"]][: -(12 - 1)]  # then one per decode step
    assert prefill_passes == [min(chunk, n - s) for s in range(0, n, chunk)]


@pytest.mark.parametrize("bad", [0, -2, 1.5])
def test_prefill_chunk_must_be_positive(model, bad):
    with pytest.raises(ArgumentError, match="prefill_chunk must be a positive integer"):
        generate(model, PROMPT, 4, prefill_chunk=bad)


def test_cli_prefill_chunk(capsys):
    assert main(["generate", "-p", PROMPT, "-n", "4", "--temp", "0", "--prefill-chunk", "0"]) == 1
    assert "prefill_chunk must be a positive integer, got 0" in capsys.readouterr().err
