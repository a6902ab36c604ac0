"""A serving simulator: the engine's own scheduler and block pool, timed by a roofline clock.

    llama-np simulate llama-3.1-8b --hardware h100 --context 131072 --rate 0.05

The serving engine (engine/) decides every step with a Scheduler over a BlockPool, pure
bookkeeping that never touches an array, then runs the step through the model. Here the same
Scheduler and BlockPool decide every step of a request trace, and instead of the model a
clock advances by what the step would take on a device, the roofline:

    seconds = max(FLOPs / peak FLOP/s, bytes / bandwidth)  (+ this machine's overheads)

with the step's FLOPs and bytes from costs.py (the formulas of `llama-np memory` and
`profile`): every weight read once per step however many sequences share it, each sequence's
own KV cache read, attention of each new token over the positions it sees, one row of logits
per sequence. So the code that serves stories110M here answers how Llama 3.1 8B would serve
a request rate on an H100: how many sequences its KV pool holds, the throughput, the
latencies, and which steps are compute-bound.

Each step leaves the StepRecord the engine leaves (engine.step_record) and each request the
same arrival and token times, so serving_metrics.py measures both alike. A GPU preset is a
pure roofline (real kernels reach 50-80% of the peaks: real servers are that much slower);
this machine adds the fixed costs of a NumPy step that a roofline does not see, measured
(calibrate.py), so that its prediction can be checked against the real engine.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..config import LlamaConfig
from ..engine.blocks import BlockPool
from ..engine.engine import DEFAULT_KV_MEMORY, StepRecord, step_record
from ..engine.request import Request
from ..engine.scheduler import Scheduler, SchedulerConfig
from ..errors import ArgumentError, ContextLengthError
from ..paged_kv_cache import BLOCK_SIZE, blocks_for
from ..sampling import SamplingParams
from .costs import step_bytes, step_flops
from .hardware import Hardware
from .memory import nbytes
from .serving_metrics import format_percentiles, format_seconds, serving_metrics

MEMORY_FRACTION = 0.9  # of device memory for weights + KV pool (vLLM's gpu_memory_utilization)


# ---------------------------------------------------------------- the clock


@dataclass(frozen=True)
class Overheads:
    """Time a step costs beyond its roofline, a + b·sequences + c·tokens + d·positions:
    NumPy calls per layer whatever the batch (a), per sequence (its sampling, its attention
    call, its block table), per token (embedding, RoPE, and matmuls on a few rows that run
    below the sgemm peak), and per cached position read (the engine gathers each sequence's
    KV blocks into a copy before attention). Zero on a GPU preset; measured on this machine
    by calibrate.py."""

    step: float = 0.0  # seconds per step
    per_seq: float = 0.0  # seconds per sequence in the step
    per_token: float = 0.0  # seconds per new token in the step
    per_position: float = 0.0  # seconds per cached position the step's sequences read

    def seconds(self, n_seqs: int, n_tokens: int, n_positions: int = 0) -> float:
        return (
            self.step
            + self.per_seq * n_seqs
            + self.per_token * n_tokens
            + self.per_position * n_positions
        )

    def describe(self) -> str:
        return (
            f"{self.step * 1e3:.3g} ms per step + {self.per_seq * 1e3:.3g} ms per sequence + "
            f"{self.per_token * 1e3:.3g} ms per token + {self.per_position * 1e6:.3g} µs per "
            "cached position read"
        )


@dataclass(frozen=True)
class StepTime:
    """What one step costs on the clock."""

    flops: int
    bytes: int
    compute_seconds: float  # flops / peak FLOP/s
    memory_seconds: float  # bytes / bandwidth
    overhead_seconds: float
    seconds: float  # max(compute, memory) + overhead

    @property
    def bound(self) -> str:
        return "compute" if self.compute_seconds >= self.memory_seconds else "memory"

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes


@dataclass(frozen=True)
class RooflineClock:
    """A step's time on `hardware`: rows = ((start, new tokens), ...), one per sequence."""

    config: LlamaConfig
    hardware: Hardware
    weight_bytes: float  # bytes per weight (memory.WEIGHT_DTYPES)
    kv_bytes: float  # bytes per cached K or V value (memory.KV_DTYPES)
    overheads: Overheads = Overheads()

    def time(self, rows: Sequence[tuple[int, int]]) -> StepTime:
        flops = step_flops(self.config, rows)
        nbytes = step_bytes(self.config, rows, self.weight_bytes, self.kv_bytes)
        compute, memory = flops / self.hardware.flops, nbytes / self.hardware.bandwidth
        extra = self.overheads.seconds(
            len(rows), sum(n for _, n in rows), sum(start + n for start, n in rows)
        )
        return StepTime(flops, nbytes, compute, memory, extra, max(compute, memory) + extra)


# ---------------------------------------------------------------- the KV pool


@dataclass(frozen=True)
class KVPool:
    """How many KV blocks the memory beside the weights holds."""

    budget: int  # bytes given to the pool
    block_bytes: int  # one block of block_size positions, all layers, K and V
    block_size: int
    how: str  # where the budget came from

    @property
    def n_blocks(self) -> int:
        return self.budget // self.block_bytes

    @property
    def tokens(self) -> int:
        return self.n_blocks * self.block_size

    def sequences(self, context: int) -> int:
        """Sequences of `context` positions that fit at once."""
        return self.n_blocks // blocks_for(context, self.block_size)


def kv_pool(
    config: LlamaConfig,
    kv_bytes: float,
    weight_bytes: int,
    hardware: Hardware,
    kv_memory: int | None = None,
    memory_fraction: float = MEMORY_FRACTION,
    block_size: int = BLOCK_SIZE,
    how: str = "given (--kv-memory)",
) -> KVPool:
    """The KV pool: `kv_memory` bytes if given (`how` says where from), else
    `memory_fraction` of the device's memory less the weights (the rest is left for
    activations, as vLLM leaves it)."""
    block_bytes = int(config.kv_cache_bytes(block_size, 1, 1) * kv_bytes)
    if kv_memory is not None:
        budget = kv_memory
    elif hardware.memory_bytes is None:
        budget = max(DEFAULT_KV_MEMORY, blocks_for(config.max_seq_len, block_size) * block_bytes)
        how = "the engine's default: 1 GiB or one full context (device memory unknown)"
    else:
        budget = int(memory_fraction * hardware.memory_bytes) - weight_bytes
        how = (
            f"{memory_fraction:g} × {hardware.memory_bytes:,} bytes of memory − "
            f"{weight_bytes:,} bytes of weights"
        )
    if budget < block_bytes:
        raise ArgumentError(
            f"no room for a KV cache: {how} leaves {budget:,} bytes, and one block of "
            f"{block_size} positions takes {block_bytes:,}; use smaller weights (--weights-dtype) "
            "or a device with more memory"
        )
    return KVPool(budget, block_bytes, block_size, how)


# ---------------------------------------------------------------- the requests


@dataclass(frozen=True)
class TraceRequest:
    arrival: float  # seconds from the start
    prompt: tuple[int, ...]
    max_new_tokens: int


def parse_range(text: str, flag: str) -> tuple[int, int]:
    """`256` -> (256, 256); `16-512` -> (16, 512): a length or a uniform range of lengths."""
    try:
        low, _, high = text.partition("-")
        lo, hi = int(low), int(high or low)
    except ValueError:
        raise ArgumentError(f"{flag} must be N or A-B (token counts), got {text!r}") from None
    if not 1 <= lo <= hi:
        raise ArgumentError(f"{flag} must be positive, low before high, got {text!r}")
    return lo, hi


def poisson_trace(
    n: int,
    rate: float,
    prompt_tokens: tuple[int, int],
    output_tokens: tuple[int, int],
    vocab_size: int,
    shared_prefix: int = 0,
    seed: int = 0,
    bos_id: int = 1,
) -> list[TraceRequest]:
    """n requests arriving as a Poisson process of `rate` per second (inf: all at time 0),
    with prompt and output lengths uniform in their (low, high) ranges. Prompts are random
    token ids after BOS; with `shared_prefix` their first tokens are the same ids (a system
    prompt), which prefix caching can share."""
    if n < 1:
        raise ArgumentError(f"--requests must be at least 1, got {n}")
    if not rate > 0:
        raise ArgumentError(
            f"--rate must be > 0 requests per second (inf: all at once), got {rate}"
        )
    if shared_prefix < 0 or shared_prefix >= prompt_tokens[0]:
        raise ArgumentError(
            f"--shared-prefix must be shorter than the shortest prompt ({prompt_tokens[0]}), "
            f"got {shared_prefix}"
        )
    rng = np.random.default_rng(seed)
    prefix = [bos_id, *rng.integers(3, vocab_size, max(shared_prefix - 1, 0)).tolist()]
    trace, now = [], 0.0
    for _ in range(n):
        length = int(rng.integers(prompt_tokens[0], prompt_tokens[1] + 1))
        own = rng.integers(3, vocab_size, length - len(prefix)).tolist()
        output = int(rng.integers(output_tokens[0], output_tokens[1] + 1))
        trace.append(TraceRequest(now, tuple(prefix + own), output))
        if not math.isinf(rate):
            now += float(rng.exponential(1 / rate))
    return trace


def trace_request(index: int, t: TraceRequest) -> Request:
    """The engine's Request for a trace entry: token ids only (no tokenizer, no text), greedy,
    no end token (it generates exactly max_new_tokens)."""
    return Request(
        id=index,
        prompt=list(t.prompt),
        max_new_tokens=t.max_new_tokens,
        params=SamplingParams(temperature=0.0),
        seed=index,
        stop_ids=frozenset(),
        text=None,  # the simulator produces token ids, not text
        arrival=t.arrival,
    )


# ---------------------------------------------------------------- the simulation


@dataclass
class Simulation:
    """A finished simulated run: every step (the engine's StepRecord, and its cost on the
    clock) and every request with its arrival and token times on the simulated clock."""

    clock: RooflineClock
    scheduler_config: SchedulerConfig
    pool: KVPool
    prefix_caching: bool
    requests: list[Request] = field(default_factory=list)
    rejected: list[Request] = field(default_factory=list)  # could never run (too long)
    records: list[StepRecord] = field(default_factory=list)
    times: list[StepTime] = field(default_factory=list)
    preemptions: int = 0
    hit_rate: float = 0.0  # prompt tokens found in the prefix cache
    seconds: float = 0.0  # the clock when the last request finished


def simulate(
    trace: Sequence[TraceRequest],
    clock: RooflineClock,
    config: SchedulerConfig,
    pool: KVPool,
    prefix_caching: bool = True,
    seed: int = 0,
) -> Simulation:
    """Run the trace through the engine's Scheduler and BlockPool, step by step as
    Engine.step does, the clock advancing by each step's roofline time."""
    blocks = BlockPool(pool.n_blocks, pool.block_size, prefix_caching)
    scheduler = Scheduler(config, blocks)
    sim = Simulation(clock, config, pool, prefix_caching)
    rng = random.Random(seed)  # the "sampled" tokens: ids only, nothing depends on them
    vocab = clock.config.vocab_size
    pending = deque(sorted(trace, key=lambda t: t.arrival))
    now, index = 0.0, 0
    while pending or scheduler.running or scheduler.waiting:
        while pending and pending[0].arrival <= now:  # arrived during the last step
            request = trace_request(index, pending.popleft())
            index += 1
            try:
                scheduler.check(request)
            except ContextLengthError:
                sim.rejected.append(request)
                continue
            sim.requests.append(request)
            scheduler.add(request)
        if not (scheduler.running or scheduler.waiting):
            if pending:
                now = pending[0].arrival  # idle until the next arrival
            continue
        plan = scheduler.schedule()
        finished = [r.id for r in plan.dropped]
        if not plan.requests:  # only a step that dropped a request that outgrew the pool
            sim.records.append(
                step_record(len(sim.records), now, 0.0, 0.0, plan, scheduler, finished)
            )
            sim.times.append(StepTime(0, 0, 0.0, 0.0, 0.0, 0.0))
            continue
        cost = clock.time(list(zip(plan.starts, plan.counts, strict=True)))
        start, now = now, now + cost.seconds
        scheduler.computed(plan)
        for request in plan.requests:
            if request.n_computed < request.n_tokens:
                continue  # a chunk of its prompt: no token yet
            request.tokens.append(rng.randrange(3, vocab))  # what sampling would append
            request.token_times.append(now)
            if len(request.generated) >= request.max_new_tokens:
                scheduler.finish(request, "max_new_tokens")
                finished.append(request.id)
            elif request.n_tokens >= config.max_model_len:
                scheduler.finish(request, "context_full")
                finished.append(request.id)
        sim.records.append(
            step_record(len(sim.records), start, cost.seconds, 0.0, plan, scheduler, finished)
        )
        sim.times.append(cost)
    sim.preemptions = scheduler.n_preemptions
    sim.hit_rate = blocks.hit_rate
    sim.seconds = now
    return sim


# ---------------------------------------------------------------- what it says


@dataclass(frozen=True)
class Bounds:
    """Which steps the roofline says wait for arithmetic, and which for memory."""

    decode_steps: int  # steps that only decode (one token per sequence)
    decode_compute: int  # ... of which compute-bound
    first_compute_batch: int | None  # fewest sequences in a compute-bound decode-only step
    mixed_steps: int  # steps with prompt tokens (a prefill chunk, maybe beside decodes)
    mixed_compute: int
    compute_seconds_share: float  # of the simulated time, in compute-bound steps


def bounds(sim: Simulation) -> Bounds:
    decode = mixed = decode_c = mixed_c = 0
    first, compute_time, total = None, 0.0, 0.0
    for record, cost in zip(sim.records, sim.times, strict=True):
        if not record.rows:
            continue
        total += cost.seconds
        compute = cost.bound == "compute"
        compute_time += cost.seconds if compute else 0.0
        if all(kind == "decode" for _, kind, _, _ in record.rows):
            decode += 1
            decode_c += compute
            if compute and (first is None or len(record.rows) < first):
                first = len(record.rows)
        else:
            mixed += 1
            mixed_c += compute
    share = compute_time / total if total else 0.0
    return Bounds(decode, decode_c, first, mixed, mixed_c, share)


def format_simulation(sim: Simulation, workload: str) -> str:
    """The report `llama-np simulate` prints."""
    clock, config, pool = sim.clock, sim.clock.config, sim.pool
    hw, sc = clock.hardware, sim.scheduler_config
    m = serving_metrics(sim.requests)
    b = bounds(sim)
    context = sc.max_model_len
    seq_bytes = pool.block_bytes * blocks_for(context, pool.block_size)
    running = [r.running for r in sim.records if r.rows]
    used = max((r.blocks_used for r in sim.records), default=0)
    memory = "unknown" if hw.memory_bytes is None else f"{hw.memory_bytes:,} bytes"
    overhead = "" if clock.overheads == Overheads() else f" + {clock.overheads.describe()}"
    rows = [
        ("model", f"{config.name}: weights {clock.weight_bytes:g} bytes each, KV "
                  f"{config.kv_cache_bytes(1, 1, 1) * clock.kv_bytes:,.0f} bytes per token "
                  f"(L={config.n_layers}, KVH={config.n_kv_heads}, HD={config.head_dim})"),
        ("hardware", f"{hw.name}: {hw.flops / 1e12:.4g} TFLOP/s, {hw.bandwidth / 1e9:,.4g} GB/s, "
                     f"ridge {hw.ridge:.3g} FLOP/byte, memory {memory}"),
        ("step time", f"max(FLOPs / {hw.flops:.4g}, bytes / {hw.bandwidth:.4g}){overhead}"),
        ("KV pool", f"{nbytes(pool.n_blocks * pool.block_bytes)} = {pool.n_blocks:,} blocks of "
                    f"{pool.block_size} = {pool.tokens:,} tokens ({pool.how})"),
        (f"  sequences of {context:,}", f"{pool.sequences(context):,} fit at once "
                                        f"({nbytes(seq_bytes)} each)"),
        ("scheduler", f"up to {sc.max_seqs} sequences and {sc.max_batch_tokens:,} tokens a step, "
                      f"chunked prefill {'on' if sc.chunked_prefill else 'off'}, prefix caching "
                      f"{'on' if sim.prefix_caching else 'off'}"),
        ("workload", workload),
        ("simulated", f"{_duration(sim.seconds)}, {len(sim.records):,} steps, "
                      f"{sim.preemptions:,} preemptions"
                      + (f", {len(sim.rejected)} requests refused (longer than the pool or "
                         "context, or a step without chunked prefill)" if sim.rejected else "")),
        ("throughput", f"{m.output_tokens_per_second:,.4g} output tokens/s, "
                       f"{m.tokens_per_second:,.4g} tokens/s with prompts, "
                       f"{m.requests_per_second:.3g} requests/s"),
        ("TTFT", format_percentiles(m.ttft)),
        ("TPOT", format_percentiles(m.tpot)),
        ("ITL", format_percentiles(m.itl)),
        ("running", f"{sum(running) / max(len(running), 1):.1f} sequences per step on average, "
                    f"at most {max(running, default=0)}; KV blocks used at most "
                    f"{used:,} of {pool.n_blocks:,} ({100 * used / pool.n_blocks:.0f}%)"),
        ("prefix cache", f"{100 * sim.hit_rate:.1f}% of prompt tokens found cached"),
        ("compute-bound", _bounds_line(b)),
    ]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _bounds_line(b: Bounds) -> str:
    first = (
        f", from {b.first_compute_batch} sequences on" if b.first_compute_batch is not None else ""
    )
    return (
        f"{b.decode_compute:,} of {b.decode_steps:,} decode-only steps{first}; "
        f"{b.mixed_compute:,} of {b.mixed_steps:,} steps with prompt tokens; "
        f"{100 * b.compute_seconds_share:.0f}% of the time"
    )


def _duration(seconds: float) -> str:
    return format_seconds(seconds)
