"""One request's state in the serving engine: its tokens, where its K/V are, how it samples,
what it has said, and when.

The scheduler reads and moves the bookkeeping (status, n_computed, blocks); the engine adds
tokens and text. Everything is plain Python: no arrays.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np

from ..generate import TextOutput
from ..sampling import SamplingParams
from .blocks import block_key

WAITING, RUNNING, FINISHED = "waiting", "running", "finished"

# Why a request ended. The first four are generate()'s (GenerationStats.stop_reason);
# "cancelled" is a client's abort; "kv_memory" a sequence that outgrew the whole KV pool.
STOP_REASONS = ("end_token", "stop_string", "max_new_tokens", "context_full", "cancelled")
STOP_REASONS += ("kv_memory", "error")


@dataclass(eq=False)
class Request:
    """A prompt being continued: tokens = prompt + generated, n_computed of them in the cache."""

    id: int
    prompt: list[int]
    max_new_tokens: int
    params: SamplingParams
    seed: int
    stop_ids: Collection[int]
    text: TextOutput  # generated ids -> text pieces, held back at a possible stop string
    arrival: float  # time.perf_counter() when it was added
    logprobs: int | None = None  # also report the top-n log-probabilities of each token
    tokens: list[int] = field(init=False)  # prompt, then every generated token
    status: str = WAITING
    n_computed: int = 0  # leading tokens whose K/V are in the cache
    blocks: list[int] = field(default_factory=list)  # block table: position p in p // size
    keys: list[bytes] = field(default_factory=list)  # prefix keys of its first full blocks
    finish_reason: str | None = None
    error: Exception | None = None  # what ended it, when finish_reason is "error"
    n_cached: int = 0  # prompt tokens found in the prefix cache when first admitted
    n_preempted: int = 0  # times its blocks were taken back (and its tokens recomputed)
    token_times: list[float] = field(default_factory=list)  # when each token was sampled

    def __post_init__(self) -> None:
        self.tokens = list(self.prompt)
        self.rng = np.random.default_rng(self.seed)

    @property
    def generated(self) -> list[int]:
        return self.tokens[len(self.prompt) :]

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def finished(self) -> bool:
        return self.status == FINISHED

    def block_keys(self, n: int, block_size: int) -> list[bytes]:
        """`keys`, holding at least the prefix keys of its first n full blocks (each computed
        once, when first asked for)."""
        while len(self.keys) < n:
            i = len(self.keys)
            parent = self.keys[-1] if self.keys else b""
            self.keys.append(block_key(parent, self.tokens[i * block_size : (i + 1) * block_size]))
        return self.keys
