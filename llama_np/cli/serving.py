"""`llama-np simulate` (registered by main.py): the serving engine's scheduler on a roofline
clock (tools/simulate.py), and on this machine its check against the engine
(tools/calibrate.py); `llama-np serving-lab`: the serving lesson's measurements
(tools/serving_lab.py)."""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import replace

from ..engine.engine import DEFAULT_KV_MEMORY
from ..engine.scheduler import SchedulerConfig
from ..errors import ArgumentError
from ..limits import parse_bytes
from ..paged_kv_cache import BLOCK_SIZE, blocks_for
from ..tools import hardware, memory
from ..tools.serving_metrics import format_seconds, serving_metrics
from ..tools.simulate import (
    MEMORY_FRACTION,
    Overheads,
    RooflineClock,
    format_simulation,
    kv_pool,
    parse_range,
    poisson_trace,
    simulate,
)
from . import perf

NO_OVERHEADS = Overheads()


def add_commands(commands) -> None:
    sim = commands.add_parser(
        "simulate",
        help="the serving engine's scheduler on a roofline clock: a model on a device at a "
        "request rate (throughput, TTFT/TPOT/ITL, KV sequences that fit)",
        description="Run a request trace (Poisson arrivals) through the serving engine's own "
        "scheduler and KV block pool, each step timed by the roofline, max(FLOPs / peak, bytes "
        "/ bandwidth), instead of the model: how many sequences the KV pool holds, the "
        "throughput, TTFT/TPOT/ITL percentiles, which steps are compute-bound.",
    )
    sim.add_argument("model", metavar="MODEL", help="a known model name or a checkpoint path")
    sim.add_argument(
        "--hardware",
        metavar="NAME",
        help=f"the device: {', '.join(hardware.NAMES)} (this-machine: its measured peaks, "
        "fp32 weights and KV as the engine runs here, and its measured per-step overheads)",
    )
    sim.add_argument("--flops", type=float, metavar="X", help="custom peak FLOP/s")
    sim.add_argument("--bandwidth", type=float, metavar="Y", help="custom bytes/s")
    sim.add_argument("--device-memory", type=float, metavar="Z", help="custom memory, bytes")
    sim.add_argument(
        "--context",
        type=int,
        metavar="N",
        help="positions a request may reach, max_model_len (default: the model's context)",
    )
    sim.add_argument(
        "--rate",
        type=float,
        default=math.inf,
        metavar="R",
        help="requests per second, Poisson arrivals (default: inf, all at once)",
    )
    sim.add_argument(
        "--requests", type=int, default=100, metavar="N", help="requests (100; at most 10,000)"
    )
    sim.add_argument(
        "--prompt-tokens",
        metavar="N|A-B",
        help="prompt length, or a uniform range (default: the context less the longest output: "
        "every request fills its context)",
    )
    sim.add_argument(
        "--output-tokens",
        metavar="N|A-B",
        help="tokens each request generates, or a range (default: 256, at most a quarter of "
        "the context)",
    )
    sim.add_argument(
        "--shared-prefix",
        type=int,
        default=0,
        metavar="N",
        help="every prompt starts with the same N tokens (a system prompt) (default: 0)",
    )
    sim.add_argument(
        "--weights-dtype",
        choices=list(memory.WEIGHT_DTYPES),
        help=f"weight storage (default: {memory.DEFAULT_DTYPE}; fp32 on this-machine)",
    )
    sim.add_argument(
        "--kv-dtype",
        choices=list(memory.KV_DTYPES),
        help=f"KV-cache values (default: {memory.DEFAULT_KV_DTYPE}; fp32 on this-machine)",
    )
    sim.add_argument(
        "--kv-memory",
        metavar="BYTES",
        help=f"the KV pool, e.g. 40GB (default: {MEMORY_FRACTION} × device memory − weights; "
        "on this-machine the engine's default, 1 GiB or one full context)",
    )
    sim.add_argument(
        "--memory-fraction",
        type=float,
        default=MEMORY_FRACTION,
        metavar="F",
        help=f"share of device memory for weights + KV pool ({MEMORY_FRACTION}, as vLLM)",
    )
    sim.add_argument("--max-seqs", type=int, default=64, metavar="N", help="(the engine's: 64)")
    sim.add_argument(
        "--max-batch-tokens", type=int, default=512, metavar="N", help="(the engine's: 512)"
    )
    sim.add_argument("--block-size", type=int, default=BLOCK_SIZE, metavar="N", help="(16)")
    sim.add_argument("--no-chunked-prefill", action="store_true", help="a prompt runs whole")
    sim.add_argument(
        "--no-prefix-caching", action="store_true", help="never share a prompt prefix's blocks"
    )
    sim.add_argument(
        "--mha", action="store_true", help="as if every query head had its own K/V head (KVH = H)"
    )
    sim.add_argument("--seed", type=int, default=0, help="the trace's random seed (0)")
    sim.add_argument(
        "--compare",
        action="store_true",
        help="also run the trace with chunked prefill off, prefix caching off, an fp8 KV "
        "cache and multi-head attention, and print a table",
    )
    sim.add_argument(
        "--against-engine",
        action="store_true",
        help="with --hardware this-machine: calibrate, then run the same trace through the real "
        "engine (random weights of MODEL's shape) and compare",
    )
    sim.add_argument(
        "--no-overheads",
        action="store_true",
        help="with --hardware this-machine: a pure roofline, without the measured overheads",
    )
    sim.add_argument("--remeasure", action="store_true", help="measure this machine again")
    sim.set_defaults(run=run_simulate)

    lab = commands.add_parser(
        "serving-lab",
        help="the serving lesson's experiments on the real engine (docs/serving.md)",
        description="Measure on the serving engine: static vs continuous batching and "
        "contiguous vs paged KV memory (batching), running streams' gaps beside a long prompt "
        "(chunked), prefix-cache hits (prefix), decode time vs context (context), prompt-lookup "
        "speculative decoding (speculative).",
    )
    lab.add_argument("experiment", choices=EXPERIMENTS, metavar="|".join(EXPERIMENTS))
    lab.add_argument(
        "--random",
        default="stories110M",
        metavar="NAME",
        help="random weights of this known model's shape (default: stories110M)",
    )
    lab.add_argument("--out", metavar="DIR", help="batching, chunked: also draw the steps here")
    lab.set_defaults(run=run_serving_lab)


EXPERIMENTS = ("batching", "chunked", "prefix", "context", "speculative")


def run_serving_lab(args: argparse.Namespace) -> int:
    from .. import load
    from ..limits import check_model_fits
    from ..tools import serving_lab
    from ..tools.random_model import random_model

    config = memory.load_config(args.random)
    check_model_fits(config, f"--random {args.random}")
    model = random_model(config)
    out = perf.output_dir(args.out) if args.out else None  # before the runs: fail early
    runs = []
    if args.experiment == "batching":
        text, runs = serving_lab.batching(model)
    elif args.experiment == "chunked":
        text, runs = serving_lab.chunked(model, long=min(1000, config.max_seq_len - 8))
    elif args.experiment == "prefix":
        text = serving_lab.prefix(model, system=min(500, config.max_seq_len // 2))
    elif args.experiment == "context":
        top = config.max_seq_len - 16
        positions = sorted({16, top // 4, top // 2, 3 * top // 4, top})
        text = serving_lab.context(model, positions, hardware.this_machine().bandwidth)
    else:
        text = serving_lab.speculative(load(), model)
    print(text)
    if out is not None and runs:
        path = out / f"{args.experiment}.png"
        try:
            serving_lab.plot_steps(runs, path, f"{args.experiment}: {config.name}, every step")
            print(f"wrote {path}")
        except ModuleNotFoundError as e:
            if e.name != "matplotlib":  # a missing module of ours is a bug, not a missing extra
                raise
            print("no chart: matplotlib is not installed (pip install -e '.[plot]')")
    return 0


MAX_REQUESTS = 10_000  # simulate --requests: minutes of simulated steps at most


def run_simulate(args: argparse.Namespace) -> int:
    config = memory.load_config(args.model)
    if args.hardware is None and args.flops is None:
        raise ArgumentError(
            f"give --hardware NAME ({', '.join(hardware.NAMES)}) or --flops/--bandwidth"
        )
    device = perf._hardware(args)
    here = device.name == hardware.THIS_MACHINE
    for flag in ("max_seqs", "max_batch_tokens", "block_size", "requests"):
        value = getattr(args, flag)
        if value < 1:
            raise ArgumentError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if args.requests > MAX_REQUESTS:  # each request's every step is simulated: bounded work
        raise ArgumentError(f"--requests must be at most {MAX_REQUESTS:,}, got {args.requests:,}")
    if not 0 <= args.seed < 2**63:
        raise ArgumentError(f"--seed must be in 0..2**63-1, got {args.seed}")
    if (args.against_engine or args.no_overheads) and not here:
        raise ArgumentError("--against-engine and --no-overheads go with --hardware this-machine")
    if not 0 < args.memory_fraction <= 1:
        raise ArgumentError(f"--memory-fraction must be in (0, 1], got {args.memory_fraction}")
    context = config.max_seq_len if args.context is None else args.context
    if not 2 <= context <= config.max_seq_len:
        raise ArgumentError(f"--context must be in 2..{config.max_seq_len:,}, got {context}")
    if args.mha:
        config = config.replace(n_kv_heads=config.n_heads)
    wdtype = args.weights_dtype or ("fp32" if here else memory.DEFAULT_DTYPE)
    kvdtype = args.kv_dtype or ("fp32" if here else memory.DEFAULT_KV_DTYPE)
    if here and (wdtype, kvdtype) != ("fp32", "fp32"):
        raise ArgumentError("this-machine simulates the engine as it runs here: fp32 weights and "
                            "KV cache (leave --weights-dtype and --kv-dtype out)")  # fmt: skip

    outputs = parse_range(args.output_tokens, "--output-tokens") if args.output_tokens else None
    if outputs is None:
        outputs = (min(256, context // 4),) * 2
    prompts = (
        parse_range(args.prompt_tokens, "--prompt-tokens")
        if args.prompt_tokens
        else (context - outputs[1],) * 2
    )
    if prompts[1] + outputs[1] > context:
        raise ArgumentError(
            f"prompts of up to {prompts[1]:,} tokens and outputs of up to {outputs[1]:,} do not "
            f"fit the context of {context:,}"
        )
    trace = poisson_trace(args.requests, args.rate, prompts, outputs, config.vocab_size,
                          args.shared_prefix, args.seed, config.bos_id)  # fmt: skip
    kv_memory = parse_bytes(args.kv_memory, "--kv-memory") if args.kv_memory else None
    how = "given (--kv-memory)"
    if here and kv_memory is None:  # the engine's default (engine.Engine)
        block = config.kv_cache_bytes(args.block_size, 1, 4)
        kv_memory = max(DEFAULT_KV_MEMORY, blocks_for(config.max_seq_len, args.block_size) * block)
        how = "the engine's default: 1 GiB, or one full context if more"
    sched = SchedulerConfig(args.max_seqs, args.max_batch_tokens, not args.no_chunked_prefill,
                            context)  # fmt: skip
    if not sched.chunked_prefill and prompts[1] > sched.max_batch_tokens:
        raise ArgumentError(
            f"without chunked prefill a prompt runs whole in one step: --max-batch-tokens "
            f"{sched.max_batch_tokens} is shorter than prompts of {prompts[1]:,} tokens"
        )

    def run(config, kvdtype, sched, prefix_caching, overheads=NO_OVERHEADS):
        w, kv = memory.WEIGHT_DTYPES[wdtype], memory.KV_DTYPES[kvdtype]
        weights = memory.weight_bytes(config, wdtype)
        pool = kv_pool(config, kv, weights, device, kv_memory, args.memory_fraction,
                       args.block_size, how)  # fmt: skip
        clock = RooflineClock(config, device, w, kv, overheads)
        return simulate(trace, clock, sched, pool, prefix_caching, args.seed)

    overheads, model, calibration = Overheads(), None, None
    if here and not args.no_overheads:
        model, overheads, calibration = _this_machine_overheads(config, run, sched, args)
    rate = "all at once" if math.isinf(args.rate) else f"Poisson arrivals at {args.rate:g}/s"
    shared = f" (the first {args.shared_prefix:,} shared)" if args.shared_prefix else ""
    workload = (
        f"{args.requests} requests, {rate}, prompts {_span(prompts)} tokens{shared}, outputs "
        f"{_span(outputs)} tokens, seed {args.seed}"
    )
    prefix = not args.no_prefix_caching
    sim = run(config, kvdtype, sched, prefix, overheads)
    print(format_simulation(sim, workload))
    if args.compare:
        print()
        print(_compare(sim, run, config, kvdtype, sched, prefix, overheads, prompts, here))
    if args.against_engine:
        from ..tools.calibrate import check, format_check

        print()
        bare = replace(sim.clock, overheads=Overheads())
        print(format_check(check(model, bare, sched, sim.pool, trace, prefix,
                                 calibration=calibration)))  # fmt: skip
    return 0


def _this_machine_overheads(config, run, sched, args):
    """The random model of this shape, this machine's overheads for it (cached, or measured
    now on the engine: always with --against-engine), and the calibration if measured now."""
    from ..limits import check_model_fits
    from ..tools import calibrate
    from ..tools.random_model import random_model

    check_model_fits(config, f"simulating {config.name} on this machine")
    model = random_model(config)
    key = calibrate.overheads_key(model)
    saved = None if (args.remeasure or args.against_engine) else calibrate.cached_overheads(key)
    if saved is not None:
        return model, saved, None
    print(f"calibrating: a trace of 16 requests through the engine ({config.name}, random "
          "weights)", file=sys.stderr)  # fmt: skip
    base = run(config, "fp32", sched, True)  # the pool and the clock, without overheads
    result = calibrate.calibrate(model, base.clock, sched, base.pool)
    calibrate.save_overheads(key, result.overheads)
    return model, result.overheads, result


def _compare(sim, run, config, kvdtype, sched, prefix, overheads, prompts, here) -> str:
    """The same trace with one thing changed at a time."""
    variants = [("as above", sim)]
    if sched.chunked_prefill:
        budget = max(sched.max_batch_tokens, prompts[1])
        off = replace(sched, chunked_prefill=False, max_batch_tokens=budget)
        variants.append((f"chunked prefill off ({budget:,}-token steps)",
                         run(config, kvdtype, off, prefix, overheads)))  # fmt: skip
    if prefix:
        variants.append(("prefix caching off", run(config, kvdtype, sched, False, overheads)))
    if not here and kvdtype != "fp8":
        variants.append(("fp8 KV cache", run(config, "fp8", sched, prefix, overheads)))
    if config.n_kv_heads < config.n_heads:
        mha = config.replace(n_kv_heads=config.n_heads)
        variants.append((f"MHA ({config.n_heads} KV heads, not {config.n_kv_heads})",
                         run(mha, kvdtype, sched, prefix, overheads)))  # fmt: skip
    context = sched.max_model_len
    w = max(len(name) for name, _ in variants) + 2
    head = (f"{'variant':<{w}}{'seqs fit':>9}{'out tok/s':>11}{'TTFT p50':>10}{'TPOT p50':>10}"
            f"{'ITL p99':>10}{'preempt':>9}")  # fmt: skip
    lines = [head]
    for name, s in variants:
        m = serving_metrics(s.requests)
        lines.append(
            f"{name:<{w}}{s.pool.sequences(context):>9,}{m.output_tokens_per_second:>11,.4g}"
            f"{format_seconds(m.ttft.p50):>10}{format_seconds(m.tpot.p50):>10}"
            f"{format_seconds(m.itl.p99):>10}{s.preemptions:>9,}"
        )
    return "\n".join(lines)


def _span(r: tuple[int, int]) -> str:
    return f"{r[0]:,}" if r[0] == r[1] else f"{r[0]:,}-{r[1]:,}"
