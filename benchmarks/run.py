"""Benchmark llama_np against this machine's limits (and HF transformers, when installed).

    python benchmarks/run.py                 # full run: ~10-20 minutes on 2 cores
    python benchmarks/run.py --quick         # fewer repetitions, no 8B model
    python benchmarks/run.py --models stories15M,stories110M --batch-sizes 1,4

One run measures the machine (sgemm FLOP/s, sgemv bandwidth), then for each model shape:
prefill tokens/s (256- and 1024-token prompts where the context allows) and decode tokens/s
(prompt excluded), as the median and min/max over several runs, each next to its roofline
bound: decode cannot beat bandwidth / bytes read per token, prefill cannot beat sgemm FLOP/s /
FLOPs per token. Models are random weights of known shapes (registry.py), except stories260K,
the real bundled checkpoint. Writes benchmarks/results/latest.json and latest.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: use this checkout's llama_np
    sys.path.insert(0, str(ROOT))

from llama_np import kernels, load  # noqa: E402
from llama_np.config import LlamaConfig  # noqa: E402
from llama_np.schema import n_params  # noqa: E402
from llama_np.tools import costs, machine  # noqa: E402
from llama_np.tools.known_models import known_config  # noqa: E402
from llama_np.tools.random_model import random_model  # noqa: E402

DEFAULT_MODELS = "stories260K,stories15M,stories110M,tinyllama-1.1b"
KERNEL_DTYPES = ("fp32", "int8", "bf16", "fp16")  # the kernel layer on/off, on --kernel-model
BIG_MODEL = "llama-3.1-8b"
DECODE_PROMPT = 16  # tokens prefilled before the timed decode steps
WEIGHT_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "int8": 1.0 + 4 / 32}  # per parameter


def build(name: str, weights_dtype: str = "fp32"):
    """The bundled stories260K, or random weights of a registry shape."""
    if name == "stories260K":
        return load(weights_dtype=weights_dtype)
    return random_model(known_config(name), weights_dtype)


def tokens(config: LlamaConfig, n: int, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(3, config.vocab_size, n).tolist()


def spread(values: list[float]) -> dict:
    return {"median": float(np.median(values)), "min": min(values), "max": max(values)}


def time_decode(model, n_steps: int, repeats: int, batch: int = 1) -> list[float]:
    """Decode tokens/s (all sequences together), prompt excluded, one value per repeat."""
    rates = []
    for r in range(repeats + 1):  # the first run warms up caches and BLAS threads
        cache = model.new_cache(DECODE_PROMPT + n_steps + 1, batch_size=batch)
        for b in range(batch):
            model.prefill(tokens(model.config, DECODE_PROMPT, seed=b), cache, seq=b)
        step = [5 + b for b in range(batch)]
        t0 = time.perf_counter()
        for _ in range(n_steps):
            if batch == 1:
                model.decode(step[0], cache)
            else:
                model.decode_batch(step, cache)
        if r:
            rates.append(batch * n_steps / (time.perf_counter() - t0))
    return rates


def time_prefill(model, n_tokens: int, repeats: int) -> list[float]:
    prompt = tokens(model.config, n_tokens)
    rates = []
    for r in range(repeats + 1):
        cache = model.new_cache(n_tokens)
        t0 = time.perf_counter()
        model.prefill(prompt, cache)
        if r:
            rates.append(n_tokens / (time.perf_counter() - t0))
    return rates


def decode_bound(config: LlamaConfig, peaks, n_steps: int, weights_dtype="fp32", batch=1):
    """Roofline decode tokens/s: weights are read once per step for all `batch` sequences."""
    position = DECODE_PROMPT + n_steps // 2
    w = costs.decode_bytes(config, position, weight_bytes=WEIGHT_BYTES[weights_dtype], kv_bytes=0)
    kv = costs.decode_bytes(config, position, weight_bytes=0, kv_bytes=4)
    return batch * peaks.memory_bandwidth / (w + batch * kv)


def prefill_bound(config: LlamaConfig, peaks, n_tokens: int) -> float:
    return peaks.matmul_flops / (costs.forward_flops(config, n_tokens) / n_tokens)


# ---------------------------------------------------------------- peak memory (subprocess)


def available_memory() -> int:
    """MemAvailable from /proc/meminfo, in bytes."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def memory_probe(name: str, weights_dtype: str, n_prompt: int, n_new: int) -> dict:
    """Peak RSS while generating, measured in this (fresh) process; printed as JSON."""

    def status(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"{field} not in /proc/self/status")

    baseline = status("VmRSS")  # interpreter + numpy, before any model exists
    model = build(name, weights_dtype)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak: count generation only
    cache = model.new_cache(n_prompt + n_new)
    logits = model.prefill(tokens(model.config, n_prompt), cache)
    for _ in range(n_new):  # greedy decoding, as generate() does (random models lack a tokenizer)
        logits = model.decode(int(logits.argmax()), cache)
    peak = status("VmHWM")
    weights = model.weights_nbytes
    kv = model.config.kv_cache_bytes(n_prompt + n_new)
    return {
        "model": name,
        "weights_dtype": weights_dtype,
        "baseline_rss": baseline,
        "peak_rss": peak,
        "weights_bytes": weights,
        "kv_bytes": kv,
        "overhead": (peak - baseline) / (weights + kv) - 1,
    }


def measure_memory(name: str, weights_dtype: str, n_prompt: int, n_new: int) -> dict | None:
    cmd = [sys.executable, __file__, "--memory-probe", name, "--weights-dtype", weights_dtype]
    cmd += ["--probe-tokens", f"{n_prompt},{n_new}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        print(f"  memory probe failed: {done.stderr.strip()[-300:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the kernel layer on/off


def kernel_comparison(name: str, names: list[str], peaks, n_steps: int, rounds: int) -> list:
    """Decode tokens/s of one shape stored as fp32, int8, bf16 and fp16, each compressed one
    with every kernel layer in `names`, interleaved: each round times every variant once, so
    that a busy machine slows all of them alike. `vs_fp32` is the median over rounds of the
    variant's rate divided by fp32's in the same round."""
    models = {d: build(name, d) for d in KERNEL_DTYPES}
    variants = [("fp32", "blas")] + [(d, k) for d in KERNEL_DTYPES[1:] for k in names]
    rates: dict[tuple[str, str], list[float]] = {v: [] for v in variants}
    try:
        for _ in range(rounds):
            for dtype, kernel in variants:
                kernels.use(None if kernel == "blas" else kernel)
                rates[dtype, kernel] += time_decode(models[dtype], n_steps, 1)
    finally:
        kernels.use(None)
    fp32 = np.array(rates["fp32", "blas"])
    return [
        {
            "model": name,
            "weights_dtype": dtype,
            "kernels": kernel,
            **spread(rates[dtype, kernel]),
            "bound": decode_bound(models[dtype].config, peaks, n_steps, weights_dtype=dtype),
            "vs_fp32": float(np.median(np.array(rates[dtype, kernel]) / fp32)),
        }
        for dtype, kernel in variants
    ]


# ---------------------------------------------------------------- HF transformers (optional)


def hf_available() -> bool:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def hf_benchmark(config: LlamaConfig, prompt_lengths, n_steps: int, repeats: int) -> dict:
    """The same shape in HF transformers (random init, fp32, eager, this machine's threads)."""
    import torch
    import transformers

    torch.set_num_threads(2)
    hf_config = transformers.LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.dim,
        intermediate_size=config.hidden_dim,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_kv_heads,
        max_position_embeddings=config.max_seq_len,
        rms_norm_eps=config.norm_eps,
        tie_word_embeddings=config.tie_embeddings,
    )
    hf_config._attn_implementation = "eager"
    model = transformers.LlamaForCausalLM(hf_config).eval()
    result = {"prefill": {}, "decode": None, "versions": f"transformers {transformers.__version__}"}
    with torch.inference_mode():
        for T in prompt_lengths:
            ids = torch.tensor([tokens(config, T)])
            rates = []
            for r in range(repeats + 1):
                t0 = time.perf_counter()
                model(ids, use_cache=True, logits_to_keep=1)
                if r:
                    rates.append(T / (time.perf_counter() - t0))
            result["prefill"][T] = spread(rates)
        rates = []
        for r in range(repeats + 1):
            out = model(torch.tensor([tokens(config, DECODE_PROMPT)]), use_cache=True)
            past, step = out.past_key_values, torch.tensor([[5]])
            t0 = time.perf_counter()
            for _ in range(n_steps):
                past = model(step, past_key_values=past, use_cache=True).past_key_values
            if r:
                rates.append(n_steps / (time.perf_counter() - t0))
        result["decode"] = spread(rates)
    result["versions"] += f", torch {torch.__version__}"
    return result


# ---------------------------------------------------------------- the run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=DEFAULT_MODELS, help=f"default: {DEFAULT_MODELS}")
    parser.add_argument("--quick", action="store_true", help="2 repeats, few steps, no 8B model")
    parser.add_argument("--repeats", type=int, default=None, help="runs per figure (default 5)")
    parser.add_argument("--prompt-lengths", default="256,1024")
    parser.add_argument("--batch-sizes", default="1,2,4,8", help="decode batch sizes")
    parser.add_argument("--batch-model", default="stories110M")
    parser.add_argument("--big", default="int8", help=f"{BIG_MODEL} weight dtypes, or ''")
    parser.add_argument(
        "--kernel-model", default="stories110M", help="shape for the kernel layer on/off, or ''"
    )
    parser.add_argument(
        "--kernels",
        default=",".join(kernels.KERNELS),
        help="kernel layers to compare (default: numpy,numba; numba only when installed)",
    )
    parser.add_argument("--no-hf", action="store_true", help="skip HF transformers")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-RSS probes")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)
    parser.add_argument("--weights-dtype", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--probe-tokens", default="256,32", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.memory_probe:
        n_prompt, n_new = map(int, args.probe_tokens.split(","))
        print(json.dumps(memory_probe(args.memory_probe, args.weights_dtype, n_prompt, n_new)))
        return 0

    repeats = args.repeats or (2 if args.quick else 5)
    models = [m for m in args.models.split(",") if m]
    prompt_lengths = [int(t) for t in args.prompt_lengths.split(",") if t]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    big = [] if args.quick else [d for d in args.big.split(",") if d]
    use_hf = not args.no_hf and hf_available()
    kernel_names = [k for k in args.kernels.split(",") if k != "numba" or kernels.numba_available()]

    print("measuring the machine ...", file=sys.stderr)
    peaks = machine.measure(repeats=3 if args.quick else 7)
    results = {
        "machine": {
            "description": peaks.description,
            "sgemm_gflops": peaks.matmul_flops / 1e9,
            "bandwidth_gbs": peaks.memory_bandwidth / 1e9,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "kernels": kernels.describe(),
        },
        "command": " ".join(["python benchmarks/run.py", *(argv or sys.argv[1:])]),
        "repeats": repeats,
        "models": [],
        "batch": [],
        "kernels": [],
        "big": [],
    }

    for name in models:
        print(f"{name} ...", file=sys.stderr)
        model = build(name)
        config = model.config
        n_steps = decode_steps(config, args.quick)
        entry = {"model": name, "params": n_params(config), "weights_bytes": model.weights_nbytes}
        rates = time_decode(model, n_steps, repeats)
        bound = decode_bound(config, peaks, n_steps)
        entry["decode"] = {**spread(rates), "bound": bound, "fraction": np.median(rates) / bound}
        entry["prefill"] = {}
        lengths = [T for T in prompt_lengths if T <= config.max_seq_len]
        for T in lengths:
            rates = time_prefill(model, T, repeats)
            bound = prefill_bound(config, peaks, T)
            entry["prefill"][T] = {
                **spread(rates),
                "bound": bound,
                "fraction": np.median(rates) / bound,
            }
        if name == args.batch_model:
            for B in batch_sizes:
                rates = time_decode(model, n_steps, repeats, batch=B)
                bound = decode_bound(config, peaks, n_steps, batch=B)
                results["batch"].append(
                    {"model": name, "batch": B, **spread(rates), "bound": bound}
                )
        del model
        gc.collect()
        if use_hf and name != "stories260K":
            print(f"{name} in HF transformers ...", file=sys.stderr)
            entry["hf"] = hf_benchmark(config, lengths, n_steps, repeats)
        if not args.no_memory and name in ("stories110M", "tinyllama-1.1b"):
            entry["memory"] = measure_memory(name, "fp32", 256, 32)
        results["models"].append(entry)
        gc.collect()

    if args.kernel_model:
        print(f"{args.kernel_model}: kernel layer on/off ...", file=sys.stderr)
        config = known_config(args.kernel_model)
        n_steps = decode_steps(config, args.quick)
        results["kernels"] = kernel_comparison(
            args.kernel_model, kernel_names, peaks, n_steps, repeats
        )
        gc.collect()

    for dtype, kernel in [(d, k) for d in big for k in kernel_names]:
        print(f"{BIG_MODEL} {dtype}, {kernel} kernels ...", file=sys.stderr)
        config = known_config(BIG_MODEL)
        need = n_params(config) * WEIGHT_BYTES[dtype] * 1.15  # + one tensor while building
        if available_memory() < need:  # the machine is shared: never push others into swap
            print(f"  skipped: {need / 2**30:.1f} GiB needed, "
                  f"{available_memory() / 2**30:.1f} GiB available", file=sys.stderr)  # fmt: skip
            continue
        t0 = time.perf_counter()
        model = random_model(config, dtype)
        build_seconds = time.perf_counter() - t0
        kernels.use(kernel)
        rates = time_decode(model, 3, max(1, repeats // 2))
        kernels.use(None)
        bound = decode_bound(config, peaks, 3, weights_dtype=dtype)
        results["big"].append(
            {
                "model": BIG_MODEL,
                "weights_dtype": dtype,
                "kernels": kernel,
                "params": n_params(config),
                "weights_bytes": model.weights_nbytes,
                "build_seconds": build_seconds,
                "decode": {**spread(rates), "bound": bound, "fraction": np.median(rates) / bound},
            }
        )
        del model
        gc.collect()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    markdown = to_markdown(results)
    (out / "latest.md").write_text(markdown)
    print(markdown)
    return 0


def decode_steps(config: LlamaConfig, quick: bool) -> int:
    """Enough decode steps for ~1 s per run at roofline speed, fewer with --quick."""
    if quick:
        return 4
    return 64 if n_params(config) < 50e6 else 32 if n_params(config) < 500e6 else 8


# ---------------------------------------------------------------- markdown


def to_markdown(r: dict) -> str:
    m = r["machine"]
    lines = [
        f"Machine: {m['description']}; NumPy {m['numpy']}, Python {m['python']}. "
        f"Measured now: sgemm {m['sgemm_gflops']:.0f} GFLOP/s, "
        f"sgemv bandwidth {m['bandwidth_gbs']:.1f} GB/s.",
        "",
        f"Command: `{r['command']}` — median of {r['repeats']} runs (min–max); "
        "% = fraction of the roofline bound (decode: bandwidth ÷ bytes per token; "
        "prefill: sgemm FLOP/s ÷ FLOPs per token).",
        "",
        "| model (fp32, batch 1) | phase | llama_np tok/s (min–max) | roofline tok/s | "
        "% of roofline | HF transformers tok/s | llama_np ÷ HF |",
        "|---|---|---|---|---|---|---|",
    ]

    def row(name, phase, s, hf):
        hf_cell = f"{hf['median']:.1f}" if hf else "—"
        ratio = f"{s['median'] / hf['median']:.2f}×" if hf else "—"
        lines.append(
            f"| {name} | {phase} | {s['median']:.1f} ({s['min']:.1f}–{s['max']:.1f}) | "
            f"{s['bound']:.1f} | {100 * s['fraction']:.0f}% | {hf_cell} | {ratio} |"
        )

    for e in r["models"]:
        hf = e.get("hf")
        row(e["model"], "decode", e["decode"], hf and hf["decode"])
        for T, s in e["prefill"].items():
            row(
                e["model"],
                f"prefill {T}",
                s,
                hf and hf["prefill"].get(T, hf["prefill"].get(str(T))),
            )
    hf_versions = {e["hf"]["versions"] for e in r["models"] if e.get("hf")}
    if hf_versions:
        lines += ["", f"HF: {', '.join(hf_versions)}, fp32, eager attention, 2 threads."]
    if r.get("kernels"):
        lines += [
            "",
            f"Kernel layer: {m.get('kernels', '?')}. Decode, batch 1, variants interleaved "
            "round by round; × fp32 = median over rounds of the ratio to fp32 in the same round.",
            "",
            "| model (random weights) | weights | kernels | decode tok/s (min–max) | "
            "roofline tok/s | % of roofline | × fp32 decode |",
            "|---|---|---|---|---|---|---|",
        ]
        for e in r["kernels"]:
            lines.append(
                f"| {e['model']} | {e['weights_dtype']} | {e['kernels']} | {e['median']:.1f} "
                f"({e['min']:.1f}–{e['max']:.1f}) | {e['bound']:.1f} | "
                f"{100 * e['median'] / e['bound']:.0f}% | {e['vs_fp32']:.2f}× |"
            )
    if r["big"]:
        lines += [
            "",
            "| big model (random weights) | weights | kernels | weight memory | "
            "decode tok/s (min–max) | roofline tok/s | % of roofline |",
            "|---|---|---|---|---|---|---|",
        ]
        for e in r["big"]:
            s = e["decode"]
            lines.append(
                f"| {e['model']} ({e['params'] / 1e9:.1f}B) | {e['weights_dtype']} | "
                f"{e.get('kernels', 'numpy')} | "
                f"{e['weights_bytes'] / 2**30:.1f} GiB | {s['median']:.2f} "
                f"({s['min']:.2f}–{s['max']:.2f}) | {s['bound']:.2f} | "
                f"{100 * s['median'] / s['bound']:.0f}% |"
            )
    if r["batch"]:
        lines += [
            "",
            f"| batched decode ({r['batch'][0]['model']}) | tok/s, all sequences (min–max) | "
            "roofline tok/s | × batch 1 |",
            "|---|---|---|---|",
        ]
        base = r["batch"][0]["median"]
        for e in r["batch"]:
            lines.append(
                f"| batch {e['batch']} | {e['median']:.1f} ({e['min']:.1f}–{e['max']:.1f}) | "
                f"{e['bound']:.1f} | {e['median'] / base:.2f}× |"
            )
    mem = [e["memory"] for e in r["models"] if e.get("memory")]
    if mem:
        lines += [
            "",
            "| peak RSS while generating (256 + 32 tokens) | weights | KV cache | "
            "peak RSS − interpreter | overhead over weights + KV |",
            "|---|---|---|---|---|",
        ]
        for e in mem:
            lines.append(
                f"| {e['model']} {e['weights_dtype']} | {e['weights_bytes'] / 2**20:.0f} MiB | "
                f"{e['kv_bytes'] / 2**20:.1f} MiB | "
                f"{(e['peak_rss'] - e['baseline_rss']) / 2**20:.0f} MiB | "
                f"{100 * e['overhead']:+.1f}% |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
