"""The live page of `llama-np serve`, in a real headless browser (Chromium) against a running
server under load: no script errors; its chat streams the reply the model gives; it shows
the scheduler's steps (prefill and decode rows, in the phase colours), the requests running,
and the KV blocks.

Chromium comes from Debian's packages (`.ci/run` installs it); without it the browser test
is skipped locally, and fails in CI (CI=true), where it must run.
"""

from __future__ import annotations

import re
import threading
from urllib.parse import quote

import httpx
import pytest
from browser import Elements, dump_dom
from live_server import Gate, LiveServer, chat_model

import llama_np
from llama_np.engine import Engine
from llama_np.server import ServerConfig
from llama_np.server.page import PAGE
from llama_np.tools.colors import PHASE_COLORS

KEY = "page-key"


@pytest.fixture(scope="module")
def live():
    engine = Engine(chat_model(), kv_memory="16MiB", max_batch_tokens=64)
    server = LiveServer(engine, ServerConfig("stories260K", api_key=KEY))
    yield server
    server.close()


def browse(url: str) -> tuple[str, str]:
    """The DOM after the page ran for 15 s of its own (virtual) time (the time it waits on the
    network does not count), and the browser's log."""
    return dump_dom(url, "--virtual-time-budget=15000", what="the page test")


def test_page_is_self_contained(live):
    html = httpx.get(live.url + "/", auth=("me", KEY)).text
    assert "<link" not in html and " src=" not in html  # no stylesheet or script files
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", html))
    assert urls <= {"http://www.w3.org/2000/svg"}  # an XML namespace name, never fetched
    # The phase colours come from the one table (tools/colors.py), not spelled in the page
    assert PHASE_COLORS["prefill"] in html and PHASE_COLORS["decode"] in html
    assert not re.findall(r"#1f77b4|#ff7f0e|#9467bd", PAGE.lower())


def test_page_in_a_headless_browser_under_load(live):
    engine, model = live.engine, live.engine.model
    question = "Tell me about a cat."
    messages = [{"role": "user", "content": question}]
    tokens = live.server.chat_format.encode(messages)
    expected = llama_np.generate_text(model, tokens, 20, temperature=0)

    # Other clients keep the engine busy meanwhile: short requests, so prompts keep arriving
    # (prefill rows) beside running ones (decode rows), and a long one, so that some request
    # is always running; each step slowed to be seen.
    gate = Gate(engine, delay=0.003)
    done = threading.Event()

    def client(prompt: str, n: int) -> None:
        with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {KEY}"}) as http:
            while not done.is_set():
                body = {"prompt": prompt, "max_tokens": n, "temperature": 0, "ignore_eos": True}
                http.post(live.url + "/v1/completions", json=body)

    loads = [("Lily", 30), ("Tom and Sue", 30), ("A", 400)]
    clients = [threading.Thread(target=client, args=load) for load in loads]
    for thread in clients:
        thread.start()
    try:
        # The page authenticates as a browser does (user:key@, HTTP Basic), and with #key.
        page = live.url.replace("http://", f"http://me:{KEY}@") + "/"
        dom, log = browse(f"{page}#key={KEY}&ask={quote(question)}&mode=chat&temperature=0"
                          f"&max_tokens=20")  # fmt: skip
    finally:
        done.set()
        for thread in clients:
            thread.join(60)
        gate.remove()
    assert "Uncaught" not in log, log[-2000:]
    doc = Elements()
    doc.feed(dom)
    assert doc.by_id("errors")["text"] == ""
    body = next(e for e in doc.all if e["tag"] == "body")
    assert body["data-ready"] == "yes" and body["data-chat"] == "done"

    (reply,) = doc.by_class("assistant")
    assert reply["text"] == expected and reply["data-finish"] == "length"

    rows = [e for e in doc.all if e["tag"] == "rect"]
    kinds = {e["data-kind"] for e in rows}
    assert kinds == {"prefill", "decode"}, kinds
    for e in rows:
        assert e["fill"] == PHASE_COLORS[e["data-kind"]]
    assert len(doc.by_class("last-row")) >= 1
    assert len(doc.by_class("running")) >= 1  # requests listed as running
    kv = doc.by_id("kvtext")
    assert int(kv["data-used"]) > 0 and int(kv["data-free"]) < engine.pool.n_blocks
    live.wait_idle()
    assert engine.pool.n_used == 0
