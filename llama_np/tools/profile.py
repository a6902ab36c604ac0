"""Prefill vs decode, measured: time, FLOPs and bytes of every forward pass of a generation.

`profile_generation` runs the generation loop (generate.py) greedily: the prompt through
`Model.prefill`, then one token per `Model.decode` call, each call timed on its own. Each
step's FLOPs and bytes come from the formulas in costs.py (llama_np holds weights and cache
in float32: 4 bytes a value). Dividing by the time gives achieved GFLOP/s and GB/s, to hold
against this machine's measured peaks: prefill multiplies each weight by T rows (many FLOPs
per byte: compute-bound), decode by one row (2 FLOPs per 4-byte weight: memory-bound).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..config import LlamaConfig
from ..errors import ArgumentError, ContextLengthError
from ..generate import GenerationStats, generate
from ..model import Model
from ..sampling import SamplingParams
from .costs import forward_bytes, forward_flops
from .machine import MachinePeaks

VALUE_BYTES = 4  # llama_np keeps weights and KV cache in float32


@dataclass(frozen=True)
class Step:
    """One forward pass: the prefill of the prompt, or one decode step."""

    phase: str  # "prefill" | "decode"
    start: int  # position of its first token
    tokens: int  # tokens it ran (T for prefill, 1 for decode)
    seconds: float  # wall time of the Model.prefill / Model.decode call
    flops: int
    weight_bytes: int  # weights read: every matrix once, plus one embedding row per token
    kv_bytes: int  # K and V read from the cache: all of it, every position up to the last new one

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
    peaks: MachinePeaks
    prompt: list[int]
    generated: list[int] = field(default_factory=list)
    text: str = ""
    steps: list[Step] = field(default_factory=list)

    def phase(self, name: str) -> dict:
        """Totals of one phase: tokens, seconds, FLOPs, bytes, and rates against the peaks."""
        steps = [s for s in self.steps if s.phase == name]
        tokens = sum(s.tokens for s in steps)
        seconds = sum(s.seconds for s in steps)
        flops = sum(s.flops for s in steps)
        weight_bytes = sum(s.weight_bytes for s in steps)
        kv_bytes = sum(s.kv_bytes for s in steps)
        nbytes = weight_bytes + kv_bytes
        flop_rate, byte_rate = flops / seconds, nbytes / seconds
        return {
            "phase": name,
            "tokens": tokens,
            "seconds": seconds,
            "ms_per_token": 1e3 * seconds / tokens,
            # other processes stall single steps: the median step is the typical one
            "median_ms_per_step": 1e3 * float(np.median([s.seconds for s in steps])),
            "tokens_per_second": tokens / seconds,
            "flops": flops,
            "weight_bytes": weight_bytes,
            "kv_bytes": kv_bytes,
            "intensity": flops / nbytes,
            "gflops_per_second": flop_rate / 1e9,
            "gb_per_second": byte_rate / 1e9,
            "fraction_of_peak_flops": flop_rate / self.peaks.matmul_flops,
            "fraction_of_peak_bandwidth": byte_rate / self.peaks.memory_bandwidth,
        }

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "peaks": asdict(self.peaks),
            "prompt_tokens": self.prompt,
            "generated_tokens": self.generated,
            "generated_text": self.text,
            "phases": [self.phase("prefill"), self.phase("decode")],
            "steps": [asdict(s) for s in self.steps],
        }


def profile_generation(
    model: Model, prompt: list[int], n_decode: int, peaks: MachinePeaks
) -> Profile:
    """Prefill `prompt`, then greedily decode `n_decode` tokens, timing every call (after an
    untimed warm-up pass).

    Runs all `n_decode` steps even past an end-of-text token, so the profile has as many
    decode steps as asked.
    """
    config = model.config
    if not prompt:
        raise ArgumentError("the prompt must have at least one token (e.g. BOS)")
    if n_decode < 1:
        raise ArgumentError(f"-n must be at least 1 decode step, got {n_decode}")
    if len(prompt) + n_decode > config.max_seq_len:
        raise ContextLengthError(
            f"prompt ({len(prompt)} tokens) + -n {n_decode} decode steps = "
            f"{len(prompt) + n_decode} positions, more than the model's context of "
            f"{config.max_seq_len}; use a shorter prompt or a smaller -n"
        )
    result = Profile(config.name, peaks, list(prompt))
    # Warm up, untimed: the first pass pays for page faults and BLAS thread start-up.
    model.decode(prompt[0], model.new_cache(1))
    model.prefill(prompt, model.new_cache(len(prompt)))

    # The generation loop itself, greedy (the same text every run) and with no end token,
    # so that it runs all n_decode steps; it times prefill and every decode step.
    stats = GenerationStats()
    pieces = generate(
        model,
        prompt,
        n_decode + 1,  # the last sampled token is not run: n_decode decode steps
        sampling=SamplingParams(temperature=0.0),
        stop_ids=(),
        stats=stats,
    )
    result.text = "".join(pieces)
    result.generated = stats.tokens[:n_decode]
    result.steps.append(_step("prefill", config, 0, len(prompt), stats.prefill_seconds))
    for i, seconds in enumerate(stats.step_seconds):
        result.steps.append(_step("decode", config, len(prompt) + i, 1, seconds))
    return result


def _step(phase: str, config: LlamaConfig, start: int, tokens: int, seconds: float) -> Step:
    end = start + tokens  # positions in the cache after the step, all of them read
    return Step(
        phase=phase,
        start=start,
        tokens=tokens,
        seconds=seconds,
        flops=forward_flops(config, tokens, start),
        weight_bytes=forward_bytes(config, tokens, start, VALUE_BYTES, kv_bytes=0),
        kv_bytes=config.kv_cache_bytes(end, bytes_per_value=VALUE_BYTES),
    )


# ---------------------------------------------------------------- output


def format_profile(p: Profile) -> str:
    """Per-phase summary and per-step table, as `llama-np profile` prints them."""
    peak_f, peak_b = p.peaks.matmul_flops / 1e9, p.peaks.memory_bandwidth / 1e9
    lines = [
        f"model {p.model}; machine peaks (measured): {peak_f:.1f} GFLOP/s float32 matmul, "
        f"{peak_b:.1f} GB/s memory bandwidth ({p.peaks.description})",
        "",
        f"{'phase':<8} {'tokens':>6} {'ms':>9} {'ms/token':>9} {'median':>7} {'MFLOP':>10} "
        f"{'weights MB':>10} {'KV MB':>8} {'FLOP/B':>7} {'GFLOP/s':>8} {'GB/s':>7} "
        f"{'%peak FLOP/s':>12} {'%peak GB/s':>10}",
    ]
    for name in ("prefill", "decode"):
        ph = p.phase(name)
        lines.append(
            f"{name:<8} {ph['tokens']:>6} {ph['seconds'] * 1e3:>9.2f} {ph['ms_per_token']:>9.3f} "
            f"{ph['median_ms_per_step']:>7.3f} "
            f"{ph['flops'] / 1e6:>10.2f} {ph['weight_bytes'] / 1e6:>10.3f} "
            f"{ph['kv_bytes'] / 1e6:>8.3f} {ph['intensity']:>7.2f} "
            f"{ph['gflops_per_second']:>8.3f} {ph['gb_per_second']:>7.3f} "
            f"{100 * ph['fraction_of_peak_flops']:>11.2f}% "
            f"{100 * ph['fraction_of_peak_bandwidth']:>9.2f}%"
        )
    lines += [
        "(median: ms of the median step; prefill is one step of all its tokens)",
        "",
        "per step (position = the first token's; KV = cache bytes read):",
        f"{'step':>4} {'phase':<8} {'pos':>5} {'tokens':>6} {'ms':>8} {'MFLOP':>9} "
        f"{'weights KB':>10} {'KV KB':>8} {'FLOP/B':>7} {'GFLOP/s':>8} {'GB/s':>7}",
    ]
    for i, s in enumerate(p.steps):
        lines.append(
            f"{i:>4} {s.phase:<8} {s.start:>5} {s.tokens:>6} {s.seconds * 1e3:>8.3f} "
            f"{s.flops / 1e6:>9.3f} {s.weight_bytes / 1e3:>10.1f} {s.kv_bytes / 1e3:>8.1f} "
            f"{s.intensity:>7.2f} {s.flops / s.seconds / 1e9:>8.3f} "
            f"{s.bytes / s.seconds / 1e9:>7.3f}"
        )
    return "\n".join(lines)


def write_json(p: Profile, path: Path) -> None:
    path.write_text(json.dumps(p.to_json(), indent=2))


def plot_profile(p: Profile, path: Path) -> None:
    """Three panels: time per token over the sequence, KV-cache size, and the roofline.

    Needs matplotlib (`pip install -e '.[plot]'`); raises ImportError without it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter

    prefill, decode, last = p.steps[0], p.steps[1:], p.steps[-1]
    fig, (ax_t, ax_kv, ax_r) = plt.subplots(1, 3, figsize=(16, 4.8))
    fig.suptitle(f"{p.model}: prefill of {prefill.tokens} tokens, then {len(decode)} decode steps")

    # (a) time per token. Prefill's tokens share one pass: its time per token is the average.
    T = prefill.tokens
    ax_t.axvspan(-0.5, T - 0.5, color="tab:orange", alpha=0.15, label=f"prefill ({T} tokens)")
    ax_t.hlines(
        1e3 * prefill.seconds / T, -0.5, T - 0.5, color="tab:orange", lw=3,
        label="prefill: ms per token (one pass ÷ T)",
    )  # fmt: skip
    ax_t.plot(
        [s.start for s in decode], [1e3 * s.seconds for s in decode], ".-",
        color="tab:blue", label="decode: ms per step (one token)",
    )  # fmt: skip
    median = p.phase("decode")["median_ms_per_step"]
    ax_t.axhline(median, color="tab:blue", ls="--", lw=1, label=f"decode median: {median:.2f} ms")
    ax_t.set(xlabel="position in the sequence", ylabel="ms per token (log scale)")
    ax_t.set(yscale="log", title="Time per token")
    ax_t.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax_t.legend(loc="lower right", fontsize=8)

    # (b) KV-cache size: prefill writes T rows at once, decode one row per step. Each step
    # reads the whole cache, so its kv_bytes is the cache's size after its write.
    xs = [-0.5] + [s.start + s.tokens - 0.5 for s in p.steps]
    ys = [0] + [s.kv_bytes / 1e3 for s in p.steps]
    ax_kv.step(xs, ys, where="post", color="tab:green", label="decode: one row per step")
    ax_kv.axvspan(
        -0.5, T - 0.5, color="tab:orange", alpha=0.15, label=f"prefill: one pass writes {T} rows"
    )
    ax_kv.set(
        xlabel="position in the sequence",
        ylabel="KV cache (kB, float32)",
        title=f"KV-cache size: {last.kv_bytes // (last.start + last.tokens):,} bytes per token",
    )
    ax_kv.set_ylim(bottom=0)
    ax_kv.legend(loc="upper left", fontsize=8)

    # (c) roofline: attainable FLOP/s = min(peak FLOP/s, bandwidth × intensity)
    peak_f, peak_b = p.peaks.matmul_flops / 1e9, p.peaks.memory_bandwidth / 1e9
    ridge = peak_f / peak_b
    intensities = [s.intensity for s in p.steps]
    x = np.geomspace(min(min(intensities), ridge) / 4, max(max(intensities), ridge) * 8, 200)
    ax_r.loglog(x, np.minimum(peak_f, peak_b * x), color="black", lw=2)
    ax_r.text(x[0], peak_b * x[0] * 1.3, f"memory: {peak_b:.1f} GB/s", fontsize=8, rotation=0)
    ax_r.text(x[-1], peak_f * 1.15, f"matmul: {peak_f:.1f} GFLOP/s", fontsize=8, ha="right")
    ax_r.axvline(ridge, color="gray", ls=":", lw=1)
    ax_r.text(ridge * 1.1, peak_f / 30, f"ridge\n{ridge:.1f} FLOP/B", fontsize=8, color="gray")
    ax_r.scatter(
        [s.intensity for s in decode], [s.flops / s.seconds / 1e9 for s in decode],
        s=10, color="tab:blue", alpha=0.5, label="decode steps",
    )  # fmt: skip
    typical = sorted(decode, key=lambda s: s.seconds)[len(decode) // 2]  # the median step
    ax_r.scatter(
        [typical.intensity], [typical.flops / typical.seconds / 1e9], s=120, marker="s",
        color="tab:blue", edgecolor="black",
        label=f"decode (median step): {typical.intensity:.2f} FLOP/B",
    )  # fmt: skip
    ax_r.scatter(
        [prefill.intensity], [prefill.flops / prefill.seconds / 1e9], s=160, marker="*",
        color="tab:orange", edgecolor="black",
        label=f"prefill: {prefill.intensity:.2f} FLOP/B",
    )  # fmt: skip
    ax_r.set(
        xlabel="arithmetic intensity (FLOPs per byte read)",
        ylabel="GFLOP/s (line: attainable; points: achieved)",
        title="Roofline (this machine, measured ceilings)",
    )
    ax_r.set_ylim(top=peak_f * 3)
    ax_r.legend(loc="lower right", fontsize=8)
    ax_r.grid(True, which="both", alpha=0.2)

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
