"""Prefill vs decode, measured: time, FLOPs and bytes of every forward pass of a generation.

`profile_generation` runs the generation loop (generate.py) greedily: the prompt through
`Model.prefill` several times (a fresh cache each time; the median is reported with its
spread), then one token per `Model.decode` call, each timed on its own by the loop, and
optionally B sequences at once (`Model.decode_batch`, through the same loop). Each pass's
FLOPs and bytes come from the formulas in costs.py (llama_np holds weights and cache in
float32: 4 bytes a value). Dividing by the time gives achieved GFLOP/s and GB/s, to hold
against this machine's measured peaks: MFU (model FLOP/s utilisation) = achieved ÷ peak
FLOP/s, MBU (model bandwidth utilisation) = achieved ÷ peak bytes/s. Prefill multiplies each
weight by T rows (many FLOPs per byte: compute-bound), decode by one row (2 FLOPs per 4-byte
weight, 0.5 FLOP/byte: memory-bound).

Every phase is held against one roof: this machine's peaks, measured with a BLAS thread per
CPU (machine.machine_peaks, the same figures `llama-np memory --hardware this-machine` and
the benchmarks use). A phase that ran with fewer threads reaches a smaller fraction of it,
which is what MFU and MBU are for.

Trust: the run notes what can make its figures wrong — other processes taking CPU while it
ran (CPU time from /proc/stat against this process's own, during the run; a load average
would count our own earlier work), graded: a little is "contaminated", a core's worth or
more while the run used every core makes the timings INVALID, since threads that wait for
each other stall when one is descheduled — prefill coming out slower per token than decode
(the lesson says that cannot happen on a quiet machine), an achieved rate above the peak
(the peaks are measured again; if still above, it says why), peaks that were themselves
measured on a busy machine.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import kernels
from ..config import LlamaConfig
from ..engine import generate_batch_stream
from ..errors import ArgumentError, ContextLengthError
from ..generate import GenerationStats, generate
from ..model import Model
from ..packed import FP32_KERNEL_MIN
from ..sampling import SamplingParams
from . import atomic
from .colors import PHASE_COLORS
from .costs import forward_bytes, forward_flops
from .machine import BUSY_CORES, CpuMeter, MachinePeaks, blas, cpu_cache_bytes, cpu_count

VALUE_BYTES = 4  # llama_np keeps weights and KV cache in float32
PeaksFn = Callable[[bool], MachinePeaks]  # (remeasure) -> this machine's peaks
# A run's timings are invalid when other processes' CPUs and the CPUs it wanted (its threads)
# exceed the machine's by this much: with every core in use, a thread pool whose threads wait
# for each other (OpenBLAS's, numba's) stalls whenever one of them is descheduled and runs
# 10-20× slower, not 1.5×; a single thread that must share its core runs at a fraction of it.
OVERSUBSCRIBED_CORES = 0.75


@dataclass(frozen=True)
class Step:
    """One forward pass: the prefill of the prompt, one decode step, or one batched step."""

    phase: str  # "prefill" | "decode" | "batch-decode"
    start: int  # position of its first token
    tokens: int  # tokens it ran, all sequences (T for prefill, 1 for decode, B for a batch)
    seconds: float  # wall time of the call (prefill: the median of its repeats)
    flops: int
    weight_bytes: int  # weights read: every matrix once, plus one embedding row per token
    kv_bytes: int  # K and V read from the cache: all of it, every position up to the last new one
    threads: int = 0  # BLAS threads it ran with

    @property
    def bytes(self) -> int:
        return self.weight_bytes + self.kv_bytes

    @property
    def intensity(self) -> float:
        """Arithmetic intensity, FLOPs per byte read."""
        return self.flops / self.bytes


@dataclass
class Profile:
    model: str
    peaks: MachinePeaks  # this machine's: a BLAS thread per CPU; every phase is held against it
    prompt: list[int]
    generated: list[int] = field(default_factory=list)
    text: str = ""
    steps: list[Step] = field(default_factory=list)
    prefill_runs: list[float] = field(default_factory=list)  # seconds of each prefill repeat
    batch: int = 1
    threads: dict[str, int] = field(default_factory=dict)  # phase -> BLAS threads used
    trials: list[dict] = field(default_factory=list)  # median ms per phase for each thread count
    notes: list[str] = field(default_factory=list)  # how the figures were obtained
    warnings: list[str] = field(default_factory=list)  # why they may be wrong
    contaminated: bool = False  # other processes disturbed the timings
    invalid: bool = False  # so much that they say nothing about this machine (OVERSUBSCRIBED_CORES)
    interrupted: bool = False  # Ctrl-C stopped it: the figures are of the steps timed so far

    def phases(self) -> list[str]:
        return list(dict.fromkeys(s.phase for s in self.steps))

    def phase(self, name: str) -> dict:
        """Totals of one phase, and its rates at its typical (median) time.

        Rates use the median pass: prefill's median repeat, decode's median step times the
        number of steps. Other processes stall single passes; the median is the typical one.
        """
        steps = [s for s in self.steps if s.phase == name]
        tokens = sum(s.tokens for s in steps)
        seconds = sum(s.seconds for s in steps)
        median = float(np.median([s.seconds for s in steps]))
        typical = median * len(steps)
        flops = sum(s.flops for s in steps)
        weight_bytes = sum(s.weight_bytes for s in steps)
        kv_bytes = sum(s.kv_bytes for s in steps)
        nbytes = weight_bytes + kv_bytes
        peaks = self.peaks
        flop_rate, byte_rate = flops / typical, nbytes / typical
        return {
            "phase": name,
            "threads": steps[0].threads,
            "passes": len(steps),
            "tokens": tokens,
            "seconds": seconds,
            "median_ms_per_pass": 1e3 * median,
            "ms_per_token": 1e3 * typical / tokens,
            "tokens_per_second": tokens / typical,
            "flops": flops,
            "weight_bytes": weight_bytes,
            "kv_bytes": kv_bytes,
            "intensity": flops / nbytes,
            "gflops_per_second": flop_rate / 1e9,
            "gb_per_second": byte_rate / 1e9,
            "mfu": flop_rate / peaks.matmul_flops,
            "mbu": byte_rate / peaks.memory_bandwidth,
        }

    @property
    def ttft(self) -> float:
        """Time to first token, seconds: the prefill pass, which yields the first new token's
        logits (median of the repeats)."""
        return self.steps[0].seconds

    @property
    def tpot(self) -> float:
        """Time per output token, seconds: the median decode step of one sequence."""
        return float(np.median([s.seconds for s in self.steps if s.phase == "decode"]))

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "peaks": asdict(self.peaks),
            "threads": self.threads,
            "thread_trials": self.trials,
            "prompt_tokens": self.prompt,
            "generated_tokens": self.generated,
            "generated_text": self.text,
            "ttft_seconds": self.ttft,
            "tpot_seconds": self.tpot,
            "prefill_runs_seconds": self.prefill_runs,
            "batch": self.batch,
            "phases": [self.phase(name) for name in self.phases()],
            "notes": self.notes,
            "warnings": self.warnings,
            "contaminated": self.contaminated,
            "invalid": self.invalid,
            "steps": [asdict(s) for s in self.steps],
        }


@dataclass
class _Run:
    """Everything timed with one BLAS thread count."""

    threads: int
    prefill: list[float]
    decode: list[Step]
    batch: list[Step]
    generated: list[int]
    others_cores: float
    cpu_known: bool
    interrupted: bool = False  # Ctrl-C came during this run


def profile_generation(
    model: Model,
    prompt: list[int],
    n_decode: int,
    peaks: MachinePeaks | PeaksFn,
    *,
    threads: Sequence[int] | None = None,
    repeats: int = 5,
    batch: int = 1,
) -> Profile:
    """Prefill `prompt` `repeats` times, then greedily decode `n_decode` tokens, timing every
    call (after untimed warm-up passes); with `batch` > 1, also decode `n_decode` steps of
    `batch` copies of the prompt together.

    `threads`: BLAS thread counts to try (each phase reports the count that gave it the best
    median); None runs once with the BLAS as it is. `peaks`: this machine's peaks, or a
    function (remeasure) -> peaks, called again with remeasure=True when a phase beats them.
    Runs all `n_decode` steps even past an end-of-text token.
    """
    config = model.config
    if not prompt:
        raise ArgumentError("the prompt must have at least one token (e.g. BOS)")
    if n_decode < 1:
        raise ArgumentError(f"-n must be at least 1 decode step, got {n_decode}")
    if repeats < 1:
        raise ArgumentError(f"repeats must be at least 1, got {repeats}")
    if batch < 1:
        raise ArgumentError(f"--batch must be at least 1, got {batch}")
    if len(prompt) + n_decode > config.max_seq_len:
        raise ContextLengthError(
            f"prompt ({len(prompt)} tokens) + -n {n_decode} decode steps = "
            f"{len(prompt) + n_decode} positions, more than the model's context of "
            f"{config.max_seq_len}; use a shorter prompt or a smaller -n"
        )
    peaks_fn: PeaksFn = peaks if callable(peaks) else (lambda remeasure=False: peaks)
    thread_counts = [blas().threads] if threads is None else list(threads)
    runs: list[_Run] = []
    for t in thread_counts:
        runs.append(_timed_run(model, prompt, n_decode, batch, repeats, t, threads is not None))
        if runs[-1].interrupted:  # Ctrl-C: report what this run timed, try no more
            if not (runs[-1].prefill and runs[-1].decode):
                raise KeyboardInterrupt  # too early: nothing to report
            runs = [r for r in runs if r.prefill and r.decode and (r.batch or batch == 1)]
            break

    def best(key: Callable[[_Run], float]) -> _Run:
        return min(runs, key=key)

    pre = best(lambda r: float(np.median(r.prefill)))
    dec = best(lambda r: float(np.median([s.seconds for s in r.decode])))
    result = Profile(
        config.name, peaks_fn(False), list(prompt), batch=batch, generated=dec.generated
    )
    result.prefill_runs = pre.prefill
    result.steps.append(
        _step("prefill", config, 0, len(prompt), float(np.median(pre.prefill)), pre.threads)
    )
    result.steps += dec.decode
    result.threads = {"prefill": pre.threads, "decode": dec.threads}
    used = [pre, dec]
    if batch > 1 and any(r.batch for r in runs):
        bat = best(lambda r: float(np.median([s.seconds for s in r.batch])) if r.batch else np.inf)
        result.steps += bat.batch
        result.threads["batch-decode"] = bat.threads
        used.append(bat)
    for r in runs:
        trial = {"threads": r.threads, "prefill_ms": 1e3 * float(np.median(r.prefill)),
                 "decode_ms": 1e3 * float(np.median([s.seconds for s in r.decode]))}  # fmt: skip
        if r.batch:
            trial["batch_decode_ms"] = 1e3 * float(np.median([s.seconds for s in r.batch]))
        result.trials.append(trial)
    if model.tokenizer is not None:
        result.text = model.tokenizer.decode(result.generated)

    if model.uses_compiled_kernels:
        result.notes.append(
            f"kernel layer {kernels.active()}: decode's products with compressed weights and with "
            f"fp32 matrices of {FP32_KERNEL_MIN:,}+ weights ran in its compiled kernels, on "
            "numba's threads; the BLAS thread counts are those of prefill and the other products"
        )
    _check_peaks(result, peaks_fn)
    _check_contamination(result, used, model.uses_compiled_kernels)
    result.interrupted = any(r.interrupted for r in runs)
    return result


def _timed_run(
    model: Model, prompt: list[int], n_decode: int, batch: int, repeats: int, threads: int,
    pin: bool,
) -> _Run:  # fmt: skip
    """Time the generation loop (generate.py) with `threads` BLAS threads: `repeats` prefills
    (each a fresh cache), `n_decode` decode steps, and as many batched steps."""
    config = model.config
    greedy = SamplingParams(temperature=0.0)  # the same text every run
    prefill: list[float] = []
    decode: list[Step] = []
    batched: list[Step] = []
    stats, bstats = GenerationStats(), None
    interrupted = False
    with blas().using(threads if pin else None), CpuMeter() as meter:
        try:
            # Warm up, untimed: the first pass pays for page faults and BLAS thread start-up.
            model.decode(prompt[0], model.new_cache(1))
            model.prefill(prompt, model.new_cache(len(prompt)))
            for _ in range(repeats - 1):  # prefill alone: one token sampled, none decoded
                stats = GenerationStats()
                for _ in generate(model, prompt, 1, sampling=greedy, stop_ids=(), stats=stats):
                    pass
                prefill.append(stats.prefill_seconds)
            # No end token, so that the loop runs all n_decode steps; the last sampled token
            # is not run through the model, hence n_decode + 1.
            stats = GenerationStats()
            for _ in generate(
                model, prompt, n_decode + 1, sampling=greedy, stop_ids=(), stats=stats
            ):
                pass
            if batch > 1:
                bstats = GenerationStats()
                pieces = generate_batch_stream(
                    model,
                    [prompt] * batch,
                    n_decode + 1,
                    sampling=greedy,
                    stop_ids=(),
                    stats=bstats,
                )
                for _ in pieces:
                    pass
        except KeyboardInterrupt:  # keep what was timed; the caller reports it
            interrupted = True
        if stats.prefill_seconds:
            prefill.append(stats.prefill_seconds)
        decode = [
            _step("decode", config, len(prompt) + i, 1, seconds, threads)
            for i, seconds in enumerate(stats.step_seconds)
        ]
        generated = stats.tokens[: len(decode)]
        if bstats is not None:
            batched = [
                _step("batch-decode", config, len(prompt) + i, 1, seconds, threads, batch)
                for i, seconds in enumerate(bstats.step_seconds)
            ]
    use = meter.use
    return _Run(
        threads, prefill, decode, batched, generated, use.others_cores, use.known, interrupted
    )


def _step(
    phase: str, config: LlamaConfig, start: int, tokens: int, seconds: float, threads: int,
    batch: int = 1,
) -> Step:  # fmt: skip
    end = start + tokens  # positions in the cache after the step, all of them read
    return Step(
        phase=phase,
        start=start,
        tokens=tokens * batch,
        seconds=seconds,
        flops=forward_flops(config, tokens, start, 1, batch),
        weight_bytes=forward_bytes(config, tokens, start, VALUE_BYTES, 0, batch),
        kv_bytes=config.kv_cache_bytes(end, batch, bytes_per_value=VALUE_BYTES),
        threads=threads,
    )


def _above_peak(p: Profile) -> list[tuple[str, str, float]]:
    """(phase, "FLOP/s" | "bandwidth", fraction) for every rate above its peak."""
    over = []
    for name in p.phases():
        ph = p.phase(name)
        if ph["mfu"] > 1:
            over.append((name, "FLOP/s", ph["mfu"]))
        if ph["mbu"] > 1:
            over.append((name, "bandwidth", ph["mbu"]))
    return over


def _check_peaks(p: Profile, peaks_fn: PeaksFn) -> None:
    """Measure the peaks again when a phase beat them in a way the CPU caches cannot explain;
    say why whatever is still above 100% is."""
    caches = cpu_cache_bytes()

    def in_cache(name: str) -> bool:
        ph = p.phase(name)
        return (ph["weight_bytes"] + ph["kv_bytes"]) / ph["passes"] <= caches

    if any(what == "FLOP/s" or not in_cache(name) for name, what, _ in _above_peak(p)):
        old = p.peaks
        p.peaks = peaks_fn(True)
        p.notes.append(
            f"re-measured the peaks: a phase ran faster than the cached "
            f"{old.matmul_flops / 1e9:.1f} GFLOP/s, {old.memory_bandwidth / 1e9:.1f} GB/s allow; "
            f"now {p.peaks.matmul_flops / 1e9:.1f} GFLOP/s, "
            f"{p.peaks.memory_bandwidth / 1e9:.1f} GB/s"
        )
    for name, what, fraction in _above_peak(p):
        ph = p.phase(name)
        if what == "bandwidth" and in_cache(name):
            mb = (ph["weight_bytes"] + ph["kv_bytes"]) / ph["passes"] / 1e6
            why = (
                f"each pass reads only {mb:.3g} MB, which fits in the CPU's {caches / 1e6:.3g} MB "
                "of cache, faster than the main memory the peak measures (a 512 MiB read)"
            )
        else:
            why = (
                "even after measuring the peaks again: the machine was probably busier while "
                "they were measured than during the run"
            )
        p.warnings.append(
            f"{name}: {100 * fraction:.0f}% of the measured peak {what}, above 100%: {why}; "
            "its point is drawn above the roofline"
        )


def _check_contamination(p: Profile, runs: list[_Run], compiled: bool) -> None:
    """Warn about other processes' CPU use during the runs whose figures are reported.

    Measured over the run itself, from /proc/stat against this process's own CPU time (see
    machine.CpuMeter): what we ran a moment earlier cannot raise it, as it raises the load
    average. Graded, since a thread pool's collapse is not a few percent of noise."""
    cpus = cpu_count()
    if p.peaks.busy:
        p.warnings.append(
            f"the peaks were measured while other processes used {p.peaks.others_cores:.2f} "
            "CPUs: they are probably too low (MFU/MBU too high); measure again on a quiet "
            "machine with --remeasure"
        )
    known = [r for r in runs if r.cpu_known]
    others = max((r.others_cores for r in known), default=0.0)

    def wanted(r: _Run) -> int:  # CPUs the run's threads wanted (the kernel layer's: all)
        return cpus if compiled else min(r.threads, cpus)

    over = [r for r in known if r.others_cores + wanted(r) >= cpus + OVERSUBSCRIBED_CORES]
    if over:
        p.contaminated = p.invalid = True
        r = max(over, key=lambda r: r.others_cores)
        if wanted(r) > 1:
            why = (
                f"while this ran on {wanted(r)}. Threads that wait for each other stall whenever "
                "one of them is descheduled, which makes a step 10-20× slower, not a little"
            )
        else:
            why = "while this ran on one: its thread shared a CPU, a fraction of a core's speed"
        p.warnings.insert(
            0,
            f"TIMINGS INVALID: other processes used {r.others_cores:.2f} of the {cpus} CPUs "
            f"{why}: these times say nothing about this machine. Re-run when it is quiet",
        )
    elif known and others > BUSY_CORES:
        p.contaminated = True
        p.warnings.append(
            f"measurement contaminated: other processes used {others:.2f} of the {cpus} CPUs "
            "on average while it ran; timings are slower and noisier than this machine can do"
        )
    pre, dec = p.phase("prefill"), p.phase("decode")
    if pre["tokens"] > 1 and pre["ms_per_token"] >= dec["median_ms_per_pass"]:
        p.contaminated = True
        p.warnings.append(
            f"measurement contaminated: prefill took {pre['ms_per_token']:.3g} ms per token, "
            f"not less than decode's {dec['median_ms_per_pass']:.3g} ms; on a quiet machine "
            "one pass over T tokens costs less per token than T passes. Re-run when the "
            "machine is quiet"
        )
    spread = max(p.prefill_runs) / min(p.prefill_runs)
    if spread > 3:
        p.warnings.append(
            f"prefill repeats ranged {spread:.1f}× from fastest to slowest: something stalled "
            "some of them"
        )


# ---------------------------------------------------------------- output


def format_profile(p: Profile) -> str:
    """Per-phase summary and per-step table, as `llama-np profile` prints them."""
    lines = [f"WARNING: {w}" for w in p.warnings if p.invalid and w.startswith("TIMINGS INVALID")]
    pk = p.peaks
    threads = f"{pk.threads} BLAS thread(s)" if pk.threads else "BLAS threads as set"
    if pk.threads == cpu_count():
        threads += ", one per CPU"
    lines.append(
        f"machine peaks ({threads}): {pk.matmul_flops / 1e9:.1f} GFLOP/s float32 matmul, "
        f"{pk.memory_bandwidth / 1e9:.1f} GB/s memory bandwidth (ridge {pk.ridge:.1f} FLOP/B); "
        "every phase is held against them"
    )
    if len(p.trials) > 1:
        tried = "; ".join(
            f"{tr['threads']}: prefill {tr['prefill_ms']:.3g} ms, decode {tr['decode_ms']:.3g} ms"
            for tr in p.trials
        )
        lines.append(f"threads tried (median times): {tried}")
    lines.append(
        "threads used (best median of each phase): "
        + ", ".join(f"{name} {t}" for name, t in p.threads.items())
    )
    lo, hi = min(p.prefill_runs), max(p.prefill_runs)
    n_dec = sum(1 for s in p.steps if s.phase == "decode")
    lines += [
        f"TTFT (time to first token: the prefill pass)  {1e3 * p.ttft:.3f} ms, median of "
        f"{len(p.prefill_runs)} runs ({1e3 * lo:.3f}-{1e3 * hi:.3f})",
        f"TPOT (time per output token: a decode step)   {1e3 * p.tpot:.3f} ms, median of "
        f"{n_dec} steps",
        "",
        f"{'phase':<13} {'thr':>3} {'tokens':>6} {'median ms':>9} {'ms/token':>9} "
        f"{'MFLOP':>10} {'weights MB':>10} {'KV MB':>8} {'FLOP/B':>7} {'GFLOP/s':>8} "
        f"{'GB/s':>7} {'MFU':>7} {'MBU':>7}",
    ]
    for name in p.phases():
        ph = p.phase(name)
        lines.append(
            f"{name:<13} {ph['threads']:>3} {ph['tokens']:>6} {ph['median_ms_per_pass']:>9.3f} "
            f"{ph['ms_per_token']:>9.4f} {ph['flops'] / 1e6:>10.2f} "
            f"{ph['weight_bytes'] / 1e6:>10.3f} {ph['kv_bytes'] / 1e6:>8.3f} "
            f"{ph['intensity']:>7.2f} {ph['gflops_per_second']:>8.3f} "
            f"{ph['gb_per_second']:>7.3f} {100 * ph['mfu']:>6.2f}% {100 * ph['mbu']:>6.2f}%"
        )
    lines.append(
        "(median ms: the median pass, prefill of all its tokens or one decode step; rates use "
        "it; MFU/MBU = achieved ÷ peak FLOP/s / bandwidth)"
    )
    lines += [f"note: {n}" for n in p.notes]
    lines += [f"WARNING: {w}" for w in p.warnings if not (p.invalid and w.startswith("TIMINGS"))]
    lines += [
        "",
        "per step (position = the first token's; KV = cache bytes read):",
        f"{'step':>4} {'phase':<13} {'pos':>5} {'tokens':>6} {'ms':>8} {'MFLOP':>9} "
        f"{'weights KB':>10} {'KV KB':>8} {'FLOP/B':>7} {'GFLOP/s':>8} {'GB/s':>7}",
    ]
    for i, s in enumerate(p.steps):
        lines.append(
            f"{i:>4} {s.phase:<13} {s.start:>5} {s.tokens:>6} {s.seconds * 1e3:>8.3f} "
            f"{s.flops / 1e6:>9.3f} {s.weight_bytes / 1e3:>10.1f} {s.kv_bytes / 1e3:>8.1f} "
            f"{s.intensity:>7.2f} {s.flops / s.seconds / 1e9:>8.3f} "
            f"{s.bytes / s.seconds / 1e9:>7.3f}"
        )
    return "\n".join(lines)


def write_json(p: Profile, path: Path) -> None:
    atomic.write_text(path, json.dumps(p.to_json(), indent=2))


MARKERS = {"prefill": "*", "decode": "s", "batch-decode": "D"}


def plot_profile(p: Profile, path: Path) -> None:
    """Write `profile_figure(p)` as a PNG. Needs matplotlib (`pip install -e '.[plot]'`);
    raises ImportError without it."""
    with atomic.atomic_path(path) as tmp:
        profile_figure(p).savefig(tmp, dpi=110)


def profile_figure(p: Profile):
    """Three panels: time per token over the sequence, KV-cache size, and the roofline; each
    phase in its colour (colors.PHASE_COLORS). Returns a matplotlib Figure (drawn without
    pyplot, so the user's interactive backend is left alone)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    C = PHASE_COLORS
    plain = FuncFormatter(lambda v, _: f"{v:g}")  # one tick format on every log axis
    prefill = p.steps[0]
    decode = [s for s in p.steps if s.phase == "decode"]
    batched = [s for s in p.steps if s.phase == "batch-decode"]
    fig = Figure(figsize=(17, 5.4))
    FigureCanvasAgg(fig)
    ax_t, ax_kv, ax_r = fig.subplots(1, 3)
    title = f"{p.model}: prefill of {prefill.tokens} tokens, then {len(decode)} decode steps"
    if batched:
        title += f" (and {len(batched)} steps of a batch of {p.batch})"
    if p.invalid:
        title += "\nTIMINGS INVALID: other processes took the CPUs (see the WARNING)"
    elif p.contaminated:
        title += " — WARNING: timings contaminated by other processes"
    fig.suptitle(title, color="red" if p.invalid else "black")

    # (a) time per token. Prefill's tokens share one pass: its time per token is the average;
    # a batched step's B tokens share one pass too.
    T = prefill.tokens
    ax_t.axvspan(-0.5, T - 0.5, color=C["prefill"], alpha=0.15)
    ax_t.hlines(
        1e3 * prefill.seconds / T, -0.5, T - 0.5, color=C["prefill"], lw=3,
        label=f"prefill: ms per token (median pass ÷ {T})",
    )  # fmt: skip
    ax_t.plot(
        [s.start for s in decode], [1e3 * s.seconds for s in decode], ".-",
        color=C["decode"], label="decode: ms per step (one token)",
    )  # fmt: skip
    ax_t.axhline(1e3 * p.tpot, color=C["decode"], ls="--", lw=1,
                 label=f"decode median (TPOT): {1e3 * p.tpot:.3g} ms")  # fmt: skip
    times = [1e3 * prefill.seconds / T] + [1e3 * s.seconds for s in decode]
    if batched:
        per_token = [1e3 * s.seconds / p.batch for s in batched]
        ax_t.plot(
            [s.start for s in batched], per_token, ".-", color=C["batch-decode"],
            label=f"batch-decode: ms per step ÷ {p.batch} (a token for each sequence)",
        )  # fmt: skip
        times += per_token
    if max(times) / min(times) > 20:  # a log axis only when the range needs one
        ax_t.set(yscale="log", ylabel="ms per token (log scale)")
        ax_t.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax_t.yaxis.set_minor_formatter(NullFormatter())
    else:
        ax_t.set(ylabel="ms per token")
        ax_t.set_ylim(bottom=0)
    ax_t.yaxis.set_major_formatter(plain)
    ax_t.set(xlabel="position in the sequence", title="Time per token")
    ax_t.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=8, ncol=1)

    # (b) KV-cache size against the position written. Prefill writes the rows of positions
    # 0..T-1 in its one pass (a ramp: one row per position), decode one row per step. Each
    # step reads the whole cache, so its kv_bytes is the cache's size after its write.
    row = prefill.kv_bytes / T / 1e3  # kB per position
    ax_kv.plot([-0.5, T - 0.5], [0, prefill.kv_bytes / 1e3], color=C["prefill"], lw=2,
               label=f"prefill: {T} rows written in one pass")  # fmt: skip
    ax_kv.step(
        [T - 0.5] + [s.start + 0.5 for s in decode],
        [prefill.kv_bytes / 1e3] + [s.kv_bytes / 1e3 for s in decode],
        where="post", color=C["decode"], lw=2, label="decode: one row per step",
    )  # fmt: skip
    ax_kv.axvspan(-0.5, T - 0.5, color=C["prefill"], alpha=0.15)
    ax_kv.set(
        xlabel="position in the sequence",
        ylabel="KV cache (kB, float32)",
        title=f"KV-cache size of one sequence: {1e3 * row:,.0f} bytes per token",
    )
    ax_kv.set_ylim(bottom=0)
    ax_kv.yaxis.set_major_formatter(plain)
    ax_kv.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=8)

    # (c) roofline: attainable FLOP/s = min(peak FLOP/s, bandwidth × intensity): this
    # machine's one roof, with every phase on it. Left of the ridge a pass waits for memory,
    # right of it for arithmetic.
    pk = p.peaks
    peak_f, peak_b = pk.matmul_flops / 1e9, pk.memory_bandwidth / 1e9
    points = [(name, p.phase(name)) for name in p.phases()]
    intensities = [ph["intensity"] for _, ph in points]
    x = np.geomspace(min(*intensities, pk.ridge) / 4, max(*intensities, pk.ridge) * 8, 200)
    achieved = [s.flops / s.seconds / 1e9 for s in p.steps]
    bottom = min(peak_b * x[0], *achieved) / 2
    top = max(peak_f, *achieved) * 3
    ax_r.axvspan(x[0], pk.ridge, color="#dddddd", alpha=0.5, lw=0)
    ax_r.text(pk.ridge / 1.15, top / 1.6, "memory-bound", ha="right", va="top", fontsize=9,
              color="dimgray")  # fmt: skip
    ax_r.text(pk.ridge * 1.15, top / 1.6, "compute-bound", ha="left", va="top", fontsize=9,
              color="dimgray")  # fmt: skip
    ax_r.loglog(x, np.minimum(peak_f, peak_b * x), color="black", lw=2,
                label=f"roofline: {peak_f:.1f} GFLOP/s, {peak_b:.1f} GB/s")  # fmt: skip
    ax_r.axvline(pk.ridge, color="gray", ls=":", lw=1)
    ax_r.text(pk.ridge * 0.93, bottom * 1.15, f"ridge {pk.ridge:.1f} FLOP/B", fontsize=8,
              color="gray", rotation=90, va="bottom", ha="right")  # fmt: skip
    ax_r.scatter(
        [s.intensity for s in decode], [s.flops / s.seconds / 1e9 for s in decode],
        s=10, color=C["decode"], alpha=0.4, label="decode steps",
    )  # fmt: skip
    above = []
    for name, ph in points:
        attainable = min(pk.matmul_flops, pk.memory_bandwidth * ph["intensity"]) / 1e9
        y = ph["gflops_per_second"]
        label = (f"{name} ({ph['threads']} thread(s)): {ph['intensity']:.2f} FLOP/B, "
                 f"{y:.3g} GFLOP/s (median)")  # fmt: skip
        if y > attainable:
            label += " — ABOVE the roofline*"
            above.append(name)
        ax_r.scatter([ph["intensity"]], [y], s=140, marker=MARKERS[name], color=C[name],
                     edgecolor="black", label=label, zorder=3)  # fmt: skip
    title = "Roofline (this machine, measured ceilings)"
    if above:
        title += "\n*" + ", ".join(above) + ": above the measured ceiling; the WARNING says why"
    ax_r.set(
        xlabel="arithmetic intensity (FLOPs per byte read)",
        ylabel="GFLOP/s (line: attainable; points: achieved)",
        title=title,
    )
    ax_r.set_xlim(x[0], x[-1])
    ax_r.set_ylim(bottom=bottom, top=top)
    ax_r.xaxis.set_major_formatter(plain)
    ax_r.yaxis.set_major_formatter(plain)
    ax_r.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=8)
    ax_r.grid(True, which="both", alpha=0.2)

    fig.tight_layout()
    return fig
