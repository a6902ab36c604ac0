"""Choosing the next token from logits: greedy, temperature, top-k, top-p, min-p, penalties.

The filters run in Hugging Face's order: repetition penalty on the logits, temperature, then
top-k, top-p and min-p on the probabilities, then one draw from what is left.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import ArgumentError
from .layers import softmax

MIN_TEMPERATURE = 1e-6


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings; the defaults are llama.cpp's."""

    temperature: float = 0.8  # 0 = greedy (always the most likely token)
    top_k: int = 40  # keep the k most likely tokens; 0 = no limit
    top_p: float = 0.95  # keep the smallest set of tokens whose probability sums to >= top_p
    min_p: float = 0.05  # drop tokens less likely than min_p × the most likely one; 0 = off
    repetition_penalty: float = 1.0  # > 1 discourages tokens seen in the last repeat_last_n
    repeat_last_n: int = 64

    def __post_init__(self) -> None:
        if not self.temperature >= 0:  # also catches NaN
            raise ArgumentError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        # logits / temperature must stay finite in float32: below MIN_TEMPERATURE sampling is
        # greedy anyway, and infinity would make every token equally likely.
        if not (self.temperature == 0 or MIN_TEMPERATURE <= self.temperature < math.inf):
            raise ArgumentError(
                f"temperature must be 0 (greedy) or in [{MIN_TEMPERATURE:g}, inf), got "
                f"{self.temperature}; for greedy decoding use 0"
            )
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise ArgumentError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ArgumentError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise ArgumentError(f"min_p must be in [0, 1] (0 = off), got {self.min_p}")
        # logits × or / the penalty must stay finite in float32, as for the temperature
        if not MIN_TEMPERATURE <= self.repetition_penalty <= 1 / MIN_TEMPERATURE:
            raise ArgumentError(
                f"repetition_penalty must be > 0 (1 = off) and in [{MIN_TEMPERATURE:g}, "
                f"{1 / MIN_TEMPERATURE:g}], got {self.repetition_penalty}"
            )
        if self.repeat_last_n < 0:
            raise ArgumentError(f"repeat_last_n must be >= 0, got {self.repeat_last_n}")


def apply_repetition_penalty(
    logits: np.ndarray, recent: Sequence[int], penalty: float
) -> np.ndarray:
    """Make tokens in `recent` less likely (as in CTRL, llama.cpp, HF): divide positive logits
    by the penalty and multiply negative ones by it.   (V,) -> (V,) new array"""
    logits = logits.copy()
    seen = np.unique(np.asarray(recent, dtype=np.int64))
    values = logits[seen]
    logits[seen] = np.where(values > 0, values / penalty, values * penalty)
    return logits


def candidates(probs: np.ndarray, top_k: int, top_p: float, min_p: float) -> np.ndarray:
    """Token ids that survive top-k, then top-p, then min-p, most likely first.

    probs: (V,) float32 summing to 1. -> (n,) int64 with n >= 1.
    """
    V = probs.shape[0]
    ids = np.arange(V) if not 0 < top_k < V else np.argpartition(-probs, top_k - 1)[:top_k]
    mass = probs[ids].sum(dtype=np.float64)  # top-p and min-p see probabilities renormalized
    if top_p < 1.0 and len(ids) > 1:
        # Tokens below (1 - top_p) / (n - 1) of the mass are never needed to reach top_p
        # when at least one token is above it (at most n - 1 of them hold < 1 - top_p), so
        # drop them before sorting: sorting all V probabilities would dominate decode time.
        above = ids[probs[ids] >= (1.0 - top_p) / (len(ids) - 1) * mass]
        ids = above if len(above) else ids
    ids = ids[np.argsort(-probs[ids], kind="stable")]  # most likely first
    if top_p < 1.0:
        cumulative = np.cumsum(probs[ids], dtype=np.float64) / mass
        n_keep = int(np.searchsorted(cumulative, top_p)) + 1  # smallest prefix reaching top_p
        ids = ids[:n_keep]
    if min_p > 0.0:
        ids = ids[probs[ids] >= min_p * probs[ids[0]]]
    return ids


def penalty_window(tokens: Sequence[int], params: SamplingParams) -> Sequence[int]:
    """The tokens the repetition penalty looks at: the last repeat_last_n of `tokens`."""
    return tokens[-params.repeat_last_n :] if params.repeat_last_n else ()


def sample(
    logits: np.ndarray,
    params: SamplingParams,
    rng: np.random.Generator,
    recent: Sequence[int] = (),
) -> int:
    """Pick the next token id from (V,) logits."""
    if params.repetition_penalty != 1.0 and len(recent):
        logits = apply_repetition_penalty(logits, recent, params.repetition_penalty)
    if params.temperature == 0:
        return int(np.argmax(logits))
    probs = softmax(logits.astype(np.float32) / np.float32(params.temperature))  # (V,)
    ids = candidates(probs, params.top_k, params.top_p, params.min_p)
    cumulative = np.cumsum(probs[ids], dtype=np.float64)
    choice = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
    return int(ids[min(choice, len(ids) - 1)])
