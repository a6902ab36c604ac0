"""`llama-np serve` through the real `openai` client: chat and completions, streamed and not,
against independent references: `llama-np generate --temperature 0` (a subprocess) for
greedy output, generate() of each prompt alone for 16 concurrent seeded streams, the model's
own logits for log-probabilities, Prometheus' parser for /metrics.

One server (stories260K, a chat template on its tokenizer, an API key) serves the module;
a small second one (1 running + 1 waiting) tests admission.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from live_server import Gate, LiveServer, chat_model
from prometheus_client.parser import text_string_to_metric_families

import llama_np
from llama_np.engine import Engine
from llama_np.server import ServerConfig

KEY = "test-key-123"
NAME = "stories260K"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def live():
    model = chat_model()
    engine = Engine(model, kv_memory="16MiB", max_seqs=32)
    server = LiveServer(engine, ServerConfig(NAME, api_key=KEY, timeout=10))
    yield server
    server.close()


@pytest.fixture(scope="module")
def client(live):
    return openai.OpenAI(base_url=live.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def cli_generate(prompt: str, n: int) -> str:
    """`llama-np generate -p PROMPT -n N --temperature 0`: the continuation it prints."""
    out = subprocess.run(
        [sys.executable, "-m", "llama_np", "generate", "-p", prompt, "-n", str(n),
         "--temperature", "0"],
        capture_output=True, text=True, timeout=120, check=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert out.stdout.startswith(prompt)
    return out.stdout[len(prompt) :].removesuffix("\n")


def check_idle(live: LiveServer) -> None:
    live.wait_idle()
    pool = live.engine.pool
    pool.check()
    assert pool.n_used == 0


# ---------------------------------------------------------------- completions and chat


def test_completion_greedy_equals_llama_np_generate(live, client):
    prompt = "Once upon a time"
    expected = cli_generate(prompt, 40)
    whole = client.completions.create(model=NAME, prompt=prompt, max_tokens=40, temperature=0)
    assert whole.object == "text_completion" and whole.model == NAME
    (choice,) = whole.choices
    assert choice.text == expected
    n_prompt = len(live.engine.model.tokenizer.encode(prompt, bos=True))
    assert whole.usage.prompt_tokens == n_prompt
    # 40 tokens unless the story ended first (an end token is not counted)
    assert whole.usage.completion_tokens == 40 and choice.finish_reason == "length"
    assert whole.usage.total_tokens == n_prompt + 40

    stream = client.completions.create(
        model=NAME, prompt=prompt, max_tokens=40, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert all(c.usage is None for c in chunks[:-1]) and chunks[-1].choices == []
    assert chunks[-1].usage.model_dump(exclude_none=True) == whole.usage.model_dump(
        exclude_none=True
    )
    check_idle(live)


def test_chat_greedy_equals_llama_np_generate_of_the_rendered_prompt(live, client):
    messages = [
        {"role": "system", "content": "You tell stories."},
        {"role": "user", "content": "Tell me about a cat."},
    ]
    template = live.server.chat_format
    rendered = template.render(messages)
    assert rendered == "system: You tell stories.\nuser: Tell me about a cat.\nassistant:"
    expected = cli_generate(rendered, 30)
    reply = client.chat.completions.create(
        model=NAME, messages=messages, max_tokens=30, temperature=0
    )
    assert reply.object == "chat.completion"
    message = reply.choices[0].message
    assert message.role == "assistant" and message.content == expected
    assert reply.usage.prompt_tokens == len(template.encode(messages))
    assert reply.usage.completion_tokens == 30

    stream = client.chat.completions.create(
        model=NAME, messages=messages, max_tokens=30, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 30
    assert chunks[-1].usage.prompt_tokens == reply.usage.prompt_tokens
    # the same conversation again: its prompt comes from the prefix cache, whole blocks of it
    again = client.chat.completions.create(
        model=NAME, messages=messages, max_tokens=1, temperature=0
    )
    block = live.engine.pool.block_size
    cached = again.usage.prompt_tokens_details.cached_tokens
    assert cached == (again.usage.prompt_tokens - 1) // block * block > 0
    check_idle(live)


def test_sixteen_concurrent_streams_each_get_their_own_tokens(live):
    """16 clients stream at once, each a different prompt and seed (temperature 1, OpenAI's
    default); each must get exactly what generate() gives that prompt and seed alone."""
    model = live.engine.model
    starts = ["Once upon a time", "Lily and Tom", "The dog", "A big red ball", "One day",
              "The sun was", "Tim had a", "Sara saw"]  # fmt: skip
    jobs = [(f"{starts[i % 8]}{' again' * (i // 8)}", 1000 + i, 12 + i) for i in range(16)]
    expected = [
        llama_np.generate_text(model, prompt, n, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0,
                               seed=seed)
        for prompt, seed, n in jobs
    ]  # fmt: skip

    async def one(client, prompt, seed, n):
        stream = await client.completions.create(
            model=NAME, prompt=prompt, max_tokens=n, seed=seed, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        text, usage = "", None
        async for chunk in stream:
            text += "".join(c.text for c in chunk.choices)
            usage = chunk.usage or usage
        return text, usage

    async def everyone():
        client = openai.AsyncOpenAI(base_url=live.url + "/v1", api_key=KEY, max_retries=0)
        async with client:
            return await asyncio.gather(*(one(client, *job) for job in jobs))

    steps_before = live.engine.n_steps
    results = asyncio.run(everyone())
    for (text, usage), want, (prompt, _, n) in zip(results, expected, jobs, strict=True):
        assert text == want, prompt
        generated = len(model.tokenizer.encode(prompt + want, bos=True)) - usage.prompt_tokens
        assert usage.completion_tokens <= n and generated >= 0
    records = [r for r in live.engine.records if r.index >= steps_before]
    assert max(len(r.rows) for r in records) > 1  # they did run together
    check_idle(live)


def test_sampling_extensions_and_stop(live, client):
    greedy = client.completions.create(
        model=NAME, prompt="Once upon a time", max_tokens=30, temperature=0
    )
    # top_k 1 (llama.cpp's) at temperature 1: only the most likely token is left
    top1 = client.completions.create(
        model=NAME, prompt="Once upon a time", max_tokens=30, extra_body={"top_k": 1, "min_p": 0.1}
    )
    assert top1.choices[0].text == greedy.choices[0].text
    penalized = client.completions.create(
        model=NAME, prompt="Once upon a time", max_tokens=30, temperature=0,
        extra_body={"repeat_penalty": 1.5, "repeat_last_n": -1},
    )  # fmt: skip
    assert penalized.choices[0].text != greedy.choices[0].text
    stopped = client.completions.create(
        model=NAME, prompt="Once upon a time", max_tokens=30, temperature=0, stop=["Lily", "zzz"]
    )
    text = greedy.choices[0].text
    assert stopped.choices[0].text == text[: text.index("Lily")]
    assert stopped.choices[0].finish_reason == "stop"
    # The story ends (an end token) before max_tokens, unless ignore_eos (llama.cpp's, vLLM's)
    ends = client.completions.create(model=NAME, prompt="Lily", max_tokens=250, temperature=0)
    assert ends.choices[0].finish_reason == "stop" and ends.usage.completion_tokens < 250
    on = client.completions.create(
        model=NAME, prompt="Lily", max_tokens=250, temperature=0, extra_body={"ignore_eos": True}
    )
    assert on.choices[0].finish_reason == "length" and on.usage.completion_tokens == 250
    assert on.choices[0].text.startswith(ends.choices[0].text)
    ids = client.completions.create(model=NAME, prompt=[1, 403, 407], max_tokens=5, temperature=0)
    text_prompt = live.engine.model.tokenizer.decode([403, 407])
    same = client.completions.create(model=NAME, prompt=text_prompt, max_tokens=5, temperature=0)
    assert ids.choices[0].text == same.choices[0].text
    check_idle(live)


def test_logprobs_are_the_models(live, client):
    model = live.engine.model
    prompt = "Once upon a time"
    reply = client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": prompt}], max_tokens=3, temperature=0,
        logprobs=True, top_logprobs=3,
    )  # fmt: skip
    content = reply.choices[0].logprobs.content
    assert len(content) == 3
    tokens = live.server.chat_format.encode([{"role": "user", "content": prompt}])
    logits = model.prefill(tokens, model.new_cache()).astype(np.float64)  # (V,)
    log_probs = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
    first = content[0]
    best = int(np.argmax(log_probs))
    assert bytes(first.bytes) == model.tokenizer.token_bytes(best)
    assert first.logprob == pytest.approx(log_probs[best], abs=1e-4)
    assert [t.logprob for t in first.top_logprobs] == pytest.approx(
        sorted(log_probs, reverse=True)[:3], abs=1e-4
    )
    completion = client.completions.create(
        model=NAME, prompt=prompt, max_tokens=3, temperature=0, logprobs=2
    )
    lp = completion.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 3
    assert "".join(lp.tokens) == completion.choices[0].text
    assert lp.text_offset == [0, len(lp.tokens[0]), len(lp.tokens[0]) + len(lp.tokens[1])]
    # At a stop string the tokens reported are those whose text was sent: none of the stop's
    # (" Lily" is one token: its space is sent, the token is not, as llama-server does).
    stop = dict(model=NAME, prompt=prompt, max_tokens=60, temperature=0, stop="Lily", logprobs=0)
    whole = client.completions.create(**stop).choices[0]
    tokens = whole.logprobs.tokens
    assert whole.text.endswith("named ") and "".join(tokens) == whole.text[:-1]
    streamed = [c.choices[0] for c in client.completions.create(**stop, stream=True)]
    assert "".join(c.text for c in streamed) == whole.text
    assert [t for c in streamed if c.logprobs for t in c.logprobs.tokens] == tokens
    offsets = [o for c in streamed if c.logprobs for o in c.logprobs.text_offset]
    assert offsets == whole.logprobs.text_offset
    # " named" sends its space, holds "named" (a possible "named Lux"), then goes out whole
    # with " Lily": its offset is where its text starts, streamed or not
    held = {**stop, "stop": "named Lux"}
    whole = client.completions.create(**held).choices[0].logprobs
    streamed = [c.choices[0] for c in client.completions.create(**held, stream=True)]
    assert [t for c in streamed if c.logprobs for t in c.logprobs.tokens] == whole.tokens
    offsets = [o for c in streamed if c.logprobs for o in c.logprobs.text_offset]
    assert offsets == whole.text_offset and " named" in whole.tokens
    check_idle(live)


# ---------------------------------------------------------------- refusals


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_refusals_name_the_field(live, client):
    cases = [
        (dict(n=2), "n"),
        (dict(extra_body={"tools": [{"type": "function", "function": {"name": "f"}}]}), "tools"),
        (dict(presence_penalty=0.5), "presence_penalty"),
        (dict(frequency_penalty=-1), "frequency_penalty"),
        (dict(temperature=-1), "temperature"),
        (dict(top_p=0), "top_p"),
        (dict(max_tokens=-5), "max_tokens"),
        (dict(extra_body={"response_format": {"type": "json_object"}}), "response_format"),
        (dict(extra_body={"frobnicate": 1}), "frobnicate"),
        (dict(stop=[""]), "stop"),
        (dict(n=0), "n"),
        (dict(extra_body={"user": 5}), "user"),
        (dict(metadata={"tag": 1}), "metadata"),
        (dict(service_tier="flex"), "service_tier"),
    ]
    for kwargs, param in cases:
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(
                model=NAME, messages=[{"role": "user", "content": "Hi"}], **kwargs
            )
        assert caught.value.status_code == 400
        error = caught.value.body
        assert error["param"] == param, (kwargs, error)
        assert param in error["message"]
    # zero penalties ask for nothing: accepted
    client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=1, presence_penalty=0,
        frequency_penalty=0, n=1, user="me", metadata={"tag": "x"}, service_tier="auto",
    )  # fmt: skip
    with pytest.raises(openai.NotFoundError) as caught:
        client.completions.create(model="gpt-4", prompt="Hi")
    assert caught.value.body["code"] == "model_not_found"
    check_idle(live)


def test_a_prompt_longer_than_the_context(live, client):
    context = live.engine.model.config.max_seq_len
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=NAME, prompt=[1] + [403] * context, max_tokens=1)
    error = caught.value.body
    assert error["code"] == "context_length_exceeded" and error["param"] == "prompt"
    assert str(context + 1) in error["message"] and str(context) in error["message"]
    with pytest.raises(openai.BadRequestError) as caught:  # text: refused before tokenizing
        client.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": "word " * 5000}]
        )
    assert caught.value.body["code"] == "context_length_exceeded"
    assert str(context) in caught.value.body["message"]
    check_idle(live)


def test_api_key_and_bodies(live):
    url = live.url
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}  # no key needed
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic !!"}):
        response = httpx.get(f"{url}/v1/models", headers=headers)
        assert response.status_code == 401
        assert error_of(response)["code"] in ("missing_api_key", "invalid_api_key")
    page = httpx.get(url + "/")
    assert page.status_code == 401 and page.headers["www-authenticate"].startswith("Basic")
    assert httpx.get(url + "/", auth=("me", KEY)).status_code == 200
    keyed = {"Authorization": f"Bearer {KEY}"}
    assert httpx.get(f"{url}/v1/models", headers=keyed).json()["data"][0]["id"] == NAME

    post = lambda path, **kw: httpx.post(url + path, headers=keyed, timeout=30, **kw)  # noqa: E731
    assert error_of(post("/v1/completions", content=b"{not json"))["code"] == "invalid_json"
    too_big = post("/v1/completions", content=b" " * (3 * 2**20))
    assert too_big.status_code == 413 and error_of(too_big)["code"] == "request_too_large"
    deep = post("/v1/completions", content=b"[" * 100_000)
    assert deep.status_code == 400 and "nested" in error_of(deep)["message"]
    assert post("/v1/completions", json=[1, 2]).status_code == 400
    wrong = httpx.get(url + "/v1/completions", headers=keyed)
    assert wrong.status_code == 405 and error_of(wrong)["message"].startswith("Method not allowed")
    assert httpx.get(url + "/nowhere", headers=keyed).status_code == 404


def test_a_stalled_upload_is_cut_off(live):
    """A client that sends part of its body and then nothing gets 408 after the timeout."""
    host, port = live.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: 100\r\n\r\n{"
        )
        reply = sock.recv(4096)  # the socket's timeout (30 s) bounds a hang
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]


def test_a_client_that_never_sends_whole_headers_is_cut_off():
    """Connections that send nothing, or half a header, are closed after the timeout, and
    connections past the cap at once (else idle sockets would hold the server: slowloris)."""
    engine = Engine(llama_np.load(), kv_memory="1MiB", max_seqs=2)
    server = LiveServer(engine, ServerConfig(NAME, timeout=1), max_connections=4)
    host, port = server.url.removeprefix("http://").split(":")
    try:
        silent = [socket.create_connection((host, int(port)), timeout=30) for _ in range(2)]
        silent[1].sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nConte")
        time.sleep(0.2)
        extra = [socket.create_connection((host, int(port)), timeout=30) for _ in range(4)]
        assert [s.recv(100) for s in extra[2:]] == [b"", b""]  # past the cap: closed at once
        started = time.monotonic()
        assert [s.recv(100) for s in silent] == [b"", b""]  # closed by the server
        assert time.monotonic() - started < 5
        for s in silent + extra:
            s.close()
        time.sleep(0.2)
        assert httpx.get(server.url + "/health", timeout=10).status_code == 200  # still serving
    finally:
        server.close()


def test_a_request_that_outgrows_the_kv_cache_ends_length_and_is_logged(caplog):
    engine = Engine(llama_np.load(), kv_memory="60KiB", max_seqs=2)  # 3 blocks: 48 tokens
    server = LiveServer(engine, ServerConfig(NAME))
    try:
        body = {"prompt": "Once upon a time", "max_tokens": 200, "ignore_eos": True}
        with caplog.at_level("WARNING", logger="llama_np.server"):
            reply = httpx.post(server.url + "/v1/completions", json=body, timeout=60).json()
        assert reply["choices"][0]["finish_reason"] == "length"
        assert reply["usage"]["total_tokens"] == 49  # 48 positions, and the token after them
        assert "outgrew the whole KV cache (--kv-memory)" in caplog.text
    finally:
        server.close()


def test_a_bug_in_a_handler_is_a_500_in_openai_shape(live, monkeypatch):
    """The bug's traceback goes to the log; the client gets an error object; the server goes
    on serving."""

    def broken() -> str:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(live.server.metrics, "render", broken)
    keyed = {"Authorization": f"Bearer {KEY}"}
    response = httpx.get(live.url + "/metrics", headers=keyed)
    assert response.status_code == 500
    assert error_of(response) == {
        "message": "internal server error", "type": "server_error", "param": None, "code": None,
    }  # fmt: skip
    assert httpx.get(live.url + "/v1/models", headers=keyed).status_code == 200


def test_tokenize_and_detokenize(live):
    keyed = {"Authorization": f"Bearer {KEY}"}
    tokenizer = live.engine.model.tokenizer
    text = "Once upon a time"
    got = httpx.post(live.url + "/tokenize", json={"content": text}, headers=keyed).json()
    assert got == {"tokens": tokenizer.encode(text, bos=False)}
    got = httpx.post(
        live.url + "/tokenize", json={"content": text, "add_special": True, "with_pieces": True},
        headers=keyed,
    ).json()  # fmt: skip
    ids = tokenizer.encode(text, bos=True)
    assert [p["id"] for p in got["tokens"]] == ids
    assert "".join(p["piece"] for p in got["tokens"][1:]) == " " + text
    back = httpx.post(live.url + "/detokenize", json={"tokens": ids[1:]}, headers=keyed).json()
    assert back == {"content": text}
    bad = httpx.post(live.url + "/detokenize", json={"tokens": [10**6]}, headers=keyed)
    assert bad.status_code == 400 and error_of(bad)["param"] == "tokens"
    # Special-token text counts as a completion's prompt counts it; parse_special reads it
    tokenize = lambda **body: httpx.post(live.url + "/tokenize", json=body, headers=keyed)  # noqa: E731
    marked = "Once</s>"
    usage = httpx.post(live.url + "/v1/completions", headers=keyed,
                       json={"prompt": marked, "max_tokens": 1}).json()["usage"]  # fmt: skip
    counted = tokenize(content=marked, add_special=True).json()["tokens"]
    assert len(counted) == usage["prompt_tokens"] and tokenizer.eos_id not in counted
    parsed = tokenize(content=marked, parse_special=True).json()["tokens"]
    assert parsed[-1] == tokenizer.eos_id
    # A document longer than the context is counted (the body limit bounds it)
    long = tokenize(content="Once upon a time. " * 400)
    assert (
        long.status_code == 200
        and len(long.json()["tokens"]) > live.engine.model.config.max_seq_len
    )


def test_metrics(live, client):
    keyed = {"Authorization": f"Bearer {KEY}"}

    def scrape() -> dict:
        text = httpx.get(live.url + "/metrics", headers=keyed).text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def key(name: str, **labels: str) -> tuple:
        return name, tuple(sorted({"model_name": NAME, **labels}.items()))

    before = scrape()
    reply = client.completions.create(
        model=NAME, prompt="Once upon a time", max_tokens=7, temperature=0
    )
    live.wait_idle()
    after = scrape()

    def grew(name: str) -> float:
        return after[key(name)] - before.get(key(name), 0)

    assert grew("llama_np_generation_tokens_total") == reply.usage.completion_tokens == 7
    assert grew("llama_np_prompt_tokens_total") == reply.usage.prompt_tokens
    assert grew("llama_np_time_to_first_token_seconds_count") == 1
    assert grew("llama_np_time_per_output_token_seconds_count") == 1
    assert after[key("llama_np_requests_running")] == 0
    assert after[key("llama_np_kv_blocks", state="used")] == 0
    free = after[key("llama_np_kv_blocks", state="free")]
    assert free == after[key("llama_np_kv_blocks_total")] == live.engine.pool.n_blocks
    inf = after[key("llama_np_time_to_first_token_seconds_bucket", le="+Inf")]
    assert inf == after[key("llama_np_time_to_first_token_seconds_count")]


# ---------------------------------------------------------------- clients that leave


def test_a_client_that_disconnects_mid_stream_cancels_its_request(live):
    engine = live.engine
    gate = Gate(engine, delay=0.002)  # ~500 tokens take over a second: time to leave
    try:
        body = {"prompt": "Once upon a time", "max_tokens": 500, "temperature": 0, "stream": True}
        headers = {"Authorization": f"Bearer {KEY}"}
        with httpx.stream("POST", live.url + "/v1/completions", json=body, headers=headers) as r:
            lines = r.iter_lines()
            got = [next(lines) for _ in range(6)]  # a few chunks (and blank lines)
            assert any(line.startswith("data: {") for line in got)
            ((request_id, stream),) = live.server.bridge.in_flight.items()
        # The connection is closed: the request ends at the next step, its blocks free then.
        deadline = time.monotonic() + 20
        while not any(request_id in r.finished for r in engine.records):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        record = next(r for r in engine.records if request_id in r.finished)
        assert record.blocks_used == 0 and record.running == 0
        assert stream.request.finish_reason == "cancelled"
        assert len(stream.request.generated) < 500
    finally:
        gate.remove()
    check_idle(live)


def test_a_client_that_leaves_before_a_whole_answer_cancels_it(live):
    engine = live.engine
    gate = Gate(engine, delay=0.002)
    cancelled = live.server.metrics.finished["cancelled"]
    try:
        body = json.dumps({"prompt": "Once upon a time", "max_tokens": 500}).encode()
        host, port = live.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(
                b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                + KEY.encode() + b"\r\nContent-Length: " + str(len(body)).encode()
                + b"\r\n\r\n" + body
            )  # fmt: skip
            deadline = time.monotonic() + 20
            while not live.server.bridge.in_flight:
                assert time.monotonic() < deadline
                time.sleep(0.01)
        live.wait_idle()
        assert live.server.metrics.finished["cancelled"] == cancelled + 1
    finally:
        gate.remove()
    check_idle(live)


# ---------------------------------------------------------------- admission


def test_a_full_queue_is_refused_with_retry_after():
    engine = Engine(chat_model(), kv_memory="4MiB", max_seqs=1)
    live = LiveServer(engine, ServerConfig(NAME, max_queue=1))
    client = openai.OpenAI(base_url=live.url + "/v1", api_key="none", max_retries=0)
    gate = Gate(engine)
    gate.open.clear()  # the engine stops after its next step: requests stay in flight
    try:
        ask = dict(model=NAME, prompt="Once upon a time", max_tokens=20, temperature=0)
        streams = [client.completions.create(**ask, stream=True) for _ in range(2)]  # 1 + 1
        with pytest.raises(openai.InternalServerError) as caught:
            client.completions.create(model=NAME, prompt="Once upon a time", max_tokens=20)
        assert caught.value.status_code == 503
        assert caught.value.response.headers["retry-after"] == "1"
        assert caught.value.body["code"] == "queue_full"
        gate.open.set()
        texts = ["".join(c.choices[0].text for c in s if c.choices) for s in streams]
        assert texts[0] == texts[1] != ""
        live.wait_idle()
        assert engine.pool.n_used == 0
        client.completions.create(model=NAME, prompt="Once upon a time", max_tokens=2)  # room again
    finally:
        gate.remove()
        live.close()


def test_the_readme_client_example(live):
    """The README's `openai` example, run as written against this server."""
    readme = (ROOT / "README.md").read_text()
    (code,) = [
        b for b in re.findall(r"```python\n(.*?)```", readme, re.S)
        if b.startswith("# with llama-np serve running")
    ]  # fmt: skip
    assert 'base_url="http://127.0.0.1:8080/v1", api_key="none"' in code
    code = code.replace("http://127.0.0.1:8080", live.url).replace('"none"', f'"{KEY}"')
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    expected = llama_np.generate_text(live.engine.model, "Once upon a time", 40, temperature=0)
    assert out.getvalue() == expected


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_an_engine_that_fails_is_reported_not_hidden():
    """A bug that ends the engine thread: the requests in flight end with an error (a 500, or
    an error event in a stream), /health says so, and new requests are refused (503)."""
    engine = Engine(chat_model(), kv_memory="4MiB")
    live = LiveServer(engine, ServerConfig(NAME))
    client = openai.OpenAI(base_url=live.url + "/v1", api_key="none", max_retries=0)

    def bug(record) -> None:
        if record.index >= 3:
            raise RuntimeError("a bug in an observer")

    try:
        assert httpx.get(live.url + "/health").json() == {"status": "ok"}
        engine.on_step.append(bug)
        with pytest.raises(openai.InternalServerError) as caught:
            client.completions.create(model=NAME, prompt="Once upon a time", max_tokens=50)
        assert caught.value.status_code == 500 and caught.value.body["code"] == "engine_error"
        health = httpx.get(live.url + "/health")
        assert health.status_code == 503 and "stopped" in health.json()["status"]
        with pytest.raises(openai.InternalServerError) as caught:
            client.completions.create(model=NAME, prompt="Once upon a time", max_tokens=5)
        assert caught.value.status_code == 503
        assert caught.value.body["code"] == "engine_stopped"
    finally:
        live.close()


def test_a_story_model_serves_completions_only():
    """A model without a chat template or a recognisable format: chat is refused, naming the
    fix; the page opens in "continue text" mode. (An explicit --chat-format that does not fit
    is an error at start: test_server_process.)"""
    from llama_np.server import create_app

    app = create_app(Engine(llama_np.load(), kv_memory="1MiB"), ServerConfig(NAME))
    assert app.state.server.chat_format is None
    assert '"chat": false' in app.state.server.page

    async def ask() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            body = {"messages": [{"role": "user", "content": "Hi"}]}
            return await http.post("/v1/chat/completions", json=body)

    response = asyncio.run(ask())
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "no_chat_format" and "--chat-format" in error["message"]
