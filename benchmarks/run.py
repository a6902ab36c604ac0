"""Benchmark llama_np against this machine's limits (and HF transformers, when installed).

    python benchmarks/run.py                 # full run: ~20 minutes on 2 cores (quiet)
    LLAMA_CPP_BIN=DIR python benchmarks/run.py   # + llama.cpp (its tools in DIR): ~60 minutes
    python benchmarks/run.py --quick         # fewer repetitions, no 8B model
    python benchmarks/run.py --models stories15M,stories110M --batch-sizes 1,4

One run measures the machine (sgemm FLOP/s, sgemv bandwidth), then for each model shape:
prefill tokens/s (256- and 1024-token prompts where the context allows) and decode tokens/s
(prompt excluded), as the median and min/max over several runs, each next to its roofline
bound: decode cannot beat bandwidth / bytes read per token, prefill cannot beat sgemm FLOP/s /
FLOPs per token. Models are random weights of known shapes (registry.py), except stories260K,
the real bundled checkpoint. Then, each in a fresh process: load time and peak RSS from a bf16
safetensors file (beside transformers'), the first prefill against warm ones (time to first
token), decode with each kernel layer (--kernels), and llama.cpp on F32/Q8_0/Q4_K_M GGUFs
(--llama-cpp DIR or $LLAMA_CPP_BIN). Writes benchmarks/results/latest.json and latest.md.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: use this checkout's llama_np
    sys.path.insert(0, str(ROOT))

# llama_np before NumPy: it sets OpenBLAS's thread timeout, read when NumPy loads OpenBLAS.
import llama_np  # noqa: E402, F401

# isort: split
import numpy as np  # noqa: E402

from llama_np import kernels, load  # noqa: E402
from llama_np.config import LlamaConfig  # noqa: E402
from llama_np.packed import PackedRows, Scratch, pack  # noqa: E402
from llama_np.schema import n_params  # noqa: E402
from llama_np.tools import costs, machine  # noqa: E402
from llama_np.tools.known_models import known_config  # noqa: E402
from llama_np.tools.random_model import random_model  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
import llama_cpp  # noqa: E402
from checkpoint_files import write_hf  # noqa: E402

DEFAULT_MODELS = "stories260K,stories15M,stories110M,tinyllama-1.1b"
KERNEL_DTYPES = ("fp32", "int8", "bf16", "fp16")  # the kernel layer on/off, on --kernel-model
BIG_MODEL = "llama-3.1-8b"
DEFAULT_LOAD_MODELS = "stories110M,tinyllama-1.1b"
DEFAULT_LLAMA_CPP_MODELS = "stories15M,stories110M,tinyllama-1.1b"
DEFAULT_BATCHED_MODELS = "stories110M,tinyllama-1.1b"
DEFAULT_CONTENTION = "stories15M:F32,stories110M:Q8_0"
TTFT_MODEL = "smollm2-135m"  # an 8192-token context
TTFT_PROMPT = 256
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


def status(field: str) -> int:
    """A size field of /proc/self/status (VmRSS, VmHWM), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def load_probe(path: str, weights_dtype: str, n_prompt: int, n_new: int) -> dict:
    """In a fresh process: load a checkpoint file, generate; load time and peak RSS."""
    interpreter = status("VmRSS")  # Python, NumPy and llama_np imported, no model yet
    if kernels.active() != "numpy":
        # The kernel layer's fixed cost, whatever the model's size: numba, LLVM and the
        # compiled kernel (~130 MB). Counted with the interpreter, and reported. fp32 decodes
        # through it too, from (out, in) rows (weights.fp32_matrix).
        w = np.ones((256, 256), dtype=np.float32)  # (out, in): FP32_KERNEL_MIN weights
        if weights_dtype == "fp32":
            small = PackedRows("fp32", w, None, Scratch())
        else:
            small = pack(weights_dtype, w, Scratch())
        np.ones((1, 256), dtype=np.float32) @ small.T
    runtime = status("VmRSS")
    t0 = time.perf_counter()
    model = load(path, weights_dtype=weights_dtype)
    load_seconds = time.perf_counter() - t0
    load_peak = status("VmHWM")
    n_prompt = min(n_prompt, model.config.max_seq_len - n_new)  # stories15M: 256 positions
    cache = model.new_cache(n_prompt + n_new)
    logits = model.prefill(tokens(model.config, n_prompt), cache)
    for _ in range(n_new):  # greedy decoding, as generate() does (random models lack a tokenizer)
        logits = model.decode(int(logits.argmax()), cache)
    return {
        "weights_dtype": weights_dtype,
        "interpreter_rss": interpreter,
        "runtime_rss": runtime,
        "load_seconds": load_seconds,
        "load_peak_rss": load_peak,
        "peak_rss": status("VmHWM"),
        "weights_bytes": model.weights_nbytes,
        "kv_bytes": cache.nbytes,
    }


def hf_load_probe(path: str, n_prompt: int, n_new: int) -> dict:
    """The same in HF transformers: from_pretrained to float32, then greedy generation."""
    import torch
    import transformers

    torch.set_num_threads(2)
    interpreter = status("VmRSS")
    t0 = time.perf_counter()
    model = transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    load_seconds = time.perf_counter() - t0
    load_peak = status("VmHWM")
    n_prompt = min(n_prompt, model.config.max_position_embeddings - n_new)
    ids = torch.tensor([tokens(model.config, n_prompt)])
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False)
    return {
        "interpreter_rss": interpreter,
        "load_seconds": load_seconds,
        "load_peak_rss": load_peak,
        "peak_rss": status("VmHWM"),
        "versions": f"transformers {transformers.__version__}, torch {torch.__version__}",
    }


def ttft_probe(name: str, n_prompt: int, repeats: int) -> dict:
    """In a fresh process: the first prefill into a new full-context cache, then warm ones.
    `name` is a registry shape (random fp32 weights) or a GGUF file, kept as stored."""
    gguf = name.endswith(".gguf")
    model = load(name) if gguf else build(name)
    prompt = tokens(model.config, n_prompt)
    cache = model.new_cache()  # the whole context, as generate() allocates it
    t0 = time.perf_counter()
    model.prefill(prompt, cache)
    fresh = time.perf_counter() - t0
    warm = []
    for _ in range(repeats):
        cache.reset()
        t0 = time.perf_counter()
        model.prefill(prompt, cache)
        warm.append(time.perf_counter() - t0)
    return {"model": Path(name).stem if gguf else name, "n_prompt": n_prompt,
            "context": cache.max_seq_len,
            "fresh_seconds": fresh, "warm": spread(warm)}  # fmt: skip


def ttft_summary(probes: list[dict]) -> dict | None:
    """Fresh and warm prefill over several ttft probes (processes); `ratio` is the median over
    processes of the first prefill ÷ the same process's median warm prefill."""
    if not probes:
        return None
    return {
        **{key: probes[0][key] for key in ("model", "n_prompt", "context")},
        "processes": len(probes),
        "fresh": spread([p["fresh_seconds"] for p in probes]),
        "warm": spread([p["warm"]["median"] for p in probes]),
        "ratio": float(np.median([p["fresh_seconds"] / p["warm"]["median"] for p in probes])),
    }


def decode_probe(name: str, weights_dtype: str, n_steps: int, repeats: int) -> dict:
    """Decode tok/s in a fresh process (run with the kernel layer chosen by its environment)."""
    return spread(time_decode(build(name, weights_dtype), n_steps, repeats))


PROBES = {"load": load_probe, "hf-load": hf_load_probe, "ttft": ttft_probe, "decode": decode_probe}


def run_probe(kind: str, *args, env: dict | None = None) -> dict | None:
    """Run a probe in a fresh interpreter (its own peak RSS, nothing warmed up); None if it
    fails (the reason goes to stderr)."""
    cmd = [sys.executable, __file__, "--probe", kind, *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        print(f"  {kind} probe failed: {done.stderr.strip()[-300:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def checkpoint_file(name: str, files: Path) -> Path:
    """A bf16 Hugging Face directory of random weights of shape `name`, written once."""
    directory = files / f"{name}-bf16"
    if not (directory / "config.json").exists():
        print(f"  writing {directory} ...", file=sys.stderr)
        write_hf(known_config(name), directory, "BF16")
    return directory


# ---------------------------------------------------------------- the kernel layer on/off


def kernel_comparison(name: str, names: list[str], peaks, n_steps: int, rounds: int) -> list:
    """Decode tokens/s of one shape stored as fp32, int8, bf16 and fp16, each with every kernel
    layer in `names`, interleaved: each round times every variant once, so that a busy machine
    slows all of them alike. `vs_fp32` is the median over rounds of the variant's rate divided
    by fp32's with the same kernels in the same round. fp32 is loaded once per kernel layer
    (its layout follows the kernels active at load: weights.fp32_matrix); int8 differs from
    numba only for int8, so the others run it only when numba is not in `names`."""
    fp32_layer = {k: "numba" if k == "int8" and "numba" in names else k for k in names}
    variants = [(d, k) for d in KERNEL_DTYPES for k in names if d == "int8" or fp32_layer[k] == k]
    models = {}
    for dtype, kernel in variants:
        key = (dtype, kernel if dtype == "fp32" else None)
        if key not in models:
            kernels.use(kernel)
            models[key] = build(name, dtype)
    kernels.use(None)

    def model(dtype: str, kernel: str):
        return models[dtype, kernel if dtype == "fp32" else None]

    rates: dict[tuple[str, str], list[float]] = {v: [] for v in variants}
    try:
        for _ in range(rounds):
            for dtype, kernel in variants:
                kernels.use(kernel)
                rates[dtype, kernel] += time_decode(model(dtype, kernel), n_steps, 1)
    finally:
        kernels.use(None)
    return [
        {
            "model": name,
            "weights_dtype": dtype,
            "kernels": kernel,
            **spread(rates[dtype, kernel]),
            "bound": decode_bound(model(dtype, kernel).config, peaks, n_steps, dtype),
            "vs_fp32": float(
                np.median(
                    np.array(rates[dtype, kernel]) / np.array(rates["fp32", fp32_layer[kernel]])
                )
            ),
        }
        for dtype, kernel in variants
    ]


# ---------------------------------------------------------------- llama.cpp (optional)


def llama_cpp_decode(bin_dir: Path, path: Path, n_steps: int, rounds: int) -> dict:
    """Decode tok/s of llama.cpp and of llama_np on the same GGUF file (llama_np keeps its
    weights as stored: F32 arrays, Q8_0 or Q4_K/Q6_K blocks), interleaved: each round runs
    llama-bench once, then llama_np once with the default kernels and, when those are int8,
    once with numba's float kernels. `ratio` is the median over rounds of llama_np's rate
    divided by llama.cpp's in the same round (`float_ratio`: with the float kernels)."""
    model = load(path)
    default = kernels.active()
    ours, floats, theirs = [], [], []
    try:
        for _ in range(rounds):
            theirs.append(llama_cpp.decode(bin_dir, path, n_steps))
            ours += time_decode(model, n_steps, 1)
            if default == "int8":
                kernels.use("numba")
                floats += time_decode(model, n_steps, 1)
                kernels.use(None)
    finally:
        kernels.use(None)
    del model
    gc.collect()
    result = {
        "kernels": default,
        "decode": spread(theirs),
        "llama_np_decode": spread(ours),
        "ratio": float(np.median(np.array(ours) / np.array(theirs))),
    }
    if floats:
        result["float_ratio"] = float(np.median(np.array(floats) / np.array(theirs)))
    return result


def ratio(ours: list[float], theirs: list[float]) -> float:
    """The median over rounds of ours ÷ theirs, each pair measured in the same round."""
    return float(np.median(np.array(ours) / np.array(theirs)))


def prefill_once(model, prompt: list[int]) -> float:
    """One prefill of `prompt` into a fresh cache: tokens/s."""
    cache = model.new_cache(len(prompt))
    t0 = time.perf_counter()
    model.prefill(prompt, cache)
    return len(prompt) / (time.perf_counter() - t0)


def llama_cpp_prefill(bin_dir: Path, paths: dict, lengths: list[int], rounds: int) -> list:
    """Prefill tok/s of llama.cpp (llama-bench) and llama_np on the same GGUF files, each
    prompt length, interleaved: every round runs each (file, length) once in each engine.
    `ratio`: median over rounds of llama_np ÷ llama.cpp in the same round; `vs_fp32`: of
    llama_np ÷ llama_np on the F32 file of the same weights in the same round."""
    models = {quant: load(path) for quant, path in paths.items()}
    lengths = [T for T in lengths if T <= min(m.config.max_seq_len for m in models.values())]
    prompts = {T: tokens(models["F32"].config, T) for T in lengths}
    for model in models.values():  # warm-up: compiled kernels, BLAS threads, first touch
        prefill_once(model, prompts[lengths[0]][:64])
    ours = {(q, T): [] for q in paths for T in lengths}
    theirs = {(q, T): [] for q in paths for T in lengths}
    for _ in range(rounds):
        for T in lengths:
            for quant, path in paths.items():
                theirs[quant, T].append(llama_cpp.prefill(bin_dir, path, T))
                ours[quant, T].append(prefill_once(models[quant], prompts[T]))
    del models
    gc.collect()
    return [
        {
            "quant": quant,
            "n_prompt": T,
            "llama_cpp": spread(theirs[quant, T]),
            "llama_np": spread(ours[quant, T]),
            "ratio": ratio(ours[quant, T], theirs[quant, T]),
            "vs_fp32": ratio(ours[quant, T], ours["F32", T]),
        }
        for T in lengths
        for quant in paths
    ]


def batched_decode(model, batch: int, n_prompt: int, n_gen: int) -> float:
    """`batch` sequences, each prefilled with its own n_prompt-token prompt (not timed), then
    n_gen steps of Model.decode_batch: tokens/s of all sequences together."""
    cache = model.new_cache(n_prompt + n_gen + 1, batch_size=batch)
    for b in range(batch):
        model.prefill(tokens(model.config, n_prompt, seed=b), cache, seq=b)
    step = [5 + b for b in range(batch)]
    t0 = time.perf_counter()
    for _ in range(n_gen):
        model.decode_batch(step, cache)
    return batch * n_gen / (time.perf_counter() - t0)


def llama_cpp_batched(
    bin_dir: Path, path: Path, batches: list[int], n_prompt: int, n_gen: int, rounds: int
) -> list:
    """Batched decode tok/s (all sequences together) of llama.cpp (llama-batched-bench, a
    shared prompt) and llama_np (Model.decode_batch) on one GGUF file, for each batch size,
    interleaved: each round runs every batch size once in each engine; `ratio` as above."""
    model = load(path)
    batched_decode(model, max(batches), 8, 2)  # warm-up: kernels, BLAS threads
    ours = {B: [] for B in batches}
    theirs = {B: [] for B in batches}
    for _ in range(rounds):
        for B in batches:
            theirs[B].append(llama_cpp.batched(bin_dir, path, n_prompt, n_gen, B))
            ours[B].append(batched_decode(model, B, n_prompt, n_gen))
    del model
    gc.collect()
    return [
        {
            "batch": B,
            "llama_cpp": spread(theirs[B]),
            "llama_np": spread(ours[B]),
            "ratio": ratio(ours[B], theirs[B]),
        }
        for B in batches
    ]


@contextlib.contextmanager
def busy_core(seconds: float):
    """Another process keeping the last CPU busy (a busy loop pinned to it with taskset,
    ended by `timeout` at the latest after `seconds`), for the duration of the block."""
    core = str((os.cpu_count() or 1) - 1)
    loop = [sys.executable, "-c", "while True: pass"]
    busy = subprocess.Popen(["taskset", "-c", core, "timeout", str(seconds), *loop])
    time.sleep(0.2)  # running
    try:
        yield
    finally:
        busy.terminate()
        busy.wait()


def recovery_seconds(model) -> float | None:
    """Seconds of decoding until the compiled kernels run on every core again (None: not
    within 3 × their longest wait before a try of more threads). Tries happen between
    products, so decode runs meanwhile."""
    if not kernels.numba_available():  # only the compiled kernels change their thread count
        return 0.0
    from llama_np.kernels.threads import MAX_RETURN_SECONDS

    limit = 3 * MAX_RETURN_SECONDS
    cache = model.new_cache(DECODE_PROMPT + 64)
    start = time.perf_counter()
    while time.perf_counter() - start < limit:
        used, every = kernels.threads_used()
        if used == every:
            return time.perf_counter() - start
        if cache.length >= cache.max_seq_len:
            cache.reset()
        model.decode(5, cache)
    return None


def contention(bin_dir: Path | None, path: Path, n_steps: int, rounds: int) -> dict:
    """Decode tok/s of llama_np (and llama.cpp when given) on one GGUF file, quiet and with one
    core kept busy by another process, interleaved round by round; `busy_ratio` is the median
    over rounds of busy ÷ quiet (each engine its own). Each time the core is freed, llama_np
    decodes until its kernels are back on all their threads before anything is timed:
    `recovered_seconds` lists how long that took (None: not within 3 × the longest wait
    between the kernels' tries of another thread count). `after`: the rate once back."""
    model = load(path)
    time_decode(model, n_steps, 1)  # warm-up
    runs = {key: [] for key in ("quiet", "busy", "cpp_quiet", "cpp_busy")}
    recovered = []
    for round_ in range(rounds):
        if round_:  # the core was busy in the last round
            recovered.append(recovery_seconds(model))
        runs["quiet"] += time_decode(model, n_steps, 1)
        if bin_dir:
            runs["cpp_quiet"].append(llama_cpp.decode(bin_dir, path, n_steps))
        with busy_core(120):
            runs["busy"] += time_decode(model, n_steps, 3)  # the kernels adapt: a few runs
            if bin_dir:
                runs["cpp_busy"].append(llama_cpp.decode(bin_dir, path, n_steps))
    recovered.append(recovery_seconds(model))
    after = time_decode(model, n_steps, 3)
    del model
    gc.collect()
    result = {
        "quiet": spread(runs["quiet"]),
        "busy": spread(runs["busy"]),
        "after": spread(after),
        "recovered_seconds": recovered,
        "busy_ratio": float(np.median(runs["busy"]) / np.median(runs["quiet"])),
    }
    if bin_dir:
        result["llama_cpp_quiet"] = spread(runs["cpp_quiet"])
        result["llama_cpp_busy"] = spread(runs["cpp_busy"])
        result["llama_cpp_busy_ratio"] = ratio(runs["cpp_busy"], runs["cpp_quiet"])
    return result


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
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=DEFAULT_MODELS, help=f"default: {DEFAULT_MODELS}")
    parser.add_argument("--quick", action="store_true", help="2 repeats, few steps, no 8B model")
    parser.add_argument("--repeats", type=int, default=None, help="runs per figure (default 5)")
    parser.add_argument("--prompt-lengths", default="256,1024")
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32", help="decode batch sizes")
    parser.add_argument("--batch-model", default="stories110M")
    parser.add_argument("--big", default="int8", help=f"{BIG_MODEL} weight dtypes, or ''")
    parser.add_argument(
        "--kernel-model", default="stories110M", help="shape for the kernel layer on/off, or ''"
    )
    parser.add_argument(
        "--kernel-layers",
        default="numpy,numba,int8",
        help="kernel layers interleaved on --kernel-model and the 8B shape (int8 differs from "
        "numba for int8 only; default: numpy,numba,int8, each where it can run here)",
    )
    parser.add_argument("--no-hf", action="store_true", help="skip HF transformers")
    parser.add_argument(
        "--load-models",
        default=DEFAULT_LOAD_MODELS,
        help="shapes whose bf16 safetensors file is loaded in a fresh process (fp32 and int8): "
        f"load time and peak RSS while loading and generating, beside HF's (default: "
        f"{DEFAULT_LOAD_MODELS}; '' to skip)",
    )
    parser.add_argument("--no-memory", action="store_true", help="same as --load-models ''")
    parser.add_argument(
        "--ttft-model",
        default=TTFT_MODEL,
        help=f"shape whose first prefill of {TTFT_PROMPT} tokens into a full-context cache, in a "
        f"fresh process, is timed against warm ones (default: {TTFT_MODEL}; '' to skip)",
    )
    parser.add_argument(
        "--kernels",
        default="",
        help="kernel layers to compare on int8/bf16 decode of --batch-model, each in a fresh "
        "process with LLAMA_NP_KERNELS set (e.g. numpy,numba; default: skip)",
    )
    parser.add_argument(
        "--llama-cpp",
        default=os.environ.get("LLAMA_CPP_BIN"),
        metavar="DIR",
        help="directory with llama.cpp's built llama-bench and llama-quantize: adds llama.cpp "
        "as a peer on F32, Q8_0 and Q4_K_M GGUFs of --llama-cpp-models (default: "
        "$LLAMA_CPP_BIN; unset: skip)",
    )
    parser.add_argument("--llama-cpp-models", default=DEFAULT_LLAMA_CPP_MODELS)
    parser.add_argument(
        "--prefill-models",
        default=DEFAULT_LLAMA_CPP_MODELS,
        help="shapes whose F32/Q8_0/Q4_K_M files are prefilled by both engines, each of "
        f"--prompt-lengths that fits the context (default: {DEFAULT_LLAMA_CPP_MODELS}; '' skips)",
    )
    parser.add_argument(
        "--batched-models",
        default=DEFAULT_BATCHED_MODELS,
        help="shapes whose F32/Q8_0/Q4_K_M files decode in batches in both engines "
        f"(llama-batched-bench; default: {DEFAULT_BATCHED_MODELS}; '' skips)",
    )
    parser.add_argument("--batched-sizes", default="1,2,4,8,16,32")
    parser.add_argument("--batched-prompt", type=int, default=64, help="prompt tokens per sequence")
    parser.add_argument(
        "--contention",
        default=DEFAULT_CONTENTION,
        help="MODEL:QUANT GGUF files decoded quiet and with one core kept busy by a busy loop "
        f"(taskset), llama.cpp beside when given (default: {DEFAULT_CONTENTION}; '' skips)",
    )
    parser.add_argument(
        "--ttft-files",
        default="",
        help="MODEL:QUANT GGUF files (quantized by --llama-cpp's llama-quantize) whose first "
        f"prefill of {TTFT_PROMPT} tokens in a fresh process is timed against warm ones, as "
        "--ttft-model's (e.g. stories110M:Q4_K_M; default: '', none)",
    )
    parser.add_argument(
        "--files",
        default=str(Path.home() / ".cache" / "llama_np" / "benchmarks"),
        help="where generated checkpoint and GGUF files are kept between runs "
        "(default: ~/.cache/llama_np/benchmarks; TinyLlama needs ~9 GB)",
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--probe", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.probe:
        kind, *probe_args = args.probe
        fn = PROBES[kind]
        types = list(fn.__annotations__.values())[: len(probe_args)]
        values = [int(a) if t == "int" else a for a, t in zip(probe_args, types, strict=True)]
        print(json.dumps(fn(*values)))
        return 0

    repeats = args.repeats or (2 if args.quick else 5)
    models = [m for m in args.models.split(",") if m]
    prompt_lengths = [int(t) for t in args.prompt_lengths.split(",") if t]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    big = [] if args.quick else [d for d in args.big.split(",") if d]
    use_hf = not args.no_hf and hf_available()
    usable = {"numpy": True, "numba": kernels.numba_available(), "int8": kernels.int8_available()}
    kernel_names = [k for k in args.kernel_layers.split(",") if usable.get(k)]

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
        "kernel_layer": [],
        "big": [],
        "load": [],
        "ttft": None,
        "ttft_files": [],
        "kernels": [],
        "llama_cpp": [],
        "llama_cpp_prefill": [],
        "llama_cpp_batched": [],
        "contention": [],
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
        results["models"].append(entry)
        gc.collect()

    if args.kernel_model:
        print(f"{args.kernel_model}: kernel layer on/off ...", file=sys.stderr)
        config = known_config(args.kernel_model)
        n_steps = decode_steps(config, args.quick)
        results["kernel_layer"] = kernel_comparison(
            args.kernel_model, kernel_names, peaks, n_steps, repeats
        )
        gc.collect()

    for dtype in big:  # compressed: one build serves every kernel layer
        config = known_config(BIG_MODEL)
        need = n_params(config) * WEIGHT_BYTES[dtype] * 1.15  # + one tensor while building
        if available_memory() < need:  # the machine is shared: never push others into swap
            print(f"{BIG_MODEL} {dtype} skipped: {need / 2**30:.1f} GiB needed, "
                  f"{available_memory() / 2**30:.1f} GiB available", file=sys.stderr)  # fmt: skip
            continue
        t0 = time.perf_counter()
        model = random_model(config, dtype)
        build_seconds = time.perf_counter() - t0
        for kernel in kernel_names:
            print(f"{BIG_MODEL} {dtype}, {kernel} kernels ...", file=sys.stderr)
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
                    "decode": {
                        **spread(rates),
                        "bound": bound,
                        "fraction": np.median(rates) / bound,
                    },
                }
            )
        del model
        gc.collect()

    files = Path(args.files)
    load_models = [] if args.no_memory else [m for m in args.load_models.split(",") if m]
    for name in load_models:
        print(f"{name}: loading from a bf16 safetensors file ...", file=sys.stderr)
        path = checkpoint_file(name, files)
        entry = {"model": name, "runs": []}
        for dtype in ("fp32", "int8"):
            entry["runs"].append(run_probe("load", path, dtype, 256, 32))
        if use_hf:
            entry["hf"] = run_probe("hf-load", path, 256, 32)
        results["load"].append(entry)

    if args.ttft_model:
        print(f"{args.ttft_model}: first prefill of a fresh process ...", file=sys.stderr)
        # One fresh sample per process: the first prefill happens once. Several processes,
        # and the ratio of each one's first prefill to its own warm ones.
        probes = [run_probe("ttft", args.ttft_model, TTFT_PROMPT, repeats) for _ in range(repeats)]
        results["ttft"] = ttft_summary([p for p in probes if p])

    kernel_model = args.batch_model
    for layer in [k for k in args.kernels.split(",") if k]:
        print(f"{kernel_model} decode with LLAMA_NP_KERNELS={layer} ...", file=sys.stderr)
        env = {**os.environ, "LLAMA_NP_KERNELS": layer}
        n_steps = decode_steps(known_config(kernel_model), args.quick)
        for dtype in ("fp32", "bf16", "int8"):
            rates = run_probe("decode", kernel_model, dtype, n_steps, repeats, env=env)
            if rates:
                results["kernels"].append(
                    {"model": kernel_model, "kernels": layer, "weights_dtype": dtype, **rates}
                )

    if args.llama_cpp:
        bin_dir = Path(args.llama_cpp)
        for name in [m for m in args.llama_cpp_models.split(",") if m]:
            print(f"{name} in llama.cpp and llama_np ...", file=sys.stderr)
            config = known_config(name)
            paths = llama_cpp.gguf_files(config, name, bin_dir, files / "gguf")
            n_steps = decode_steps(config, args.quick)
            for quant, path in paths.items():
                entry = {"model": name, "quant": quant, "file_bytes": path.stat().st_size}
                entry.update(llama_cpp.bench(bin_dir, path, TTFT_PROMPT, repeats))
                entry["prefill"] = spread(entry.pop("prefill_rates"))
                entry.update(llama_cpp_decode(bin_dir, path, n_steps, repeats))
                results["llama_cpp"].append(entry)
        for name in [m for m in args.prefill_models.split(",") if m]:
            print(f"{name}: prefill in llama.cpp and llama_np ...", file=sys.stderr)
            paths = llama_cpp.gguf_files(known_config(name), name, bin_dir, files / "gguf")
            for e in llama_cpp_prefill(bin_dir, paths, prompt_lengths, repeats):
                results["llama_cpp_prefill"].append({"model": name, **e})
        batches = [int(b) for b in args.batched_sizes.split(",") if b]
        for name in [m for m in args.batched_models.split(",") if m]:
            config = known_config(name)
            paths = llama_cpp.gguf_files(config, name, bin_dir, files / "gguf")
            n_gen = 4 if args.quick else 32 if n_params(config) < 500e6 else 16
            for quant, path in paths.items():
                print(f"{name} {quant}: batched decode in both engines ...", file=sys.stderr)
                rows = llama_cpp_batched(
                    bin_dir, path, batches, args.batched_prompt, n_gen, repeats
                )
                entry = {"model": name, "quant": quant, "n_prompt": args.batched_prompt}
                results["llama_cpp_batched"].append({**entry, "n_gen": n_gen, "batches": rows})

    for spec in [c for c in args.contention.split(",") if c]:
        name, quant = spec.split(":")
        bin_dir = Path(args.llama_cpp) if args.llama_cpp else None
        if bin_dir is None and quant != "F32":
            print(f"contention {spec} skipped: quantizing needs --llama-cpp", file=sys.stderr)
            continue
        print(f"{name} {quant}: decode with one core busy ...", file=sys.stderr)
        config = known_config(name)
        if bin_dir:
            path = llama_cpp.gguf_files(config, name, bin_dir, files / "gguf")[quant]
        else:
            path = llama_cpp.gguf_f32(config, name, files / "gguf")
        entry = {"model": name, "quant": quant}
        entry |= contention(bin_dir, path, decode_steps(config, args.quick), repeats)
        results["contention"].append(entry)

    for spec in [c for c in args.ttft_files.split(",") if c]:
        name, quant = spec.split(":")
        if not args.llama_cpp and quant != "F32":
            print(f"first prefill of {spec} skipped: quantizing needs --llama-cpp", file=sys.stderr)
            continue
        print(f"{name} {quant}: first prefill of a fresh process ...", file=sys.stderr)
        config = known_config(name)
        if args.llama_cpp:
            path = llama_cpp.gguf_files(config, name, Path(args.llama_cpp), files / "gguf")[quant]
        else:
            path = llama_cpp.gguf_f32(config, name, files / "gguf")
        probes = [run_probe("ttft", str(path), TTFT_PROMPT, repeats) for _ in range(repeats)]
        summary = ttft_summary([p for p in probes if p])
        if summary:
            results["ttft_files"].append({**summary, "model": name, "quant": quant})

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
    if r.get("kernel_layer"):
        lines += [
            "",
            f"Kernel layer: {m.get('kernels', '?')}. Decode, batch 1, variants interleaved "
            "round by round; × fp32 = median over rounds of the ratio to fp32 with the same "
            "kernels (int8: numba's, the same for fp32) in the same round.",
            "",
            "| model (random weights) | weights | kernels | decode tok/s (min–max) | "
            "roofline tok/s | % of roofline | × fp32 decode |",
            "|---|---|---|---|---|---|---|",
        ]
        for e in r["kernel_layer"]:
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
    mib = 2**20
    if r.get("load"):
        lines += [
            "",
            "| load a bf16 safetensors file, generate 256 + 32 tokens (fresh process) | weights "
            "| load s | kernel layer's fixed RSS | "
            "peak RSS − runtime | over weights + KV | HF load s | HF peak RSS − interpreter |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for e in r["load"]:
            hf = e.get("hf")
            for i, run in enumerate(x for x in e["runs"] if x):
                runtime = run["runtime_rss"]
                peak = run["peak_rss"] - runtime
                kernel_layer = (runtime - run["interpreter_rss"]) / mib
                over = peak / (run["weights_bytes"] + run["kv_bytes"]) - 1
                hf_cells = "— | —"
                if hf and i == 0:  # HF loads to float32: beside llama_np's fp32 row
                    hf_peak = (hf["peak_rss"] - hf["interpreter_rss"]) / mib
                    hf_cells = f"{hf['load_seconds']:.1f} | {hf_peak:.0f} MiB"
                lines.append(
                    f"| {e['model']} → {run['weights_dtype']} | "
                    f"{run['weights_bytes'] / mib:.0f} MiB | {run['load_seconds']:.1f} | "
                    f"{kernel_layer:.0f} MiB | {peak / mib:.0f} MiB | {100 * over:+.1f}% | "
                    f"{hf_cells} |"
                )
    t = r.get("ttft")
    if t:
        f, w = t["fresh"], t["warm"]
        lines += [
            "",
            f"| time to first token ({t['model']}, {t['n_prompt']}-token prompt, cache of "
            f"{t['context']} positions; {t['processes']} fresh processes) | seconds (min–max) | "
            "× warm |",
            "|---|---|---|",
            f"| first prefill of a fresh process | {f['median']:.3f} ({f['min']:.3f}–"
            f"{f['max']:.3f}) | {t['ratio']:.2f}× |",
            f"| warm prefill (each process's median) | {w['median']:.3f} ({w['min']:.3f}–"
            f"{w['max']:.3f}) | 1.00× |",
        ]
    if r.get("ttft_files"):
        lines += [
            "",
            "| time to first token, GGUF file (prompt, cache of the whole context, fresh "
            "processes) | first prefill of a fresh process, s (min–max) | warm prefill, s "
            "| × warm |",
            "|---|---|---|---|",
        ]
        for t in r["ttft_files"]:
            f, w = t["fresh"], t["warm"]
            processes = f"{t['processes']} process" + "es" * (t["processes"] != 1)
            lines.append(
                f"| {t['model']} {t['quant']} ({t['n_prompt']} tokens, {t['context']} positions, "
                f"{processes}) | {f['median']:.3f} ({f['min']:.3f}–{f['max']:.3f}) "
                f"| {w['median']:.3f} | {t['ratio']:.2f}× |"
            )
    if r.get("kernels"):
        lines += [
            "",
            f"| decode, kernel layer ({r['kernels'][0]['model']}) | weights | tok/s (min–max) "
            f"| × fp32 |",
            "|---|---|---|---|",
        ]
        fp32 = {e["kernels"]: e["median"] for e in r["kernels"] if e["weights_dtype"] == "fp32"}
        for e in r["kernels"]:
            ratio = e["median"] / fp32[e["kernels"]] if e["kernels"] in fp32 else float("nan")
            lines.append(
                f"| LLAMA_NP_KERNELS={e['kernels']} | {e['weights_dtype']} | "
                f"{e['median']:.1f} ({e['min']:.1f}–{e['max']:.1f}) | {ratio:.2f}× |"
            )
    if r.get("llama_cpp"):
        lines += [
            "",
            "Same GGUF file for both engines; decode interleaved round by round (llama-bench once, "
            "llama_np once), ratio = median over rounds of llama_np ÷ llama.cpp in the same round. "
            "llama_np runs its default kernels; the last column, the same rounds with numba's "
            "float kernels (activations not rounded to int8).",
            "",
            "| model, GGUF | llama.cpp prefill 256 tok/s | llama.cpp fresh first prefill s | "
            "llama.cpp peak RSS | llama.cpp decode tok/s (min–max) | llama_np decode tok/s "
            "(min–max) | llama_np ÷ llama.cpp | float kernels ÷ llama.cpp |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for e in r["llama_cpp"]:
            theirs, ours = e["decode"], e["llama_np_decode"]
            lines.append(
                f"| {e['model']} {e['quant']} | {e['prefill']['median']:.1f} | "
                f"{e['fresh_prefill_seconds']:.3f} | {e['peak_rss'] / mib:.0f} MiB | "
                f"{theirs['median']:.1f} ({theirs['min']:.1f}–{theirs['max']:.1f}) | "
                f"{ours['median']:.1f} ({ours['min']:.1f}–{ours['max']:.1f}) | {e['ratio']:.2f}× | "
                + (f"{e['float_ratio']:.2f}× |" if "float_ratio" in e else "— |")
            )
    if r.get("llama_cpp_prefill"):
        lines += [
            "",
            "Prefill of the same GGUF file by both engines (llama-bench `-p T -n 0`, 2 threads), "
            "interleaved round by round; ratios are medians over rounds of per-round ratios: "
            "÷ llama.cpp, and ÷ llama_np's own prefill of the F32 file of the same weights.",
            "",
            "| model, GGUF | prompt | llama.cpp tok/s (min–max) | llama_np tok/s (min–max) | "
            "llama_np ÷ llama.cpp | ÷ llama_np F32 |",
            "|---|---|---|---|---|---|",
        ]
        for e in r["llama_cpp_prefill"]:
            theirs, ours = e["llama_cpp"], e["llama_np"]
            lines.append(
                f"| {e['model']} {e['quant']} | {e['n_prompt']} | {theirs['median']:.1f} "
                f"({theirs['min']:.1f}–{theirs['max']:.1f}) | {ours['median']:.1f} "
                f"({ours['min']:.1f}–{ours['max']:.1f}) | {e['ratio']:.2f}× | {e['vs_fp32']:.2f}× |"
            )
    if r.get("llama_cpp_batched"):
        sizes = [b["batch"] for b in r["llama_cpp_batched"][0]["batches"]]
        lines += [
            "",
            "Batched decode, tokens/s of all sequences together: llama-batched-bench (`-pps "
            "-npp P`, 2 threads) and llama_np's Model.decode_batch on the same GGUF file, each "
            "sequence after its own prompt of P tokens (the prompt column); interleaved round by "
            "round. Each cell: llama_np tok/s / llama.cpp tok/s (median over rounds of llama_np "
            "÷ llama.cpp in the same round).",
            "",
            "| model, GGUF | prompt | steps | " + " | ".join(f"batch {B}" for B in sizes) + " |",
            "|---|---|---|" + "---|" * len(sizes),
        ]
        for e in r["llama_cpp_batched"]:
            cells = [
                f"{b['llama_np']['median']:.0f} / {b['llama_cpp']['median']:.0f} "
                f"({b['ratio']:.2f}×)"
                for b in e["batches"]
            ]
            name = f"{e['model']} {e['quant']}"
            lines.append(f"| {name} | {e['n_prompt']} | {e['n_gen']} | " + " | ".join(cells) + " |")
    if r.get("contention"):
        lines += [
            "",
            "Decode with one of the cores kept busy by another process (`taskset -c LAST "
            "timeout 120 python -c 'while True: pass'`), interleaved with quiet runs round by "
            "round; back on all cores: seconds of decoding, each time the core was freed, until "
            "the kernels used every core again (median, max), before anything else is timed; "
            "after: llama_np's rate once back.",
            "",
            "| model, GGUF | llama_np quiet tok/s | busy | busy ÷ quiet | back on all cores "
            "| after | llama.cpp quiet | busy | busy ÷ quiet |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for e in r["contention"]:
            cpp = "— | — | —"
            if "llama_cpp_quiet" in e:
                cpp = (
                    f"{e['llama_cpp_quiet']['median']:.1f} | {e['llama_cpp_busy']['median']:.1f} | "
                    f"{e['llama_cpp_busy_ratio']:.2f}×"
                )
            back = e.get("recovered_seconds") or []
            if None in back:
                back = f"not back in {back.count(None)} of {len(back)} (3 × the longest wait)"
            else:
                back = f"{np.median(back):.1f} s (max {max(back):.1f})" if back else "—"
            lines.append(
                f"| {e['model']} {e['quant']} | {e['quiet']['median']:.1f} | "
                f"{e['busy']['median']:.1f} | {e['busy_ratio']:.2f}× | {back} | "
                f"{e['after']['median']:.1f} | {cpp} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
