"""Fuzzing the server's border: random request bodies (fields of the right name with right
or wrong values, unknown fields, bytes that are not JSON) and headers (API keys right, wrong
and missing, random others), on every endpoint. Every answer must be a well-formed OpenAI
error with the status its cause calls for, or a valid completion; the server must stay up;
afterwards no KV block is held, the pool's books balance, and no request object is left.
"""

from __future__ import annotations

import gc
import json
import weakref

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from live_server import LiveServer, chat_model

from llama_np.engine import Engine, Request
from llama_np.server import ServerConfig

KEY = "fuzz-key"
NAME = "stories260K"
STATUSES = {200, 400, 401, 404, 405, 408, 413, 503}
FINISHES = {"stop", "length"}


@pytest.fixture(scope="module")
def live():
    engine = Engine(chat_model(), kv_memory="8MiB", max_seqs=8)
    server = LiveServer(
        engine, ServerConfig(NAME, api_key=KEY, max_tokens=32, max_body_bytes=64 * 1024)
    )
    yield server
    server.close()


@pytest.fixture(scope="module")
def http(live):
    with httpx.Client(base_url=live.url, timeout=60) as client:
        yield client


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
texts = st.text(max_size=40)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "developer", "tool", "robot"]),
     "content": texts | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": texts}),
                                 max_size=2)},
    optional={"name": st.text(max_size=8), "tool_calls": json_values},
)  # fmt: skip
# Plausible values of each field (right and wrong ones: ranges straddle the limits).
FIELDS = {
    "model": st.sampled_from([NAME, "gpt-4o", ""]),
    "max_tokens": st.integers(-2, 24),
    "max_completion_tokens": st.integers(0, 24),
    "temperature": st.floats(-0.5, 3),
    "top_p": st.floats(-0.1, 1.1),
    "top_k": st.integers(-3, 60),
    "min_p": st.floats(-0.1, 1.1),
    "repeat_penalty": st.floats(0, 3),
    "repeat_last_n": st.integers(-2, 80),
    "presence_penalty": st.sampled_from([0, 0.0, 0.5, -2]),
    "frequency_penalty": st.sampled_from([0, 1.0]),
    "seed": st.integers(-(2**64), 2**65),
    "stop": st.text(max_size=4) | st.lists(st.text(max_size=4), max_size=20),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
    "logprobs": st.booleans() | st.integers(-1, 22),
    "top_logprobs": st.integers(-1, 22),
    "n": st.integers(0, 3),
    "user": st.text(max_size=8),
    "tools": st.just([]) | st.just([{"type": "function"}]),
    "response_format": st.sampled_from([{"type": "text"}, {"type": "json_object"}]),
    "messages": st.lists(message, max_size=4),
    "prompt": texts | st.lists(st.integers(-1, 600), max_size=24) | st.lists(texts, max_size=2),
    "content": texts,
    "tokens": st.lists(st.integers(-1, 600), max_size=10),
    "add_special": st.booleans(),
    "with_pieces": st.booleans(),
}
bodies = st.fixed_dictionaries(
    {},
    optional={k: v | json_values for k, v in FIELDS.items()}
    | {"frobnicate": json_values, "messages\x00": json_values},
)
ENDPOINTS = ["/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize"]
header_names = st.from_regex(r"X-[A-Za-z0-9-]{1,12}", fullmatch=True)
header_values = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20).map(
    str.strip
)
BASIC = "Basic Zm9vOmZ1enota2V5"  # user "foo", password KEY: how a browser sends the key
keys = st.sampled_from([f"Bearer {KEY}", "Bearer wrong", "", BASIC, "Basic Zm9v", "bearer"])
keys |= header_values


@st.composite
def requests(draw):
    method = draw(st.sampled_from(["POST"] * 9 + ["GET", "PUT"]))
    path = draw(st.sampled_from([*ENDPOINTS, "/v1/models", "/metrics", "/scheduler?since=x"]))
    headers = dict(draw(st.dictionaries(header_names, header_values, max_size=3)))
    auth = draw(keys)
    if auth:
        headers["Authorization"] = auth
    headers["Content-Type"] = draw(st.sampled_from(["application/json", "text/plain", "x/y"]))
    kind = draw(st.sampled_from(["json"] * 8 + ["bytes", "nan"]))
    if kind == "bytes":
        content = draw(st.binary(max_size=64))
    else:
        body = draw(bodies)
        if kind == "nan":
            body["temperature"] = float("nan")
        content = json.dumps(body).encode()
    return method, path, headers, content


def check_error(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str)
    assert error["param"] is None or isinstance(error["param"], str)
    assert error["code"] is None or isinstance(error["code"], str)
    if error["param"] and response.status_code == 400:
        assert error["param"][:20] in error["message"], error  # the field is named
    return error


def check_completion(path: str, body: dict, stream: bool, content: bytes) -> None:
    chat = path == "/v1/chat/completions"
    kind = "chat.completion" if chat else "text_completion"
    if stream:
        lines = [line for line in content.decode().split("\n\n") if line]
        assert lines[-1] == "data: [DONE]"
        chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
        assert all("error" not in c for c in chunks)
        assert {c["object"] for c in chunks} == {kind + ".chunk" if chat else kind}
        finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
        assert finishes[-1] in FINISHES and not any(finishes[:-1])
        if chunks[-1]["choices"] == []:  # include_usage
            usage = chunks[-1]["usage"]
            assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        return
    reply = json.loads(content)
    assert reply["object"] == kind and reply["model"] == NAME
    (choice,) = reply["choices"]
    assert choice["finish_reason"] in FINISHES
    text = choice["message"]["content"] if chat else choice["text"]
    assert isinstance(text, str)
    usage = reply["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=requests())
def test_every_answer_is_a_completion_or_an_openai_error(live, http, request):
    method, path, headers, content = request
    response = http.request(method, path, headers=headers, content=content)
    status = response.status_code
    assert status in STATUSES, (status, response.text[:300])
    allowed = ("POST",) if path in ENDPOINTS else ("GET", "HEAD")
    if method not in allowed:  # the wrong method, whatever the key
        assert status == 405 and check_error(response)["message"].startswith("Method not allowed")
        return
    authorized = headers.get("Authorization") in (f"Bearer {KEY}", BASIC)
    if not authorized:
        assert status == 401 and check_error(response)["code"] in (
            "missing_api_key", "invalid_api_key",
        )  # fmt: skip
        return
    if status != 200:
        error = check_error(response)
        if status == 404:
            assert error["param"] == "model" or error["message"].startswith("Invalid URL")
        return
    if path in ("/v1/chat/completions", "/v1/completions"):
        body = json.loads(content)
        check_completion(path, body, bool(body.get("stream")), response.content)
    elif path == "/tokenize":
        assert all(isinstance(t, int | dict) for t in response.json()["tokens"])
    elif path == "/detokenize":
        assert isinstance(response.json()["content"], str)


def test_after_the_fuzzing_nothing_is_held(live, http):
    """Run after the fuzz test (file order): the server is up and idle, every block free."""
    assert http.get("/health").json() == {"status": "ok"}
    live.wait_idle()
    pool = live.engine.pool
    pool.check()
    assert pool.n_used == 0 and pool.n_free == pool.n_blocks
    assert not live.server.bridge.in_flight and not live.engine.requests
    assert not live.engine.scheduler.running and not live.engine.scheduler.waiting
    gc.collect()
    # (a dead weakref.proxy, as numba leaves behind, raises on isinstance: skipped first)
    held = [
        o
        for o in gc.get_objects()
        if not isinstance(o, weakref.ProxyTypes) and isinstance(o, Request)
    ]
    assert held == []
