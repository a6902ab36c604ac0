"""The `llama-np memory` and `llama-np profile` subcommands (registered by cli.py)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from ..errors import ArgumentError
from ..tools import atomic, hardware, machine, memory
from ..tools.profile import format_profile, plot_profile, profile_generation, write_json

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C


def add_commands(commands) -> None:
    """Add `memory` and `profile` to the CLI's subparsers."""
    mem = commands.add_parser(
        "memory",
        help="weights, KV cache and a roofline estimate for a model (no weights loaded)",
        description="Memory of a model's weights and KV cache, what GQA saves, and with "
        "--hardware (or --flops/--bandwidth) a roofline estimate of prefill and decode speed.",
    )
    mem.add_argument(
        "model",
        metavar="MODEL",
        help="a known model name (e.g. llama-3.1-8b, stories15M) or a llama2.c .bin checkpoint "
        "(only its header is read)",
    )
    mem.add_argument(
        "--context",
        type=int,
        metavar="N",
        help="tokens held in the KV cache (default: the model's max_seq_len)",
    )
    mem.add_argument("--batch", type=int, default=1, metavar="B", help="sequences (default: 1)")
    mem.add_argument(
        "--dtype",
        choices=list(memory.WEIGHT_DTYPES),
        default=None,
        help="weight storage type, as llama_np stores it (--weights-dtype); int8 = 32 int8 "
        "weights + a float32 scale, 36 bytes per 32 "
        f"(default: {memory.DEFAULT_DTYPE}, as Llama checkpoints are published; with "
        f"--hardware this-machine {memory.ENGINE_DTYPE}, as llama_np runs)",
    )
    mem.add_argument(
        "--kv-dtype",
        choices=list(memory.KV_DTYPES),
        default=None,
        help=f"KV-cache entry type (default: {memory.DEFAULT_KV_DTYPE}, 2 bytes, as GPU engines "
        f"keep it; with --hardware this-machine {memory.ENGINE_DTYPE}, as llama_np keeps it)",
    )
    mem.add_argument(
        "--prompt-tokens",
        type=int,
        metavar="N",
        help="prompt length for the prefill estimate (default: the context)",
    )
    mem.add_argument(
        "--hardware",
        metavar="NAME",
        help=f"estimate speed on a device: {', '.join(hardware.NAMES)} "
        "(this-machine is measured and cached per thread count; --remeasure measures again)",
    )
    mem.add_argument("--flops", type=float, metavar="X", help="custom peak FLOP/s, e.g. 989e12")
    mem.add_argument(
        "--bandwidth",
        type=float,
        metavar="Y",
        help="custom memory bandwidth, bytes/s, e.g. 3.35e12",
    )
    mem.add_argument(
        "--device-memory", type=float, metavar="Z", help="custom device memory, bytes, e.g. 80e9"
    )
    mem.add_argument("--json", action="store_true", help="print JSON instead of a table")
    mem.add_argument(
        "--remeasure",
        action="store_true",
        help="with --hardware this-machine: measure this machine's peaks again",
    )
    mem.set_defaults(run=run_memory)

    prof = commands.add_parser(
        "profile",
        help="time prefill and each decode step; FLOPs, bytes, GFLOP/s, GB/s; chart",
        description="Greedy generation with every forward pass timed: per phase and per token "
        "wall time, FLOPs, bytes read, arithmetic intensity, achieved GFLOP/s and GB/s against "
        "this machine's measured peaks. Writes profile.json and profile.png to --out.",
    )
    prof.add_argument(
        "-m",
        "--model",
        default=None,
        metavar="PATH",
        help="checkpoint file or directory (default: the bundled stories260K)",
    )
    prof.add_argument(
        "-p",
        "--prompt",
        default="Once upon a time",
        help="prompt text (default: 'Once upon a time')",
    )
    prof.add_argument(
        "-n",
        "--n-predict",
        type=int,
        default=64,
        metavar="N",
        help="greedy decode steps to time, run past any end token (default: 64)",
    )
    prof.add_argument(
        "--out",
        default="profile_out",
        metavar="DIR",
        help="directory for profile.json and profile.png (default: profile_out)",
    )
    prof.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="BLAS threads for every phase (default: try 1 and all CPUs, and give each phase "
        "the count with its best median; the output says which)",
    )
    prof.add_argument(
        "--repeats",
        type=int,
        default=5,
        metavar="R",
        help="prefill runs, each on a fresh cache; the median is reported (default: 5)",
    )
    prof.add_argument(
        "--batch",
        type=int,
        default=1,
        metavar="B",
        help="also time decode of B copies of the prompt together (Model.decode_batch) and put "
        "it on the roofline (default: 1, off)",
    )
    prof.add_argument(
        "--random",
        metavar="NAME",
        help="profile random weights of a known model's shape instead of a checkpoint "
        "(stories110M, tinyllama-1.1b, llama-3.2-1b, ...; fp32, checked against free memory); "
        "the prompt is --prompt-tokens token ids",
    )
    prof.add_argument(
        "--prompt-tokens",
        type=int,
        default=16,
        metavar="N",
        help="prompt length in tokens with --random (default: 16)",
    )
    prof.add_argument(
        "--html",
        metavar="FILE",
        help="also write an explorer page (self-contained HTML): the roofline with every phase, "
        "and the attention of the generation (layers, heads, tokens) unless --random",
    )
    prof.add_argument(
        "--remeasure",
        action="store_true",
        help="measure this machine's peaks again instead of using the cached ones",
    )
    prof.set_defaults(run=run_profile)


def say(*args, **kwargs) -> None:
    """print() to stdout, flushed, that outlives its reader: once stdout is closed
    (`llama-np profile ... | head -3`), the rest of the output goes to /dev/null and the
    command goes on, so the files it writes never depend on who reads what it prints."""
    try:
        print(*args, **kwargs, flush=True)
    except BrokenPipeError:
        stdout_to_devnull()


def stdout_to_devnull() -> None:
    """Point stdout at /dev/null: what is still buffered, and whatever follows, is dropped
    without another BrokenPipeError (also at the interpreter's final flush)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (a test's capture)
        sys.stdout = open(os.devnull, "w")
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def output_dir(path: str, flag: str = "--out") -> Path:
    """`path` as a directory to write into, created if needed; ArgumentError if it cannot be
    (a file of that name, no permission, a parent that is a file)."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ArgumentError(f"{flag} {path}: cannot create the directory: {e.strerror}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ArgumentError(f"{flag} {path}: the directory is not writable")
    return out


def run_memory(args: argparse.Namespace) -> int:
    config = memory.load_config(args.model)
    # Defaults: bf16, as models are published and GPUs serve them; on this machine, float32,
    # what llama_np runs here (a roofline of bf16 weights would be of an engine it is not).
    engine = (args.hardware or "").lower() == hardware.THIS_MACHINE
    defaulted = "" if args.dtype and args.kv_dtype else "engine" if engine else "published"
    dtype = args.dtype or (memory.ENGINE_DTYPE if engine else memory.DEFAULT_DTYPE)
    kv_dtype = args.kv_dtype or (memory.ENGINE_DTYPE if engine else memory.DEFAULT_KV_DTYPE)
    report = memory.memory_report(config, args.context, args.batch, dtype, kv_dtype)
    device = _hardware(args)
    est = None
    if device is not None:
        est = memory.estimate(
            config, device, args.context, args.prompt_tokens, args.batch, dtype, kv_dtype
        )
    if args.json:
        print(json.dumps(memory.to_json(report, est), indent=2))
    else:
        print(memory.format_report(report, config, est, defaulted))
    return 0


def _hardware(args: argparse.Namespace) -> hardware.Hardware | None:
    custom = args.flops is not None or args.bandwidth is not None
    if custom and args.hardware:
        raise ArgumentError("give either --hardware NAME or --flops X --bandwidth Y, not both")
    if custom:
        if args.flops is None or args.bandwidth is None:
            raise ArgumentError("--flops and --bandwidth go together: give both")
        return hardware.custom_hardware(args.flops, args.bandwidth, args.device_memory)
    if args.device_memory is not None:
        raise ArgumentError("--device-memory goes with --flops and --bandwidth")
    return hardware.get_hardware(args.hardware, args.remeasure) if args.hardware else None


def run_profile(args: argparse.Namespace) -> int:
    from .. import DEFAULT_CHECKPOINT, load

    for flag, value in (("--repeats", args.repeats), ("--batch", args.batch)):
        if value < 1:
            raise ArgumentError(f"{flag} must be at least 1, got {value}")
    if args.random:
        from ..limits import check_model_fits
        from ..tools.random_model import random_model

        config = memory.load_config(args.random)
        if args.prompt_tokens < 1:
            raise ArgumentError(f"--prompt-tokens must be at least 1, got {args.prompt_tokens}")
        check_model_fits(config, f"--random {args.random}")
        model = random_model(config)
        rng = np.random.default_rng(0)
        prompt = [int(t) for t in rng.integers(0, config.vocab_size, args.prompt_tokens)]
        say(f"prompt: {len(prompt)} random token ids; random weights of {config.name}'s shape")
    else:
        model = load(args.model or DEFAULT_CHECKPOINT)
        if model.tokenizer is None:
            raise ArgumentError(f"{args.model}: no tokenizer found next to the checkpoint")
        prompt = model.tokenizer.encode(args.prompt, bos=True)
        say(f"prompt: {args.prompt!r} ({len(prompt)} tokens with BOS)")
    out = output_dir(args.out)  # before a run that can take minutes, not after
    if args.html:
        atomic.check_file_path(args.html, "--html")
    blas = machine.blas()
    if args.threads is not None:
        blas.check_threads(args.threads)
        threads = [args.threads]
    elif blas.controllable and machine.cpu_count() > 1:
        threads = sorted({1, machine.cpu_count()})
    else:
        threads = None  # fixed by the environment
    result = profile_generation(
        model,
        prompt,
        args.n_predict,
        lambda again=False: machine.machine_peaks(args.remeasure or again),
        threads=threads,
        repeats=args.repeats,
        batch=args.batch,
    )
    # The files first: what they hold must not depend on stdout staying open (| head).
    wrote = []
    if args.html:
        from ..tools.explorer import write_html

        trace = None
        if model.tokenizer is not None:  # random weights have no text to show
            from ..tools.trace import trace_attention

            trace = trace_attention(model, prompt, args.n_predict)
        wrote.append(write_html(args.html, trace, result, model.config.n_kv_heads))
    write_json(result, out / "profile.json")
    wrote.append(out / "profile.json")
    try:
        plot_profile(result, out / "profile.png")
        wrote.append(out / "profile.png")
    except ModuleNotFoundError as e:
        if e.name != "matplotlib":  # a missing module of ours is a bug, not a missing extra
            raise
        print(
            "no chart: matplotlib is not installed; pip install -e '.[plot]' (or pip install "
            "matplotlib) to get profile.png",
            file=sys.stderr,
        )
    if result.invalid:  # said loudly, also where stdout is a file nobody reads
        print(f"llama-np: WARNING: {result.warnings[0]}", file=sys.stderr)
    if result.text:
        say(f"greedy continuation: {result.text!r}")
    say(f"machine: {machine.cpu_model()}, {machine.cpu_count()} CPUs, {blas.describe()}\n")
    say(format_profile(result))
    say()
    for path in wrote:
        say(f"wrote {path}")
    if result.interrupted:
        steps = sum(s.phase != "prefill" for s in result.steps)
        print(f"llama-np: interrupted: the profile above is of the {steps} decode steps timed "
              f"so far", file=sys.stderr)  # fmt: skip
        return EXIT_INTERRUPTED
    return 0
