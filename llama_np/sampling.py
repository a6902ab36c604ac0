"""Choosing the next token from logits: greedy, temperature, top-k, top-p, min-p, penalties.

The filters run in Hugging Face's order: repetition penalty on the logits, temperature, then
top-k, top-p and min-p on the probabilities, then one draw from what is left.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import arguments
from .errors import ArgumentError
from .layers import softmax

MIN_TEMPERATURE = 1e-6


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings; the defaults are llama.cpp's.

    Each field is checked when the object is made (ArgumentError naming it). NumPy scalars
    are accepted and stored as the Python numbers they hold (np.int64(40) as 40, np.float32(0.5)
    as 0.5), so that equal settings compare and hash equal.
    """

    temperature: float = 0.8  # 0 = greedy (always the most likely token)
    top_k: int = 40  # keep the k most likely tokens; 0 = no limit
    top_p: float = 0.95  # keep the smallest set of tokens whose probability sums to >= top_p
    min_p: float = 0.05  # drop tokens less likely than min_p × the most likely one; 0 = off
    repetition_penalty: float = 1.0  # > 1 discourages tokens seen in the last repeat_last_n
    repeat_last_n: int = 64

    def __post_init__(self) -> None:
        temperature = arguments.as_float(self.temperature)
        if temperature is None or not temperature >= 0:  # also catches NaN
            raise arguments.refuse("temperature", self.temperature, ">= 0 (0 = greedy)")
        # logits / temperature must stay finite in float32: below MIN_TEMPERATURE sampling is
        # greedy anyway, and infinity would make every token equally likely.
        if not (temperature == 0 or MIN_TEMPERATURE <= temperature < math.inf):
            raise ArgumentError(
                f"temperature must be 0 (greedy) or in [{MIN_TEMPERATURE:g}, inf), got "
                f"{self.temperature}; for greedy decoding use 0"
            )
        checked = {
            "temperature": temperature,
            "top_k": arguments.integer(self.top_k, "top_k", 0, allowed="an integer >= 0 (0 = off)"),
            "top_p": arguments.real(
                self.top_p, "top_p", 0, 1, open_lo=True, allowed="in (0, 1] (1 = off)"
            ),
            "min_p": arguments.real(self.min_p, "min_p", 0, 1, allowed="in [0, 1] (0 = off)"),
            # logits × or / the penalty must stay finite in float32, as for the temperature
            "repetition_penalty": arguments.real(
                self.repetition_penalty,
                "repetition_penalty",
                MIN_TEMPERATURE,
                1 / MIN_TEMPERATURE,
                allowed=f"> 0 (1 = off) and in [{MIN_TEMPERATURE:g}, {1 / MIN_TEMPERATURE:g}]",
            ),
            "repeat_last_n": arguments.integer(self.repeat_last_n, "repeat_last_n", 0),
        }
        for name, value in checked.items():  # frozen: set through object, as dataclasses do
            object.__setattr__(self, name, value)


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
    arguments.instance(params, "params", SamplingParams)
    arguments.instance(rng, "rng", np.random.Generator, allowed="a np.random.Generator")
    if params.repetition_penalty != 1.0 and len(recent):
        logits = apply_repetition_penalty(logits, recent, params.repetition_penalty)
    if params.temperature == 0:
        return int(np.argmax(logits))
    # (divided in float64: a huge temperature overflows when rounded to float32)
    probs = softmax((logits / np.float64(params.temperature)).astype(np.float32))  # (V,)
    ids = candidates(probs, params.top_k, params.top_p, params.min_p)
    cumulative = np.cumsum(probs[ids], dtype=np.float64)
    choice = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
    return int(ids[min(choice, len(ids) - 1)])
