"""Speculative decoding by prompt lookup gives greedy decoding's own output."""

from __future__ import annotations

import pytest
from util import byte_tokenizer, random_model, small_config

import llama_np
from llama_np import generate
from llama_np.tools.speculative import SpeculationStats, propose, speculative_greedy


def test_propose_copies_what_followed_the_last_ngram():
    tokens = [5, 6, 7, 8, 9, 1, 6, 7]
    assert propose(tokens, 3) == [8, 9, 1]  # "6 7" occurred before, followed by 8 9 1
    assert propose(tokens, 10) == [8, 9, 1, 6, 7]  # up to the end of the context
    assert propose([1, 2, 3, 9, 2, 3, 4, 4, 3], 2) == [4, 4]  # "4 3" never: "3", latest first
    assert propose([1, 2, 3], 4) == []  # nothing repeats
    assert propose([4], 4) == []


def greedy(model, prompt, n, stop_ids=()):
    return [t for t in _tokens(model, prompt, n, stop_ids)]


def _tokens(model, prompt, n, stop_ids):
    stats = llama_np.GenerationStats()
    for _ in generate(model, prompt, n, temperature=0, stop_ids=stop_ids, stats=stats):
        pass
    return stats.tokens


MODEL = llama_np.load()  # stories260K: real text, which repeats itself


@pytest.mark.parametrize("k", [0, 1, 5])
@pytest.mark.parametrize("text", ["Once upon a time", "Lily and Tom went to the park. Lily and"])
def test_speculative_greedy_is_greedy(text, k):
    prompt = MODEL.tokenizer.encode(text)
    stats = SpeculationStats()
    out = speculative_greedy(MODEL, prompt, 80, k=k, stats=stats)
    assert out == _tokens(MODEL, prompt, 80, ())
    if k:
        assert stats.accepted > 0 and stats.passes < 79  # stories repeat: guesses land
    else:
        assert stats.passes == 79  # one token per pass after the prefill's


def test_speculative_greedy_stops_where_greedy_stops():
    prompt = MODEL.tokenizer.encode("The dog")
    stop = MODEL.config.stop_ids
    expected = _tokens(MODEL, prompt, 300, stop)
    assert len(expected) < 300  # greedy stopped at an end token (after 187 tokens)
    assert speculative_greedy(MODEL, prompt, 300, k=4, stop_ids=stop) == expected


def test_speculative_greedy_on_a_random_gqa_model():
    config = small_config(dim=64, n_layers=2, n_heads=8, n_kv_heads=2, hidden_dim=96,
                          vocab_size=64, max_seq_len=96)  # fmt: skip
    model = random_model(config, 3, byte_tokenizer(64))
    prompt = [1, 5, 9, 5, 9, 5, 9, 12]
    assert speculative_greedy(model, prompt, 80, k=5) == _tokens(model, prompt, 80, ())
