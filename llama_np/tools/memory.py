"""How much memory a Llama model needs, and how fast prefill and decode can be on a device.

From the config alone: parameters, the bytes of the weights in a storage dtype, the bytes of
the KV cache per token and at a context length, and what grouped-query attention (GQA) saves
against full multi-head attention. With a `hardware.Hardware`, a roofline estimate of prefill
and decode time per token, which resource bounds each, and whether it all fits.

The worked example (Llama 3.1 8B, 32 layers, 8 KV heads, head dim 128, 2-byte entries) at
128,000 tokens: 2 (K and V) × 32 × 128000 × 8 × 128 = 8,388,608,000 values = 16,777,216,000
bytes = 15.625 GiB of KV cache, for one sequence, on top of 16 GB of bf16 weights.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import arguments
from ..config import LlamaConfig
from ..errors import ConfigError
from ..packed import GROUP_SIZE
from ..schema import n_params, weights_nbytes
from .costs import attention_share, forward_bytes, forward_flops, kv_intensity
from .hardware import Hardware
from .known_models import KNOWN_MODELS, known_config

# Average bytes per weight, for the roofline's bytes read. int8 is llama_np's Q8_0-style
# storage: groups of packed.GROUP_SIZE int8 weights with one float32 scale each (36 bytes per
# 32 weights). Exact totals come from schema.weights_nbytes, which the engine allocates.
WEIGHT_DTYPES: dict[str, float] = {
    "fp32": 4.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "int8": 1 + 4 / GROUP_SIZE,
}
# fp8 (e4m3, one byte a value) is how GPU servers halve a bf16 cache (vLLM --kv-cache-dtype fp8)
KV_DTYPES: dict[str, int] = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}
DEFAULT_DTYPE = "bf16"  # what Llama checkpoints are published in
DEFAULT_KV_DTYPE = "bf16"  # what GPU engines keep the cache in (llama_np itself uses fp32)
ENGINE_DTYPE = "fp32"  # what llama_np runs (weights and cache): the defaults for this-machine


def weight_bytes(config: LlamaConfig, dtype: str = DEFAULT_DTYPE) -> int:
    """Bytes of all weights stored as `dtype`, exactly as llama_np allocates them (a tied
    embedding/classifier counted once; norms in float32)."""
    arguments.instance(config, "config", LlamaConfig)
    _check_dtype(dtype, WEIGHT_DTYPES, "--dtype")
    return weights_nbytes(config, dtype)


@dataclass(frozen=True)
class MemoryReport:
    model: str
    n_params: int
    dtype: str
    weight_bytes: int
    kv_dtype: str
    context: int
    batch: int
    kv_bytes_per_token: int  # one position of one sequence, all layers, K and V
    kv_values: int  # values in the cache at `context` positions × `batch` sequences
    kv_bytes: int
    total_bytes: int  # weights + KV cache
    mha_kv_bytes: int  # the KV cache if every query head had its own K/V head
    gqa_saved_bytes: int  # mha_kv_bytes - kv_bytes
    kv_intensity: float  # decode attention's FLOPs per byte of K/V read: 2·G / kv bytes
    attention_share: float  # attention's fraction of the FLOPs of a `context`-token prefill


def memory_report(
    config: LlamaConfig,
    context: int | None = None,
    batch: int = 1,
    dtype: str = DEFAULT_DTYPE,
    kv_dtype: str = DEFAULT_KV_DTYPE,
) -> MemoryReport:
    """Weights and KV cache of `config` at `context` tokens (default: its max_seq_len)."""
    arguments.instance(config, "config", LlamaConfig)
    context = config.max_seq_len if context is None else context
    _check_positive(context=context, batch=batch)
    _check_dtype(kv_dtype, KV_DTYPES, "--kv-dtype")
    kv_size = KV_DTYPES[kv_dtype]
    weights = weight_bytes(config, dtype)
    kv = config.kv_cache_bytes(context, batch, kv_size)
    mha = config.replace(n_kv_heads=config.n_heads).kv_cache_bytes(context, batch, kv_size)
    return MemoryReport(
        model=config.name,
        n_params=n_params(config),
        dtype=dtype,
        weight_bytes=weights,
        kv_dtype=kv_dtype,
        context=context,
        batch=batch,
        kv_bytes_per_token=config.kv_cache_bytes(1, 1, kv_size),
        kv_values=config.kv_cache_bytes(context, batch, 1),
        kv_bytes=kv,
        total_bytes=weights + kv,
        mha_kv_bytes=mha,
        gqa_saved_bytes=mha - kv,
        kv_intensity=kv_intensity(config, kv_size),
        attention_share=attention_share(config, context),
    )


# ---------------------------------------------------------------- roofline estimate


@dataclass(frozen=True)
class PhaseEstimate:
    phase: str  # "prefill" | "decode"
    tokens: int  # tokens processed in the pass, all sequences
    flops: int
    bytes: int
    intensity: float  # FLOPs per byte
    compute_seconds: float  # flops / peak FLOP/s
    memory_seconds: float  # bytes / bandwidth
    seconds: float  # the larger of the two: the roofline's lower bound on time
    seconds_per_token: float
    bound: str  # "compute" | "memory"


@dataclass(frozen=True)
class CriticalBatch:
    """The batch size at which decode turns compute-bound, at one position.

    B sequences decoding together do B times the FLOPs of one but read the weights once:
    intensity(B) = B·F1 / (W + B·S), with F1 the FLOPs of one sequence's step, W the weight
    bytes and S one sequence's bytes (its KV cache and embedding row). It reaches the ridge
    R at B = R·W / (F1 − R·S), or never when one sequence's own bytes already cap it:
    F1 / S ≤ R. Without a KV cache this is R × bytes per weight ÷ 2 FLOPs per weight.
    """

    position: int
    batch: int | None  # None: never compute-bound at this position
    ceiling: float  # F1 / S: the intensity that batching approaches but never passes


def critical_batch(
    config: LlamaConfig,
    hardware: Hardware,
    position: int,
    dtype: str = DEFAULT_DTYPE,
    kv_dtype: str = DEFAULT_KV_DTYPE,
) -> CriticalBatch:
    """The smallest batch whose decode step at `position` is compute-bound on `hardware`."""
    arguments.instance(config, "config", LlamaConfig)
    arguments.instance(hardware, "hardware", Hardware)
    arguments.integer(position, "position", 0)
    _check_dtype(dtype, WEIGHT_DTYPES, "--dtype")
    _check_dtype(kv_dtype, KV_DTYPES, "--kv-dtype")
    w, kv = WEIGHT_DTYPES[dtype], KV_DTYPES[kv_dtype]
    f1 = forward_flops(config, 1, position)
    one, two = (forward_bytes(config, 1, position, w, kv, b) for b in (1, 2))
    per_seq = two - one  # bytes each further sequence adds
    weights = one - per_seq
    ridge = hardware.ridge
    if f1 <= ridge * per_seq:
        return CriticalBatch(position, None, f1 / per_seq)
    batch = math.ceil(ridge * weights / (f1 - ridge * per_seq))
    return CriticalBatch(position, batch, f1 / per_seq)


@dataclass(frozen=True)
class Estimate:
    hardware: Hardware
    prefill: PhaseEstimate
    decode: PhaseEstimate
    fits: bool | None  # weights + KV cache within device memory; None if memory unknown
    critical: tuple[CriticalBatch, CriticalBatch]  # at position 0 and at the context's last
    spare_bytes: int | None  # device memory - weights - KV cache (negative: short); None: unknown
    max_sequences: int | None  # sequences of `context` tokens whose caches fit beside the weights


def estimate(
    config: LlamaConfig,
    hardware: Hardware,
    context: int | None = None,
    prompt_tokens: int | None = None,
    batch: int = 1,
    dtype: str = DEFAULT_DTYPE,
    kv_dtype: str = DEFAULT_KV_DTYPE,
) -> Estimate:
    """Roofline times: prefill of a `prompt_tokens` prompt (default: the whole context) per
    sequence, and one decode step at the last position of the context, for `batch` sequences.
    """
    arguments.instance(hardware, "hardware", Hardware)
    report = memory_report(config, context, batch, dtype, kv_dtype)
    context = report.context
    prompt_tokens = context if prompt_tokens is None else prompt_tokens
    _check_positive(prompt_tokens=prompt_tokens)
    w, kv = WEIGHT_DTYPES[dtype], KV_DTYPES[kv_dtype]
    prefill = _phase(
        "prefill",
        batch * prompt_tokens,
        forward_flops(config, prompt_tokens, 0, 1, batch),
        forward_bytes(config, prompt_tokens, 0, w, kv, batch),
        hardware,
    )
    decode = _phase(
        "decode",
        batch,
        forward_flops(config, 1, context - 1, 1, batch),
        forward_bytes(config, 1, context - 1, w, kv, batch),
        hardware,
    )
    critical = (
        critical_batch(config, hardware, 0, dtype, kv_dtype),
        critical_batch(config, hardware, context - 1, dtype, kv_dtype),
    )
    if hardware.memory_bytes is None:
        return Estimate(hardware, prefill, decode, None, critical, None, None)
    spare = hardware.memory_bytes - report.total_bytes
    per_sequence = report.kv_bytes // batch
    room = max(0, hardware.memory_bytes - report.weight_bytes) // per_sequence
    return Estimate(hardware, prefill, decode, spare >= 0, critical, spare, room)


def _phase(phase: str, tokens: int, flops: int, nbytes: int, hw: Hardware) -> PhaseEstimate:
    compute, memory = flops / hw.flops, nbytes / hw.bandwidth
    seconds = max(compute, memory)
    return PhaseEstimate(
        phase,
        tokens,
        flops,
        nbytes,
        flops / nbytes,
        compute,
        memory,
        seconds,
        seconds / tokens,
        "compute" if compute >= memory else "memory",
    )


# ---------------------------------------------------------------- output


def to_json(report: MemoryReport, est: Estimate | None = None) -> dict:
    """A plain dict for json.dumps: the report, and the estimate when given."""
    out = asdict(report)
    if est is not None:
        out["hardware"] = asdict(est.hardware)
        out["prefill"] = asdict(est.prefill)
        out["decode"] = asdict(est.decode)
        out["fits_in_device_memory"] = est.fits
        out["spare_bytes"] = est.spare_bytes
        out["max_sequences"] = est.max_sequences
        out["critical_batch"] = [asdict(c) for c in est.critical]
    return out


def format_report(
    report: MemoryReport,
    config: LlamaConfig,
    est: Estimate | None = None,
    defaulted: str = "",
) -> str:
    """The human-readable table `llama-np memory` prints; `defaulted`: "published" or
    "engine" when the dtypes were not given, and the table says what they default to."""
    c, r = config, report
    kv_b = KV_DTYPES[r.kv_dtype]
    seqs = f" × {r.batch} sequences" if r.batch > 1 else ""
    rows = [
        (
            "model",
            f"{r.model}: L={c.n_layers} D={c.dim} H={c.n_heads} KVH={c.n_kv_heads} "
            f"HD={c.head_dim} F={c.hidden_dim} V={c.vocab_size}",
        ),
        ("parameters", f"{r.n_params:,} ({_count(r.n_params)})"),
        (
            "dtypes",
            f"weights {r.dtype}, KV cache {r.kv_dtype}" + DEFAULT_NOTES.get(defaulted, ""),
        ),
        (f"weights ({r.dtype})", nbytes(r.weight_bytes)),
        (
            f"KV cache per token ({r.kv_dtype})",
            f"2 × {c.n_layers} × {c.n_kv_heads} × {c.head_dim} × {kv_b} = "
            f"{nbytes(r.kv_bytes_per_token)}",
        ),
        (
            f"KV cache at {r.context:,} tokens{seqs}",
            f"2 × {c.n_layers} × {r.context * r.batch} × {c.n_kv_heads} × {c.head_dim} = "
            f"{r.kv_values:,} values = {nbytes(r.kv_bytes)}",
        ),
        ("total (weights + KV cache)", nbytes(r.total_bytes)),
    ]
    if c.n_kv_heads < c.n_heads:
        rows.append(
            (
                f"GQA saves ({c.n_kv_heads} KV heads, not {c.n_heads})",
                f"{nbytes(r.gqa_saved_bytes)} of {nbytes(r.mha_kv_bytes)} multi-head KV cache "
                f"({r.mha_kv_bytes / r.kv_bytes:.0f}× smaller)",
            )
        )
    else:
        rows.append(("GQA saves", "nothing: multi-head attention (KVH = H)"))
    G = c.n_heads // c.n_kv_heads
    rows += [
        (
            "attention over the KV cache",
            f"2 FLOPs × {G} query head{'s' if G > 1 else ''} per K/V value ÷ {kv_b} bytes = "
            f"{r.kv_intensity:g} FLOP/byte",
        ),
        (
            f"attention share of prefill FLOPs at {r.context:,} tokens",
            f"{100 * r.attention_share:.1f}%",
        ),
    ]
    if est is not None:
        hw = est.hardware
        fits = {None: "unknown", True: "yes", False: "NO"}[est.fits]
        if est.spare_bytes is not None:
            fits += (
                f": {nbytes(est.spare_bytes)} to spare"
                if est.fits
                else f": {nbytes(-est.spare_bytes)} short"
            )
        prompts = f"{r.batch} × {est.prefill.tokens // r.batch:,}" if r.batch > 1 else (
            f"{est.prefill.tokens:,}"
        )  # fmt: skip
        rows += [
            ("hardware", f"{hw.name}: {hw.description}"),
            (
                "  peaks",
                f"{hw.flops / 1e12:.3g} TFLOP/s, {hw.bandwidth / 1e9:.4g} GB/s, "
                f"ridge {hw.ridge:.3g} FLOP/byte",
            ),
            (
                "  memory",
                "unknown"
                if hw.memory_bytes is None
                else nbytes(hw.memory_bytes)
                + (f" — {hw.memory_source}" if hw.memory_source else ""),
            ),
            (f"  prefill of {prompts} tokens", _phase_line(est.prefill, r.batch)),
            (f"  decode at position {r.context - 1:,}", _phase_line(est.decode, r.batch)),
            ("  weights + KV cache fit in memory", fits),
        ]
        if est.max_sequences is not None:
            rows.append(
                (
                    f"  sequences of {r.context:,} tokens that fit",
                    f"{est.max_sequences:,} beside the weights "
                    f"({nbytes(r.kv_bytes // r.batch)} of KV cache each)",
                )
            )
        for c in est.critical:
            rows.append((f"  critical batch at position {c.position:,}", _critical_line(c, hw)))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


DEFAULT_NOTES = {
    "published": " (the defaults: as checkpoints are published and GPUs serve them; llama_np "
    "itself runs fp32: --dtype fp32 --kv-dtype fp32)",
    "engine": " (the defaults for this-machine: float32, what llama_np runs on it; --dtype "
    "int8|bf16|fp16 and --kv-dtype fp16 are what it can store compressed)",
}


def _critical_line(c: CriticalBatch, hw: Hardware) -> str:
    if c.batch is None:
        return (
            f"none: one sequence's KV cache caps batched decode at {c.ceiling:,.1f} FLOP/byte, "
            f"under the ridge of {hw.ridge:.3g}"
        )
    return f"{c.batch:,} sequences (decode turns compute-bound from this batch size on)"


def _phase_line(p: PhaseEstimate, batch: int = 1) -> str:
    """`4.481 ms per step, one token (223 tokens/s), memory-bound: ...`: the time of the pass
    (what each user waits), then the rate across all its tokens."""
    rate = f"{p.tokens / p.seconds:,.0f} tokens/s" + (" across the batch" if batch > 1 else "")
    if p.phase == "decode":
        what = "one token" if batch == 1 else f"a token for each of {batch} sequences"
        timing = f"{_duration(p.seconds)} per step, {what} ({rate})"
    else:
        per_token = f"{p.seconds_per_token * 1e3:.4g} ms/token"
        timing = f"{_duration(p.seconds)} for the pass, {per_token} ({rate})"
    return (
        f"{timing}, {p.bound}-bound: {si(p.flops)}FLOP / {si(p.bytes)}B = "
        f"{p.intensity:,.1f} FLOP/byte"
    )


def _duration(seconds: float) -> str:
    """`4.481 ms`, `24.6 s`: 4 significant digits, in ms below 10 s."""
    return f"{seconds:.4g} s" if seconds >= 10 else f"{seconds * 1e3:.4g} ms"


def _count(n: int) -> str:
    """`8.03B`, `260K`: a parameter count as models are named."""
    for suffix, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{suffix}"
    return str(n)


def si(x: float) -> str:
    """`6.08 P`: 3 significant digits and a decimal SI prefix (append the unit)."""
    for prefix, size in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= size:
            return f"{x / size:.3g} {prefix}"
    return f"{x:.3g} "


def nbytes(n: int) -> str:
    """`16,777,216,000 bytes (15.625 GiB)`: exact bytes and binary units."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n:,} bytes ({n / size:.5g} {unit})"
    return f"{n:,} bytes"


def _check_dtype(dtype: str, table: dict, flag: str) -> None:
    if not (isinstance(dtype, str) and dtype in table):
        raise arguments.refuse(flag, dtype, f"one of {', '.join(table)}")


def _check_positive(**values: int) -> None:
    """Each value a positive integer; named by its command-line flag (these functions serve
    `llama-np memory`), e.g. --prompt-tokens for prompt_tokens."""
    for name, value in values.items():
        arguments.integer(value, f"--{name.replace('_', '-')}", 1, allowed="a positive integer")


def load_config(model: str) -> LlamaConfig:
    """The config of a known model name, or of a checkpoint path (its header only, no weights)."""
    path = Path(model)
    if not path.exists():
        try:
            return known_config(model)
        except ConfigError:
            raise ConfigError(
                f"MODEL {model!r} is neither a file or directory nor a known model name; "
                f"known: {', '.join(KNOWN_MODELS)}"
            ) from None
    from ..checkpoints import read_config  # here: checkpoints -> limits -> memory at import

    return read_config(path)
