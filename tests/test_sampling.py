"""Sampling: reproducible per seed, filters never pick excluded tokens, greedy is argmax."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from llama_np import ArgumentError, SamplingParams, sample
from llama_np.sampling import apply_repetition_penalty, candidates

logit_arrays = arrays(np.float32, st.integers(2, 200), elements=st.floats(-20, 20, width=32))


@given(logit_arrays)
def test_temperature_zero_is_argmax(logits):
    rng = np.random.default_rng(0)
    assert sample(logits, SamplingParams(temperature=0), rng) == int(np.argmax(logits))


@given(logit_arrays, st.integers(0, 2**31))
@settings(max_examples=50)
def test_same_seed_same_choices(logits, seed):
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    draws = [
        [sample(logits, params, rng) for _ in range(5)]
        for rng in (np.random.default_rng(seed), np.random.default_rng(seed))
    ]
    assert draws[0] == draws[1]


def _probs(logits, temperature=1.0):
    p = np.exp((logits - logits.max()) / temperature, dtype=np.float64)
    return p / p.sum()


@given(logit_arrays, st.integers(1, 10), st.integers(0, 2**31))
@settings(max_examples=100)
def test_top_k_never_picks_outside_the_k_most_likely(logits, k, seed):
    rng = np.random.default_rng(seed)
    params = SamplingParams(temperature=1.0, top_k=k, top_p=1.0, min_p=0.0)
    p = _probs(logits)
    kth = np.sort(p)[::-1][min(k, len(logits)) - 1]
    for _ in range(5):  # (ties within float32 rounding may go either way)
        assert p[sample(logits, params, rng)] >= kth * (1 - 1e-6)


@given(logit_arrays, st.floats(0.05, 1.0), st.integers(0, 2**31))
@settings(max_examples=100)
def test_top_p_keeps_the_smallest_set_reaching_p(logits, top_p, seed):
    ids = candidates(_probs(logits).astype(np.float32), 0, top_p, 0.0)
    p = _probs(logits)
    order = np.argsort(-p, kind="stable")
    # the kept set reaches top_p, and without its least likely member it would not
    assert p[ids].sum() >= top_p - 1e-5
    assert p[ids[:-1]].sum() < top_p + 1e-5
    # members of a tie at the edge may go either way: ties as candidates() sees them, in float32
    p32 = p.astype(np.float32)
    assert set(ids) <= set(order[: len(ids) + np.sum(p32 == p32[ids[-1]])])
    params = SamplingParams(temperature=1.0, top_k=0, top_p=top_p, min_p=0.0)
    rng = np.random.default_rng(seed)
    # sample() rounds to float32 itself: members of a tie at the edge may go either way
    for _ in range(5):
        assert p[sample(logits, params, rng)] >= p[ids].min() * (1 - 1e-6)


@given(logit_arrays, st.floats(0.01, 1.0), st.integers(0, 2**31))
@settings(max_examples=100)
def test_min_p_never_picks_tokens_below_min_p_times_max(logits, min_p, seed):
    rng = np.random.default_rng(seed)
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=min_p)
    p = _probs(logits)
    for _ in range(5):
        assert p[sample(logits, params, rng)] >= min_p * p.max() * (1 - 1e-5)


def test_sampling_frequencies_follow_probabilities():
    logits = np.log(np.array([0.5, 0.3, 0.2], dtype=np.float32))
    rng = np.random.default_rng(1)
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    counts = np.bincount([sample(logits, params, rng) for _ in range(4000)], minlength=3)
    np.testing.assert_allclose(counts / 4000, [0.5, 0.3, 0.2], atol=0.03)


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = np.array([2.0, -2.0, 1.0], dtype=np.float32)
    out = apply_repetition_penalty(logits, [0, 1, 1], 2.0)
    np.testing.assert_allclose(out, [1.0, -4.0, 1.0])
    assert logits[0] == 2.0  # the input is not modified
    params = SamplingParams(temperature=0, repetition_penalty=3.0)
    assert sample(logits, params, np.random.default_rng(), recent=[0]) == 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"min_p": -0.1}, "min_p"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ],
)
def test_invalid_values_raise_clear_errors(kwargs, match):
    with pytest.raises(ArgumentError, match=match):
        SamplingParams(**kwargs)
