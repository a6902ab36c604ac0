"""The `llama-np` command line (also `python -m llama_np`).

Flags follow llama.cpp where it has one: -m model, -p prompt, -n tokens to predict, -s seed.
"""

from __future__ import annotations

import argparse
import bdb
import errno
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from .. import DEFAULT_CHECKPOINT, kernels, load
from ..chat import CHAT_FORMATS, Chat
from ..checkpoints.download import KNOWN_CHECKPOINTS, MIN_RATE, RATE_WINDOW, download
from ..checkpoints.export import convert
from ..checkpoints.gguf import gguf_file, is_gguf, read_gguf, type_summary
from ..engine import Engine, generate_batch_stream
from ..errors import ArgumentError, LlamaNpError
from ..generate import GenerationStats, generate
from ..hooks import break_at
from ..limits import parse_bytes
from ..model import Model
from ..packed import FP32_KERNEL_MIN, WEIGHT_DTYPES
from ..sampling import SamplingParams
from ..schema import n_params
from ..tokenizers import TOKENIZER_FILES
from ..tools.atomic import check_file_path
from ..tools.memory import nbytes
from ..validate import check_text
from . import perf as cli_perf
from . import serving as cli_serving
from .perf import EXIT_INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # refused by the command's own parser: its usage line, not the top level's
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    in_main_thread = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGINT, ctrl_c) if in_main_thread else None
    try:
        if getattr(args, "kernels", None) is not None:
            kernels.use(args.kernels)
        code = args.run(args)
        sys.stdout.flush()  # here, where a full disk is one error line, not at exit
        return code
    except LlamaNpError as e:
        if args.debug:
            raise
        print(f"llama-np: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C outside generation (e.g. while loading)
        if args.debug:
            raise
        print("\nllama-np: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except bdb.BdbQuit:  # "q" in the debugger that --break-at opened
        print("llama-np: quit from the debugger", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # stdout was closed early (`llama-np info | head -3`): stop quietly, as `head` expects.
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        # (Commands that write files print with cli_perf.say, which goes on instead.)
        cli_perf.stdout_to_devnull()
        return 0
    except OSError as e:
        if args.debug or e.errno not in (errno.ENOSPC, errno.EIO, errno.EDQUOT):
            raise
        cli_perf.stdout_to_devnull()  # (writing it failed: the exit's flush would again)
        print(f"llama-np: error: cannot write the output: {e.strerror}", file=sys.stderr)
        return 1
    finally:
        if before is not None:  # None: not set from Python, nothing to put back
            signal.signal(signal.SIGINT, before)


def ctrl_c(signum: int, frame) -> None:
    """SIGINT handler: KeyboardInterrupt, as Python's own, but never lost to a kernel compile.

    While numba compiles a kernel, LLVM calls back into Python through ctypes, and ctypes prints
    and drops an exception raised there: a Ctrl-C landing in that callback would be gone, and
    `generate -n 100000` would run on. Inside LLVM's code the signal is sent again 50 ms later.
    """
    while frame is not None:
        if "llvmlite" in frame.f_code.co_filename:
            later = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT))
            later.daemon = True
            later.start()
            return
        frame = frame.f_back
    raise KeyboardInterrupt


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
    add_sampling_args(gen)
    add_special_arg(gen)
    gen.add_argument(
        "--truncate-prompt",
        action="store_true",
        help="if the prompt is longer than the context, keep BOS and its last tokens instead "
        "of failing",
    )
    gen.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="TEXT",
        help="stop when TEXT appears (repeatable)",
    )
    gen.add_argument(
        "--prefill-chunk",
        type=int,
        metavar="N",
        help="prefill the prompt N tokens per pass (chunked prefill; same result, see "
        "docs/debugging.md for the causal mask's offset)",
    )
    gen.add_argument(
        "--break-at",
        metavar="POINT",
        help="stop in the debugger at a hook point, e.g. layers.0.attn.probs (docs/debugging.md)",
    )
    gen.add_argument(
        "--break-at-step",
        type=int,
        default=0,
        metavar="K",
        help="forward pass to stop in: 0 = prefill, K = the K-th decode step (default: 0)",
    )
    gen.add_argument(
        "--weights-dtype",
        choices=WEIGHT_DTYPES,
        default=None,
        help="keep weights in memory as fp32 (fastest), bf16/fp16 (half the memory), int8 "
        "(a quarter plus scales) or stored (as the file stores them: a GGUF's quantized "
        "blocks); compressed weights are widened to fp32 as they are used (default: stored "
        "for GGUF, fp32 otherwise)",
    )
    add_kernels_arg(gen)
    gen.set_defaults(run=run_generate)

    trace = commands.add_parser(
        "trace", help="record attention while generating; write arrays and heatmap PNGs"
    )
    add_model_arg(trace)
    trace.add_argument("-p", "--prompt", required=True, help="prompt text")
    trace.add_argument(
        "-n",
        "--n-predict",
        type=int,
        default=16,
        metavar="N",
        help="maximum number of tokens to generate (default: 16)",
    )
    trace.add_argument(
        "--layers", default="all", help="layers to record and draw: 0,2 or 0-3 (default: all)"
    )
    trace.add_argument("--heads", default="all", help="heads to draw: 0,2 or 0-3 (default: all)")
    trace.add_argument(
        "--temperature",
        "--temp",
        type=float,
        default=0.0,
        metavar="T",
        help="sampling temperature (default: 0, greedy)",
    )
    trace.add_argument("-s", "--seed", type=int, default=None, metavar="S", help="random seed")
    trace.add_argument("--out", metavar="DIR", help="directory for attention.npz and the PNGs")
    trace.add_argument(
        "--per-head",
        action="store_true",
        help="one PNG per layer and head (default: one overview PNG per layer, all its heads)",
    )
    trace.add_argument(
        "--html",
        metavar="FILE",
        help="also write an explorer page (self-contained HTML: pick a layer and head, hover "
        "tokens; the roofline of a profile of the same generation)",
    )
    trace.set_defaults(run=run_trace)
    chat = commands.add_parser(
        "chat", help="chat with an instruction-tuned model (reads messages from stdin)"
    )
    add_model_arg(chat)
    chat.add_argument("--system", default=None, metavar="TEXT", help="system prompt")
    chat.add_argument(
        "--chat-format",
        choices=CHAT_FORMATS,
        default=None,
        help="prompt format: template = the checkpoint's own Jinja chat template, or a "
        "built-in format (default: the template when the checkpoint has one, else the built-in "
        "format its tokenizer suggests)",
    )
    chat.add_argument(
        "-n",
        "--n-predict",
        type=int,
        default=512,
        metavar="N",
        help="maximum tokens per reply (default: 512)",
    )
    chat.add_argument(
        "-c",
        "--ctx-size",
        type=int,
        default=4096,
        metavar="N",
        help="KV cache size in tokens, for the whole conversation (default: 4096, at most the "
        "model's context)",
    )
    add_sampling_args(chat)
    add_special_arg(chat)
    add_kernels_arg(chat)
    chat.set_defaults(run=run_chat)

    info = commands.add_parser("info", help="print a model's config, size and KV-cache memory")
    add_model_arg(info)
    add_kernels_arg(info)
    info.set_defaults(run=run_info)

    dl = commands.add_parser("download", help="fetch a checkpoint from the Hugging Face hub")
    dl.add_argument(
        "name",
        metavar="NAME_OR_REPO",
        help=f"a known name ({', '.join(KNOWN_CHECKPOINTS)}) or a hub repo id owner/name",
    )
    dl.add_argument("--dir", default="weights", help="files go to DIR/NAME (default: weights)")
    dl.add_argument("--revision", default="main", help="branch, tag or commit (default: main)")
    dl.add_argument("--endpoint", help="hub URL (default: $HF_ENDPOINT or https://huggingface.co)")
    dl.add_argument("-q", "--quiet", action="store_true", help="no progress or file lines")
    dl.add_argument(
        "--deadline",
        type=float,
        metavar="SECONDS",
        help="give up after this long (partial files are kept and resume; default: none)",
    )
    dl.add_argument(
        "--min-rate",
        type=float,
        default=MIN_RATE,
        metavar="BYTES_PER_S",
        help=f"abandon a transfer slower than this over {RATE_WINDOW:g} s "
        f"(default: {MIN_RATE:,.0f})",
    )
    dl.set_defaults(run=run_download)

    conv = commands.add_parser(
        "convert",
        help="write a model as GGUF (llama.cpp) or a Hugging Face safetensors directory",
        description="Write any model llama_np loads as a GGUF file for llama.cpp (and Ollama, "
        "LM Studio) or as a Hugging Face LlamaForCausalLM directory for transformers. "
        "Tensors are converted one at a time.",
    )
    conv.add_argument("model", metavar="MODEL", help="checkpoint file or directory to convert")
    conv.add_argument(
        "out", metavar="OUT", help="output: a .gguf file, or a directory (Hugging Face)"
    )
    conv.add_argument(
        "--to",
        metavar="FORMAT",
        help="gguf or hf (default: gguf when OUT ends in .gguf, else hf)",
    )
    conv.add_argument(
        "--type",
        default="f32",
        metavar="TYPE",
        help="weight type: f32, f16 or q8_0 for GGUF; f32, f16 or bf16 for hf (default: f32, "
        "exact); norms stay f32",
    )
    conv.add_argument("--force", action="store_true", help="replace OUT if it exists")
    conv.set_defaults(run=run_convert)
    add_serve_command(commands)
    cli_perf.add_commands(commands)  # memory, profile
    cli_serving.add_commands(commands)  # simulate, serving-lab
    add_kernels_arg(commands.choices["profile"])
    for command in commands.choices.values():  # for main's refusal of unknown arguments
        command.set_defaults(command_parser=command)
    return parser


def add_serve_command(commands) -> None:
    serve = commands.add_parser(
        "serve",
        help="an OpenAI-compatible HTTP server (continuous batching), with a live page",
        description="Serve a model over HTTP with OpenAI's API (/v1/chat/completions, "
        "/v1/completions, /v1/models), llama-server's /tokenize and /detokenize, Prometheus "
        "/metrics and /health; many requests share the model through the batching engine. "
        "http://HOST:PORT/ is a live page: chat with the model and watch the scheduler. "
        "Needs the serve extra: pip install -e '.[serve]'.",
    )
    add_model_arg(serve)
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1, this machine only)",
    )
    serve.add_argument("--port", type=int, default=8080, help="port (default: 8080; 0: any free)")
    serve.add_argument(
        "--api-key",
        default=os.environ.get("LLAMA_NP_API_KEY"),
        metavar="KEY",
        help="require 'Authorization: Bearer KEY' on every endpoint but /health (default: "
        "$LLAMA_NP_API_KEY, which keeps the key out of the process list; none if unset)",
    )
    serve.add_argument(
        "--alias",
        metavar="NAME",
        help="the model's id in the API (default: the checkpoint's file name)",
    )
    serve.add_argument(
        "--chat-format",
        choices=CHAT_FORMATS,
        default=None,
        help="prompt format of /v1/chat/completions, as for chat (default: the checkpoint's "
        "template, else the built-in format its tokenizer suggests; a story model has none)",
    )
    serve.add_argument(
        "--max-seqs",
        type=int,
        default=64,
        metavar="N",
        help="requests running at once, in one batch (default: 64)",
    )
    serve.add_argument(
        "--kv-memory",
        default=None,
        metavar="BYTES",
        help="memory of the paged KV cache, e.g. 2GiB (default: 1 GiB, or one full context "
        "if that is more)",
    )
    serve.add_argument(
        "--max-batch-tokens",
        type=int,
        default=512,
        metavar="N",
        help="tokens per engine step, decode tokens plus prefill chunks (default: 512)",
    )
    serve.add_argument(
        "--max-queue",
        type=int,
        default=256,
        metavar="N",
        help="requests waiting beyond the running ones; more are refused with 503 and "
        "Retry-After (default: 256)",
    )
    serve.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        metavar="N",
        help="the most tokens one request generates; asking more ends there with "
        "finish_reason length (default: the model's context)",
    )
    serve.add_argument(
        "--max-body", default="2MiB", metavar="BYTES", help="largest request body (default: 2MiB)"
    )
    serve.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="a client must send its request within this, and take each piece of a streamed "
        "answer within it, or is cut off (default: 60)",
    )
    serve.add_argument(
        "--weights-dtype",
        choices=WEIGHT_DTYPES,
        default=None,
        help="as for generate (default: stored for GGUF, fp32 otherwise)",
    )
    serve.add_argument(
        "--log-level",
        default="warning",
        choices=("critical", "error", "warning", "info", "debug"),
        help="server log (info: one line per request; default: warning)",
    )
    add_kernels_arg(serve)
    serve.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    try:  # the serve extra: imported only by this command
        from ..server import ServerConfig, create_app
        from ..server.run import listen, serve
    except ModuleNotFoundError as error:
        raise ArgumentError(
            f"llama-np serve needs {error.name}: pip install -e '.[serve]'"
        ) from None
    for name in ("max_seqs", "max_batch_tokens"):
        if getattr(args, name) < 1:
            raise ArgumentError(f"--{name.replace('_', '-')} must be >= 1")
    name = args.alias or Path(args.model.rstrip("/")).name or "model"
    config = ServerConfig(
        name,
        api_key=args.api_key or None,
        chat_format=args.chat_format,
        max_queue=args.max_queue,
        max_tokens=args.max_tokens,
        max_body_bytes=parse_bytes(args.max_body, "--max-body"),
        timeout=args.timeout,
    )  # checked before the (slow) load, as the socket
    sock = listen(args.host, args.port)
    model = load(args.model, weights_dtype=args.weights_dtype)
    engine = Engine(
        model,
        kv_memory=args.kv_memory,
        max_seqs=args.max_seqs,
        max_batch_tokens=args.max_batch_tokens,
    )
    app = create_app(engine, config)
    host, port = sock.getsockname()[:2]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"

    def say(line: str) -> None:
        print(f"llama-np: {line}", file=sys.stderr, flush=True)

    say(engine.describe())
    pool = engine.pool
    if pool.n_blocks * pool.block_size < model.config.max_seq_len:
        say(f"warning: the KV cache holds {pool.n_blocks * pool.block_size:,} tokens, less than "
            f"the model's context of {model.config.max_seq_len:,}: a longer request is cut short "
            f"(finish_reason length); more --kv-memory avoids it")  # fmt: skip
    server = app.state.server
    chat = server.chat_format.name if server.chat_format is not None else "none (completions only)"
    say(f"up to {args.max_seqs} requests running, {args.max_queue} waiting; chat format {chat}")
    if config.api_key is None and host not in ("127.0.0.1", "::1", "localhost"):
        say(f"warning: listening on {host} without an API key: whoever reaches this port can "
            f"use the model (--api-key)")  # fmt: skip
    ready = f"serving {name} on {url} (OpenAI API under /v1, the live page at /); Ctrl-C stops"
    serve(app, sock, on_ready=lambda: say(ready), log_level=args.log_level,
          max_connections=args.max_seqs + args.max_queue + 64)  # fmt: skip
    say("stopped")
    return 0


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--temperature",
        "--temp",
        type=float,
        default=0.8,
        metavar="T",
        help="sampling temperature, 0 = greedy (default: 0.8)",
    )
    parser.add_argument(
        "--top-k",
        type=int,
        default=40,
        metavar="K",
        help="keep the K most likely tokens, 0 = off (default: 40)",
    )
    parser.add_argument(
        "--top-p",
        type=float,
        default=0.95,
        metavar="P",
        help="nucleus sampling threshold, 1 = off (default: 0.95)",
    )
    parser.add_argument(
        "--min-p",
        type=float,
        default=0.05,
        metavar="P",
        help="drop tokens below P x the top probability, 0 = off (default: 0.05)",
    )
    parser.add_argument(
        "--repeat-penalty",
        type=float,
        default=1.0,
        metavar="R",
        help="penalize the last 64 tokens, 1 = off (default: 1.0)",
    )
    parser.add_argument(
        "-s",
        "--seed",
        type=int,
        default=None,
        metavar="S",
        help="random seed; the same seed gives the same text (default: random)",
    )


def add_kernels_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kernels",
        choices=kernels.KERNELS,
        default=None,
        help="how products multiply compressed weights and fp32 rows: int8 (compiled; "
        "int8/Q8_0/Q4_0/Q5_0/K-quant weights as int8 dot products, activations rounded to int8 "
        "as llama.cpp does; the default on CPUs with AVX2 or AVX-512 VNNI), numba (compiled, "
        "float activations; both need pip install -e '.[fast]') or numpy (BLAS; compressed "
        "weights widened in pieces); also $LLAMA_NP_KERNELS",
    )


def add_special_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--special",
        action="store_true",
        help="print special tokens the model generates (<|eot_id|>, </s>) by name; by default "
        "they are left out of the text",
    )


def add_model_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-m",
        "--model",
        default=str(DEFAULT_CHECKPOINT),
        metavar="PATH",
        help="checkpoint file or directory (default: the bundled stories260K)",
    )


def sampling_params(args: argparse.Namespace) -> SamplingParams:
    """The sampling flags as one SamplingParams, checked (before any slow load)."""
    return SamplingParams(args.temperature, args.top_k, args.top_p, args.min_p, args.repeat_penalty)


def check_at_least(value: int, low: int, flag: str) -> None:
    """A count flag, checked before anything runs; the message quotes the value as typed
    (a tool that adds a step to it, as trace does, would otherwise report its own number)."""
    if value < low:
        raise ArgumentError(f"{flag} must be >= {low}, got {value}")


def needs_tokenizer(model: Model, path: str) -> Model:
    """`model`, if it has a tokenizer: text in and out needs one."""
    if model.tokenizer is None:
        where = Path(path) if Path(path).is_dir() else Path(path).parent
        raise ArgumentError(
            f"{path}: no tokenizer beside the checkpoint (looked in {where} for "
            f"{', '.join(TOKENIZER_FILES)} or tok*.bin); put the model's tokenizer there"
        )
    return model


def run_generate(args: argparse.Namespace) -> int:
    sampling = sampling_params(args)  # every argument is checked before the (slow) load
    check_at_least(args.n_predict, 0, "-n/--n-predict")
    model = needs_tokenizer(load(args.model, weights_dtype=args.weights_dtype), args.model)
    if args.break_at:
        break_at(model, args.break_at, args.break_at_step)
    seed = _seed(args)
    stats = GenerationStats()
    prompts = args.prompt or [""]
    if len(prompts) > 1:
        return run_generate_batch(model, prompts, args, sampling, seed, stats)
    pieces = generate(
        model,
        prompts[0],
        args.n_predict,
        sampling=sampling,
        seed=seed,
        stop=args.stop,
        stats=stats,
        truncate_prompt=args.truncate_prompt,
        prefill_chunk=args.prefill_chunk,
        special=args.special,
    )
    if stats.prompt_tokens_dropped:
        chars = stats.prompt_chars_dropped
        print(
            "llama-np: prompt truncated: dropped its first "
            + (f"{chars:,} characters (before tokenizing) and then " if chars else "")
            + f"{stats.prompt_tokens_dropped} tokens to fit the context of "
            f"{model.config.max_seq_len}",
            file=sys.stderr,
        )
    sys.stdout.write(prompts[0])
    finished = stream_pieces(pieces)
    sys.stdout.write("\n")
    if not finished:
        stats.stop_reason = "interrupted"  # also when Ctrl-C came before the loop ran
    print_timings(stats, seed, model)
    if not prompts[0] and stats.prompt_tokens == 1:  # the first number a learner sees
        print(
            f"llama-np: the prompt was BOS alone ({'an empty -p' if args.prompt else 'no -p'}): "
            "a 1-token prefill is one pass like a "
            "decode step, and the first, so it pays the start-up; give -p to see a prompt's "
            "tokens share one pass, faster per token than decode",
            file=sys.stderr,
        )
    if stats.stop_reason == "context_full":
        print(
            f"llama-np: stopped: context full ({model.config.max_seq_len} tokens: "
            f"{stats.prompt_tokens} prompt + {stats.generated_tokens} generated)",
            file=sys.stderr,
        )
    return 0 if finished else EXIT_INTERRUPTED


def stream_pieces(pieces: Iterator[str]) -> bool:
    """Write text pieces to stdout as they arrive. Returns False if Ctrl-C stopped them.

    Ctrl-C ends the generation, not the program: the caller still has the text so far on
    screen and the stats up to that point (to print timings, or to go on to the next chat
    turn).
    """
    try:
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
    except KeyboardInterrupt:
        return False
    return True


def run_download(args: argparse.Namespace) -> int:
    try:
        if args.deadline is not None and not args.deadline > 0:
            raise ArgumentError(f"--deadline must be > 0 seconds, got {args.deadline}")
        if not args.min_rate >= 0:
            raise ArgumentError(f"--min-rate must be >= 0 bytes/s, got {args.min_rate}")
        target = download(
            args.name,
            args.dir,
            revision=args.revision,
            endpoint=args.endpoint,
            quiet=args.quiet,
            deadline=args.deadline,
            min_rate=args.min_rate,
        )
    except KeyboardInterrupt:
        print("\nllama-np: interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(target)
    return 0


def run_convert(args: argparse.Namespace) -> int:
    start = time.perf_counter()

    def progress(done: int, total: int) -> None:
        if time.perf_counter() - start < 1.0:  # small models: no progress lines
            return
        end = "\n" if done == total else ""
        print(f"\rwriting {args.out}: {done}/{total} tensors", end=end, file=sys.stderr)

    out = convert(args.model, args.out, args.to, args.type, args.force, progress)
    size = sum(p.stat().st_size for p in out.rglob("*")) if out.is_dir() else out.stat().st_size
    print(f"wrote {out} ({nbytes(size)})")
    return 0


def run_chat(args: argparse.Namespace) -> int:
    sampling = sampling_params(args)  # checked before the (slow) load
    check_at_least(args.n_predict, 0, "-n/--n-predict")
    check_at_least(args.ctx_size, 1, "-c/--ctx-size")
    model = needs_tokenizer(load(args.model), args.model)
    chat = Chat(model, args.chat_format, args.system, min(args.ctx_size, model.config.max_seq_len))
    seed = _seed(args)
    if sys.stdin is None:
        raise ArgumentError("chat reads one message per line from stdin, but stdin is closed")
    interactive = sys.stdin.isatty()
    print(
        f"llama-np: chat format {chat.format_name}, KV cache of {chat.cache.max_seq_len} tokens; "
        f"one message per line, end with Ctrl-D",
        file=sys.stderr,
    )
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        try:
            line = _read_message()
        except KeyboardInterrupt:  # Ctrl-C at the prompt ends the chat
            print(file=sys.stderr)
            return EXIT_INTERRUPTED
        if not line:  # end of input
            return 0
        if not line.strip():
            continue
        stats = GenerationStats()
        pieces = chat.send(
            line.strip(),
            args.n_predict,
            stats=stats,
            sampling=sampling,
            seed=seed + chat.turns,  # a different draw each turn, reproducible as a whole
            special=args.special,
        )
        # Ctrl-C ends this reply, not the chat: the conversation keeps what was said so far.
        try:
            if not stream_pieces(_strip_first(pieces)):
                stats.stop_reason = "interrupted"  # also when Ctrl-C came before the loop ran
        except LlamaNpError as error:  # this message (e.g. too long): the chat goes on
            print(f"llama-np: {error}", file=sys.stderr)
            continue
        sys.stdout.write("\n")
        sys.stdout.flush()
        print_timings(stats, seed + chat.turns - 1, model)
        print(f"llama-np: turn {chat.turns}: {describe_turn(chat)}", file=sys.stderr)


def describe_turn(chat: Chat) -> str:
    """How a chat turn used the KV cache, for the timing lines."""
    turn, held = chat.last_turn, chat.cache.length
    if turn is None:  # Ctrl-C came before the turn started
        return f"nothing prefilled; the KV cache holds {held} tokens of conversation"
    if turn.forgotten:
        return (
            f"the conversation outgrew the KV cache of {chat.cache.max_seq_len} tokens (-c): "
            f"its {turn.forgotten} oldest messages were left out (the system prompt kept) and "
            f"{turn.prefilled} tokens prefilled again; it holds {held} tokens"
        )
    if turn.rewritten_at is None and turn.reused == 0:  # the first turn: nothing was cached
        return (
            f"prefilled the {turn.prefilled} tokens of the conversation so far (the KV cache was "
            f"empty); it holds {held} tokens of conversation"
        )
    if turn.rewritten_at is None:
        return (
            f"prefilled only the {turn.prefilled} new tokens, after the {turn.reused} already "
            f"cached; the KV cache holds {held} tokens of conversation"
        )
    return (
        f"the chat template wrote the earlier conversation differently from token "
        f"{turn.rewritten_at} on, so the KV cache was rolled back there and {turn.prefilled} "
        f"tokens were prefilled again (not only the new ones); it holds {held} tokens"
    )


MAX_MESSAGE_CHARS = 1 << 20


def _read_message() -> str:
    """One line of stdin ("" at its end), refusing what is not a line of UTF-8 text."""
    try:
        line = sys.stdin.readline(MAX_MESSAGE_CHARS)
    except UnicodeDecodeError as e:
        raise ArgumentError(
            f"stdin: a message is not UTF-8 text ({e.reason} at byte {e.start} of a read); "
            f"chat reads one UTF-8 message per line"
        ) from None
    if len(line) == MAX_MESSAGE_CHARS and not line.endswith("\n"):
        raise ArgumentError(f"stdin: a message is longer than {MAX_MESSAGE_CHARS:,} characters")
    return check_text(line, "stdin: a message")


def _strip_first(pieces: Iterator[str]) -> Iterator[str]:
    """Drop the leading whitespace of a reply: it is the format's, not the model's content."""
    started = False
    for piece in pieces:
        if not started:
            piece = piece.lstrip()
            started = bool(piece)
        yield piece


def run_generate_batch(
    model, prompts: list[str], args, sampling: SamplingParams, seed: int, stats: GenerationStats
) -> int:
    """Several prompts decoded together; each text is printed when all are done (or at Ctrl-C,
    as far as each got)."""
    texts = [""] * len(prompts)
    pieces = generate_batch_stream(
        model,
        prompts,
        args.n_predict,
        sampling=sampling,
        seed=seed,
        stop=args.stop,
        stats=stats,
        special=args.special,
    )
    finished = True
    try:
        for b, piece in pieces:
            texts[b] += piece
    except KeyboardInterrupt:
        finished = False
        stats.stop_reason = "interrupted"
    for i, (prompt, text) in enumerate(zip(prompts, texts, strict=True)):
        sys.stdout.write(f"--- [{i}]\n{prompt}{text}\n")
    sys.stdout.flush()
    print_timings(stats, seed, model)
    return 0 if finished else EXIT_INTERRUPTED


def print_timings(stats: GenerationStats, seed: int | None = None, model=None) -> None:
    """llama.cpp-style timing lines on stderr: prefill and decode reported separately, and
    which kernels multiplied the model's weights (whether they rounded activations to int8)."""

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
        + (f" (per prompt: {', '.join(stats.stop_reasons)})" if len(stats.stop_reasons) > 1 else "")
        + (f"; seed {seed}" if seed is not None else ""),
        file=err,
    )
    if model is not None:
        print(f"llama-np: kernels  {kernels.report(model.weights.kinds())}", file=err)


def run_trace(args: argparse.Namespace) -> int:
    from ..tools.trace import (
        parse_indices,
        plot_attention,
        plot_layer,
        save_npz,
        trace_attention,
    )

    if args.out is None and args.html is None:
        raise ArgumentError("trace needs --out DIR (arrays and pictures) and/or --html FILE")
    check_at_least(args.n_predict, 0, "-n/--n-predict")
    out = cli_perf.output_dir(args.out) if args.out is not None else None
    if args.html is not None:
        check_file_path(args.html, "--html")  # before the work, not after
    model = load(args.model)
    layers = parse_indices(args.layers, model.config.n_layers, "--layers")
    heads = parse_indices(args.heads, model.config.n_heads, "--heads")
    trace = trace_attention(
        model,
        args.prompt,
        args.n_predict,
        temperature=args.temperature,
        seed=args.seed,
        layers=layers,
    )
    # Every file is written before anything is printed, and printing goes on if stdout closes
    # (`| head -1`): what the files hold must not depend on who reads the output.
    n_gen = len(trace.tokens) - trace.n_prompt
    wrote = []
    if args.html:
        from ..tools import machine
        from ..tools.explorer import write_html
        from ..tools.profile import profile_generation

        prompt = [int(t) for t in trace.tokens[: trace.n_prompt]]
        profile = profile_generation(model, prompt, max(1, n_gen), machine.machine_peaks, repeats=3)
        wrote.append(write_html(args.html, trace, profile, model.config.n_kv_heads, heads))
    no_plot = None
    if out is not None:
        wrote.append(save_npz(trace, out / "attention.npz", heads))
        try:
            import matplotlib  # noqa: F401  (optional: the `plot` extra)
        except ImportError:
            no_plot = (
                "llama-np: matplotlib is not installed, so no heatmaps were drawn; install it "
                "with pip install -e '.[plot]'"
            )
        if not trace.interrupted and no_plot is None:  # Ctrl-C: the arrays so far, no pictures
            for layer in layers:
                if not args.per_head:
                    wrote.append(plot_layer(trace, layer, heads, out / f"layer{layer}.png"))
                    continue
                for head in heads:
                    path = out / f"layer{layer}_head{head}.png"
                    wrote.append(plot_attention(trace, layer, head, path))
    prompt_text = "".join(trace.pieces[: trace.n_prompt])
    generated_text = "".join(trace.pieces[trace.n_prompt :])
    cli_perf.say(
        f"prompt: {trace.n_prompt} tokens (BOS included), {prompt_text!r}; "
        f"generated: {n_gen} tokens, {generated_text!r}"
    )
    for path in wrote:
        cli_perf.say(f"wrote {path}")
    if trace.interrupted:
        if out is not None:
            print("llama-np: interrupted; attention.npz holds the tokens so far", file=sys.stderr)
        return EXIT_INTERRUPTED
    if no_plot:
        print(no_plot, file=sys.stderr)
    return 0


def run_info(args: argparse.Namespace) -> int:
    model = load(args.model)
    c = model.config
    path = Path(args.model)
    if is_gguf(path):  # the quantization mix: tensors and bytes per type, as stored
        _, infos = read_gguf(gguf_file(path))
        storage = "; ".join(f"{t}: {n} tensors, {nbytes(b)}" for t, n, b in type_summary(infos))
    else:
        storage = None
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
        ("parameters", f"{n_params(c):,}"),
        *([("GGUF tensor types", storage)] if storage else []),
        ("weights in memory", nbytes(model.weights_nbytes)),
        ("kernels", kernels.describe()),
        ("this model's products", kernels.report(model.weights.kinds()) + _kernel_use(model)),
        ("KV cache per token (float32)", nbytes(c.kv_cache_bytes(1))),
        (f"KV cache at {c.max_seq_len} tokens", nbytes(c.kv_cache_bytes(c.max_seq_len))),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def _kernel_use(model: Model) -> str:
    """What `info` adds when the active compiled kernels would not run for this model."""
    if kernels.active() == "numpy" or model.uses_compiled_kernels:
        return ""
    return f" ({kernels.active()} unused: fp32 matrices under {FP32_KERNEL_MIN:,} weights)"


def _seed(args: argparse.Namespace) -> int:
    """-s/--seed, or a fresh one (printed with the timings, so a run can be repeated)."""
    if args.seed is not None and not 0 <= args.seed < 2**63:
        raise ArgumentError(f"-s/--seed must be in 0..2**63-1, got {args.seed}")
    return args.seed if args.seed is not None else int(time.time_ns() % 2**31)
