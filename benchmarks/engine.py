"""The serving engine against one request at a time: throughput, chunked prefill, prefix caching.

    python benchmarks/engine.py              # stories110M shape, ~5 minutes on 2 cores (quiet)
    python benchmarks/engine.py --model stories15M --requests 16

Three measurements, each comparing two runs of the same work in one process (ratios survive a
busy machine better than absolute figures); random weights of the model's shape, greedy
decoding with no end token, so every request generates exactly its output length:

1. throughput: `--requests` requests of mixed prompt and output lengths (seeded), all queued
   at once on the engine, against the same requests one after another with generate();
   output tokens per second of each, and the ratio.
2. chunked prefill: `--streams` requests decoding, then a `--long`-token prompt arrives;
   the gaps between the running streams' tokens (inter-token latency), worst against median,
   with the prompt prefilled whole in one step and in chunks (a step budget of
   `--chunk-budget` tokens).
3. prefix caching: requests that share a `--system`-token system prompt, each with a short
   question of its own; time to first token with the prefix cached (after a first request
   computed it) against the prefix cache off.

Writes benchmarks/results/engine.json and engine.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import llama_np  # noqa: E402, F401  (before NumPy: it sets OpenBLAS's thread timeout)

# isort: split
import numpy as np  # noqa: E402

from llama_np import generate, kernels  # noqa: E402
from llama_np.engine import Engine  # noqa: E402
from llama_np.tools.known_models import known_config  # noqa: E402
from llama_np.tools.random_model import random_model  # noqa: E402
from llama_np.tools.serving_lab import chunked_prefill, prefix_caching  # noqa: E402

GREEDY = dict(temperature=0.0, stop_ids=())  # no end token: every request runs its length


def mixed_requests(n: int, vocab: int, context: int, seed: int = 0) -> list[tuple[list, int]]:
    """n (prompt, output length) pairs: prompts of 16-256 tokens, outputs of 16-128."""
    rng = np.random.default_rng(seed)
    requests = []
    for _ in range(n):
        prompt_len = int(rng.integers(16, 257))
        out_len = int(min(rng.integers(16, 129), context - prompt_len))
        requests.append(([1, *rng.integers(3, vocab, size=prompt_len - 1).tolist()], out_len))
    return requests


def throughput(model, requests, max_seqs: int, budget: int) -> dict:
    """Output tokens/s: the engine with everything queued at once, and one at a time."""
    n_out = sum(n for _, n in requests)
    t0 = time.perf_counter()
    for prompt, n in requests:
        for _ in generate(model, prompt, n, **GREEDY):
            pass
    sequential = time.perf_counter() - t0
    engine = Engine(model, max_seqs=max_seqs, max_batch_tokens=budget)
    t0 = time.perf_counter()
    for prompt, n in requests:
        engine.add_request(prompt, n, **GREEDY)
    while engine.has_unfinished():
        engine.step()
    batched = time.perf_counter() - t0
    decode_rows = [len(r.rows) for r in engine.records if r.rows]
    return {
        "requests": len(requests),
        "output_tokens": n_out,
        "prompt_tokens": sum(len(p) for p, _ in requests),
        "sequential_tok_s": n_out / sequential,
        "engine_tok_s": n_out / batched,
        "ratio": sequential / batched,
        "steps": engine.n_steps,
        "mean_rows_per_step": float(np.mean(decode_rows)),
    }


def to_markdown(r: dict) -> str:
    t = r["throughput"]
    lines = [
        f"Model: {r['model']} (random weights, fp32), kernels {r['kernels']}; {r['machine']}.",
        "",
        "| throughput | output tok/s | × one at a time |",
        "|---|---|---|",
        f"| {t['requests']} requests one after another (generate) | "
        f"{t['sequential_tok_s']:.1f} | 1.00× |",
        f"| the same on the engine (continuous batching, up to {r['max_seqs']} at once) | "
        f"{t['engine_tok_s']:.1f} | {t['ratio']:.2f}× |",
        "",
        f"| a {r['long']}-token prompt arrives beside {r['streams']} decoding streams | "
        "median gap ms | worst gap ms | worst ÷ median | its TTFT s |",
        "|---|---|---|---|---|",
    ]
    for c in r["chunked_prefill"]:
        how = f"chunked (step budget {c['budget']})" if c["chunked"] else "prefilled whole"
        lines.append(
            f"| {how} | {c['median_gap_ms']:.1f} | {c['worst_gap_ms']:.1f} | "
            f"{c['worst_over_median']:.2f}× | {c['long_prompt_ttft_s']:.2f} |"
        )
    lines += [
        "",
        f"| {r['system']}-token shared system prompt + 20 own tokens | TTFT ms | prompt tokens "
        "from the cache | × faster |",
        "|---|---|---|---|",
    ]
    off, on = r["prefix_caching"]
    for p in (off, on):
        speedup = off["ttft_ms"] / p["ttft_ms"]
        lines.append(
            f"| prefix caching {'on' if p['prefix_caching'] else 'off'} | {p['ttft_ms']:.1f} | "
            f"{p['cached_tokens']} | {speedup:.2f}× |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="stories110M", help="a known model shape")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-seqs", type=int, default=32)
    parser.add_argument("--budget", type=int, default=512, help="max_batch_tokens, throughput")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--long", type=int, default=1000, help="the long prompt's tokens")
    parser.add_argument("--chunk-budget", type=int, default=24)
    parser.add_argument("--system", type=int, default=500, help="shared system prompt tokens")
    parser.add_argument("--questions", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)

    config = known_config(args.model)
    model = random_model(config)
    print(f"{args.model}: {args.requests} requests ...", file=sys.stderr)
    requests = mixed_requests(args.requests, config.vocab_size, config.max_seq_len)
    result = {
        "model": args.model,
        "kernels": kernels.active(),
        "machine": f"{platform.processor() or platform.machine()}, NumPy {np.__version__}",
        "max_seqs": args.max_seqs,
        "streams": args.streams,
        "long": args.long,
        "system": args.system,
        "throughput": throughput(model, requests, args.max_seqs, args.budget),
    }
    print("chunked prefill ...", file=sys.stderr)
    result["chunked_prefill"] = [
        chunked_prefill(model, args.streams, args.long, args.chunk_budget, chunked)[0]
        for chunked in (False, True)
    ]
    print("prefix caching ...", file=sys.stderr)
    result["prefix_caching"] = [
        prefix_caching(model, args.system, args.questions, on) for on in (False, True)
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "engine.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "engine.md").write_text(to_markdown(result))
    print(to_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
