"""Serving benchmark: `llama-np serve` under a request trace, beside llama.cpp's llama-server.

    python benchmarks/serve.py                    # stories110M F32 and Q8_0, 8 and 16 clients
    LLAMA_CPP_BIN=DIR python benchmarks/serve.py  # + llama-server --parallel N (DIR/llama-server)
    python benchmarks/serve.py --quick            # a smoke run: stories260K, few requests

A trace is a list of requests with Poisson arrival times (`--rate` per second), mixed prompt
and output lengths, as token ids (so both servers see exactly the same prompts); the
"shared" variant starts every prompt with the same system prompt (what prefix caching is
for). N clients replay it: each request is sent at its arrival time, or as soon as one of the
N clients is free (so at most N are in flight), streams its answer, and is timed at the
client: time to first token (TTFT, from sending), time per output token after the first
(TPOT) and the gaps between streamed pieces (inter-token latency, ITL). Output throughput is
the trace's generated tokens over the time from the first request sent to the last answer.

Each run starts its server in a fresh process on a loopback port, warms it with two requests,
replays the trace, and stops it. Per model file and trace: llama_np with N clients
(--max-seqs N), llama-server --parallel N with N clients, and llama_np serving the trace one
request at a time (one client, --max-seqs 1). Every request asks for greedy tokens with
ignore_eos, so both servers generate exactly max_tokens tokens. Models are random weights of
a known shape written as GGUF files (llama-quantize makes the Q8_0 one when DIR has it, else
`llama-np convert`), except stories260K, the real bundled checkpoint. Writes
benchmarks/results/serve.json and serve.md; the last table holds the targets' ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: use this checkout's llama_np
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from llama_np import DEFAULT_CHECKPOINT  # noqa: E402
from llama_np.checkpoints.export import convert  # noqa: E402
from llama_np.tools.known_models import known_config  # noqa: E402
from llama_np.tools.serving_metrics import PERCENTILES, Percentiles  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
import llama_cpp  # noqa: E402

FILES = Path.home() / ".cache" / "llama_np" / "benchmarks" / "gguf"
PROMPT_LENGTHS = (32, 64, 128, 256)  # tokens, BOS included
OUTPUT_LENGTHS = (16, 32, 64, 128)
SYSTEM_PROMPT = 192  # tokens every prompt of the "shared" trace starts with
SUFFIX_LENGTHS = (16, 32, 64)
SERVER_START_TIMEOUT = 300  # seconds for a server to load its model and answer /health
REQUEST_TIMEOUT = 600


# ---------------------------------------------------------------- the trace


@dataclass(frozen=True)
class TraceRequest:
    arrival: float  # seconds after the replay starts
    prompt: list[int]  # token ids, BOS first
    max_tokens: int


def make_trace(kind: str, n: int, rate: float, vocab: int, context: int, seed: int = 0):
    """n requests: Poisson arrivals at `rate` per second, mixed prompt and output lengths;
    kind "shared": every prompt starts with the same SYSTEM_PROMPT tokens."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1 / rate, n)) if rate != float("inf") else np.zeros(n)
    system = rng.integers(3, vocab, SYSTEM_PROMPT).tolist()  # ids 0-2: <unk>, <s>, </s>
    trace = []
    for arrival in arrivals:
        if kind == "shared":
            prompt = [1, *system, *rng.integers(3, vocab, rng.choice(SUFFIX_LENGTHS)).tolist()]
        else:
            prompt = [1, *rng.integers(3, vocab, rng.choice(PROMPT_LENGTHS) - 1).tolist()]
        max_tokens = int(min(rng.choice(OUTPUT_LENGTHS), context - len(prompt)))
        trace.append(TraceRequest(float(arrival), prompt, max_tokens))
    return trace


# ---------------------------------------------------------------- the clients


@dataclass
class Timing:
    """One request as its client saw it (seconds since the replay started)."""

    sent: float
    pieces: list[float] = field(default_factory=list)  # arrival of each streamed text piece
    tokens: int = 0  # generated tokens (the usage the server reports, else max_tokens)
    error: str = ""


async def replay(url: str, model: str, trace: list[TraceRequest], clients: int,
                 max_seconds: float) -> tuple[list[Timing], float]:  # fmt: skip
    """Replay the trace with at most `clients` requests in flight; requests whose turn comes
    after max_seconds are not sent. -> (each sent request's timing, the replay's start)."""
    free = asyncio.Semaphore(clients)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    timeout = httpx.Timeout(REQUEST_TIMEOUT)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as http:
        start = time.perf_counter()

        async def one(request: TraceRequest) -> Timing | None:
            await asyncio.sleep(max(0.0, start + request.arrival - time.perf_counter()))
            async with free:
                if time.perf_counter() - start > max_seconds:
                    return None
                return await send(http, model, request, start)

        timings = await asyncio.gather(*(one(r) for r in trace))
    return [t for t in timings if t is not None], start


async def send(http: httpx.AsyncClient, model: str, request: TraceRequest, start: float):
    body = {
        "model": model, "prompt": request.prompt, "max_tokens": request.max_tokens,
        "temperature": 0, "stream": True, "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }  # fmt: skip
    timing = Timing(time.perf_counter() - start)
    try:
        async with http.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code != 200:
                timing.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                return timing
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if any(c.get("text") for c in chunk.get("choices", ())):
                    timing.pieces.append(time.perf_counter() - start)
                if chunk.get("usage"):
                    timing.tokens = chunk["usage"]["completion_tokens"]
    except httpx.HTTPError as error:
        timing.error = repr(error)
    timing.tokens = timing.tokens or request.max_tokens * bool(timing.pieces)
    return timing


def summarize(timings: list[Timing], n_trace: int) -> dict:
    """Output tokens/s and TTFT, TPOT, ITL percentiles (ms) of one replay, defined as the
    engine's and the simulator's are (llama_np.tools.serving_metrics), with the tokens each
    server says it generated (a streamed piece may hold more than one)."""
    done = [t for t in timings if not t.error and t.pieces]
    errors = [t.error for t in timings if t.error]
    result: dict = {"requests": len(done), "of": n_trace, "errors": len(errors)}
    if errors:
        result["first_error"] = errors[0]
    if not done:
        return result
    span = max(t.pieces[-1] for t in done) - min(t.sent for t in done)
    tokens = sum(t.tokens for t in done)
    latencies = {
        "ttft": [t.pieces[0] - t.sent for t in done],
        "tpot": [(t.pieces[-1] - t.pieces[0]) / (t.tokens - 1) for t in done if t.tokens > 1],
        "itl": [b - a for t in done for a, b in zip(t.pieces, t.pieces[1:], strict=False)],
    }
    result.update(output_tokens=tokens, seconds=round(span, 3),
                  output_tok_s=round(tokens / span, 2))  # fmt: skip
    for name, seconds in latencies.items():
        p = Percentiles.of(seconds)
        for q in PERCENTILES:
            ms = 1e3 * getattr(p, f"p{q}")
            result[f"{name}_p{q}_ms"] = round(ms, 2) if ms == ms else None  # NaN: none
    return result


# ---------------------------------------------------------------- the servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A server in its own process on a loopback port, stopped on exit of the `with`."""

    def __init__(self, command: list[str], port: int, name: str) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.name = name
        self.log = open(os.devnull, "w")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.PIPE,
                                        text=True, env=env)  # fmt: skip
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{command[0]} exited: {self.process.stderr.read()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.process.kill()
                raise RuntimeError(f"{command[0]} did not answer /health in time")
            time.sleep(0.2)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def llama_np_server(path: Path, name: str, seqs: int, kv_memory: str) -> ServerProcess:
    port = free_port()
    command = [sys.executable, "-m", "llama_np", "serve", "-m", str(path), "--port", str(port),
               "--alias", name, "--max-seqs", str(seqs), "--max-queue", "4096",
               "--kv-memory", kv_memory, "--log-level", "error"]  # fmt: skip
    return ServerProcess(command, port, name)


def llama_cpp_server(bin_dir: Path, path: Path, name: str, parallel: int, slot_context: int):
    """llama-server with `parallel` slots of slot_context positions each, 2 threads."""
    port = free_port()
    command = [str(bin_dir / "llama-server"), "-m", str(path), "--host", "127.0.0.1",
               "--port", str(port), "--alias", name, "--parallel", str(parallel),
               "--ctx-size", str(parallel * slot_context), "--threads", "2",
               "--threads-batch", "2", "--no-webui"]  # fmt: skip
    return ServerProcess(command, port, name)


def warm_up(server: ServerProcess, vocab: int) -> None:
    trace = make_trace("mixed", 2, float("inf"), vocab, 512, seed=99)
    asyncio.run(replay(server.url, server.name, trace, 2, 60))


# ---------------------------------------------------------------- files and runs


def model_files(name: str, quants: list[str], bin_dir: Path | None) -> dict[str, Path]:
    """GGUF files of `name`: random weights of its shape, or the real stories260K."""
    FILES.mkdir(parents=True, exist_ok=True)
    if name == "stories260K":
        files = {}
        for quant in quants:
            path = FILES / f"stories260K-{quant}.gguf"
            if not path.exists():
                convert(DEFAULT_CHECKPOINT, path, to="gguf", out_type=quant.lower())
            files[quant] = path
        return files
    config = known_config(name)
    if bin_dir is not None and (bin_dir / "llama-quantize").exists():
        files = llama_cpp.gguf_files(config, name, bin_dir, FILES)
        return {q: files[q] for q in quants}
    f32 = FILES / f"{name}-F32.gguf"
    if not f32.exists():
        llama_cpp.write_gguf_f32(config, f32.with_suffix(".part")).rename(f32)
    files = {"F32": f32}
    for quant in quants:
        path = FILES / f"{name}-{quant}.gguf"
        if quant != "F32" and not path.exists():
            convert(f32, path, to="gguf", out_type=quant.lower())
        files[quant] = path
    return {q: files[q] for q in quants}


@dataclass(frozen=True)
class Run:
    """One replay: a model file, a trace, a server and its number of clients."""

    model: str
    quant: str
    path: Path
    trace: str
    server: str  # "llama_np", "llama-server" or ONE_AT_A_TIME
    clients: int


ONE_AT_A_TIME = "llama_np one at a time"


def start_server(run: Run, args: argparse.Namespace, slot_context: int) -> ServerProcess:
    if run.server == "llama-server":
        return llama_cpp_server(Path(args.llama_cpp), run.path, run.model, run.clients,
                                slot_context)  # fmt: skip
    return llama_np_server(run.path, run.model, run.clients, args.kv_memory)


def run_all(args: argparse.Namespace) -> dict:
    bin_dir = Path(args.llama_cpp) if args.llama_cpp else None
    if bin_dir is not None and not (bin_dir / "llama-server").exists():
        raise SystemExit(f"no llama-server in {bin_dir} (build it: see benchmarks/README.md)")
    results: dict = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "runs": [],
    }
    servers = ["llama_np"] + (["llama-server"] if bin_dir is not None else [])
    clients = [int(c) for c in args.clients.split(",")]
    for model in args.models.split(","):
        files = model_files(model, args.quants.split(","), bin_dir)
        config = known_config(model)
        slot_context = min(config.max_seq_len, max(PROMPT_LENGTHS) + max(OUTPUT_LENGTHS) + 64)
        for quant, path in files.items():
            for kind in args.traces.split(","):
                trace = make_trace(kind, args.requests, args.rate, config.vocab_size, slot_context)
                runs = [Run(model, quant, path, kind, s, n) for n in clients for s in servers]
                runs.append(Run(model, quant, path, kind, ONE_AT_A_TIME, 1))
                for run in runs:
                    results["runs"].append(
                        one_run(run, trace, args, slot_context, config.vocab_size)
                    )
    return results


def one_run(run: Run, trace: list[TraceRequest], args, slot_context: int, vocab: int) -> dict:
    """Start the run's server, warm it up, replay the trace, stop it; -> its summary."""
    label = f"{run.model} {run.quant} {run.trace:6} {run.server:22} {run.clients:2} clients"
    print(f"{label} ...", end="", flush=True, file=sys.stderr)
    with start_server(run, args, slot_context) as server:
        warm_up(server, vocab)
        timings, _ = asyncio.run(
            replay(server.url, run.model, trace, run.clients, args.max_seconds)
        )
    summary = summarize(timings, len(trace))
    errors = f", {summary['errors']} errors: {summary.get('first_error')}"
    print(f" {summary.get('output_tok_s', 0):8.1f} tok/s, TTFT p99 {summary.get('ttft_p99_ms')}"
          f" ms, {summary['requests']}/{len(trace)} requests"
          + (errors if summary["errors"] else ""), file=sys.stderr)  # fmt: skip
    return {"model": run.model, "quant": run.quant, "trace": run.trace, "server": run.server,
            "clients": run.clients, **summary}  # fmt: skip


# ---------------------------------------------------------------- the report


def ratios(runs: list[dict]) -> list[dict]:
    """The targets, per model file, trace and client count: llama_np's output throughput ÷
    llama-server's (>= 0.8), its p99 TTFT ÷ llama-server's (<= 1.5), and its throughput ÷
    llama_np serving the trace one request at a time (>= 3)."""
    by = {(r["model"], r["quant"], r["trace"], r["server"], r["clients"]): r for r in runs}
    rows = []
    for (model, quant, kind, server, clients), r in by.items():
        if server != "llama_np" or "output_tok_s" not in r:
            continue
        peer = by.get((model, quant, kind, "llama-server", clients), {})
        alone = by.get((model, quant, kind, ONE_AT_A_TIME, 1), {})

        def ratio(a, b):
            return round(a / b, 2) if a and b else None

        rows.append({
            "model": model, "quant": quant, "trace": kind, "clients": clients,
            "throughput_vs_llama_server": ratio(r["output_tok_s"], peer.get("output_tok_s")),
            "ttft_p99_vs_llama_server": ratio(r["ttft_p99_ms"], peer.get("ttft_p99_ms")),
            "throughput_vs_one_at_a_time": ratio(r["output_tok_s"], alone.get("output_tok_s")),
        })  # fmt: skip
    return rows


def markdown(results: dict) -> str:
    s = results["settings"]
    lines = [
        f"Serving benchmark: {s['requests']} requests per trace, Poisson arrivals at "
        f"{s['rate']}/s, greedy with ignore_eos; {results['machine']['cores']} cores "
        f"({results['machine']['cpu']}). Times in ms, measured by the clients.",
        "",
        "| model | file | trace | server | clients | output tok/s | TTFT p50 | TTFT p99 | "
        "TPOT p50 | TPOT p99 | ITL p50 | ITL p99 | requests |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        cells = [r.get(k) for k in ("output_tok_s", "ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms",
                                    "tpot_p99_ms", "itl_p50_ms", "itl_p99_ms")]  # fmt: skip
        lines.append(
            f"| {r['model']} | {r['quant']} | {r['trace']} | {r['server']} | {r['clients']} | "
            + " | ".join("—" if c is None else str(c) for c in cells)
            + f" | {r['requests']}/{r['of']}" + (f" ({r['errors']} errors)" if r["errors"] else "")
            + " |"
        )  # fmt: skip
    lines += [
        "",
        "| model | file | trace | clients | throughput ÷ llama-server (≥ 0.8) | "
        "p99 TTFT ÷ llama-server (≤ 1.5) | throughput ÷ one at a time (≥ 3) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["ratios"]:
        cells = [r["throughput_vs_llama_server"], r["ttft_p99_vs_llama_server"],
                 r["throughput_vs_one_at_a_time"]]  # fmt: skip
        lines.append(f"| {r['model']} | {r['quant']} | {r['trace']} | {r['clients']} | "
                     + " | ".join("—" if c is None else f"{c}×" for c in cells) + " |")  # fmt: skip
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models",
        default="stories110M",
        help="known shapes (random weights), or stories260K (default: stories110M)",
    )
    parser.add_argument("--quants", default="F32,Q8_0", help="GGUF files (default: F32,Q8_0)")
    parser.add_argument("--clients", default="8,16", help="concurrent clients (default: 8,16)")
    parser.add_argument(
        "--traces",
        default="mixed,shared",
        help="mixed (prompt and output lengths), shared (a common system prompt); default: both",
    )
    parser.add_argument("--requests", type=int, default=64, help="requests per trace (64)")
    parser.add_argument(
        "--rate",
        type=float,
        default=8.0,
        help="arrivals per second, Poisson (default: 8; inf: all at once)",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=180,
        help="no request is sent after this many seconds of a run (180)",
    )
    parser.add_argument("--kv-memory", default="1GiB", help="llama_np's KV cache (1GiB)")
    parser.add_argument(
        "--llama-cpp",
        default=os.environ.get("LLAMA_CPP_BIN"),
        metavar="DIR",
        help="directory with llama-server (and llama-quantize); $LLAMA_CPP_BIN",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: stories260K F32, 2 and 4 clients, 12 requests",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)  # fmt: skip
    if args.quick:  # other defaults; flags given still count
        parser.set_defaults(models="stories260K", quants="F32", clients="2,4", requests=12)
        args = parser.parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = run_all(args)
    results["ratios"] = ratios(results["runs"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "serve.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
