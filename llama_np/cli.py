"""The `llama-np` command line (also `python -m llama_np`).

Flags follow llama.cpp where it has one: -m model, -p prompt, -n tokens to predict, -s seed.
"""

from __future__ import annotations

import argparse
import sys
import time

from . import DEFAULT_CHECKPOINT, load
from .errors import LlamaNpError
from .generate import GenerationStats, generate, generate_batch
from .weight_formats import WEIGHT_DTYPES


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except LlamaNpError as e:
        if args.debug:
            raise
        print(f"llama-np: error: {e}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llama-np", description="Run Llama models with NumPy: generate text, inspect models."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = commands.add_parser("generate", help="generate text from a prompt (streams to stdout)")
    add_model_arg(gen)
    gen.add_argument(
        "-p",
        "--prompt",
        action="append",
        metavar="PROMPT",
        help="prompt text (default: empty, BOS only); repeat to generate for several prompts "
        "at once as one batch",
    )
    gen.add_argument(
        "-n",
        "--n-predict",
        type=int,
        default=256,
        metavar="N",
        help="maximum number of tokens to generate (default: 256)",
    )
    gen.add_argument(
        "--temperature",
        "--temp",
        type=float,
        default=0.8,
        metavar="T",
        help="sampling temperature, 0 = greedy (default: 0.8)",
    )
    gen.add_argument(
        "--top-k",
        type=int,
        default=40,
        metavar="K",
        help="keep the K most likely tokens, 0 = off (default: 40)",
    )
    gen.add_argument(
        "--top-p",
        type=float,
        default=0.95,
        metavar="P",
        help="nucleus sampling threshold, 1 = off (default: 0.95)",
    )
    gen.add_argument(
        "--min-p",
        type=float,
        default=0.05,
        metavar="P",
        help="drop tokens below P x the top probability, 0 = off (default: 0.05)",
    )
    gen.add_argument(
        "--repeat-penalty",
        type=float,
        default=1.0,
        metavar="R",
        help="penalize the last 64 tokens, 1 = off (default: 1.0)",
    )
    gen.add_argument(
        "-s",
        "--seed",
        type=int,
        default=None,
        metavar="S",
        help="random seed; the same seed gives the same text (default: random)",
    )
    gen.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="TEXT",
        help="stop when TEXT appears (repeatable)",
    )
    gen.add_argument(
        "--weights-dtype",
        choices=WEIGHT_DTYPES,
        default="fp32",
        help="keep weights in memory as fp32 (fastest), bf16/fp16 (half the memory) or int8 "
        "(a quarter plus scales); compressed weights are widened to fp32 as they are used",
    )
    gen.set_defaults(run=run_generate)

    info = commands.add_parser("info", help="print a model's config, size and KV-cache memory")
    add_model_arg(info)
    info.set_defaults(run=run_info)
    return parser


def add_model_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-m",
        "--model",
        default=str(DEFAULT_CHECKPOINT),
        metavar="PATH",
        help="checkpoint file or directory (default: the bundled stories260K)",
    )


def run_generate(args: argparse.Namespace) -> int:
    model = load(args.model, weights_dtype=args.weights_dtype)
    seed = args.seed if args.seed is not None else int(time.time_ns() % 2**31)
    stats = GenerationStats()
    prompts = args.prompt or [""]
    if len(prompts) > 1:
        return run_generate_batch(model, prompts, args, seed, stats)
    pieces = generate(
        model,
        prompts[0],
        args.n_predict,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=args.repeat_penalty,
        seed=seed,
        stop=args.stop,
        stats=stats,
    )
    sys.stdout.write(prompts[0])
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    print_timings(stats, seed)
    return 0


def run_generate_batch(model, prompts, args, seed: int, stats: GenerationStats) -> int:
    """Several prompts decoded together; each text is printed when all are done."""
    texts = generate_batch(
        model,
        prompts,
        args.n_predict,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=args.repeat_penalty,
        seed=seed,
        stop=args.stop,
        stats=stats,
    )
    for i, (prompt, text) in enumerate(zip(prompts, texts, strict=True)):
        sys.stdout.write(f"--- [{i}]\n{prompt}{text}\n")
    print_timings(stats, seed)
    return 0


def print_timings(stats: GenerationStats, seed: int | None = None) -> None:
    """llama.cpp-style timing lines on stderr: prefill and decode reported separately."""

    def line(name: str, n: int, seconds: float) -> str:
        ms = seconds * 1e3
        per = (
            f"{ms / n:8.2f} ms per token, {n / seconds:9.2f} tokens per second"
            if n and seconds
            else "n/a"
        )
        return f"llama-np: {name:<8} {n:5d} tokens in {ms:9.2f} ms ({per})"

    err = sys.stderr
    print(file=err)
    print(line("prefill", stats.prompt_tokens, stats.prefill_seconds), file=err)
    print(line("decode", stats.decode_tokens, stats.decode_seconds), file=err)
    print(
        f"llama-np: sampling {stats.sample_seconds * 1e3:.2f} ms for {stats.generated_tokens} "
        f"generated tokens; stopped: {stats.stop_reason}"
        + (f"; seed {seed}" if seed is not None else ""),
        file=err,
    )


def run_info(args: argparse.Namespace) -> int:
    model = load(args.model)
    c = model.config
    weight_bytes = sum(a.nbytes for a in _weight_arrays(model))
    rows = [
        ("name", c.name),
        ("dim (D)", c.dim),
        ("layers (L)", c.n_layers),
        ("query heads (H)", c.n_heads),
        ("key/value heads (KVH)", c.n_kv_heads),
        ("head dim (HD)", c.head_dim),
        ("MLP hidden dim (F)", c.hidden_dim),
        ("vocab size (V)", c.vocab_size),
        ("context (max_seq_len)", c.max_seq_len),
        ("RMSNorm eps", c.norm_eps),
        ("RoPE theta", c.rope_theta),
        ("RoPE scaling", c.rope_scaling),
        (
            "RoPE pairs",
            "interleaved (2i, 2i+1)" if c.rope_interleaved else "half-split (i, i+HD/2)",
        ),
        ("tied embeddings", c.tie_embeddings),
        ("BOS / stop ids", f"{c.bos_id} / {list(c.stop_ids)}"),
        ("tokenizer", type(model.tokenizer).__name__ if model.tokenizer else "none"),
        ("parameters", f"{c.n_params:,}"),
        ("weights in memory (float32)", _bytes(weight_bytes)),
        ("KV cache per token (float32)", _bytes(c.kv_cache_bytes(1))),
        (f"KV cache at {c.max_seq_len} tokens", _bytes(c.kv_cache_bytes(c.max_seq_len))),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def _weight_arrays(model):
    w = model.weights
    yield w.embedding
    yield w.final_norm
    if not model.config.tie_embeddings:
        yield w.classifier
    for lw in w.layers:
        yield from vars(lw).values()


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n:,} bytes ({n / size:.2f} {unit})"
    return f"{n:,} bytes"
