"""This machine's serving overheads, measured on the real engine, and the simulator checked
against the engine.

A roofline says what the hardware allows: max(FLOPs / peak FLOP/s, bytes / bandwidth). A
NumPy engine on a CPU pays for more than that in every step: the scheduler's bookkeeping,
some twenty NumPy calls per layer whatever the batch (norms, RoPE, the cache write, one
attention call per group of sequences), a gather of each sequence's KV blocks, a sampling
call per sequence, and matmuls on a few rows that run below the sgemm peak. None of that is
FLOPs or bytes, so a pure roofline predicts a CPU engine too fast. Rather than fudge the
peaks, `calibrate` measures it:

1. run a calibration trace through the engine, every request queued at once (so steps run
   back to back and each step's wall time is the gap to the next one's start);
2. for each step, subtract its roofline time (the simulator's clock with this machine's
   measured peaks) from its wall time;
3. fit what is left as a + b·sequences + c·tokens + d·cached positions read (least
   squares with no negative term,
   after dropping the first step, which warms caches, and steps that other processes
   stalled).

`check` then calibrates on one trace and predicts another (other lengths, Poisson arrivals,
another seed) with the simulator, runs that trace through the engine in real time, and
compares throughput and median TPOT, the pure roofline's prediction beside them.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ..engine import Engine
from ..engine.engine import StepRecord
from ..engine.request import Request
from ..engine.scheduler import SchedulerConfig
from ..model import Model
from . import machine
from .serving_metrics import ServingMetrics, serving_metrics
from .simulate import KVPool, Overheads, RooflineClock, TraceRequest, poisson_trace, simulate

CACHE_FILE = machine.CACHE_FILE.with_name("serving-overheads.json")


def replay(engine: Engine, trace: Sequence[TraceRequest]) -> list[Request]:
    """Run `trace` through a real engine in real time: each request is added once its
    arrival time has come (looked at between steps, as the simulator does), greedy with no
    end token, its `arrival` set to the trace's time; -> the requests, finished."""
    pending = deque(sorted(trace, key=lambda t: t.arrival))
    requests: list[Request] = []
    t0 = time.perf_counter()
    while pending or engine.has_unfinished():
        now = time.perf_counter() - t0
        while pending and pending[0].arrival <= now:
            t = pending.popleft()
            request = engine.add_request(list(t.prompt), t.max_new_tokens, temperature=0.0,
                                         stop_ids=())  # fmt: skip
            request.arrival = t0 + t.arrival
            requests.append(request)
        if engine.has_unfinished():
            engine.step()
        elif pending:
            time.sleep(max(0.0, pending[0].arrival - (time.perf_counter() - t0)))
    return requests


def engine_for(model: Model, config: SchedulerConfig, pool: KVPool, prefix_caching: bool) -> Engine:
    """An engine with the simulator's scheduler limits and KV pool."""
    return Engine(
        model,
        kv_memory=pool.budget,
        block_size=pool.block_size,
        max_seqs=config.max_seqs,
        max_batch_tokens=config.max_batch_tokens,
        chunked_prefill=config.chunked_prefill,
        prefix_caching=prefix_caching,
    )


# ---------------------------------------------------------------- calibration


@dataclass(frozen=True)
class Calibration:
    overheads: Overheads
    steps: int  # steps the fit used
    median_error: float  # median |wall − fitted| over those steps, seconds
    median_step: float  # median wall time of a step, seconds


def fit_overheads(records: Sequence[StepRecord], clock: RooflineClock) -> Calibration:
    """Fit wall − roofline = a + b·sequences + c·tokens + d·positions over back-to-back
    steps."""
    steps = [r for r in records if r.rows]
    rows, gaps = [], []
    for record, after in itertools.pairwise(steps[1:]):  # the first one warms up
        wall = after.start - record.start  # the whole step: scheduling, forward, sampling
        roof = clock.time([(start, n) for _, _, start, n in record.rows]).seconds
        positions = sum(start + n for _, _, start, n in record.rows)
        rows.append((1.0, len(record.rows), record.n_tokens, positions))
        gaps.append((wall - roof, wall))
    if len(rows) < 3:
        return Calibration(Overheads(), len(rows), float("nan"), float("nan"))
    X = np.array(rows, dtype=np.float64)  # (steps, 4)
    y = np.array([g for g, _ in gaps])  # (steps,)
    keep = np.ones(len(y), dtype=bool)
    for _ in range(2):  # fit, drop steps far above the fit (stalled by others), fit again
        coef = _nonnegative_fit(X[keep], y[keep])
        error = y - X @ coef
        keep = error < 3 * np.median(np.abs(error)) + 1e-4
    return Calibration(
        Overheads(*(float(c) for c in coef)),
        int(keep.sum()),
        float(np.median(np.abs(error[keep]))),
        float(np.median([w for _, w in gaps])),
    )


def _nonnegative_fit(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares with no negative coefficient (an overhead is a cost): the best fit over
    every subset of the terms whose coefficients all come out >= 0."""
    best, best_error = np.zeros(X.shape[1]), float(np.sum(y**2))
    for subset in itertools.product((False, True), repeat=X.shape[1]):
        cols = np.flatnonzero(subset)
        if len(cols) == 0:
            continue
        coef = np.zeros(X.shape[1])
        coef[cols] = np.linalg.lstsq(X[:, cols], y, rcond=None)[0]
        error = float(np.sum((y - X @ coef) ** 2))
        if (coef >= 0).all() and error < best_error:
            best, best_error = coef, error
    return best


def calibrate(
    model: Model,
    clock: RooflineClock,
    config: SchedulerConfig,
    pool: KVPool,
    trace: Sequence[TraceRequest] | None = None,
) -> Calibration:
    """This machine's overheads for `model`'s shape: a calibration trace (default: 16
    requests, prompts 16-256, outputs 16-64, all at once) through the engine, the gap to
    the roofline fitted."""
    if trace is None:
        trace = calibration_trace(model.config.vocab_size, model.config.max_seq_len)
    engine = engine_for(model, config, pool, True)
    replay(engine, trace)
    return fit_overheads(
        list(engine.records),
        RooflineClock(clock.config, clock.hardware, clock.weight_bytes, clock.kv_bytes),
    )


def calibration_trace(vocab_size: int, context: int) -> list[TraceRequest]:
    top = min(256, context // 2)
    return poisson_trace(16, float("inf"), (16, top), (16, 64), vocab_size, seed=12345)


def cached_overheads(key: str) -> Overheads | None:
    """Overheads measured before for `key` (machine and model), or None."""
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        return Overheads(**json.loads(CACHE_FILE.read_text())[key])
    return None


def save_overheads(key: str, overheads: Overheads) -> None:
    with contextlib.suppress(OSError, ValueError):
        saved = json.loads(CACHE_FILE.read_text()) if CACHE_FILE.exists() else {}
        saved[key] = asdict(overheads)
        CACHE_FILE.parent.mkdir(parents=True, exist_ok=True)
        CACHE_FILE.write_text(json.dumps(saved, indent=2))


def overheads_key(model: Model) -> str:
    c = model.config
    shape = f"L={c.n_layers} D={c.dim} H={c.n_heads} KVH={c.n_kv_heads} F={c.hidden_dim}"
    shape += f" V={c.vocab_size}"
    return f"{machine.machine_key(machine.cpu_count())} | {shape}"


# ---------------------------------------------------------------- the check


TOLERANCE = 0.25  # the simulator's prediction must be within ±25% of the engine's measurement


@dataclass(frozen=True)
class Check:
    calibration: Calibration
    measured: ServingMetrics  # the engine, in real time
    predicted: ServingMetrics  # the simulator, calibrated
    roofline: ServingMetrics  # the simulator, pure roofline (no overheads)

    @property
    def throughput_ratio(self) -> float:
        return self.predicted.output_tokens_per_second / self.measured.output_tokens_per_second

    @property
    def tpot_ratio(self) -> float:
        return self.predicted.tpot.p50 / self.measured.tpot.p50

    @property
    def passed(self) -> bool:
        return all(abs(r - 1) <= TOLERANCE for r in (self.throughput_ratio, self.tpot_ratio))


def check(
    model: Model,
    clock: RooflineClock,
    config: SchedulerConfig,
    pool: KVPool,
    trace: Sequence[TraceRequest],
    prefix_caching: bool = True,
    calibration_trace: Sequence[TraceRequest] | None = None,
    calibration: Calibration | None = None,
) -> Check:
    """Calibrate `clock` on `calibration_trace` (default: calibrate's) unless `calibration`
    is given, then run `trace` through the simulator (calibrated, and pure roofline) and
    through the engine; -> all three measured alike."""
    if calibration is None:
        calibration = calibrate(model, clock, config, pool, calibration_trace)
    calibrated = RooflineClock(
        clock.config, clock.hardware, clock.weight_bytes, clock.kv_bytes, calibration.overheads
    )
    bare = RooflineClock(clock.config, clock.hardware, clock.weight_bytes, clock.kv_bytes)
    predicted = simulate(trace, calibrated, config, pool, prefix_caching)
    roofline = simulate(trace, bare, config, pool, prefix_caching)
    measured = replay(engine_for(model, config, pool, prefix_caching), trace)
    return Check(
        calibration,
        serving_metrics(measured),
        serving_metrics(predicted.requests),
        serving_metrics(roofline.requests),
    )


def format_check(c: Check) -> str:
    from .serving_metrics import format_seconds as s

    cal = c.calibration
    lines = [
        f"calibration   {cal.steps} steps of a calibration trace on the engine (16 requests at "
        f"once): wall time − roofline = {cal.overheads.describe()} (median step "
        f"{s(cal.median_step)}, median fit error {s(cal.median_error)})",
        "check         the trace above, in real time on the engine and in the simulator:",
        f"  {'':<22}{'engine':>12}{'simulated':>12}{'ratio':>8}{'roofline only':>15}",
    ]
    m, p, r = c.measured, c.predicted, c.roofline
    rows = [
        ("output tokens/s", m.output_tokens_per_second, p.output_tokens_per_second,
         r.output_tokens_per_second, lambda x: f"{x:.4g}"),
        ("TPOT p50", m.tpot.p50, p.tpot.p50, r.tpot.p50, s),
        ("TTFT p50", m.ttft.p50, p.ttft.p50, r.ttft.p50, s),
        ("ITL p99", m.itl.p99, p.itl.p99, r.itl.p99, s),
    ]  # fmt: skip
    for name, mv, pv, rv, fmt in rows:
        lines.append(f"  {name:<22}{fmt(mv):>12}{fmt(pv):>12}{pv / mv:>8.2f}{fmt(rv):>15}")
    verdict = "within" if c.passed else "NOT within"
    lines.append(
        f"result        simulated throughput {c.throughput_ratio:.2f}× and median TPOT "
        f"{c.tpot_ratio:.2f}× the engine's: {verdict} ±{TOLERANCE:.0%}"
    )
    return "\n".join(lines)
