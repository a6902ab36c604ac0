"""The `llama-np memory` and `llama-np profile` subcommands (registered by cli.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import ArgumentError
from ..tools import hardware, machine, memory
from ..tools.profile import format_profile, plot_profile, profile_generation, write_json


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
        default=memory.DEFAULT_DTYPE,
        help="weight storage type, as llama_np stores it (--weights-dtype); int8 = 32 int8 "
        "weights + a float32 scale, 36 bytes per 32 "
        f"(default: {memory.DEFAULT_DTYPE}, as Llama checkpoints are published)",
    )
    mem.add_argument(
        "--kv-dtype",
        choices=list(memory.KV_DTYPES),
        default=memory.DEFAULT_KV_DTYPE,
        help=f"KV-cache entry type (default: {memory.DEFAULT_KV_DTYPE}, 2 bytes, as GPU engines "
        "keep it; llama_np itself uses fp32)",
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
        "(this-machine is measured once and cached)",
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
    prof.set_defaults(run=run_profile)


def run_memory(args: argparse.Namespace) -> int:
    config = memory.load_config(args.model)
    report = memory.memory_report(config, args.context, args.batch, args.dtype, args.kv_dtype)
    device = _hardware(args)
    est = None
    if device is not None:
        est = memory.estimate(
            config, device, args.context, args.prompt_tokens, args.batch, args.dtype, args.kv_dtype
        )
    if args.json:
        print(json.dumps(memory.to_json(report, est), indent=2))
    else:
        print(memory.format_report(report, config, est))
    return 0


def _hardware(args: argparse.Namespace) -> hardware.Hardware | None:
    custom = args.flops is not None or args.bandwidth is not None
    if custom and args.hardware:
        raise ArgumentError("give either --hardware NAME or --flops X --bandwidth Y, not both")
    if custom:
        if args.flops is None or args.bandwidth is None:
            raise ArgumentError("--flops and --bandwidth go together: give both")
        mem = None if args.device_memory is None else int(args.device_memory)
        return hardware.custom_hardware(args.flops, args.bandwidth, mem)
    if args.device_memory is not None:
        raise ArgumentError("--device-memory goes with --flops and --bandwidth")
    return hardware.get_hardware(args.hardware) if args.hardware else None


def run_profile(args: argparse.Namespace) -> int:
    from .. import DEFAULT_CHECKPOINT, load

    model = load(args.model or DEFAULT_CHECKPOINT)
    if model.tokenizer is None:
        raise ArgumentError(f"{args.model}: no tokenizer found next to the checkpoint")
    prompt = model.tokenizer.encode(args.prompt, bos=True)
    peaks = machine.peaks()
    result = profile_generation(model, prompt, args.n_predict, peaks)
    print(f"prompt: {args.prompt!r} ({len(prompt)} tokens with BOS)")
    print(f"greedy continuation: {result.text!r}\n")
    print(format_profile(result))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(result, out / "profile.json")
    print(f"\nwrote {out / 'profile.json'}")
    try:
        plot_profile(result, out / "profile.png")
        print(f"wrote {out / 'profile.png'}")
    except ImportError:
        print(
            "no chart: matplotlib is not installed; pip install -e '.[plot]' (or pip install "
            "matplotlib) to get profile.png",
            file=sys.stderr,
        )
    return 0
