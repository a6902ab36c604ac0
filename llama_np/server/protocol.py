"""The OpenAI API at the server's border: a request body checked into one typed `Job`, and
the answers built field for field as OpenAI's clients read them.

    body = parse_body(raw, max_bytes)             # a JSON object (bounded: validate.parse_json)
    job = chat_job(body, "stories260K")            # or completion_job: every field checked
    ... the engine runs job.max_tokens, job.sampling, job.seed, job.stop, job.logprobs ...
    chat_response(...), chat_chunk(...)            # or completion_response / completion_chunk

Every refusal is an `APIError`: an HTTP status and OpenAI's error object,
`{"error": {"message", "type", "param", "code"}}`, whose `param` names the field at fault.
A field this server does not implement (n > 1, tools, a JSON response_format, logit_bias,
...) is refused by name unless its value asks for nothing (n = 1, tools = []); a field OpenAI
does not define is refused as OpenAI refuses it ("Unrecognized request argument"). Nothing is
silently ignored. `null` means "not given", as in OpenAI's API.

Sampling defaults are OpenAI's (temperature 1, top_p 1, no top-k or min-p), not llama.cpp's
command-line ones. llama.cpp's server extensions are accepted as llama-server accepts them:
top_k (<= 0: off), min_p, repeat_penalty, repeat_last_n (-1: the whole context); and
ignore_eos (llama-server's and vLLM's: generate max_tokens whatever the model says, for
benchmarks).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ..errors import ArgumentError
from ..sampling import SamplingParams
from ..validate import (
    Bool,
    Either,
    Float,
    Int,
    List,
    Map,
    Obj,
    Spec,
    Str,
    check_text,
    parse_json,
    validate,
)

MAX_STOP = 16  # stop strings per request (OpenAI: 4; llama-server: any)
MAX_STOP_CHARS = 256  # each is matched against the text held back, token by token
MAX_MESSAGES = 4096
MAX_TEXT = 1 << 26  # a string field's characters; the body limit bounds it first
MAX_LOGPROBS = 20  # alternatives per token: the engine's bound, and OpenAI's top_logprobs
INT64 = 2**63

# What a finished request's engine reason is called in OpenAI's API. "abort" (vLLM's word)
# is a request cancelled by the server, e.g. when it shuts down; "error" is sent as an error.
FINISH_REASONS = {
    "end_token": "stop",
    "stop_string": "stop",
    "max_new_tokens": "length",
    "context_full": "length",
    "kv_memory": "length",
    "cancelled": "abort",
}


class APIError(Exception):
    """A refused request: the HTTP status and OpenAI's error object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        self.type, self.param, self.code = type, param, code
        self.headers = dict(headers or {})

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


@dataclass(frozen=True)
class Job:
    """One request, checked: what to generate and how to answer.

    prompt: a completion's prompt, text or token ids (chat: None);
    messages: a chat's messages as the chat template takes them (completion: None);
    max_tokens: tokens to generate at most (None: until the context is full);
    sampling: SamplingParams keywords; logprobs: alternatives reported per token (None: no
    log-probabilities at all).
    """

    endpoint: str  # "chat" or "completion"
    model: str | None
    prompt: str | list[int] | None
    messages: list[dict] | None
    max_tokens: int | None
    stream: bool
    include_usage: bool
    sampling: dict
    seed: int | None
    stop: list[str]
    logprobs: int | None
    ignore_eos: bool = False  # no end token ends it (llama.cpp, vLLM): benchmarks


# ---------------------------------------------------------------- bodies


def parse_body(raw: bytes, max_bytes: int) -> dict:
    """A request body as a JSON object, parsed with bounded work (depth, digits, size)."""
    try:
        body = parse_json(raw, "request body", ArgumentError, max_bytes)
    except ArgumentError as error:
        raise bad_request(str(error), code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request(f"request body: expected a JSON object, found {_kind(body)}")
    return body


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true or false"}.get(
        type(value), "null" if value is None else "a number"
    )


def _field(body: dict, key: str, spec: Spec):
    """body[key] checked against spec; None when absent or null."""
    value = body.get(key)
    if value is None:
        return None
    try:
        return validate(value, spec, key, ArgumentError)
    except ArgumentError as error:
        raise bad_request(str(error), param=key, code="invalid_value") from None


def _text_field(body: dict, key: str, max_len: int = MAX_TEXT) -> str | None:
    value = _field(body, key, Str(max_len))
    if value is not None:
        try:
            check_text(value, key)
        except ArgumentError as error:
            raise bad_request(str(error), param=key, code="invalid_value") from None
    return value


# ---------------------------------------------------------------- fields of both endpoints

NON_NEGATIVE = Int(0, 2**31 - 1)
STOP = Either((Str(MAX_STOP_CHARS), List(Str(MAX_STOP_CHARS), max_len=MAX_STOP)))

# Sampling fields: the API's name -> SamplingParams' name. Values are checked by
# SamplingParams itself, one field at a time, so that an error names its field.
SAMPLING_FIELDS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",  # llama.cpp
    "min_p": "min_p",  # llama.cpp
    "repeat_penalty": "repetition_penalty",  # llama.cpp
    "repeat_last_n": "repeat_last_n",  # llama.cpp
    "presence_penalty": "presence_penalty",  # used only if the sampler has it
    "frequency_penalty": "frequency_penalty",
}
# OpenAI's defaults, where they differ from SamplingParams' (llama.cpp's command line).
OPENAI_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0}


def _sampler_fields() -> set[str]:
    """What SamplingParams can do, read at run time: a penalty added to the sampler later is
    accepted without a change here."""
    return {f.name for f in dataclasses.fields(SamplingParams)}


# Parameters OpenAI defines and this server does not implement: refused, naming them, unless
# the value asks for nothing. name -> (is the value a no-op?, what is not supported).
UNSUPPORTED: dict[str, tuple[Callable[[object], bool], str]] = {
    "n": (lambda v: type(v) is int and v == 1, "a number of choices other than 1 (n)"),
    "service_tier": (lambda v: v in ("auto", "default"), "service tiers (service_tier)"),
    "best_of": (lambda v: type(v) is int and v == 1, "best_of > 1"),
    "echo": (lambda v: v is False, "echoing the prompt (echo)"),
    "suffix": (lambda v: v == "", "a suffix (insertion)"),
    "logit_bias": (lambda v: v == {}, "logit_bias"),
    "tools": (lambda v: v == [], "tools (function calling)"),
    "functions": (lambda v: v == [], "functions (function calling)"),
    "tool_choice": (lambda v: v == "none", "tool_choice (function calling)"),
    "function_call": (lambda v: v == "none", "function_call (function calling)"),
    "parallel_tool_calls": (lambda v: isinstance(v, bool), "parallel_tool_calls"),
    "response_format": (lambda v: v == {"type": "text"}, "structured output (response_format)"),
    "modalities": (lambda v: v == ["text"], "output modalities other than text"),
    "audio": (lambda v: False, "audio output"),
    "prediction": (lambda v: False, "predicted outputs (prediction)"),
    "store": (lambda v: v is False, "storing completions (store)"),
}
# Accepted and not used: an end-user id, kept by OpenAI for abuse monitoring, and tags of
# stored completions; they change nothing in the answer (their types are still checked).
IDENTIFIERS = {"user": Str(), "metadata": Map(Str(512), Str(64), max_len=16)}

COMMON = {"model", "max_tokens", "stream", "stream_options", "seed", "stop", "logprobs"}
COMMON |= {"ignore_eos"}
COMMON |= set(SAMPLING_FIELDS) | set(UNSUPPORTED) | set(IDENTIFIERS)
CHAT_FIELDS = COMMON | {"messages", "max_completion_tokens", "top_logprobs"}
COMPLETION_FIELDS = COMMON | {"prompt"}


def _check_known(body: dict, known: set[str]) -> None:
    for key in body:
        if key not in known:
            raise bad_request(
                f"Unrecognized request argument supplied: {key[:100]}",
                param=key[:100],
                code="unknown_parameter",
            )
    for key, spec in IDENTIFIERS.items():
        _field(body, key, spec)
    for key, (no_op, what) in UNSUPPORTED.items():
        if body.get(key) is not None and not no_op(body[key]):
            raise bad_request(
                f"{key}: this server does not support {what}", param=key, code="unsupported"
            )


def _sampling(body: dict, context: int) -> dict:
    """SamplingParams keywords from the body, OpenAI's defaults where absent."""
    kwargs = dict(OPENAI_DEFAULTS)
    supported = _sampler_fields()
    for key, name in SAMPLING_FIELDS.items():
        integral = key in ("top_k", "repeat_last_n")
        value = _field(body, key, Int(-INT64, INT64 - 1) if integral else Float())
        if value is None:
            continue
        if key == "top_k" and value < 0:
            value = 0  # llama-server: top_k <= 0 keeps every token
        if key == "repeat_last_n" and value == -1:
            value = context  # llama-server: -1 looks back over the whole context
        if name not in supported:  # presence/frequency penalty without sampler support
            if value != 0:
                raise bad_request(
                    f"{key}: this server's sampler has no {key.replace('_', ' ')}; send 0 or "
                    f"leave it out (repeat_penalty, llama.cpp's, is supported)",
                    param=key,
                    code="unsupported",
                )
            continue
        try:
            SamplingParams(**{name: value})  # checked alone, so the error names its field
        except ArgumentError as error:
            raise bad_request(f"{key}: {error}", param=key, code="invalid_value") from None
        kwargs[name] = value
    return kwargs


def _stop(body: dict) -> list[str]:
    stop = _field(body, "stop", STOP)
    stop = [stop] if isinstance(stop, str) else (stop or [])
    for s in stop:
        try:
            check_text(s, "stop")
        except ArgumentError as error:
            raise bad_request(str(error), param="stop", code="invalid_value") from None
    if any(not s for s in stop):
        raise bad_request("stop: stop strings must not be empty", param="stop")
    return stop


def _seed(body: dict) -> int | None:
    seed = _field(body, "seed", Int(-INT64, 2 * INT64 - 1))
    # Any 64-bit seed, signed or not: a negative one is taken as its unsigned bits.
    return None if seed is None else seed % (2 * INT64)


def _stream(body: dict) -> tuple[bool, bool]:
    """-> (stream, include_usage)."""
    stream = bool(_field(body, "stream", Bool()))
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not stream:
        raise bad_request(
            "stream_options: only allowed when stream is true", param="stream_options"
        )
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise bad_request(
            'stream_options: expected an object with (only) "include_usage"',
            param="stream_options",
        )
    usage = _field(options, "include_usage", Bool())
    return stream, bool(usage)


def _common(body: dict, endpoint: str, context: int) -> dict:
    stream, include_usage = _stream(body)
    model = _field(body, "model", Str(256))
    return dict(
        endpoint=endpoint,
        model=model,
        stream=stream,
        include_usage=include_usage,
        sampling=_sampling(body, context),
        seed=_seed(body),
        stop=_stop(body),
        ignore_eos=bool(_field(body, "ignore_eos", Bool())),
    )


# ---------------------------------------------------------------- the two endpoints


def chat_job(body: dict, context: int) -> Job:
    """POST /v1/chat/completions: the body checked (context: the model's, for -1 values)."""
    _check_known(body, CHAT_FIELDS)
    fields = _common(body, "chat", context)
    max_tokens = _field(body, "max_completion_tokens", NON_NEGATIVE)
    if max_tokens is None:
        max_tokens = _field(body, "max_tokens", NON_NEGATIVE)
    logprobs = _field(body, "logprobs", Bool())
    top = _field(body, "top_logprobs", Int(0, MAX_LOGPROBS))
    if top is not None and not logprobs:
        raise bad_request("top_logprobs: needs logprobs set to true", param="top_logprobs")
    messages = _messages(body.get("messages"))
    return Job(
        prompt=None,
        messages=messages,
        max_tokens=max_tokens,
        logprobs=(top or 0) if logprobs else None,
        **fields,
    )


def completion_job(body: dict, context: int) -> Job:
    """POST /v1/completions: the body checked. The prompt is text or token ids (a list of
    one of these, as OpenAI also allows, is taken as that one)."""
    _check_known(body, COMPLETION_FIELDS)
    fields = _common(body, "completion", context)
    max_tokens = _field(body, "max_tokens", NON_NEGATIVE)
    logprobs = _field(body, "logprobs", Int(0, MAX_LOGPROBS))
    return Job(
        prompt=_prompt(body.get("prompt")),
        messages=None,
        max_tokens=16 if max_tokens is None else max_tokens,  # OpenAI's default
        logprobs=logprobs,
        **fields,
    )


TOKEN_IDS = List(Int(0, 2**31 - 1), min_len=1)


def _prompt(value) -> str | list[int]:
    if value is None:
        raise bad_request("prompt: required", param="prompt", code="missing")
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str | list):
        value = value[0]  # ["text"] or [[ids]]: one prompt in a list
    if isinstance(value, list) and value and all(isinstance(v, str | list) for v in value):
        raise bad_request(
            "prompt: one prompt per request (a list of several prompts is not supported)",
            param="prompt",
            code="unsupported",
        )
    if isinstance(value, str):
        return _text_field({"prompt": value}, "prompt")
    if not isinstance(value, list):
        raise bad_request(
            f"prompt: expected text or a list of token ids, found {_kind(value)}", param="prompt"
        )
    return _field({"prompt": value}, "prompt", TOKEN_IDS)


# Roles a chat template knows. OpenAI's "developer" is the system role of newer models.
ROLES = ("system", "developer", "user", "assistant")
PART = Obj({"type": Str(16, choices=("text",)), "text": Str(MAX_TEXT)})
MESSAGE_FIELDS = {"role", "content", "name"}


def _messages(value) -> list[dict]:
    """The messages as the chat template takes them: {"role", "content"[, "name"]}, the
    content as text (a list of text parts is joined)."""
    if value is None:
        raise bad_request("messages: required", param="messages", code="missing")
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_MESSAGES:
        raise bad_request(
            f"messages: expected a list of 1..{MAX_MESSAGES} messages, found {_kind(value)}"
            + (f" of {len(value)}" if isinstance(value, list) else ""),
            param="messages",
        )
    messages = []
    for i, message in enumerate(value):
        at = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad_request(f"{at}: expected an object, found {_kind(message)}", param=at)
        for key in message:
            if key not in MESSAGE_FIELDS:
                what = "tool calls" if key in ("tool_calls", "function_call") else "this field"
                raise bad_request(
                    f"{at}.{key[:100]}: not supported ({what})",
                    param=f"{at}.{key[:100]}",
                    code="unsupported",
                )
        role = message.get("role")
        if role in ("tool", "function"):
            raise bad_request(
                f"{at}.role: {role!r} messages are not supported (no tools)",
                param=f"{at}.role",
                code="unsupported",
            )
        if role not in ROLES:
            raise bad_request(
                f"{at}.role: expected one of {', '.join(map(repr, ROLES))}, found "
                f"{str(role)[:100]!r}",
                param=f"{at}.role",
            )
        out = {"role": "system" if role == "developer" else role, "content": _content(message, at)}
        if message.get("name") is not None:
            out["name"] = _text_field(message, "name", 256)
        messages.append(out)
    return messages


def _content(message: dict, at: str) -> str:
    content = message.get("content")
    if content is None and message["role"] == "assistant":
        return ""
    where = f"{at}.content"
    if isinstance(content, list):
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text":
                raise bad_request(
                    f"{where}[{j}]: only text parts are supported, found "
                    + (f"type {str(kind)[:40]!r}" if kind else _kind(part)),
                    param=f"{where}[{j}]",
                    code="unsupported",
                )
        parts = _field({where: content}, where, List(PART, max_len=MAX_MESSAGES))
        content = "".join(part["text"] for part in parts)
    elif not isinstance(content, str):
        raise bad_request(
            f"{where}: expected a string or a list of text parts, found {_kind(content)}",
            param=where,
        )
    try:
        return check_text(content, where)
    except ArgumentError as error:
        raise bad_request(str(error), param=where) from None


# ---------------------------------------------------------------- tokenize / detokenize


def tokenize_request(body: dict) -> tuple[str, bool, bool, bool]:
    """POST /tokenize, as llama-server: -> (content, add_special, parse_special, with_pieces).

    parse_special defaults to false (llama-server: true): the text of a special token ("</s>")
    stays text, as in a completion's prompt, so that /tokenize counts a prompt's tokens."""
    _check_only(body, {"content", "add_special", "parse_special", "with_pieces"})
    content = _text_field(body, "content")
    if content is None:
        raise bad_request("content: required", param="content", code="missing")
    flags = [_field(body, key, Bool()) for key in ("add_special", "parse_special", "with_pieces")]
    add_special, parse_special, with_pieces = flags
    return content, bool(add_special), bool(parse_special), bool(with_pieces)


def detokenize_request(body: dict) -> list[int]:
    """POST /detokenize, as llama-server: -> the token ids."""
    _check_only(body, {"tokens"})
    tokens = _field(body, "tokens", List(Int(0, 2**31 - 1)))
    if tokens is None:
        raise bad_request("tokens: required", param="tokens", code="missing")
    return tokens


def _check_only(body: dict, known: set[str]) -> None:
    for key in body:
        if key not in known:
            raise bad_request(
                f"Unrecognized request argument supplied: {key[:100]}", param=key[:100]
            )


# ---------------------------------------------------------------- answers


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability and the most likely alternatives."""

    token: bytes
    logprob: float
    top: tuple[tuple[bytes, float], ...]


def _token_text(token: bytes) -> str:
    return token.decode("utf-8", errors="backslashreplace")  # a split character: its bytes


def _finite(x: float) -> float:
    return x if math.isfinite(x) else -9999.0  # JSON has no -Infinity (OpenAI's floor)


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def chat_logprobs(tokens: Sequence[TokenLogprob]) -> dict:
    def entry(token: bytes, logprob: float) -> dict:
        return {"token": _token_text(token), "logprob": _finite(logprob), "bytes": list(token)}

    return {
        "content": [
            {**entry(t.token, t.logprob), "top_logprobs": [entry(*alt) for alt in t.top]}
            for t in tokens
        ],
        "refusal": None,
    }


def completion_logprobs(tokens: Sequence[TokenLogprob], offset: int = 0) -> dict:
    texts = [_token_text(t.token) for t in tokens]
    offsets = []
    for text in texts:
        offsets.append(offset)
        offset += len(text)
    return {
        "tokens": texts,
        "token_logprobs": [_finite(t.logprob) for t in tokens],
        "top_logprobs": [{_token_text(b): _finite(lp) for b, lp in t.top} for t in tokens],
        "text_offset": offsets,
    }


def chat_response(
    id: str, created: int, model: str, text: str, finish: str, use: dict, logprobs: dict | None
) -> dict:
    return {
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": logprobs,
                "finish_reason": finish,
            }
        ],
        "usage": use,
    }


def chat_chunk(
    id: str,
    created: int,
    model: str,
    delta: dict,
    finish: str | None = None,
    logprobs: dict | None = None,
    with_usage: bool = False,
) -> dict:
    chunk = {
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
    }
    if with_usage:
        chunk["usage"] = None  # stream_options.include_usage: null until the last chunk
    return chunk


def completion_response(
    id: str, created: int, model: str, text: str, finish: str, use: dict, logprobs: dict | None
) -> dict:
    return {
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}],
        "usage": use,
    }


def completion_chunk(
    id: str,
    created: int,
    model: str,
    text: str,
    finish: str | None = None,
    logprobs: dict | None = None,
    with_usage: bool = False,
) -> dict:
    chunk = completion_response(id, created, model, text, finish, None, logprobs)
    if not with_usage:
        del chunk["usage"]
    return chunk


def usage_chunk(id: str, created: int, model: str, endpoint: str, use: dict) -> dict:
    """The last chunk of a stream with include_usage: no choices, the usage."""
    kind = "chat.completion.chunk" if endpoint == "chat" else "text_completion"
    return {
        "id": id,
        "object": kind,
        "created": created,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [],
        "usage": use,
    }


def model_card(name: str, created: int, context: int) -> dict:
    return {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": "llama_np",
        "context_length": context,
    }


SYSTEM_FINGERPRINT = "llama_np"
