"""The scheduler: before every step, decide which requests run and how many tokens each.

One step has a budget of tokens (`max_batch_tokens`). Running requests come first, oldest
first: each decoding request gets its one token, and a request still in its prompt gets the
next chunk of it that fits (chunked prefill: a long prompt is spread over several steps, so
it never stalls the others' streams for its whole length). Then waiting requests are
admitted, first come first served, while the budget, the sequence cap (`max_seqs`) and the
KV blocks allow; a request whose prompt starts with a cached prefix starts after it.

When a running request needs a block and none is free, the newest running request is
preempted: its blocks go back to the pool and it waits to be recomputed later (its full
blocks usually are still cached then, so that is cheap). Nothing is admitted in a step that
preempted. vLLM's scheduler (v1) works this way.

The scheduler decides, the model computes: it moves bookkeeping only (requests, block ids,
counts). A step is data, a `ScheduledStep`, which the engine runs and the simulator times.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from ..errors import ArgumentError, ContextLengthError
from ..paged_kv_cache import blocks_for
from .blocks import BlockPool
from .request import FINISHED, RUNNING, WAITING, Request


@dataclass(frozen=True)
class SchedulerConfig:
    """The scheduler's limits (the engine's knobs: README, engine section)."""

    max_seqs: int = 64  # requests running at once (rows of a decode step)
    max_batch_tokens: int = 512  # tokens per step: decode tokens plus prefill chunks
    chunked_prefill: bool = True  # split a prompt over steps; off: a prompt runs whole
    max_model_len: int = 2048  # positions a request may reach (the model's context)

    def __post_init__(self) -> None:
        for name in ("max_seqs", "max_batch_tokens", "max_model_len"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
                raise ArgumentError(f"{name} must be a positive integer, got {value!r}")


@dataclass
class ScheduledStep:
    """What one step runs: `counts[i]` tokens of `requests[i]`, from its position n_computed."""

    requests: list[Request] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)  # n_computed of each when scheduled
    # "decode" for a request's one newest token, "prefill" for (a chunk of) its prompt, or
    # of a preempted request's tokens being recomputed
    kinds: list[str] = field(default_factory=list)
    fresh_blocks: list[int] = field(default_factory=list)  # handed out new (to be cleared)
    preempted: list[Request] = field(default_factory=list)
    dropped: list[Request] = field(default_factory=list)  # ended here: outgrew the KV pool
    cache_hits: int = 0  # prompt tokens admitted from the prefix cache this step

    @property
    def n_tokens(self) -> int:
        return sum(self.counts)


class Scheduler:
    """Waiting and running requests over one BlockPool."""

    def __init__(self, config: SchedulerConfig, pool: BlockPool) -> None:
        self.config = config
        self.pool = pool
        self.waiting: deque[Request] = deque()  # first come, first served
        self.running: list[Request] = []  # in order of admission: the last is the newest
        self.n_preemptions = 0

    def check(self, request: Request) -> None:
        """Refuse a request that could never run: longer than the context or the KV pool, or
        (without chunked prefill) than a step."""
        limit = self.config.max_model_len
        if request.n_tokens > limit:
            raise ContextLengthError(
                f"prompt is {request.n_tokens} tokens, longer than the model's context of "
                f"{limit}; shorten it"
            )
        need = blocks_for(request.n_tokens + 1, self.pool.block_size)
        if need > self.pool.n_blocks:
            raise ContextLengthError(
                f"prompt is {request.n_tokens} tokens: with its first generated token it needs "
                f"{need} KV blocks of {self.pool.block_size} positions, and the whole pool has "
                f"{self.pool.n_blocks}; give the engine more KV memory (--kv-memory)"
            )
        budget = self.config.max_batch_tokens
        if not self.config.chunked_prefill and request.n_tokens > budget:
            raise ContextLengthError(
                f"prompt is {request.n_tokens} tokens: without chunked prefill it must run in "
                f"one step, and a step holds {budget} tokens (max_batch_tokens); raise "
                f"max_batch_tokens, or turn chunked prefill on"
            )

    def add(self, request: Request) -> None:
        """Queue a request (checked before: `check`)."""
        request.status = WAITING
        self.waiting.append(request)

    def schedule(self) -> ScheduledStep:
        """Choose this step's requests and token counts, allocating their blocks."""
        step = ScheduledStep()
        budget = self.config.max_batch_tokens
        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            n = min(request.n_tokens - request.n_computed, budget)
            if not self._grow(request, request.n_computed + n, step):
                continue  # it was preempted (the newest, so the loop ends), or dropped
            self._add(step, request, n)
            budget -= n
            i += 1
        if step.preempted:
            return step  # no admissions in a step that had to take blocks back
        while self.waiting and budget > 0 and len(self.running) < self.config.max_seqs:
            n = self._admit(self.waiting[0], budget, step)
            if n == 0:
                break  # first come, first served: the next request waits too
            request = self.waiting.popleft()
            request.status = RUNNING
            self.running.append(request)
            self._add(step, request, n)
            budget -= n
        return step

    def finish(self, request: Request, reason: str) -> None:
        """A request ends (end token, stop, length, cancelled, error): its blocks go back."""
        if request.status == RUNNING:
            self.running.remove(request)
        elif request.status == WAITING:
            self.waiting.remove(request)
        self.pool.release(request.blocks)
        request.blocks = []
        request.status, request.finish_reason = FINISHED, reason

    def computed(self, step: ScheduledStep) -> None:
        """After the model ran `step`: its tokens are in the cache, and blocks they filled
        join the prefix cache."""
        size = self.pool.block_size
        for request, n in zip(step.requests, step.counts, strict=True):
            before = request.n_computed // size
            request.n_computed += n
            full = request.n_computed // size
            keys = request.block_keys(full, size)
            for b in range(before, full):
                tokens = request.tokens[b * size : (b + 1) * size]
                self.pool.register(request.blocks[b], keys[b], tokens)

    # ---------------------------------------------------------------- the pieces

    def _add(self, step: ScheduledStep, request: Request, n: int) -> None:
        step.requests.append(request)
        step.counts.append(n)
        step.starts.append(request.n_computed)
        newest = request.n_computed == request.n_tokens - 1 and request.generated
        step.kinds.append("decode" if newest else "prefill")

    def _grow(self, request: Request, n_positions: int, step: ScheduledStep) -> bool:
        """Blocks for a running request to hold `n_positions`, preempting the newest running
        requests while none are free. False if the request itself was preempted or dropped."""
        need = blocks_for(n_positions, self.pool.block_size) - len(request.blocks)
        while need > self.pool.n_free:
            victim = self.running[-1]
            if victim is request and len(self.running) == 1:
                # Alone and still too long for the whole pool: it cannot go on.
                self.finish(request, "kv_memory")
                step.dropped.append(request)
                return False
            self._preempt(victim, step)
            if victim is request:
                return False
        fresh = self.pool.allocate(need)
        request.blocks += fresh
        step.fresh_blocks += fresh
        return True

    def _preempt(self, request: Request, step: ScheduledStep) -> None:
        """Take a running request's blocks back; it waits (first in line) to be recomputed."""
        self.running.remove(request)
        self.pool.release(request.blocks)
        request.blocks, request.n_computed = [], 0
        request.status = WAITING
        request.n_preempted += 1
        self.waiting.appendleft(request)
        step.preempted.append(request)
        self.n_preemptions += 1

    def _admit(self, request: Request, budget: int, step: ScheduledStep) -> int:
        """Give a waiting request its blocks (cached prefix blocks shared, the rest fresh) and
        -> the tokens it runs this step; 0 (and nothing changed) if it does not fit now."""
        size = self.pool.block_size
        # At least its last token must run, for the logits of the next one.
        n_full = (request.n_tokens - 1) // size
        hits = self.pool.lookup(request.block_keys(n_full, size)[:n_full], request.tokens)
        start = len(hits) * size
        n = min(request.n_tokens - start, budget)
        whole = request.n_tokens - start
        # Without chunked prefill the rest runs whole, in a step with room for it; a request
        # recomputed after preemption may be longer than any step: that one runs in chunks.
        if n < whole <= self.config.max_batch_tokens and not self.config.chunked_prefill:
            return 0
        need = blocks_for(start + n, size) - len(hits)
        revived = sum(1 for b in hits if self.pool.ref_counts[b] == 0)  # leave the free list
        if need + revived > self.pool.n_free:
            return 0
        if request.n_preempted == 0:
            self.pool.count_lookup(request.n_tokens, start)
            request.n_cached = start
        self.pool.share(hits)
        fresh = self.pool.allocate(need)
        request.blocks = hits + fresh
        request.n_computed = start
        step.fresh_blocks += fresh
        step.cache_hits += start
        return n
