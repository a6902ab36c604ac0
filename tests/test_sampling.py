"""Sampling against a plain reference written here: the kept tokens of top-k, top-p and min-p,
the repetition penalty, and the distribution of many seeded draws at temperatures != 1.

The reference (`reference_*` below) is plain Python over float64 lists, written from the
definitions in sampling.py's docstrings, not from its code: penalty, then softmax(logits / T),
then top-k, top-p (the smallest most-likely-first prefix whose renormalized mass reaches top_p),
min-p (at least min_p × the most likely kept token), then a draw proportional to what is left.
"""

import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from llama_np import ArgumentError, SamplingParams, sample
from llama_np.sampling import apply_repetition_penalty, candidates

logit_arrays = arrays(np.float32, st.integers(2, 200), elements=st.floats(-20, 20, width=32))
short_logit_arrays = arrays(np.float32, st.integers(2, 64), elements=st.floats(-20, 20, width=32))
# Few distinct values: ties everywhere, at the cut of every filter too.
tied_logit_arrays = arrays(
    np.float32, st.integers(2, 40), elements=st.sampled_from([-3.0, 0.0, 1.5, 1.5, 2.0])
)


# ---------------------------------------------------------------- the reference


def reference_penalty(logits, recent, penalty):
    """CTRL's repetition penalty: each token seen in `recent` (once, however often it was
    seen) has a positive logit divided by the penalty, a negative one multiplied by it."""
    out = [float(x) for x in logits]
    for token in set(recent):
        out[token] = out[token] / penalty if out[token] > 0 else out[token] * penalty
    return out


def reference_softmax(logits, temperature=1.0):
    top = max(logits)
    weights = [math.exp((x - top) / temperature) for x in logits]
    total = sum(weights)
    return [w / total for w in weights]


def reference_keep(probs, top_k, top_p, min_p):
    """The ids top-k, top-p and min-p keep, most likely first (ties: the lower id first)."""
    order = sorted(range(len(probs)), key=lambda i: (-probs[i], i))
    kept = order[:top_k] if top_k > 0 else order
    if top_p < 1.0:
        mass = sum(probs[i] for i in kept)  # top-p sees the top-k set renormalized
        reached, n = 0.0, 0
        for i in kept:
            reached += probs[i] / mass
            n += 1
            if reached >= top_p:
                break
        kept = kept[:n]
    if min_p > 0.0:
        kept = [i for i in kept if probs[i] >= min_p * probs[kept[0]]]
    return kept


def reference_distribution(logits, params, recent=()):
    """What sample() draws from: (V,) float64 probabilities, 0 outside the kept tokens."""
    if params.repetition_penalty != 1.0:
        logits = reference_penalty(logits, recent, params.repetition_penalty)
    probs = reference_softmax([float(x) for x in logits], params.temperature)
    kept = reference_keep(probs, params.top_k, params.top_p, params.min_p)
    out = np.zeros(len(probs))
    out[kept] = [probs[i] for i in kept]
    return out / out.sum()


# ---------------------------------------------------------------- the kept tokens


def probabilities32(logits):
    """float32 probabilities summing to 1, as sample() hands them to candidates()."""
    return np.asarray(reference_softmax([float(x) for x in logits]), dtype=np.float32)


def assert_keeps_what_the_reference_keeps(ids, probs32, top_k, top_p, min_p):
    """`ids` are the reference's kept tokens, up to ties: the same number (within the rounding
    of top_p's and min_p's thresholds: the reference run a hair below and above them brackets
    it) of the most likely tokens, most likely first. Tokens tied at the cut may be either."""
    p = [float(x) for x in probs32]
    fewest = reference_keep(p, top_k, top_p * (1 - 1e-9), min(1.0, min_p * (1 + 1e-6)))
    most = reference_keep(p, top_k, min(1.0, top_p * (1 + 1e-9)), min_p * (1 - 1e-6))
    assert len(fewest) <= len(ids) <= len(most), (len(fewest), len(ids), len(most))
    assert len(set(ids.tolist())) == len(ids)
    kept = probs32[ids]
    assert np.all(kept[:-1] >= kept[1:]), "not most likely first"
    # the most likely len(ids) tokens, whichever of a tie at the cut
    np.testing.assert_array_equal(kept, np.sort(probs32)[::-1][: len(ids)])


@given(
    st.one_of(short_logit_arrays, tied_logit_arrays),
    st.integers(0, 70),
    st.one_of(st.just(1.0), st.floats(0.01, 1.0)),
    st.one_of(st.just(0.0), st.floats(0.0, 1.0)),
)
@settings(max_examples=150)
# top-p 0.9 of [.8, .02 × 10] keeps the .8 and five of the .02s: a pre-filter that drops tokens
# below 3 × (1 - top_p) / (n - 1) would keep the .8 alone
@example(np.log(np.array([0.8] + [0.02] * 10, dtype=np.float32)), 0, 0.9, 0.0)
@example(np.log(np.array([0.8] + [0.02] * 10, dtype=np.float32)), 5, 0.9, 0.0)
@example(np.array([1, 1, 1, 0], dtype=np.float32), 2, 1.0, 0.0)  # a tie across the top-k cut
@example(np.array([1, 1, 1, 0], dtype=np.float32), 0, 0.5, 0.0)  # ... across the top-p cut
@example(np.array([2, 1, 1, 1], dtype=np.float32), 0, 1.0, 0.36)  # the ties are the min-p cut
@example(np.array([20, -20, -20], dtype=np.float32), 0, 0.999, 0.0)  # one token holds the mass
@example(np.array([20, -20, -20], dtype=np.float32), 2, 1.0, 1.0)
@example(np.array([0, 0], dtype=np.float32), 0, 0.5, 0.0)  # exactly top_p after one
@example(np.array([3, 2, 1, 0, -1], dtype=np.float32), 3, 0.95, 0.05)  # llama.cpp's defaults
def test_filters_keep_what_the_reference_keeps(logits, top_k, top_p, min_p):
    probs = probabilities32(logits)
    ids = candidates(probs, top_k, top_p, min_p)
    assert_keeps_what_the_reference_keeps(ids, probs, top_k, top_p, min_p)


@given(
    st.one_of(logit_arrays, tied_logit_arrays),
    st.lists(st.integers(0, 10**6), max_size=20),  # token ids, modulo V
    st.floats(0.05, 20.0),
)
@settings(max_examples=100)
@example(np.array([2, -2, 0, 1], dtype=np.float32), [0, 1, 1, 2], 2.0)  # +, -, 0, unseen
@example(np.array([2, -2, 0, 1], dtype=np.float32), [], 2.0)  # nothing seen yet
def test_repetition_penalty_matches_the_reference(logits, seen, penalty):
    recent = [i % len(logits) for i in seen]
    got = apply_repetition_penalty(logits, recent, penalty)
    assert got.dtype == logits.dtype
    expected = reference_penalty(logits, recent, penalty)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-30)
    assert not np.shares_memory(got, logits)


def test_repetition_penalty_by_hand():
    logits = np.array([2.0, -2.0, 1.0], dtype=np.float32)
    out = apply_repetition_penalty(logits, [0, 1, 1], 2.0)
    np.testing.assert_allclose(out, [1.0, -4.0, 1.0])
    assert logits[0] == 2.0  # the input is not modified
    params = SamplingParams(temperature=0, repetition_penalty=3.0)
    assert sample(logits, params, np.random.default_rng(), recent=[0]) == 2


# ---------------------------------------------------------------- the draws as a distribution

ALPHA = 1e-9  # the chance that a correct sampler fails one distribution check


def assert_draws_follow(counts, expected, alpha=ALPHA):
    """Fail if `counts` (V,) from N independent draws are implausible under `expected` (V,).

    Chernoff's bound for X ~ Binomial(N, p): P(X >= Nq) <= exp(-N KL(q || p)) for q >= p, and
    P(X <= Nq) <= exp(-N KL(q || p)) for q <= p, with KL(q || p) the Kullback-Leibler
    divergence of Bernoulli(q) from Bernoulli(p). Each of the k tokens with p > 0 fails when
    N KL(f || p) > log(2k / alpha) (f its observed frequency): each tail then has probability
    <= alpha / 2k, and by the union bound a correct sampler fails with probability <= alpha.
    A token with p = 0 fails if drawn at all (a correct sampler never draws it).
    """
    counts = np.asarray(counts)
    n = counts.sum()
    drawn_never_possible = np.flatnonzero((expected == 0) & (counts > 0))
    assert not len(drawn_never_possible), f"drew excluded tokens {drawn_never_possible}"
    p, f = expected[expected > 0], counts[expected > 0] / n
    with np.errstate(divide="ignore"):  # log(0) where p = 1: any miss is impossible
        kl = _xlogy(f, f) - _xlogy(f, p) + _xlogy(1 - f, 1 - f) - _xlogy(1 - f, 1 - p)
    limit = math.log(2 * len(p) / alpha)
    assert np.all(n * kl <= limit), (
        f"frequencies {np.round(f, 4)} vs probabilities {np.round(p, 4)}: "
        f"N·KL {np.round(n * kl, 1)} > {limit:.1f}"
    )


def _xlogy(x, y):
    """x log y, 0 where x = 0."""
    return np.where(x > 0, x * np.log(np.where(x > 0, y, 1.0)), 0.0)


DRAWS = 1200
FILTERS = {  # each alone, then all four with a penalty on recent tokens
    "none": dict(top_k=0, top_p=1.0, min_p=0.0),
    "top-k": dict(top_k=4, top_p=1.0, min_p=0.0),
    "top-p": dict(top_k=0, top_p=0.7, min_p=0.0),
    "min-p": dict(top_k=0, top_p=1.0, min_p=0.1),
    "all": dict(top_k=6, top_p=0.9, min_p=0.05, repetition_penalty=1.5),
}
# Random logits at temperature 1 (the seed is one of a few hundred tried for which every case
# below keeps >= 3 tokens and has power: test_the_checks_have_power). Each case samples
# T × Z at temperature T, so that every temperature keeps the same tokens.
Z = 1.5 * np.random.default_rng(39).standard_normal(10)
ORDER = np.argsort(-Z)
RECENT = [int(ORDER[0]), int(ORDER[2]), int(ORDER[2]), int(ORDER[-1])]  # seen, for the penalty
CASES = [(t, name) for t in (0.5, 0.8, 2.0) for name in FILTERS]


def case(temperature, filters):
    """-> (V,) float32 logits, the SamplingParams, and the reference distribution."""
    logits = (temperature * Z).astype(np.float32)
    params = SamplingParams(temperature=temperature, **FILTERS[filters])
    return logits, params, reference_distribution(logits, params, RECENT)


def draw_counts(logits, params, seed, recent=()):
    rng = np.random.default_rng(seed)
    tokens = [sample(logits, params, rng, recent) for _ in range(DRAWS)]
    return np.bincount(tokens, minlength=len(logits))


@pytest.mark.parametrize("temperature, filters", CASES)
def test_draws_follow_softmax_of_logits_over_temperature(temperature, filters):
    """Draws follow softmax(logits / T) after each filter. A sampler that multiplies by T, or
    forgets the penalty, fails each case (see test_the_checks_have_power)."""
    logits, params, expected = case(temperature, filters)
    counts = draw_counts(logits, params, CASES.index((temperature, filters)), RECENT)
    assert_draws_follow(counts, expected)


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_one_token_holding_all_the_mass_is_always_drawn(temperature):
    logits = np.array([-30, 30, -30, 0], dtype=np.float32)  # p(1) > 1 - 1e-6 even at T = 2
    params = SamplingParams(temperature=temperature, top_k=0, top_p=1.0, min_p=0.0)
    rng = np.random.default_rng(0)
    assert {sample(logits, params, rng) for _ in range(200)} == {1}


def test_tied_tokens_are_drawn_equally_and_the_filters_see_the_tie():
    """Three tied tokens above a fourth: top-k 2 keeps two of them (either two), top-p 0.5
    keeps two; the kept ones are drawn equally often."""
    logits = np.array([1, 1, 1, 0], dtype=np.float32)
    for top_k, top_p in [(2, 1.0), (0, 0.5)]:
        params = SamplingParams(temperature=0.8, top_k=top_k, top_p=top_p, min_p=0.0)
        counts = draw_counts(logits, params, seed=top_k)
        assert counts[3] == 0 and np.count_nonzero(counts) == 2
        assert_draws_follow(counts, np.where(counts > 0, 0.5, 0.0))


def test_the_checks_have_power():
    """Under a sampler that multiplies by the temperature, or forgets the penalty, every case
    above has an expected N·KL over 3× its failure limit on some token (or puts > 1% of its
    mass on a token the reference excludes: drawn within DRAWS almost surely)."""
    for temperature, filters in CASES:
        logits, params, right = case(temperature, filters)
        assert np.count_nonzero(right) >= 3
        wrong = [reference_distribution(logits * temperature**2, params, RECENT)]  # × T
        if params.repetition_penalty != 1.0:
            wrong.append(reference_distribution(logits, params, ()))  # penalty forgotten
        limit = math.log(2 * np.count_nonzero(right) / ALPHA)
        for bad in wrong:
            if bad[right == 0].max(initial=0) > 0.01:
                continue
            q, p = bad[right > 0], right[right > 0]
            with np.errstate(divide="ignore"):
                kl = _xlogy(q, q) - _xlogy(q, p) + _xlogy(1 - q, 1 - q) - _xlogy(1 - q, 1 - p)
            assert DRAWS * kl.max() > 3 * limit, (temperature, filters)
    with pytest.raises(AssertionError, match="N·KL"):
        assert_draws_follow(np.array([800, 400]), np.array([0.5, 0.5]))
    with pytest.raises(AssertionError, match="excluded"):
        assert_draws_follow(np.array([10, 1]), np.array([1.0, 0.0]))


# ---------------------------------------------------------------- greedy, seeds, arguments


@given(logit_arrays)
def test_temperature_zero_is_argmax(logits):
    rng = np.random.default_rng(0)
    assert sample(logits, SamplingParams(temperature=0), rng) == int(np.argmax(logits))


@given(logit_arrays, st.integers(0, 2**31))
@settings(max_examples=50)
def test_same_seed_same_choices(logits, seed):
    params = SamplingParams(temperature=0.8, top_k=0, top_p=1.0, min_p=0.0)
    draws = [
        [sample(logits, params, rng) for _ in range(5)]
        for rng in (np.random.default_rng(seed), np.random.default_rng(seed))
    ]
    assert draws[0] == draws[1]


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


def test_a_huge_temperature_is_uniform_without_overflow_warnings():
    import warnings

    logits = np.linspace(-5, 5, 32).astype(np.float32)
    params = SamplingParams(temperature=1e300)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning (overflow in a cast) fails
        picks = {sample(logits, params, np.random.default_rng(s)) for s in range(200)}
    assert len(picks) > 20  # every token about equally likely
