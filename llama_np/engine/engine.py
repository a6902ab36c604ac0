"""The serving engine: many requests share one model, one step at a time.

    engine = Engine(model, kv_memory="1GiB")
    a = engine.add_request("Once upon a time", 50, temperature=0)
    b = engine.add_request("Lily and Tom", 50, seed=7)
    while engine.has_unfinished():
        for event in engine.step():               # TokenEvent: request id, token, text piece
            print(event.request_id, event.text)

Each `step()` asks the scheduler (scheduler.py) which requests run and how many tokens each:
a prefill chunk of one request beside the next decode token of each of the others. It lays
them out as one `Step` (model.py), each sequence with its positions and its block table, and
the model runs them in one pass: every weight matrix multiplies all the step's rows at once,
and attention reads each sequence's own blocks of the paged KV cache (paged_kv_cache.py).
Then each request whose prompt is done samples its next token with its own settings and
random generator, so what a request generates does not depend on what else runs beside it.
Requests join and leave between steps (continuous batching): the batch stays full.

`generate()` (one prompt) stays the plain prefill-then-decode loop of the lesson; this engine
is what serves many: `generate_batch`, `llama-np generate -p A -p B`, `llama-np serve`.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .. import arguments
from ..errors import ArgumentError, LlamaNpError
from ..generate import (
    PROMPTS,
    TextOutput,
    TextStream,
    accept_token,
    check_arguments,
    check_prompt,
    decodable_ids,
    prompt_tokens,
    sampling_params,
)
from ..limits import check_fits, format_bytes, parse_bytes
from ..model import Model, Step
from ..numerics import check_logits
from ..paged_kv_cache import BLOCK_SIZE, PagedKVCache, blocks_for
from ..sampling import SamplingParams, penalty_window, sample
from .blocks import BlockPool
from .request import FINISHED, Request
from .scheduler import ScheduledStep, Scheduler, SchedulerConfig

DEFAULT_KV_MEMORY = 2**30  # 1 GiB, or one full context if that is more
KV_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))


@dataclass(frozen=True)
class TokenEvent:
    """What one step did for one request: a token and its text, and whether it ended."""

    request_id: int
    text: str  # text to show now ("" while held back at a possible stop string, or none)
    token: int | None  # the sampled token; None when the request ended without one
    finished: bool = False
    finish_reason: str | None = None  # request.STOP_REASONS
    logprob: float | None = None  # log-probability of `token` (requests with logprobs)
    top_logprobs: tuple[tuple[int, float], ...] = ()  # the most likely tokens and theirs
    # the request's latest tokens whose text has not all gone out (held back at a possible
    # stop string); in its last event, those cut with a stop string (TextOutput.unsent)
    unsent: int = 0


@dataclass(frozen=True)
class StepRecord:
    """What one step ran, and the state it left: what the trace, the live page and the
    simulator read. rows: (request id, "prefill" or "decode", first position, tokens)."""

    index: int
    start: float  # seconds since the engine started
    seconds: float  # the model's forward pass and the sampling
    sample_seconds: float  # ... of which sampling
    rows: tuple[tuple[int, str, int, int], ...]
    running: int  # requests running after the step
    waiting: int  # requests waiting after the step
    blocks_used: int
    blocks_free: int
    blocks_cached: int  # holding a known prefix (used or free)
    cache_hits: int  # prompt tokens taken from the prefix cache this step
    preempted: tuple[int, ...]  # request ids whose blocks were taken back
    finished: tuple[int, ...]  # request ids that ended this step

    @property
    def n_tokens(self) -> int:
        return sum(n for *_, n in self.rows)


def step_record(
    index: int,
    start: float,
    seconds: float,
    sample_seconds: float,
    plan: ScheduledStep,
    scheduler: Scheduler,
    finished: Sequence[int],
) -> StepRecord:
    """The record of a step that ran `plan` and took `seconds` from `start`, with the state
    the scheduler is left in. The engine times the model; the simulator (tools/simulate.py)
    a roofline clock: both describe their steps with this one function."""
    pool = scheduler.pool
    rows = tuple(
        (r.id, kind, s, n)
        for r, kind, s, n in zip(plan.requests, plan.kinds, plan.starts, plan.counts, strict=True)
    )
    return StepRecord(
        index, start, seconds, sample_seconds, rows, len(scheduler.running),
        len(scheduler.waiting), pool.n_used, pool.n_free, pool.n_cached, plan.cache_hits,
        tuple(r.id for r in plan.preempted), tuple(finished),
    )  # fmt: skip


@dataclass(frozen=True)
class Completion:
    """One request's result (Engine.generate)."""

    request_id: int
    text: str
    tokens: list[int]  # generated token ids (an end token not included)
    finish_reason: str
    prompt_tokens: int
    cached_tokens: int  # prompt tokens found in the prefix cache
    ttft: float  # seconds from arrival to the first token
    seconds: float  # seconds from arrival to the end


class Engine:
    """Continuous batching over a paged KV cache, for one model.

    kv_memory: bytes for the paged KV cache ("1GiB", or an int), the whole budget: it
        holds kv_memory / (block bytes) blocks of `block_size` positions (`describe()` says
        how many tokens and sequences). Default: 1 GiB, or one full context if more.
    max_seqs: requests running at once; more wait in a queue.
    max_batch_tokens: tokens one step runs (decode tokens + prefill chunks): the bound on
        a step's time, so a long prompt cannot stall running streams.
    chunked_prefill: split prompts over steps (off: each prompt runs whole in one step).
    prefix_caching: share the KV blocks of a common prompt prefix between requests.
    """

    def __init__(
        self,
        model: Model,
        *,
        kv_memory: int | str | None = None,
        block_size: int = BLOCK_SIZE,
        max_seqs: int = 64,
        max_batch_tokens: int = 512,
        chunked_prefill: bool = True,
        prefix_caching: bool = True,
        kv_dtype=np.float32,
    ) -> None:
        arguments.instance(model, "model", Model)
        block_size = arguments.integer(block_size, "block_size", 1, 1024)
        max_seqs = arguments.integer(max_seqs, "max_seqs", 1)
        max_batch_tokens = arguments.integer(max_batch_tokens, "max_batch_tokens", 1)
        arguments.flags(chunked_prefill=chunked_prefill, prefix_caching=prefix_caching)
        kv_dtype = arguments.dtype(
            kv_dtype, "kv_dtype", (np.dtype(np.float32), np.dtype(np.float16))
        )
        config = model.config
        self.model = model
        block_bytes = config.kv_cache_bytes(block_size, 1, np.dtype(kv_dtype).itemsize)
        if kv_memory is None:
            context = blocks_for(config.max_seq_len, block_size) * block_bytes
            budget = max(DEFAULT_KV_MEMORY, context)
        else:
            budget = parse_bytes(kv_memory, "kv_memory")
        n_blocks = budget // block_bytes
        if n_blocks < 1:
            raise ArgumentError(
                f"kv_memory {format_bytes(budget)} holds no KV block: one block of "
                f"{block_size} positions takes {format_bytes(block_bytes)} for this model"
            )
        check_fits(
            n_blocks * block_bytes,
            f"a KV cache pool of {n_blocks:,} blocks",
            ["less kv_memory (--kv-memory)", "a float16 pool (kv_dtype=np.float16)"],
        )
        self.cache = PagedKVCache(config, int(n_blocks), int(block_size), kv_dtype)
        self.pool = BlockPool(int(n_blocks), int(block_size), prefix_caching)
        self.scheduler = Scheduler(
            SchedulerConfig(max_seqs, max_batch_tokens, chunked_prefill, config.max_seq_len),
            self.pool,
        )
        self.requests: dict[int, Request] = {}  # not yet finished, by id
        self.records: deque[StepRecord] = deque(maxlen=4096)  # the latest steps
        self.on_step: list[Callable[[StepRecord], None]] = []  # observers of every step
        self.decodable = decodable_ids(model)  # ids past these (padding) are never sampled
        self._ids = itertools.count()
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()  # adds, aborts: any thread
        self._stepping = threading.Lock()  # held by the one thread running a step
        self._entropy = np.random.SeedSequence().entropy  # seeds requests that give none
        self._t0 = time.perf_counter()
        self.n_steps = 0

    def describe(self) -> str:
        """What the KV memory holds: blocks, tokens, sequences at the full context."""
        pool, config = self.pool, self.model.config
        tokens = pool.n_blocks * pool.block_size
        full = tokens // config.max_seq_len
        return (
            f"KV cache: {format_bytes(self.cache.nbytes)} = {pool.n_blocks:,} blocks of "
            f"{pool.block_size} positions = {tokens:,} tokens, {full:,} sequences at the full "
            f"context of {config.max_seq_len:,} (more if shorter), "
            f"{format_bytes(self.cache.block_nbytes // pool.block_size)} per token"
        )

    # ---------------------------------------------------------------- requests in

    def add_request(
        self,
        prompt: str | Sequence[int],
        max_new_tokens: int = 256,
        *,
        sampling: SamplingParams | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] = (),
        stop_ids: Sequence[int] | None = None,
        special: bool = False,
        logprobs: int | None = None,
        **sampling_kwargs: float,
    ) -> Request:
        """Queue a prompt (text, encoded with BOS, or token ids); -> the Request (`.id`).

        Same arguments as `generate` (sampling settings, seed, stop strings, stop_ids,
        special); `logprobs` n also reports each token's log-probability and the n most
        likely alternatives. Checked here, in the caller's thread: a request that could
        never run (longer than the context or than the whole KV pool) raises at once. Safe
        to call from any thread; the request starts at the next step. Without a seed it gets
        one of its own (request.seed), so it can be repeated.
        """
        params = sampling_params(sampling, **sampling_kwargs)
        max_new_tokens, stop, seed, stop_ids = check_arguments(
            self.model, max_new_tokens, stop, seed, None, stop_ids, special
        )
        check_prompt(self.model, prompt, "prompt")
        logprobs = arguments.integer(logprobs, "logprobs", 0, 20, optional=True)
        tokens = prompt_tokens(self.model, prompt)
        config = self.model.config
        request_id = next(self._ids)
        if seed is None:  # its own, from the engine's entropy and its id: thread-safe
            seed = int(np.random.SeedSequence([self._entropy, request_id]).generate_state(1)[0])
        stream = TextStream(self.model.tokenizer, tokens[-1] == config.bos_id, special)
        request = Request(
            id=request_id,
            prompt=tokens,
            max_new_tokens=max_new_tokens,
            params=params,
            seed=seed,
            stop_ids=frozenset(config.stop_ids if stop_ids is None else stop_ids),
            text=TextOutput(stream, stop),
            arrival=time.perf_counter(),
            logprobs=logprobs,
        )
        self.scheduler.check(request)  # raises now, not in the engine's step
        self._inbox.put(("add", request))
        return request

    def abort(self, request_id: int) -> None:
        """Cancel a request (from any thread): it ends at the next step, its blocks freed."""
        request_id = arguments.integer(request_id, "request_id", 0, allowed="a request's id")
        self._inbox.put(("abort", request_id))

    def has_unfinished(self) -> bool:
        """Whether any request is waiting, running, or about to be added."""
        return bool(self.requests) or not self._inbox.empty()

    # ---------------------------------------------------------------- one step

    def step(self) -> list[TokenEvent]:
        """Run one step: admit, schedule, one forward pass, sample; -> what each request did.

        A request that fails (NaN logits, an error in the forward pass) ends with
        finish_reason "error" and its `error`; the engine goes on with the others. One thread
        steps the engine (add_request and abort may come from any): a step that begins while
        another runs is refused (an EngineThread steps it for a program of many threads).
        """
        if not self._stepping.acquire(blocking=False):
            raise ArgumentError(
                "another thread is running a step of this engine: step it (or call generate) "
                "from one thread; add_request and abort work from any, and "
                "llama_np.engine.background.EngineThread steps it in the background for many"
            )
        try:
            return self._step()
        finally:
            self._stepping.release()

    def _step(self) -> list[TokenEvent]:
        events: list[TokenEvent] = []
        finished: list[int] = []
        self._take_inbox(events, finished)
        plan = self.scheduler.schedule()
        for request in plan.dropped:
            self._ended(request, events, finished)
        if not plan.requests:
            self._record(plan, self._t0, 0.0, finished)
            return events
        t0 = time.perf_counter()
        try:
            logits = self._forward(plan)  # (B, V)
        except LlamaNpError as error:  # e.g. a hook's bad replacement: fail these requests
            for request in plan.requests:
                request.error = error
                self.scheduler.finish(request, "error")
                self._ended(request, events, finished)
            self._record(plan, t0, time.perf_counter() - t0, finished)
            return events
        self.scheduler.computed(plan)
        t_sample = time.perf_counter()
        for request, row in zip(plan.requests, logits, strict=True):
            if request.n_computed == request.n_tokens:  # its prompt is done: a new token
                self._sample(request, row, events, finished)
        end = time.perf_counter()
        self._record(plan, t0, end - t0, finished, end - t_sample)
        return events

    def _forward(self, plan: ScheduledStep) -> np.ndarray:
        """The scheduled rows through the model in one pass; -> (B, V) logits."""
        requests = plan.requests
        if plan.fresh_blocks:
            self.cache.zero(plan.fresh_blocks)
        ids = np.concatenate(
            [
                r.tokens[s : s + n]
                for r, s, n in zip(requests, plan.starts, plan.counts, strict=True)
            ]
        )  # (R,)
        n_blocks = max(len(r.blocks) for r in requests)
        tables = np.array(  # (B, n_blocks), short tables padded with a block of their own
            [r.blocks + r.blocks[:1] * (n_blocks - len(r.blocks)) for r in requests]
        )
        kinds = set(plan.kinds)
        step = Step(
            kinds.pop() if len(kinds) == 1 else "mixed",
            np.array([r.id for r in requests]),
            np.array(plan.starts),
            np.array(plan.counts),
            tables,
        )
        with np.errstate(over="ignore", invalid="ignore"):  # non-finite: checked per request
            return self.model.run(ids, step, self.cache)

    def _sample(
        self, request: Request, logits: np.ndarray, events: list, finished: list[int]
    ) -> None:
        """The request's next token from its (V,) logits, with its own settings and seed."""
        if not np.isfinite(logits).all():
            try:
                check_logits(self.model, logits, request.tokens)  # names the layer
            except LlamaNpError as error:
                request.error = error
            self.scheduler.finish(request, "error")
            self._ended(request, events, finished)
            return
        logits = logits[: self.decodable]
        window = penalty_window(request.tokens, request.params)
        token = sample(logits, request.params, request.rng, window)
        request.token_times.append(time.perf_counter())
        text, reason = accept_token(
            token, request.tokens, len(request.prompt), request.max_new_tokens,
            request.text, request.stop_ids,
        )  # fmt: skip
        if reason is None and request.n_tokens >= self.scheduler.config.max_model_len:
            reason = "context_full"  # its token takes the last position: no room for more
            text += request.text.flush()
        logprob, top = None, ()
        if request.logprobs is not None:
            logprob, top = _logprobs(logits, token, request.logprobs)
        kept = reason != "end_token"
        if reason is not None:
            self.scheduler.finish(request, reason)
            del self.requests[request.id]
            finished.append(request.id)
        events.append(
            TokenEvent(
                request.id, text, token if kept else None, reason is not None, reason,
                logprob if kept else None, top if kept else (), request.text.unsent,
            )
        )  # fmt: skip

    # ---------------------------------------------------------------- bookkeeping

    def _take_inbox(self, events: list[TokenEvent], finished: list[int]) -> None:
        """Requests added and cancelled since the last step, in order."""
        while not self._inbox.empty():
            what, item = self._inbox.get()
            if what == "add":
                full = item.n_tokens >= self.scheduler.config.max_model_len
                if item.max_new_tokens == 0 or full:  # nothing to generate, or no room for it
                    item.status = FINISHED
                    item.finish_reason = (
                        "max_new_tokens" if item.max_new_tokens == 0 else "context_full"
                    )
                    self._ended(item, events, finished)
                else:
                    self.requests[item.id] = item
                    self.scheduler.add(item)
            elif item in self.requests:  # "abort"; an unknown or finished id is a no-op
                request = self.requests[item]
                self.scheduler.finish(request, "cancelled")
                self._ended(request, events, finished)

    def _ended(self, request: Request, events: list[TokenEvent], finished: list[int]) -> None:
        """A request ended outside sampling (cancelled, dropped, failed): its last event."""
        self.requests.pop(request.id, None)
        finished.append(request.id)
        text = request.text.flush() if request.finish_reason != "error" else ""
        events.append(
            TokenEvent(
                request.id, text, None, True, request.finish_reason, unsent=request.text.unsent
            )
        )

    def _record(
        self, plan: ScheduledStep, t0: float, seconds: float, finished: list, sampling: float = 0
    ) -> None:
        record = step_record(
            self.n_steps, t0 - self._t0, seconds, sampling, plan, self.scheduler, finished
        )
        self.n_steps += 1
        self.records.append(record)
        for observer in self.on_step:
            observer(record)

    # ---------------------------------------------------------------- offline

    def generate(
        self, prompts: Sequence[str | Sequence[int]], max_new_tokens: int = 256, **kwargs
    ) -> list[Completion]:
        """Continue every prompt (vLLM's LLM.generate): all are added, then steps run until
        each has ended; -> one Completion per prompt, in order. Keyword arguments are
        add_request's. A request that failed raises its error."""
        prompts = arguments.sequence(prompts, "prompts", min_len=1, allowed=PROMPTS)
        for b, prompt in enumerate(prompts):
            check_prompt(self.model, prompt, f"prompts[{b}]")
        requests = [self.add_request(p, max_new_tokens, **kwargs) for p in prompts]
        texts = {r.id: "" for r in requests}
        try:
            while any(not r.finished for r in requests):
                for event in self.step():
                    if event.request_id in texts:
                        texts[event.request_id] += event.text
        finally:  # after Ctrl-C too: leave nothing running
            for request in requests:
                if not request.finished:
                    self.abort(request.id)
            self._take_inbox([], [])
        for request in requests:
            if request.error is not None:
                raise request.error
        return [_completion(r, texts[r.id]) for r in requests]


def _completion(request: Request, text: str) -> Completion:
    times = request.token_times
    first = times[0] if times else request.arrival
    end = times[-1] if times else request.arrival
    return Completion(
        request.id, text, request.generated, request.finish_reason, len(request.prompt),
        request.n_cached, first - request.arrival, end - request.arrival,
    )  # fmt: skip


def _logprobs(logits: np.ndarray, token: int, n: int) -> tuple[float, tuple]:
    """log softmax of the model's logits: the token's, and the n most likely tokens'."""
    shifted = logits.astype(np.float64) - logits.max()
    log_probs = shifted - np.log(np.exp(shifted).sum())  # (V,)
    top = np.argsort(-log_probs, kind="stable")[:n] if n else []
    return float(log_probs[token]), tuple((int(t), float(log_probs[t])) for t in top)
