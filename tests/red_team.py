"""The red-team table: inputs an attacker (or an unlucky user) would try, and what must happen.

Each Case builds one bad input in a temporary directory and feeds it to llama_np. It either
raises a LlamaNpError (the outcome is the exception's name) or returns a short outcome of
its own ("loads", "exit 0", ...). tests/test_red_team.py runs every case and checks the
outcome and the pieces the message must contain, and stops a case that hangs (runs past
10 × its `seconds`); scripts/red_team_table.py
renders the same list as the table in docs/errors.md (a test checks that it is current).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from checkpoint_writers import (
    PickleWriter,
    hf_config,
    write_gguf,
    write_hf,
    write_llama2c,
    write_meta,
    write_pth,
)
from util import random_tensors

from llama_np import KVCache, LlamaConfig, Model, generate_text, load, load_tokenizer
from llama_np.chat_template import ChatTemplate, compile_template, render_template
from llama_np.checkpoints import download as dl
from llama_np.checkpoints.hf import hf_name
from llama_np.generate import GenerationStats
from llama_np.tools import machine

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "tokenizers"
TOK512 = REPO / "weights" / "stories260K" / "tok512.bin"
TINY = LlamaConfig(
    dim=16, n_layers=1, n_heads=2, n_kv_heads=1, hidden_dim=32, vocab_size=512, max_seq_len=32
)
MEGABYTE = "the cat sat on the mat. " * 43_690  # 1,048,560 characters


@dataclass(frozen=True)
class Case:
    kind: str  # the input class, e.g. "config.json"
    input: str  # what the input is, for the table
    run: Callable[[Path], str | None]  # raises a LlamaNpError, or returns the outcome
    outcome: str  # expected: an exception name, or what run returns
    pieces: tuple[str, ...] = ()  # the message (or stderr) must contain these
    seconds: float = 10.0  # what it may take on a slow machine: 10× this counts as a hang
    memory_mb: int = 0  # if set, also run in a subprocess limited to this address space


# ---------------------------------------------------------------- builders


def hf_dir(tmp: Path, **changes) -> Path:
    """A tiny valid HF checkpoint directory whose config.json has `changes` applied (a value
    of DELETE removes the key)."""
    directory = write_hf(tmp / "hf", TINY, random_tensors(TINY))
    cfg = hf_config(TINY) | changes
    cfg = {k: v for k, v in cfg.items() if v is not DELETE}
    (directory / "config.json").write_text(json.dumps(cfg))
    return directory


DELETE = object()


def load_hf_with(**changes) -> Callable[[Path], str]:
    def run(tmp: Path) -> str:
        load(hf_dir(tmp, **changes), tokenizer=TOK512)
        return "loads"

    return run


def load_hf_with_text(text: str) -> Callable[[Path], str]:
    """An HF directory whose config.json is `text` (not necessarily JSON of a config)."""

    def run(tmp: Path) -> str:
        directory = hf_dir(tmp)
        (directory / "config.json").write_text(text)
        load(directory, tokenizer=TOK512)
        return "loads"

    return run


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def load_meta_with(**changes) -> Callable[[Path], str]:
    def run(tmp: Path) -> str:
        config = TINY.replace(hidden_dim=64)  # Meta's formula for dim 16, multiple_of 32
        directory = write_meta(tmp / "meta", config, random_tensors(config))
        params = json.loads((directory / "params.json").read_text()) | changes
        (directory / "params.json").write_text(json.dumps(params))
        load(directory, tokenizer=TOK512)
        return "loads"

    return run


def meta_two_shards_with_1d_embedding(tmp: Path) -> str:
    """A Meta checkpoint in two shards whose tok_embeddings.weight is 1-D in both."""
    config = TINY.replace(hidden_dim=64)
    directory = write_meta(tmp / "meta", config, random_tensors(config))
    tensors = random_tensors(config)
    tensors["tok_embeddings.weight"] = tensors["tok_embeddings.weight"].reshape(-1)
    for i in (0, 1):
        write_pth(directory / f"consolidated.{i:02d}.pth", tensors)
    load(directory, tokenizer=TOK512)
    return "loads"


def header_bytes(header: bytes | dict, data: bytes = bytes(64)) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def load_shards_in_a_subfolder(tmp: Path) -> str:
    """A sharded directory whose shards sit in sub/ and whose index names them so."""
    directory = write_hf(tmp / "hf", TINY, random_tensors(TINY), n_shards=2)
    index_path = directory / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    (directory / "sub").mkdir()
    for shard in set(index["weight_map"].values()):
        (directory / shard).rename(directory / "sub" / shard)
    index["weight_map"] = {name: f"sub/{shard}" for name, shard in index["weight_map"].items()}
    index_path.write_text(json.dumps(index))
    load(directory, tokenizer=TOK512)
    return "loads"


def load_gguf_with(key: str, fmt: str, value) -> Callable[[Path], str]:
    """A tiny valid GGUF whose metadata value `key` (stored as struct format `fmt`: "<I" for
    uint32, "<f" for float32) is overwritten with `value` in the file's bytes."""

    def run(tmp: Path) -> str:
        path = tmp / "tiny.gguf"
        write_gguf(path, TINY, random_tensors(TINY))
        data = bytearray(path.read_bytes())
        name = key.encode()
        at = data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name) + 4  # after type
        data[at : at + struct.calcsize(fmt)] = struct.pack(fmt, value)
        path.write_bytes(bytes(data))
        load(path, tokenizer=TOK512)
        return "loads"

    return run


def load_safetensors(header: bytes | dict) -> Callable[[Path], str]:
    def run(tmp: Path) -> str:
        directory = hf_dir(tmp)
        (directory / "model.safetensors").write_bytes(header_bytes(header))
        load(directory, tokenizer=TOK512)
        return "loads"

    return run


def load_sharded(shard_name: str) -> Callable[[Path], str]:
    """A sharded directory whose index maps one tensor to `shard_name`."""

    def run(tmp: Path) -> str:
        directory = write_hf(tmp / "hf", TINY, random_tensors(TINY), n_shards=2)
        index_path = directory / "model.safetensors.index.json"
        index = json.loads(index_path.read_text())
        index["weight_map"][hf_name("norm.weight")] = shard_name
        index_path.write_text(json.dumps(index))
        load(directory, tokenizer=TOK512)
        return "loads"

    return run


def hf_tokenizer_with(change: Callable[[dict], None], config: dict | None = None):
    def run(tmp: Path) -> str:
        spec = json.loads((DATA / "hf_gpt2" / "tokenizer.json").read_text())
        change(spec)
        (tmp / "tokenizer.json").write_text(json.dumps(spec))
        if config is not None:
            (tmp / "tokenizer_config.json").write_text(json.dumps(config))
        load_tokenizer(tmp / "tokenizer.json")
        return "loads"

    return run


def encode_without_byte_0(tmp: Path) -> str:
    """A byte-level vocabulary without a token for byte 0x00 (as SmolLM2's lacks 21 bytes):
    it loads, and a text holding the byte encodes without it, as transformers does, saying
    so on stderr."""
    spec = json.loads((DATA / "hf_gpt2" / "tokenizer.json").read_text())
    del spec["model"]["vocab"]["\u0100"]  # byte 0x00 in GPT-2's byte alphabet
    (tmp / "tokenizer.json").write_text(json.dumps(spec))
    tok = load_tokenizer(tmp / "tokenizer.json")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        ids = tok.encode("a\x00b", bos=False)
    LAST_OUTPUT["text"] = err.getvalue()
    return (
        "encodes without it"
        if ids == tok.encode("a", bos=False) + tok.encode("b", bos=False)
        else str(ids)
    )


def chat_template(text: str) -> Callable[[Path], str]:
    """Render chat template `text` (as a downloaded tokenizer_config.json would carry it)."""

    def run(tmp: Path) -> str:
        source = str(tmp / "tokenizer_config.json")
        render_template(compile_template(text, source), source, [], True, {})
        return "renders"

    return run


def tiktoken_ranks(lines: bytes) -> Callable[[Path], str]:
    def run(tmp: Path) -> str:
        (tmp / "tokenizer.model").write_bytes(lines)
        load_tokenizer(tmp / "tokenizer.model")
        return "loads"

    return run


def pickle_zip(tmp: Path, pickled: bytes, compress: bool = False) -> Path:
    directory = write_meta(tmp / "meta", TINY.replace(hidden_dim=64), {})
    path = directory / "consolidated.00.pth"
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", method) as z:
        z.writestr("consolidated/data.pkl", pickled)
    return directory


def pth_inflating(tmp: Path) -> str:
    load(pickle_zip(tmp, b"\x80\x02" + bytes(65 * 2**20), compress=True), tokenizer=TOK512)
    return "loads"


def pth_build_on_state_dict(tmp: Path) -> str:
    """OrderedDict() with a string value, then BUILD {"items": OrderedDict}: a plain
    OrderedDict would take the attribute, so that state.items() lists nothing."""
    w = PickleWriter()
    w.empty_ordered_dict()
    w.str_("tok_embeddings.weight")
    w.str_("not a tensor")
    w.out += b"s}"  # SETITEM, EMPTY_DICT (the state to BUILD with)
    w.str_("items")
    w.global_("collections", "OrderedDict")
    w.out += b"sb."  # SETITEM, BUILD, STOP
    load(pickle_zip(tmp, bytes(w.out)), tokenizer=TOK512)
    return "loads"


def fifo(tmp: Path, name: str) -> Path:
    path = tmp / name
    os.mkfifo(path)
    return path


def model_is_a_fifo(tmp: Path) -> str:
    load(fifo(tmp, "model.bin"), tokenizer=TOK512)
    return "loads"


def config_is_a_fifo(tmp: Path) -> str:
    directory = hf_dir(tmp)
    (directory / "config.json").unlink()
    fifo(directory, "config.json")
    load(directory, tokenizer=TOK512)
    return "loads"


def tokenizer_is_a_fifo(tmp: Path) -> str:
    load_tokenizer(fifo(tmp, "tokenizer.model"))
    return "loads"


# ---------------------------------------------------------------- models and prompts


def tiny_model(tokenizer, vocab_size: int | None = None, max_seq_len: int = 32) -> Model:
    config = TINY.replace(vocab_size=vocab_size or tokenizer.vocab_size, max_seq_len=max_seq_len)
    return Model.from_tensors(config, random_tensors(config), tokenizer)


TOKENIZERS = {
    "llama2.c tokenizer.bin": lambda: load_tokenizer(TOK512),
    "SentencePiece tokenizer.model": lambda: load_tokenizer(DATA / "llama2" / "tokenizer.model"),
    "tiktoken tokenizer.model": lambda: load_tokenizer(DATA / "llama3" / "tokenizer.model"),
    "byte-level BPE tokenizer.json": lambda: load_tokenizer(DATA / "hf_smollm" / "tokenizer.json"),
}


def megabyte_prompt(kind: str, truncate: bool) -> Callable[[Path], str]:
    def run(tmp: Path) -> str:
        model = tiny_model(TOKENIZERS[kind]())
        tokenizer, stats, encoded = model.tokenizer, GenerationStats(), []
        encode = tokenizer.encode
        tokenizer.encode = lambda text, **kw: encoded.append(len(text)) or encode(text, **kw)
        try:  # refused (ContextLengthError) or truncated, either way without tokenizing it:
            generate_text(model, MEGABYTE, 2, truncate_prompt=truncate, stats=stats)
        finally:  # at most a few context's worth of its characters are ever tokenized
            room = model.config.max_seq_len + 1
            assert max(encoded, default=0) <= 4 * room * tokenizer.max_token_bytes, encoded
        assert 0 < stats.prompt_tokens <= model.config.max_seq_len
        assert stats.prompt_chars_dropped > len(MEGABYTE) - 10_000
        return "truncated"

    return run


def padded_vocabulary(tmp: Path) -> str:
    """A model with 600 embedding rows and a 512-token tokenizer, whose classifier prefers
    the padding ids: greedy and sampled generation never pick one."""
    model = tiny_model(load_tokenizer(TOK512), vocab_size=600)
    model.weights.classifier[:, :] = 0
    model.weights.classifier[:, 512:] = 5.0  # every padding id beats every real token
    for temperature in (0.0, 1.0):
        stats = GenerationStats()
        generate_text(model, "Once", 8, temperature=temperature, stats=stats, seed=0)
        assert stats.tokens and max(stats.tokens) < 512, stats.tokens
    return "never sampled"


def padded_id_in_prompt(tmp: Path) -> str:
    model = tiny_model(load_tokenizer(TOK512), vocab_size=600)
    generate_text(model, [1, 550], 2)
    return "generates"


def api(**kwargs) -> Callable[[Path], str]:
    def run(tmp: Path) -> str:
        model = tiny_model(load_tokenizer(TOK512))
        generate_text(model, kwargs.pop("prompt", "Once"), 2, **kwargs)
        return "generates"

    return run


def on_model(call: Callable[[Model], object]) -> Callable[[Path], str]:
    """call(model) on a tiny model with the llama2.c tokenizer, as a notebook user would."""

    def run(tmp: Path) -> str:
        call(tiny_model(load_tokenizer(TOK512)))
        return "runs"

    return run


# ---------------------------------------------------------------- the command line


def sp_chat_model(tmp: Path) -> None:
    """{tmp}/m: a tiny random llama2.c model with Llama 2's SentencePiece tokenizer."""
    config = TINY.replace(vocab_size=32000)
    (tmp / "m").mkdir()
    write_llama2c(tmp / "m" / "tiny.bin", config, random_tensors(config))
    shutil.copy(DATA / "llama2" / "tokenizer.model", tmp / "m" / "tokenizer.model")


def cli(*argv: str, stdin: bytes | None = None, setup=None, **kwargs) -> Callable[[Path], str]:
    """Run `python -m llama_np argv` ({tmp} in an argument is the temporary directory), after
    setup(tmp) if given; -> "exit N", with stderr and stdout kept for the message check."""

    def run(tmp: Path) -> str:
        if setup is not None:
            setup(tmp)
        args = [a.replace("{tmp}", str(tmp)) if isinstance(a, str) else a for a in argv]
        proc = subprocess.run(
            [sys.executable, "-m", "llama_np", *args],
            cwd=REPO,
            input=stdin,
            capture_output=True,
            timeout=60,
            **kwargs,
        )
        return _exit(proc.returncode, proc.stderr + proc.stdout)

    return run


def shell(script: str, setup=None) -> Callable[[Path], str]:
    """A bash script; PY is this Python running llama_np, TMP the temporary directory. It
    must print the exit status to watch as its last stdout line."""

    def run(tmp: Path) -> str:
        if setup is not None:
            setup(tmp)
        env = {**os.environ, "PY": f"{sys.executable} -m llama_np", "TMP": str(tmp)}
        proc = subprocess.run(
            ["bash", "-c", script], cwd=REPO, capture_output=True, timeout=60, env=env
        )
        status = int(proc.stdout.split()[-1])
        return _exit(status, proc.stderr)

    return run


LAST_OUTPUT: dict[str, str] = {}


def _exit(code: int, output: bytes) -> str:
    text = output.decode("utf-8", errors="replace")
    LAST_OUTPUT["text"] = text
    if "Traceback" in text:
        return f"exit {code} with a traceback"
    return f"exit {code}"


# `python -m llama_np ARGS`, that writes "decoding" to stderr when the first decode step (one
# new token per sequence) starts; a batch prints nothing before it ends. Ctrl-C then lands in
# the loop, however slowly the machine started the process.
SAYS_WHEN_DECODING = """
import sys
from llama_np.cli.main import main
from llama_np.model import Model
forward = Model.forward
def announce(self, ids, step, cache):
    if (step.counts == 1).all():
        Model.forward = forward
        sys.stderr.write("decoding\\n"); sys.stderr.flush()
    return forward(self, ids, step, cache)
Model.forward = announce
sys.exit(main(sys.argv[1:]))
"""


def ctrl_c_batch(tmp: Path) -> str:
    """generate -p A -p B -n 100000 on a model that never ends, SIGINT once it decodes."""
    from test_errors_cli import endless_model

    model = endless_model(tmp / "m", max_seq_len=60_000)
    argv = ["generate", "-m", str(model), "-p", "A", "-p", "B", "-n", "100000", "--temp", "1"]
    proc = subprocess.Popen(
        [sys.executable, "-c", SAYS_WHEN_DECODING, *argv, "--top-k", "0", "-s", "1"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        started = proc.stderr.readline()  # "decoding", or b"" if it ended first
        time.sleep(0.3)  # some steps more
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        err = started + err
    finally:
        proc.kill()
    text = (err + out).decode()
    LAST_OUTPUT["text"] = text
    assert "--- [0]\nA" in text and "--- [1]\nB" in text, text
    assert "llama-np: decode" in text and "stopped: interrupted" in text, text
    return _exit(proc.returncode, err + out)


# ---------------------------------------------------------------- machine cache


def machine_cache(content: bytes | None, home_is_a_file: bool = False) -> Callable[[Path], str]:
    """tools.machine.peaks() with the cache at `content` (or under a HOME that is a file)."""

    def run(tmp: Path) -> str:
        if home_is_a_file:
            (tmp / "home").write_text("not a directory")
            cache = tmp / "home" / ".cache" / "llama_np" / "machine.json"
        else:
            cache = tmp / "machine.json"
            cache.write_bytes(content)
        measured = machine.MachinePeaks(1e9, 1e9, "stub")
        saved = machine.CACHE_FILE, machine.measure
        machine.CACHE_FILE, machine.measure = cache, lambda **kw: measured
        try:
            assert machine.peaks() == measured
        finally:
            machine.CACHE_FILE, machine.measure = saved
        return "measured again"

    return run


# ---------------------------------------------------------------- downloads


class _Dripping(BaseHTTPRequestHandler):
    """A hub whose listing is `listing` and whose files arrive one byte every 0.1 s."""

    listing: bytes = b"[]"

    def log_message(self, *args):
        pass

    def do_GET(self):
        if getattr(self.server, "drip_headers", False):  # the status line a byte at a time
            try:
                head = b"HTTP/1.1 200 OK\r\nX-Pad: " + b"x" * 100 + b"\r\nContent-Length: 2\r\n\r\n"
                for byte in head + b"[]":  # 15 s
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:  # the client gave up
                pass
            return
        if "/api/models/" in self.path:
            body = self.server.listing  # type: ignore[attr-defined]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            step = 1 if getattr(self.server, "drip_listing", False) else len(body)
            try:
                for i in range(0, len(body), step):
                    self.wfile.write(body[i : i + step])
                    self.wfile.flush()
                    if step == 1:
                        time.sleep(0.1)
            except OSError:  # the client gave up
                pass
            return
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        try:
            for _ in range(1000):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.1)
        except OSError:  # the client gave up
            pass


def with_hub(
    listing: bytes,
    fetch: Callable[[str, Path], None],
    drip_listing: bool = False,
    drip_headers: bool = False,
) -> Callable[[Path], str]:
    def run(tmp: Path) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Dripping)
        server.listing = listing  # type: ignore[attr-defined]
        server.drip_listing = drip_listing  # type: ignore[attr-defined]
        server.drip_headers = drip_headers  # type: ignore[attr-defined]
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        try:
            fetch(f"http://127.0.0.1:{server.server_address[1]}", tmp)
        finally:
            server.shutdown()
            server.server_close()
        return "downloads"

    return run


LISTING = json.dumps([{"type": "file", "path": "config.json", "size": 1000}]).encode()


def download_repo(**kwargs) -> Callable[[str, Path], None]:
    def fetch(url: str, tmp: Path) -> None:
        dl.download("org/tiny", tmp, endpoint=url, quiet=True, timeout=5, **kwargs)

    return fetch


def download_from(endpoint: str) -> Callable[[Path], str]:
    def run(tmp: Path) -> str:
        dl.download("org/tiny", tmp, endpoint=endpoint, quiet=True, timeout=5)
        return "downloads"

    return run


def download_slowly(url: str, tmp: Path) -> None:
    saved = dl.RATE_WINDOW
    dl.RATE_WINDOW = 0.5
    try:
        dl.download("org/tiny", tmp, endpoint=url, quiet=True, timeout=5, min_rate=1000)
    finally:
        dl.RATE_WINDOW = saved


def download_while_locked(url: str, tmp: Path) -> None:
    (tmp / "tiny").mkdir()
    with dl._DirectoryLock(tmp / "tiny"):
        dl.download("org/tiny", tmp, endpoint=url, quiet=True, timeout=5)


# ---------------------------------------------------------------- the table

llama3_rope = {
    "rope_type": "llama3",
    "rope_theta": 10000.0,
    "factor": 8.0,
    "original_max_position_embeddings": 16,
}

CASES: list[Case] = [
    # config.json
    Case("config.json", "`head_dim: 8.5`", load_hf_with(head_dim=8.5), "ConfigError",
         ("config.json", "head_dim: expected an integer")),
    Case("config.json", "`head_dim: 8.0` (integral)", load_hf_with(head_dim=8.0), "loads"),
    Case("config.json", '`rope_parameters: "linear"`', load_hf_with(rope_parameters="linear"),
         "ConfigError", ("rope_parameters: expected an object",)),
    Case("config.json", "llama3 RoPE with `low_freq_factor: null`",
         load_hf_with(rope_parameters=llama3_rope | {"low_freq_factor": None,
                                                     "high_freq_factor": 4.0}),
         "ConfigError", ("rope_parameters.low_freq_factor: expected a number > 0",)),
    Case("config.json", "llama3 RoPE with `low_freq_factor == high_freq_factor`",
         load_hf_with(rope_parameters=llama3_rope | {"low_freq_factor": 2.0,
                                                     "high_freq_factor": 2.0}),
         "ConfigError", ("high_freq_factor > low_freq_factor",)),
    Case("config.json", "`eos_token_id: [[2]]`", load_hf_with(eos_token_id=[[2]]), "ConfigError",
         ("eos_token_id",)),
    Case("config.json", "`architectures: 5`", load_hf_with(architectures=5), "ConfigError",
         ("architectures: expected a list",)),
    Case("config.json", '`tie_word_embeddings: "false"`',
         load_hf_with(tie_word_embeddings="false"), "ConfigError",
         ("tie_word_embeddings: expected true or false",)),
    Case("config.json", '`rms_norm_eps: "1e-5"`', load_hf_with(rms_norm_eps="1e-5"),
         "ConfigError", ("rms_norm_eps: expected a number > 0",)),
    Case("config.json", "`num_attention_heads: 0`", load_hf_with(num_attention_heads=0),
         "ConfigError", ("num_attention_heads: expected an integer in 1..",)),
    Case("config.json", "no `vocab_size`", load_hf_with(vocab_size=DELETE), "ConfigError",
         ("vocab_size: required key is missing",)),
    Case("config.json", "`num_hidden_layers: 10**9` (refused before listing tensors)",
         load_hf_with(num_hidden_layers=10**9), "MemoryLimitError", ("config.json",), 2.0, 768),
    Case("config.json", "nested 100 levels deep", load_hf_with_text(nested(100)), "ConfigError",
         ("nested 100 levels deep",)),
    Case("config.json", "an integer of 50 digits",
         load_hf_with_text('{"vocab_size": 1' + "0" * 49 + "}"), "ConfigError", ("digits",)),
    Case("config.json", "`vocab_size: int(1e30)` (31 digits)",
         load_hf_with(vocab_size=int(1e30)), "ConfigError",
         ("vocab_size: expected an integer in 1..2147483647",)),
    Case("config.json", "`NaN` as a value", load_hf_with_text('{"rms_norm_eps": NaN}'),
         "ConfigError", ("NaN is not a JSON value",)),
    Case("config.json", "a key given twice",
         load_hf_with_text('{"vocab_size": 1, "vocab_size": 2}'), "ConfigError",
         ("appears twice",)),
    Case("config.json", "a JSON list", load_hf_with_text("[1, 2]"), "ConfigError",
         ("expected an object",)),
    Case("config.json", "a named pipe", config_is_a_fifo, "ConfigError", ("not a regular file",)),
    # params.json
    Case("params.json", '`dim: "16"`', load_meta_with(dim="16"), "ConfigError",
         ("params.json", "dim: expected an integer")),
    Case("params.json", "`n_layers: 0`", load_meta_with(n_layers=0), "ConfigError",
         ("n_layers: expected an integer in 1..",)),
    Case("params.json", "`use_scaled_rope: 1`", load_meta_with(use_scaled_rope=1), "ConfigError",
         ("use_scaled_rope: expected true or false",)),
    Case(".pth", "two shards whose `tok_embeddings.weight` is 1-D",
         meta_two_shards_with_1d_embedding, "CheckpointError",
         ("tok_embeddings.weight has [1, 1] dimensions", "expected 2 in every shard")),
    # safetensors
    Case("safetensors header", "a tensor name given twice",
         load_safetensors(b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
                          b'"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}'),
         "CheckpointError", ("appears twice",)),
    Case("safetensors header", "`shape: [[4]]`",
         load_safetensors({"a": {"dtype": "F32", "shape": [[4]], "data_offsets": [0, 16]}}),
         "CheckpointError", ("['a'].shape[0]: expected an integer",)),
    Case("safetensors header", "`data_offsets: [0.5, 4]`",
         load_safetensors({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0.5, 4]}}),
         "CheckpointError", ("['a'].data_offsets[0]",)),
    Case("safetensors header", "nested 100 levels deep", load_safetensors(nested(100).encode()),
         "CheckpointError", ("nested 100 levels deep",)),
    Case("safetensors header", "`__metadata__` with a number",
         load_safetensors({"__metadata__": {"format": 5}}), "CheckpointError",
         ("__metadata__: ['format']: expected a string",)),
    Case("safetensors index", 'shard `""`', load_sharded(""), "CheckpointError",
         ("weight_map", "expected a relative path inside the checkpoint directory")),
    Case("safetensors index", 'shard `".."`', load_sharded(".."), "CheckpointError",
         ("expected a relative path inside the checkpoint directory",)),
    Case("safetensors index", 'shard `"sub/../../x.safetensors"`',
         load_sharded("sub/../../x.safetensors"), "CheckpointError",
         ("expected a relative path inside the checkpoint directory",)),
    Case("safetensors index", 'shard `"/etc/x.safetensors"`', load_sharded("/etc/x.safetensors"),
         "CheckpointError", ("expected a relative path inside the checkpoint directory",)),
    Case("safetensors index", "shards in a subfolder, `\"sub/model-00001-of-00002.safetensors\"` "
         "(as transformers reads them)", load_shards_in_a_subfolder, "loads"),
    # GGUF
    Case("GGUF", "`llama.block_count` 10**9 (refused before listing tensors)",
         load_gguf_with("llama.block_count", "<I", 10**9), "CheckpointError",
         ("llama.block_count is 1000000000", "the tensors of 1 layer"), 5.0, 768),
    Case("GGUF", "`llama.attention.head_count` 0", load_gguf_with("llama.attention.head_count",
         "<I", 0), "ConfigError", ("llama.attention.head_count must be an integer in 1..",)),
    Case("GGUF", "`llama.attention.layer_norm_rms_epsilon` NaN",
         load_gguf_with("llama.attention.layer_norm_rms_epsilon", "<f", float("nan")),
         "ConfigError", ("llama.attention.layer_norm_rms_epsilon must be a finite number > 0",)),
    # .pth
    Case(".pth", "data.pkl inflating to 65 MiB", pth_inflating, "CheckpointError",
         ("inflates to more than",), 5.0, 768),
    Case(".pth", "BUILD on the state dict's OrderedDict", pth_build_on_state_dict,
         "CheckpointError", ("modify a state dict",)),
    # paths
    Case("checkpoint path", "`-m` a named pipe", model_is_a_fifo, "CheckpointError",
         ("named pipe",), 2.0),
    Case("tokenizer path", "a named pipe", tokenizer_is_a_fifo, "TokenizerError",
         ("not a regular file",), 2.0),
    # tokenizers
    Case("tokenizer.json", "a vocab id of 2**32 - 1",
         hf_tokenizer_with(lambda s: s["model"]["vocab"].update({"x": 2**32 - 1})),
         "TokenizerError", ("model.vocab['x']: expected an integer in 0..16777215",), 10.0, 768),
    Case("tokenizer.json", "an added token id of 2**24 - 1 (sparse ids)",
         hf_tokenizer_with(lambda s: s["added_tokens"].append({"id": 2**24 - 1, "content": "z"})),
         "TokenizerError", ("far beyond",), 10.0, 768),
    Case("tokenizer.json", "two tokens with one id (a Rust panic in tiktoken)",
         hf_tokenizer_with(lambda s: s["model"]["vocab"].update({"zzz": 5})), "TokenizerError",
         ("two tokens share an id",)),
    Case("tokenizer.json", "byte 0x00 missing from the vocab (SmolLM2's lacks 21 bytes), and "
         "in the text (tiktoken would panic)", encode_without_byte_0, "encodes without it",
         ("warning", "byte 0x00, which has no token")),
    Case("tokenizer.json", "`model.vocab` a list",
         hf_tokenizer_with(lambda s: s["model"].update(vocab=[1])), "TokenizerError",
         ("model.vocab: expected an object",)),
    Case("tokenizer_config.json", "`bos_token: 5`",
         hf_tokenizer_with(lambda s: None, {"bos_token": 5}), "TokenizerError",
         ("tokenizer_config.json", "bos_token")),
    Case("tokenizer_config.json", "`chat_template: 5`",
         hf_tokenizer_with(lambda s: None, {"chat_template": 5}), "TokenizerError",
         ("chat_template",)),
    # chat templates (a program from a downloaded file)
    Case("chat template", "two nested `range(100000)` loops printing",
         chat_template("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}"
                       "{% endfor %}"), "TokenizerError",
         ("tokenizer_config.json: the chat template was stopped", "1,000,000 steps"), 10.0, 768),
    Case("chat template", "`{{ 'x' * 10000000000 }}`", chat_template("{{ 'x' * 10000000000 }}"),
         "TokenizerError", ("a repetition would make 10,000,000,000 items",), 5.0, 768),
    Case("chat template", "a loop printing 10 GB in pieces",
         chat_template("{% for c in 'x' * 10000000 %}{{ 'y' * 1000 }}{% endfor %}"),
         "TokenizerError", ("its output passed 16,777,216 characters",), 10.0, 768),
    Case("chat template", "a macro that calls itself",
         chat_template("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"),
         "TokenizerError", ("it recursed too deeply",), 10.0, 768),
    Case("tiktoken tokenizer.model", "a rank of 2**32 - 1",
         tiktoken_ranks(b"YQ== 0\nYg== 4294967295\n"), "TokenizerError",
         ("rank below 10**9",)),
    Case("tiktoken tokenizer.model", "a rank of 10**8 (sparse ids)",
         tiktoken_ranks(b"YQ== 0\nYg== 100000000\n"), "TokenizerError", ("far beyond",), 10.0,
         768),
    # tokenizer / model agreement
    Case("vocabulary", "tokenizer of 512 tokens, model of 600 (padded), classifier favouring "
         "the padding", padded_vocabulary, "never sampled"),
    Case("vocabulary", "prompt id 550 in that padded model", padded_id_in_prompt,
         "ArgumentError", ("outside the vocabulary 0..511",)),
    # prompts
    *[Case("1 MB prompt", kind, megabyte_prompt(kind, truncate=False), "ContextLengthError",
           ("prompt is at least",), 10.0, 768) for kind in TOKENIZERS],
    *[Case("1 MB prompt, truncate_prompt", kind, megabyte_prompt(kind, truncate=True),
           "truncated", (), 10.0, 768) for kind in TOKENIZERS],
    Case("API", "a lone surrogate in the prompt", api(prompt="caf\udce9"), "ArgumentError",
         ("lone surrogate",)),
    Case("API", "`seed=-1`", api(seed=-1), "ArgumentError", ("seed must be an integer >= 0",)),
    Case("API", "`temperature=1e-45`", api(temperature=1e-45), "ArgumentError",
         ("temperature must be 0 (greedy) or in",)),
    Case("API", "`temperature=inf`", api(temperature=float("inf")), "ArgumentError",
         ("temperature must be 0 (greedy) or in",)),
    Case("API", "`temperature=\"0.7\"`", api(temperature="0.7"), "ArgumentError",
         ("temperature must be >= 0 (0 = greedy), got '0.7'",)),
    Case("API", "`top_p=None`", api(top_p=None), "ArgumentError", ("top_p must be in (0, 1]",)),
    Case("API", "`stop=None`", api(stop=None), "ArgumentError",
         ("stop must be a string or a list of non-empty strings, got None",)),
    Case("API", "`max_new_tokens=True`", on_model(lambda m: generate_text(m, "Once", True)),
         "ArgumentError",
         ("max_new_tokens must be an integer >= 0, got True",)),
    Case("API", "`max_new_tokens=np.int64(3)`, `temperature=np.float32(0.7)`, an int32 prompt",
         on_model(lambda m: generate_text(m, np.array([1, 5], dtype=np.int32), np.int64(3),
                                          temperature=np.float32(0.7))), "runs"),
    Case("API", "`load(None)`", lambda tmp: load(None), "ArgumentError",
         ("path must be a path (a non-empty str or pathlib.Path), got None",)),
    Case("API", "`new_cache(dtype=\"bogus\")`", on_model(lambda m: m.new_cache(dtype="bogus")),
         "ArgumentError", ("dtype must be one of np.float32, np.float16, got 'bogus'",)),
    Case("API", "`prefill(tokens, cache, seq=7)` on a one-sequence cache",
         on_model(lambda m: m.prefill([1], m.new_cache(8), seq=7)), "ArgumentError",
         ("seq must be an integer in 0..0, got 7",)),
    Case("API", "`prefill(tokens, cache)` with a cache of another model",
         on_model(lambda m: m.prefill([1], KVCache(TINY.replace(n_layers=2), 8))),
         "ArgumentError", ("cache must be a KV cache of this model: (L, KVH, HD) = (1, 1, 8)",)),
    Case("API", "a chat message without `role`",
         on_model(lambda m: ChatTemplate(m.tokenizer, "{{ messages }}", "t").render([{}])),
         "ArgumentError", ("messages[0]['role'] must be a string, got nothing",)),
    # command line
    Case("CLI", "`--seed -1`", cli("generate", "-s", "-1", "-n", "2"), "exit 1",
         ("-s/--seed must be in 0..",)),
    Case("CLI", "`--temperature 1e-45`", cli("generate", "--temp", "1e-45"), "exit 1",
         ("temperature must be",)),
    Case("CLI", "`--temperature inf`", cli("generate", "--temp", "inf"), "exit 1",
         ("temperature must be",)),
    Case("CLI", "`--repeat-penalty 1e-45`", cli("generate", "--repeat-penalty", "1e-45"),
         "exit 1", ("repetition_penalty must be > 0 (1 = off) and in",)),
    Case("CLI", "`memory --flops inf --bandwidth 1e-45`",
         cli("memory", "stories15M", "--flops", "inf", "--bandwidth", "1e-45"), "exit 1",
         ("must both be finite numbers >= 1",)),
    Case("CLI", "`memory --device-memory inf`",
         cli("memory", "stories15M", "--flops", "1e12", "--bandwidth", "1e11",
             "--device-memory", "inf"), "exit 1", ("--device-memory must be a finite",)),
    Case("CLI", "non-UTF-8 bytes in `-p`", cli("generate", "-p", b"caf\xe9", "-n", "2"), "exit 1",
         ("not valid Unicode text",)),
    Case("CLI", "`trace --layers 0-1000000000000`",
         cli("trace", "-p", "Hi", "--layers", "0-1000000000000", "--out", "{tmp}"), "exit 1",
         ("--layers '0-1000000000000': indices must be in 0..4",)),
    Case("CLI", "`trace -n -5` (the message quotes what was typed)",
         cli("trace", "-p", "Hi", "-n", "-5", "--out", "{tmp}"), "exit 1",
         ("-n/--n-predict must be >= 0, got -5",)),
    Case("CLI", "`chat -c -3`", cli("chat", "-c", "-3", stdin=b""), "exit 1",
         ("-c/--ctx-size must be >= 1, got -3",)),
    Case("CLI", "`trace --out` naming a file",
         cli("trace", "-p", "Hi", "--out", str(TOK512)), "exit 1",
         ("--out", "cannot create the directory")),
    Case("CLI", "`profile --out` under a file", cli("profile", "--out", f"{TOK512}/sub"),
         "exit 1", ("--out", "cannot create the directory")),
    Case("CLI", "`chat` with stdin closed",
         shell('$PY chat -m "$TMP/m" <&- ; echo $?', sp_chat_model), "exit 1",
         ("stdin is closed",)),
    Case("CLI", "`chat` with binary junk on stdin",
         cli("chat", "-m", "{tmp}/m", stdin=b"\xff\xfe\x00junk\n", setup=sp_chat_model),
         "exit 1", ("stdin: a message is not valid Unicode text",)),
    Case("CLI", "`chat` with a 1 MB message (refused; the chat goes on)",
         cli("chat", "-m", "{tmp}/m", "-c", "32", stdin=MEGABYTE.encode() + b"\n",
             setup=sp_chat_model), "exit 0", ("the message is at least", "send a shorter one"),
         15.0),
    Case("CLI", "`chat --chat-format llama3` with a llama2.c tokenizer",
         cli("chat", "--chat-format", "llama3", stdin=b""), "exit 1",
         ("needs the special tokens <|start_header_id|>",)),
    Case("CLI", "`chat --chat-format chatml` with a llama2.c tokenizer",
         cli("chat", "--chat-format", "chatml", stdin=b""), "exit 1",
         ("needs the special tokens <|im_start|>",)),
    Case("CLI", "`info` with stdout closed (`| head`)",
         shell('$PY info | true; echo "${PIPESTATUS[0]}"'), "exit 0"),
    Case("CLI", "`q` in the debugger after `--break-at`",
         cli("generate", "-p", "Hi", "-n", "2", "--break-at", "layers.0.attn.probs", stdin=b"q\n"),
         "exit 130", ("quit from the debugger",)),
    Case("CLI", "Ctrl-C during `generate -p A -p B -n 100000`", ctrl_c_batch, "exit 130",
         ("stopped: interrupted",), 30.0),
    # machine cache
    Case("machine cache", "a zeroed file", machine_cache(bytes(64)), "measured again"),
    Case("machine cache", "peaks of 0",
         machine_cache(json.dumps({"peaks": {"k": {"matmul_flops": 0,
                                                         "memory_bandwidth": 0}}}).encode()),
         "measured again"),
    Case("machine cache", "HOME a file (cache cannot be written)",
         machine_cache(None, home_is_a_file=True), "measured again"),
    # downloads
    Case("download", "a server sending one byte every 0.1 s (minimum rate)",
         with_hub(LISTING, download_slowly), "DownloadError", ("too slow",), 5.0),
    Case("download", "`deadline=1` on that server",
         with_hub(LISTING, download_repo(deadline=1.0, min_rate=0.0)), "DownloadError",
         ("deadline of 1 s",), 5.0),
    Case("download", "`deadline=1` on a hub dripping its file listing a byte every 0.1 s",
         with_hub(LISTING, download_repo(deadline=1.0, min_rate=0.0), drip_listing=True),
         "DownloadError", ("deadline of 1 s",), 5.0),
    Case("download", "`deadline=1` on a hub dripping its status line and headers",
         with_hub(LISTING, download_repo(deadline=1.0, min_rate=0.0), drip_headers=True),
         "DownloadError", ("deadline of 1 s",), 5.0),
    Case("download", "an endpoint with a malformed IPv6 host, `http://[::1`",
         download_from("http://[::1"), "DownloadError",
         ("endpoint 'http://[::1'", "not a valid URL")),
    Case("download", "an endpoint with port 99999", download_from("http://localhost:99999"),
         "DownloadError", ("not a valid URL",)),
    Case("download", "`llama-np download --deadline 0`",
         cli("download", "org/x", "--deadline", "0", "--dir", "{tmp}"), "exit 1",
         ("--deadline must be > 0",)),
    Case("download", "two downloads into one directory", with_hub(LISTING, download_while_locked),
         "DownloadError", ("another download into this directory",)),
    Case("download", "hub listing nested 100 levels deep",
         with_hub(nested(100).encode(), download_repo()), "DownloadError", ("nested",)),
    Case("download", 'hub listing with `"size": "1000"`',
         with_hub(b'[{"type": "file", "path": "config.json", "size": "1000"}]', download_repo()),
         "DownloadError", ("[0].size: expected an integer",)),
]  # fmt: skip


def render_table(cases: list[Case] = CASES) -> str:
    """The markdown table of docs/errors.md."""
    lines = ["| input | what | outcome | message names |", "|---|---|---|---|"]
    for case in cases:
        pieces = ", ".join(f"`{p}`" for p in case.pieces)
        cells = [case.kind, case.input, case.outcome, pieces]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


TABLE_START = (
    "<!-- red-team table: generated by scripts/red_team_table.py from tests/red_team.py -->"
)
TABLE_END = "<!-- end of the red-team table -->"
