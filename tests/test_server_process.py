"""`llama-np serve` as a process: it shuts down cleanly on SIGINT and SIGTERM (streams in
flight end with their last chunk and [DONE], exit status 0), and refuses a port in use."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def start_server(*args: str) -> tuple[subprocess.Popen, str]:
    """`python -m llama_np serve --port 0 ARGS`; -> (the process, its URL)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_np", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT,
    )  # fmt: skip
    lines = []
    for line in process.stderr:  # the first line says where it listens
        lines.append(line)
        found = re.search(r"on (http://127\.0\.0\.1:\d+) ", line)
        if found:
            return process, found[1]
    process.kill()
    raise AssertionError("the server did not start:\n" + "".join(lines))


def stream_events(url: str, body: dict, first: threading.Event, out: list) -> None:
    """POST a streamed completion; collect its data lines in `out`."""
    try:
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    out.append(line[6:])
                    first.set()
    except httpx.HTTPError as error:  # an unclean end: the test fails on it
        out.append(f"error: {error!r}")
    finally:
        first.set()


def received(url: str, n: int) -> None:
    """Wait until the server has received n requests: running, waiting or finished (its
    /metrics say)."""
    pattern = r"^llama_np_(?:requests_running|requests_waiting|request_success_total)\{.*\} (\S+)"
    for _ in range(6000):  # 60 s: a bound for a hang
        text = httpx.get(url + "/metrics", timeout=10).text
        if sum(float(v) for v in re.findall(pattern, text, re.M)) >= n:
            return
        time.sleep(0.01)
    raise AssertionError(f"the server never received {n} requests")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_streams_cleanly_and_exits_0(sig):
    # One request runs at a time: while the first streams, the others wait in the queue.
    process, url = start_server("--max-seqs", "1", "--kv-memory", "4MiB")
    try:
        body = {"prompt": "Once upon a time", "max_tokens": 500, "temperature": 0, "stream": True}
        outs = [[] for _ in range(4)]
        firsts = [threading.Event() for _ in outs]
        threads = [
            threading.Thread(target=stream_events, args=(url, body, first, out))
            for first, out in zip(firsts, outs, strict=True)
        ]
        for thread in threads:
            thread.start()
        received(url, 4)  # all four are in: one running, the others waiting (or done)
        process.send_signal(sig)
        for thread in threads:
            thread.join(60)
        assert process.wait(60) == 0
        stderr = process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
    assert "Traceback" not in stderr, stderr
    assert stderr.rstrip().endswith("llama-np: stopped"), stderr
    reasons = []
    for out in outs:
        assert out and out[-1] == "[DONE]", out[-3:]  # every stream ended cleanly
        chunks = [json.loads(d) for d in out[:-1]]
        finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
        assert all(f is None for f in finishes[:-1])
        reasons.append(finishes[-1])
    assert "abort" in reasons, reasons  # those still waiting or running were cut short
    assert set(reasons) <= {"abort", "length", "stop"}
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/health", timeout=5)  # nobody listens any more


def test_a_port_in_use_is_an_error_before_loading():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "llama_np", "serve", "--port", str(port)],
            capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=60,
        )  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.startswith(f"llama-np: error: cannot listen on 127.0.0.1:{port}: ")


def test_a_chat_format_that_does_not_fit_is_an_error_at_start():
    out = subprocess.run(
        [sys.executable, "-m", "llama_np", "serve", "--port", "0", "--chat-format", "llama3"],
        capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.startswith("llama-np: error: chat format 'llama3' needs the special tokens")
