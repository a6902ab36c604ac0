"""Speculative decoding by prompt lookup: guess the next k tokens, check them in one pass.

Decode is memory-bound: a step reads every weight to produce one token, and a pass of k + 1
tokens reads the same weights once, so it costs about as much as one token's step while the
pass stays under the ridge (docs/prefill_vs_decode.md). If we could guess the next k tokens,
one pass would check them all. Prompt lookup (no draft model) guesses by copying: find the
last n tokens earlier in the context, and propose the k tokens that followed them there. Text
repeats itself (names, code, a quoted prompt), so the guess is often right.

One speculative step, greedy:

    next token t (not yet in the cache), draft d1..dk from the lookup
    one pass over [t, d1, ..., dk] with every position's logits: Model.prefill(all_logits=True)
    p_i = argmax of the logits after [.., t, d1..di]: what greedy decoding would pick there
    accept d1..da while d_i == p_i; keep p_(a+1) as well (the pass computed it for free)
    roll the cache back to the positions of t, d1..da: cache.lengths[0] = ...

Each pass yields a + 1 tokens, 1 to k + 1, and the output is greedy decoding's own: a draft
token is kept only where greedy would have chosen it. What it costs: a pass of k + 1 tokens
instead of 1. It pays only while that pass costs little more than one decode step, that is
while decode is memory-bound; where the extra tokens' arithmetic shows (a compute-bound
device, or a big batch already filling the arithmetic), rejected guesses are pure loss.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ArgumentError
from ..model import Model


def propose(tokens: Sequence[int], k: int, ngram: int = 3) -> list[int]:
    """Up to k tokens that followed the latest earlier occurrence of the last n tokens of
    `tokens`, trying n = ngram, ngram - 1, ..., 1; [] if none occurred before."""
    for n in range(min(ngram, len(tokens) - 1), 0, -1):
        tail = list(tokens[-n:])
        for start in range(len(tokens) - n - 1, -1, -1):  # latest first, not the tail itself
            if list(tokens[start : start + n]) == tail:
                return list(tokens[start + n : start + n + k])
    return []


@dataclass
class SpeculationStats:
    passes: int = 0  # forward passes after the prefill
    proposed: int = 0  # draft tokens checked
    accepted: int = 0  # draft tokens kept

    @property
    def acceptance(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0


def speculative_greedy(
    model: Model,
    prompt: Sequence[int],
    max_new_tokens: int,
    k: int = 4,
    ngram: int = 3,
    stop_ids: Collection[int] = (),
    stats: SpeculationStats | None = None,
) -> list[int]:
    """Greedy decoding of `prompt` with prompt-lookup speculation; -> the generated ids,
    greedy decoding's own (`generate(..., temperature=0)` with the same stop_ids). k = 0 is
    plain greedy decoding, one token per pass."""
    if k < 0 or ngram < 1:
        raise ArgumentError(f"k must be >= 0 and ngram >= 1, got {k} and {ngram}")
    stats = SpeculationStats() if stats is None else stats
    context = model.config.max_seq_len
    cache = model.new_cache(min(context, len(prompt) + max_new_tokens + k + 1))
    token = int(np.argmax(model.prefill(list(prompt), cache)))
    tokens = [*prompt, token]  # prompt and generated; the last one is not in the cache yet
    out: list[int] = []
    while True:
        if token in stop_ids:
            return out
        out.append(token)
        if len(out) >= max_new_tokens or len(tokens) >= context:
            return out
        room = min(k, max_new_tokens - len(out), cache.max_seq_len - len(tokens))
        draft = propose(tokens, room, ngram) if room > 0 else []
        start = cache.lengths[0]
        if draft:  # one pass over the token and its draft, logits at every position
            logits = model.prefill([token, *draft], cache, all_logits=True)  # (1 + k, V)
        else:  # nothing to propose: a plain decode step
            logits = model.decode(token, cache)[None]  # (1, V)
        predicted = logits.argmax(axis=-1)  # greedy's choice after each position
        accepted = 0
        while accepted < len(draft) and draft[accepted] == predicted[accepted]:
            accepted += 1
        stats.passes += 1
        stats.proposed += len(draft)
        stats.accepted += accepted
        for d in draft[:accepted]:  # kept: greedy would have chosen each of them
            if d in stop_ids:
                return out
            out.append(d)
            if len(out) >= max_new_tokens:
                return out
        cache.lengths[0] = start + 1 + accepted  # forget the rejected drafts' K/V
        token = int(predicted[accepted])
        tokens += [*draft[:accepted], token]


@dataclass(frozen=True)
class SpeculationRun:
    k: int
    tokens: int
    seconds: float  # decoding only (the prefill is the same either way)
    passes: int
    acceptance: float

    @property
    def tokens_per_pass(self) -> float:
        return self.tokens / self.passes if self.passes else 0.0


def time_speculation(
    model: Model, prompt: Sequence[int], max_new_tokens: int, k: int, ngram: int = 3
) -> SpeculationRun:
    """Wall time of speculative greedy decoding (k = 0: plain), the prompt's prefill
    subtracted (timed alone, the median of 3)."""
    prefills = []
    for _ in range(3):
        t0 = time.perf_counter()
        model.prefill(list(prompt), model.new_cache(len(prompt) + 1))
        prefills.append(time.perf_counter() - t0)
    stats = SpeculationStats()
    t0 = time.perf_counter()
    out = speculative_greedy(model, prompt, max_new_tokens, k, ngram, stats=stats)
    seconds = time.perf_counter() - t0 - float(np.median(prefills))
    return SpeculationRun(k, len(out), seconds, stats.passes, stats.acceptance)


def pass_seconds(model: Model, position: int, n_tokens: Sequence[int], repeats: int = 5) -> dict:
    """Median seconds of one pass of T tokens at `position`, for each T: what a
    verification pass of k + 1 tokens costs against a decode step (T = 1)."""
    rng = np.random.default_rng(0)
    prompt = rng.integers(3, model.config.vocab_size, position).tolist()
    cache = model.new_cache(position + max(n_tokens))
    model.prefill(prompt, cache)
    out = {}
    for T in n_tokens:
        times = []
        for _ in range(repeats):
            cache.lengths[0] = position
            ids = rng.integers(3, model.config.vocab_size, T).tolist()
            t0 = time.perf_counter()
            model.prefill(ids, cache, all_logits=True)
            times.append(time.perf_counter() - t0)
        out[T] = float(np.median(times))
    return out
