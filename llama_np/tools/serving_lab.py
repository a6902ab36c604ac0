"""The serving lesson's experiments, measured on the real engine (docs/serving.md).

    llama-np serving-lab batching --random stories110M      static vs continuous batching,
                                                            contiguous vs paged KV memory
    llama-np serving-lab chunked --random stories110M       running streams' gaps while a long
                                                            prompt is prefilled, whole or chunked
    llama-np serving-lab prefix --random stories110M        prefix-cache hits and TTFT saved
    llama-np serving-lab context --random stories110M       decode step time vs context length
    llama-np serving-lab speculative --random stories110M   prompt lookup: acceptance vs speedup

Each returns the text it prints; the runs keep the engine's StepRecords, which
`plot_steps` draws (prefill tokens and decode tokens of every step, in the profile's colours).
Random weights of a known shape time like the real model (the values change the text, not
the speed), and greedy decoding with no end token makes every request run its length.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..engine import Engine, StepRecord
from ..engine.request import Request
from ..model import Model
from .costs import forward_bytes
from .serving_metrics import format_seconds, serving_metrics
from .simulate import poisson_trace

GREEDY = dict(temperature=0.0, stop_ids=())  # no end token: every request runs its length


@dataclass
class Run:
    """One engine run of an experiment: its name, requests and step records."""

    name: str
    requests: list[Request]
    records: list[StepRecord]
    seconds: float


def _drain(engine: Engine) -> None:
    while engine.has_unfinished():
        engine.step()


# ---------------------------------------------------------------- batching and memory


def batching(model: Model, n: int = 16, max_seqs: int = 8, seed: int = 0) -> tuple[str, list[Run]]:
    """The same requests (prompts 16-64 tokens, outputs 8-128) served in static batches,
    each wave of `max_seqs` admitted only when the whole previous one finished, and with
    continuous batching (a finished request's place taken at the next step)."""
    config = model.config
    trace = poisson_trace(n, float("inf"), (16, 64), (8, 128), config.vocab_size, seed=seed)
    runs = []
    for name in ("static", "continuous"):
        engine = Engine(model, max_seqs=max_seqs, max_batch_tokens=512)
        requests = []
        t0 = time.perf_counter()
        waves = [trace[i : i + max_seqs] for i in range(0, n, max_seqs)]
        if name == "continuous":
            waves = [trace]
        for wave in waves:
            for t in wave:
                requests.append(engine.add_request(list(t.prompt), t.max_new_tokens, **GREEDY))
                requests[-1].arrival = t0  # every request was there from the start
            _drain(engine)
        runs.append(Run(name, requests, list(engine.records), time.perf_counter() - t0))
    lines = [
        f"{n} requests at once, prompts 16-64 tokens, outputs 8-128 tokens; at most "
        f"{max_seqs} running; {config.name}, random weights",
        f"{'':<12}{'steps':>7}{'rows/step':>11}{'output tok/s':>14}{'TTFT p50':>10}"
        f"{'TTFT p90':>10}{'total':>9}",
    ]
    for run in runs:
        m = serving_metrics(run.requests)
        rows = np.mean([len(r.rows) for r in run.records if r.rows])
        lines.append(
            f"{run.name:<12}{len(run.records):>7}{rows:>11.2f}"
            f"{m.output_tokens / run.seconds:>14.4g}{format_seconds(m.ttft.p50):>10}"
            f"{format_seconds(m.ttft.p90):>10}{format_seconds(run.seconds):>9}"
        )
    lines.append(_memory(runs[1], engine.cache.block_nbytes // engine.pool.block_size, max_seqs,
                         config.max_seq_len, engine.pool.block_size))  # fmt: skip
    return "\n".join(lines), runs


def _memory(run: Run, per_token: int, max_seqs: int, context: int, block_size: int) -> str:
    """KV bytes at the continuous run's busiest step: what a contiguous cache reserves,
    what the paged pool's blocks hold, and what the sequences actually use."""
    busiest = max(run.records, key=lambda r: r.blocks_used)
    used = sum(start + n for _, _, start, n in busiest.rows)  # positions the running hold
    contiguous = busiest.running * context * per_token
    paged = busiest.blocks_used * block_size * per_token
    mib = 2**20
    return (
        f"KV memory at the busiest step ({busiest.running} sequences, {used:,} positions): "
        f"contiguous reserves {busiest.running} × {context:,} positions = "
        f"{contiguous / mib:,.1f} MiB ({100 * used * per_token / contiguous:.1f}% used); "
        f"paged holds {busiest.blocks_used} blocks of {block_size} = {paged / mib:,.2f} MiB "
        f"({100 * used * per_token / paged:.1f}% used)"
    )


# ---------------------------------------------------------------- chunked prefill


def chunked_prefill(
    model: Model, streams: int, long: int, budget: int, chunked: bool
) -> tuple[dict, Run]:
    """`streams` requests decode; a `long`-token prompt arrives: the streams' inter-token
    gaps with the prompt prefilled whole in one step, or in chunks under a step budget of
    `budget` tokens (the streams' tokens, the rest for the prompt). benchmarks/engine.py
    measures the same."""
    rng = np.random.default_rng(1)
    vocab = model.config.vocab_size
    step_budget = budget if chunked else long + streams
    engine = Engine(model, max_seqs=streams + 1, max_batch_tokens=step_budget,
                    chunked_prefill=chunked)  # fmt: skip
    running = [
        engine.add_request([1, *rng.integers(3, vocab, 15).tolist()], 60, **GREEDY)
        for _ in range(streams)
    ]
    t0 = time.perf_counter()
    for _ in range(20):  # the streams are decoding
        engine.step()
    arrival = time.perf_counter()
    newcomer = engine.add_request([1, *rng.integers(3, vocab, long - 1).tolist()], 4, **GREEDY)
    _drain(engine)
    gaps = np.concatenate([np.diff(r.token_times) for r in running])  # (gaps,)
    name = f"chunked, {budget}-token steps" if chunked else "whole, in one step"
    result = {
        "chunked": chunked,
        "budget": step_budget,
        "prompt_steps": sum(1 for r in engine.records if any(w[0] == newcomer.id for w in r.rows)),
        "median_gap_ms": float(np.median(gaps)) * 1e3,
        "worst_gap_ms": float(gaps.max()) * 1e3,
        "worst_over_median": float(gaps.max() / np.median(gaps)),
        "long_prompt_ttft_s": newcomer.token_times[0] - arrival,
    }
    return result, Run(name, [*running, newcomer], list(engine.records), time.perf_counter() - t0)


def chunked(
    model: Model, streams: int = 8, long: int = 1000, budget: int = 24
) -> tuple[str, list[Run]]:
    """chunked_prefill whole and chunked, as a table."""
    lines = [
        f"{streams} streams decoding, then a {long:,}-token prompt arrives; {model.config.name}, "
        "random weights",
        f"{'the prompt':<26}{'its steps':>10}{'gap p50':>10}{'worst gap':>11}{'worst/p50':>11}"
        f"{'its TTFT':>10}",
    ]
    runs = []
    for is_chunked in (False, True):
        r, run = chunked_prefill(model, streams, long, budget, is_chunked)
        runs.append(run)
        median, worst = r["median_gap_ms"] / 1e3, r["worst_gap_ms"] / 1e3
        lines.append(f"{run.name:<26}{r['prompt_steps']:>10}{format_seconds(median):>10}"
                     f"{format_seconds(worst):>11}{r['worst_over_median']:>10.1f}×"
                     f"{format_seconds(r['long_prompt_ttft_s']):>10}")  # fmt: skip
    return "\n".join(lines), runs


# ---------------------------------------------------------------- prefix caching


def prefix_caching(model: Model, system: int, questions: int, on: bool) -> dict:
    """TTFT of requests sharing a `system`-token prefix, each with 20 tokens of its own, after
    a first one computed it; prefix caching on or off. benchmarks/engine.py measures the same."""
    rng = np.random.default_rng(2)
    vocab = model.config.vocab_size
    head = [1, *rng.integers(3, vocab, system - 1).tolist()]
    engine = Engine(model, prefix_caching=on, max_batch_tokens=system + 64)
    engine.generate([head + rng.integers(3, vocab, 20).tolist()], 1, **GREEDY)  # warms it
    done = [
        engine.generate([head + rng.integers(3, vocab, 20).tolist()], 1, **GREEDY)[0]
        for _ in range(questions)
    ]
    return {
        "prefix_caching": on,
        "ttft_ms": float(np.median([d.ttft for d in done]) * 1e3),
        "cached_tokens": int(np.median([d.cached_tokens for d in done])),
        "hit_rate": engine.pool.hit_rate,
    }


def prefix(model: Model, system: int = 500, questions: int = 5) -> str:
    """prefix_caching off and on, as a table."""
    lines = [
        f"{questions} requests after a first: a {system}-token shared system prompt + 20 tokens "
        f"of their own; {model.config.name}, random weights",
        f"{'prefix caching':<16}{'prompt tokens cached':>22}{'hit rate':>10}{'TTFT p50':>10}",
    ]
    off, on = (prefix_caching(model, system, questions, o) for o in (False, True))
    for r in (off, on):
        cached, ttft = f"{r['cached_tokens']} of {system + 20}", r["ttft_ms"] / 1e3
        lines.append(f"{'on' if r['prefix_caching'] else 'off':<16}{cached:>22}"
                     f"{100 * r['hit_rate']:>9.1f}%{format_seconds(ttft):>10}")  # fmt: skip
    ratio = off["ttft_ms"] / on["ttft_ms"]
    lines.append(f"TTFT saved: {100 * (1 - 1 / ratio):.0f}% ({ratio:.1f}× faster)")
    return "\n".join(lines)


# ---------------------------------------------------------------- decode vs context


def context(
    model: Model, positions: Sequence[int] = (16, 256, 512, 768, 1008), bandwidth=None
) -> str:
    """One decode step's time at each position (the median of 5): every step reads all the
    weights and the whole KV cache so far, so it grows with the context."""
    from .speculative import pass_seconds

    config = model.config
    lines = [
        f"one decode step of {config.name} (random weights) at each position, median of 5",
        f"{'position':>9}{'KV read':>12}{'weights + KV':>14}{'step':>10}"
        + (f"{'roofline':>10}" if bandwidth else ""),
    ]
    for p in positions:
        seconds = pass_seconds(model, p, [1])[1]
        kv = config.kv_cache_bytes(p + 1)
        total = forward_bytes(config, 1, p)
        roof = f"{format_seconds(total / bandwidth):>10}" if bandwidth else ""
        lines.append(f"{p:>9,}{kv / 2**20:>9.1f} MiB{total / 1e6:>11.0f} MB"
                     f"{format_seconds(seconds):>10}{roof}")  # fmt: skip
    return "\n".join(lines)


# ---------------------------------------------------------------- speculative decoding


def speculative(text_model: Model, model: Model, ks: Sequence[int] = (1, 2, 4, 8)) -> str:
    """Prompt lookup on real text (`text_model`, the bundled stories260K: greedy stories
    repeat themselves), and what a verification pass of k + 1 tokens costs on `model`."""
    from .speculative import pass_seconds, time_speculation

    prompt = text_model.tokenizer.encode("Once upon a time, there was a little girl named Lily.")
    base = time_speculation(text_model, prompt, 200, 0)
    position = min(256, model.config.max_seq_len // 2)
    costs = pass_seconds(model, position, [1, *(k + 1 for k in ks)])
    lines = [
        f"prompt lookup on {text_model.config.name} (200 greedy tokens of a story; 3-gram); "
        f"a pass of k + 1 tokens on {model.config.name} at position {position}",
        f"{'k':>3}{'accepted':>10}{'tokens/pass':>13}{'speedup':>9}"
        f"{'pass cost':>11}{'speedup there':>15}",
        f"{0:>3}{'-':>10}{1:>13.2f}{1:>8.2f}×{1:>10.2f}×{1:>14.2f}×",
    ]
    for k in ks:
        run = time_speculation(text_model, prompt, 200, k)
        cost = costs[k + 1] / costs[1]
        lines.append(
            f"{k:>3}{100 * run.acceptance:>9.0f}%{run.tokens_per_pass:>13.2f}"
            f"{base.seconds / run.seconds:>8.2f}×{cost:>10.2f}×{run.tokens_per_pass / cost:>14.2f}×"
        )
    lines.append(
        f"(speedup: measured on {text_model.config.name}; pass cost: a (k+1)-token pass ÷ a "
        f"decode step on {model.config.name}; speedup there: tokens per pass ÷ pass cost)"
    )
    return "\n".join(lines)


# ---------------------------------------------------------------- the chart


def plot_steps(runs: Sequence[Run], path: Path | str, title: str) -> Path:
    """Each run's steps along time: the prefill tokens (a prompt or a chunk of one) and the
    decode tokens each step ran, stacked, in the colours of the profile charts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .colors import PHASE_COLORS as COLORS

    fig, axes = plt.subplots(len(runs), 1, figsize=(9, 2.2 * len(runs) + 0.6), sharex=True,
                             constrained_layout=True)  # fmt: skip
    axes = np.atleast_1d(axes)
    for ax, run in zip(axes, runs, strict=True):
        records = [r for r in run.records if r.rows]
        t0 = records[0].start
        starts = np.array([r.start - t0 for r in records])  # (steps,)
        widths = np.array([r.seconds for r in records])  # (steps,)
        prefill = np.array([sum(n for _, k, _, n in r.rows if k == "prefill") for r in records])
        decode = np.array([sum(n for _, k, _, n in r.rows if k == "decode") for r in records])
        ax.bar(starts, decode, widths, align="edge", color=COLORS["decode"], label="decode tokens")
        ax.bar(starts, prefill, widths, bottom=decode, align="edge", color=COLORS["prefill"],
               label="prefill tokens")  # fmt: skip
        ax.set_ylabel("tokens in the step")
        ax.set_title(run.name, fontsize=10, loc="left")
        ax.set_yscale("symlog", linthresh=10)
    axes[0].legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("seconds (each bar: one step, as wide as it took)")
    fig.suptitle(title, fontsize=11)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
