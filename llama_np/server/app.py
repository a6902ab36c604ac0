"""The HTTP layer: OpenAI's endpoints, llama-server's tokenize and detokenize, /metrics,
/health, and the live page, as a Starlette app.

    POST /v1/chat/completions   messages -> the checkpoint's chat template -> a reply
    POST /v1/completions        a prompt (text or token ids) -> its continuation
    GET  /v1/models             the one model served
    POST /tokenize, /detokenize as llama-server
    GET  /metrics               Prometheus text (metrics.py)
    GET  /health                {"status": "ok"}: no API key needed
    GET  /, /scheduler          the live page and what it polls (page.py)

Handlers check the request (protocol.py), submit it, and stream or collect its events; one
engine thread runs every step (bridge.py). A client that goes away mid-answer cancels its
request, and its KV blocks are free after the engine's next step. Every error, expected or
not, is answered in OpenAI's shape; none stops the server.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..chat import make_chat_format
from ..engine import Engine, TokenEvent
from ..errors import ArgumentError, ContextLengthError, LlamaNpError
from ..generate import prompt_tokens
from ..sampling import SamplingParams
from . import protocol
from .bridge import Bridge, RequestStream
from .metrics import Metrics
from .page import SchedulerView, page_html
from .protocol import APIError, Job, TokenLogprob, bad_request

log = logging.getLogger("llama_np.server")
Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class ServerConfig:
    """How the server answers (the engine's own knobs are the Engine's).

    model_name: the id clients use (GET /v1/models), e.g. the checkpoint's name;
    api_key: required (Bearer) on every endpoint but /health, if set;
    chat_format: as `llama-np chat --chat-format` (None: the checkpoint's template, or the
        built-in format its tokenizer suggests);
    max_queue: requests waiting beyond the engine's max_seqs running; more are refused (503);
    max_tokens: the most tokens one request generates (None: the context's); more asked
        end there, with finish_reason "length", as at the end of the context;
    max_body_bytes: the largest request body read;
    timeout: seconds a client has to send its request body, and to take each piece of a
        streamed answer; a client slower than that is cut off (its request cancelled).
    """

    model_name: str
    api_key: str | None = None
    chat_format: str | None = None
    max_queue: int = 256
    max_tokens: int | None = None
    max_body_bytes: int = 2 * 2**20
    timeout: float = 60.0

    def __post_init__(self) -> None:
        if not (isinstance(self.max_queue, int) and self.max_queue >= 0):
            raise ArgumentError(f"max_queue must be an integer >= 0, got {self.max_queue!r}")
        if self.max_tokens is not None and not (
            isinstance(self.max_tokens, int) and self.max_tokens >= 1
        ):
            raise ArgumentError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if not (isinstance(self.max_body_bytes, int) and self.max_body_bytes >= 1024):
            raise ArgumentError(f"max_body_bytes must be >= 1024, got {self.max_body_bytes!r}")
        if not 0 < self.timeout < 86400:
            raise ArgumentError(f"timeout must be in (0, 86400) seconds, got {self.timeout!r}")
        if self.api_key is not None and not self.api_key:
            raise ArgumentError("api_key must not be empty (leave it out for no key)")


class EventStream(StreamingResponse):
    """Server-sent events, each piece sent within `timeout` seconds: a client that stops
    reading is cut off (and its request cancelled) instead of holding the connection."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[bytes], timeout: float) -> None:
        super().__init__(events, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.timeout = timeout

    async def stream_response(self, send) -> None:
        async def timed_send(message) -> None:
            with anyio.fail_after(self.timeout):
                await send(message)

        try:
            await super().stream_response(timed_send)
        except TimeoutError:
            log.warning("a client took no data for %s s: its stream is cut off", self.timeout)
        finally:
            await self.body_iterator.aclose()  # its finally cancels the request


class Server:
    """The app's state and its handlers: one engine, one model, one chat format."""

    def __init__(self, engine: Engine, config: ServerConfig) -> None:
        self.engine = engine
        self.model = engine.model
        self.config = config
        self.context = self.model.config.max_seq_len
        self.bridge = Bridge(engine, config.max_queue)
        self.metrics = Metrics(engine, config.model_name)
        self.bridge.on_finished.append(self.metrics.request_finished)
        self.view = SchedulerView(engine)
        self.created = int(time.time())
        try:
            self.chat_format = make_chat_format(self.model.tokenizer, config.chat_format)
            self.chat_error = None
        except LlamaNpError as error:
            if config.chat_format is not None:  # asked for, and it does not fit: say so now
                raise
            self.chat_format, self.chat_error = None, str(error)  # a story model: completions
        self.page = page_html(config.model_name, self.context, self.chat_format is not None)

    # ---------------------------------------------------------------- the app

    def app(self) -> Starlette:
        public, keyed = self._public, self._keyed
        routes = [
            Route("/health", public(self.health)),
            Route("/", self._page_route(self.live_page)),
            Route("/scheduler", keyed(self.scheduler)),
            Route("/v1/models", keyed(self.models)),
            Route("/v1/models/{model:path}", keyed(self.model_info)),
            Route("/v1/chat/completions", keyed(self.chat), methods=["POST"]),
            Route("/v1/completions", keyed(self.completions), methods=["POST"]),
            Route("/tokenize", keyed(self.tokenize), methods=["POST"]),
            Route("/detokenize", keyed(self.detokenize), methods=["POST"]),
            Route("/metrics", keyed(self.prometheus)),
        ]

        @asynccontextmanager
        async def lifespan(app):
            self.bridge.start()
            await anyio.to_thread.run_sync(self.bridge.warm_up)  # before the first client
            try:
                yield
            finally:
                await anyio.to_thread.run_sync(self.bridge.stop)

        app = Starlette(routes=routes, lifespan=lifespan)
        app.add_exception_handler(HTTPException, _http_error)  # unknown path, wrong method
        # A bug in a handler: Starlette answers with this (OpenAI's shape), then lets the
        # exception go on to uvicorn, which logs its traceback; the server keeps serving.
        app.add_exception_handler(Exception, _internal_error)
        app.state.server = self
        return app

    def _public(self, handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except APIError as error:
                return error_response(error)
            except ClientDisconnect:  # it left while sending its request: nobody to answer
                return Response(status_code=400)

        return endpoint

    def _keyed(self, handler: Handler, challenge: bool = False) -> Handler:
        """The handler behind the API key check (if the server has a key)."""

        async def checked(request: Request) -> Response:
            self._check_key(request, challenge)
            return await handler(request)

        return self._public(checked)

    def _page_route(self, handler: Handler) -> Handler:
        # A browser cannot send a Bearer header when it opens a page; it can answer HTTP Basic
        # authentication (any user name, the key as password), and then sends it with the
        # page's own requests too.
        return self._keyed(handler, challenge=True)

    def _check_key(self, request: Request, challenge: bool) -> None:
        key = self.config.api_key
        if key is None:
            return
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        given = None
        if scheme.lower() == "bearer":
            given = value.strip()
        elif scheme.lower() == "basic":
            given = _basic_password(value.strip())
        elif "x-api-key" in request.headers:  # llama-server accepts this header too
            given = request.headers["x-api-key"]
        headers = {"WWW-Authenticate": 'Basic realm="llama-np"'} if challenge else None
        if not given:
            raise APIError(
                401,
                "Missing API key: send it as the header 'Authorization: Bearer YOUR_KEY'",
                code="missing_api_key",
                headers=headers,
            )
        # Compared as bytes (a header arrives as latin-1), in constant time.
        if not hmac.compare_digest(given.encode("latin-1", "replace"), key.encode("utf-8")):
            raise APIError(401, "Incorrect API key provided", code="invalid_api_key",
                           headers=headers)  # fmt: skip

    # ---------------------------------------------------------------- small endpoints

    async def health(self, request: Request) -> Response:
        if self.bridge.draining:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        if not self.bridge.thread.alive:
            return JSONResponse({"status": "error: the engine has stopped"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def live_page(self, request: Request) -> Response:
        return HTMLResponse(self.page)

    async def scheduler(self, request: Request) -> Response:
        since = request.query_params.get("since", "0")
        if not since.isdigit() or len(since) > 18:
            raise bad_request(f"since: expected a step index >= 0, found {since[:40]!r}", "since")
        view = self.view.snapshot(int(since))
        return JSONResponse({**view, "latency": self.metrics.medians()})

    async def models(self, request: Request) -> Response:
        card = protocol.model_card(self.config.model_name, self.created, self.context)
        return JSONResponse({"object": "list", "data": [card]})

    async def model_info(self, request: Request) -> Response:
        self._check_model(request.path_params["model"])
        return JSONResponse(protocol.model_card(self.config.model_name, self.created, self.context))

    async def prometheus(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4")

    async def tokenize(self, request: Request) -> Response:
        content, add_special, parse_special, with_pieces = protocol.tokenize_request(
            await self._body(request)
        )
        tokenizer = self._tokenizer()  # any length the body allows (--max-body): counting
        try:  # a long document is what this is for
            tokens = await run_in_threadpool(
                tokenizer.encode, content, add_special, allow_special=parse_special
            )
        except LlamaNpError as error:
            raise bad_request(str(error), "content") from None
        if not with_pieces:
            return JSONResponse({"tokens": tokens})
        pieces = []
        for t in tokens:
            raw = tokenizer.token_bytes(t, special=True)
            try:
                piece = raw.decode("utf-8")
            except UnicodeDecodeError:  # part of a character: its bytes, as llama-server
                piece = list(raw)
            pieces.append({"id": t, "piece": piece})
        return JSONResponse({"tokens": pieces})

    async def detokenize(self, request: Request) -> Response:
        tokens = protocol.detokenize_request(await self._body(request))
        tokenizer = self._tokenizer()
        bad = [t for t in tokens if t >= tokenizer.vocab_size]
        if bad:
            raise bad_request(
                f"tokens: id {bad[0]} is outside the vocabulary 0..{tokenizer.vocab_size - 1}",
                "tokens",
            )
        return JSONResponse({"content": tokenizer.decode(tokens)})

    def _tokenizer(self):
        if self.model.tokenizer is None:
            raise bad_request("this model has no tokenizer (it was loaded without one)")
        return self.model.tokenizer

    # ---------------------------------------------------------------- generation

    async def chat(self, request: Request) -> Response:
        job = protocol.chat_job(await self._body(request), self.context)
        self._check_model(job.model)
        if self.chat_format is None:
            raise bad_request(
                f"this server has no chat format for its model: {self.chat_error}; start it "
                f"with --chat-format, or use /v1/completions",
                "messages",
                code="no_chat_format",
            )
        tokens = await run_in_threadpool(self._render, job.messages)
        stop_ids = self.chat_format.stop_ids | set(self.model.config.stop_ids)  # as chat's
        return await self._generate(request, job, tokens, stop_ids)

    async def completions(self, request: Request) -> Response:
        job = protocol.completion_job(await self._body(request), self.context)
        self._check_model(job.model)
        if isinstance(job.prompt, str):
            self._check_fits(job.prompt, "prompt")
        try:
            tokens = await run_in_threadpool(prompt_tokens, self.model, job.prompt)
        except LlamaNpError as error:
            raise bad_request(str(error), "prompt") from None
        return await self._generate(request, job, tokens, None)

    def _render(self, messages: list[dict]) -> list[int]:
        """The conversation as the model sees it, ready for the reply (as llama-np chat)."""
        at_least = sum(self._tokenizer().min_tokens(m["content"]) for m in messages)
        if at_least > self.context:
            raise APIError(400, f"messages are at least {at_least:,} tokens, more than the "
                           f"model's context of {self.context:,}; shorten them",
                           param="messages", code="context_length_exceeded")  # fmt: skip
        try:
            if hasattr(self.chat_format, "dialog"):  # a built-in format
                return self.chat_format.dialog(messages)
            return self.chat_format.encode(messages, add_generation_prompt=True)
        except LlamaNpError as error:  # a conversation the template refuses, ...
            raise bad_request(str(error), "messages") from None

    def _check_fits(self, text: str, param: str) -> None:
        """Refuse text that cannot fit in the context before tokenizing it (linear time)."""
        at_least = self._tokenizer().min_tokens(text) + 1
        if at_least > self.context:
            raise APIError(400, f"{param} is at least {at_least:,} tokens, more than the "
                           f"model's context of {self.context:,}; shorten it",
                           param=param, code="context_length_exceeded")  # fmt: skip

    def _check_model(self, name: str | None) -> None:
        if name is not None and name != self.config.model_name:
            raise APIError(404, f"The model '{name[:200]}' does not exist; this server serves "
                           f"'{self.config.model_name}'", param="model",
                           code="model_not_found")  # fmt: skip

    async def _generate(
        self, request: Request, job: Job, tokens: list[int], stop_ids: set[int] | None
    ) -> Response:
        param = "messages" if job.endpoint == "chat" else "prompt"
        # As the context ends a request, so does the server's limit: finish_reason "length".
        cap = self.config.max_tokens or self.context
        max_new = min(job.max_tokens, cap) if job.max_tokens is not None else cap
        try:
            stream = self.bridge.submit(
                tokens,
                max_new,
                sampling=SamplingParams(**job.sampling),
                seed=job.seed,
                stop=job.stop,
                stop_ids=() if job.ignore_eos else stop_ids,
                logprobs=job.logprobs,
            )
        except ContextLengthError as error:
            raise APIError(400, str(error), param=param, code="context_length_exceeded") from None
        except LlamaNpError as error:
            raise bad_request(str(error), param) from None
        answer = Answer(self, job, stream)
        if job.stream:
            return EventStream(answer.events(), self.config.timeout)
        return await answer.collect(request)

    async def _body(self, request: Request) -> dict:
        """The request body as a JSON object: at most max_body_bytes, within the timeout."""
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _too_large(limit)
        raw = bytearray()
        try:
            with anyio.fail_after(self.config.timeout):
                async for chunk in request.stream():
                    raw += chunk
                    if len(raw) > limit:
                        raise _too_large(limit)
        except TimeoutError:
            raise APIError(408, f"the request body did not arrive within {self.config.timeout:g} "
                           f"s", code="timeout") from None  # fmt: skip
        return protocol.parse_body(bytes(raw), limit)


class Answer:
    """One request's answer, streamed (server-sent events) or whole, from its events."""

    def __init__(self, server: Server, job: Job, stream: RequestStream) -> None:
        self.server, self.job, self.stream = server, job, stream
        prefix = "chatcmpl" if job.endpoint == "chat" else "cmpl"
        self.id = f"{prefix}-{secrets.token_hex(12)}"
        self.created = int(time.time())
        self.model = server.config.model_name

    def _logprob(self, event: TokenEvent) -> TokenLogprob | None:
        if self.job.logprobs is None or event.token is None or event.logprob is None:
            return None
        token_bytes = self.server.model.tokenizer.token_bytes
        top = tuple((token_bytes(t), lp) for t, lp in event.top_logprobs)
        return TokenLogprob(token_bytes(event.token), event.logprob, top)

    def _usage(self) -> dict:
        request = self.stream.request
        return protocol.usage(len(request.prompt), len(request.generated), request.n_cached)

    def _error(self) -> APIError:
        error = self.stream.request.error
        return APIError(500, f"the engine failed on this request: {error or 'unknown error'}",
                        type="server_error", code="engine_error")  # fmt: skip

    async def events(self) -> AsyncIterator[bytes]:
        """The server-sent events of a streamed answer, ending with [DONE]."""
        job, chat = self.job, self.job.endpoint == "chat"
        usage = job.include_usage

        def chunk(text: str, finish: str | None = None, lps: Sequence[TokenLogprob] = ()) -> bytes:
            nonlocal offset
            if chat:
                delta = {"content": text} if text or lps else {}
                logprobs = protocol.chat_logprobs(lps) if lps else None
                body = protocol.chat_chunk(self.id, self.created, self.model, delta, finish,
                                           logprobs, usage)  # fmt: skip
            else:
                logprobs = protocol.completion_logprobs(lps, offset) if lps else None
                if logprobs:  # where the next token's text starts, as in a whole answer
                    offset = logprobs["text_offset"][-1] + len(logprobs["tokens"][-1])
                body = protocol.completion_chunk(self.id, self.created, self.model, text, finish,
                                                 logprobs, usage)  # fmt: skip
            return sse(body)

        # The chunk of a piece of text (the common case, once per token) is the same object
        # every time but for the text: rendered once with a marker where the text goes, each
        # piece's JSON string is spliced in.
        head, _, tail = chunk(MARKER).partition(json_bytes(MARKER))

        def text_chunk(text: str) -> bytes:
            return head + json_bytes(text) + tail

        offset = 0  # characters of the tokens' texts sent so far (completions' text_offset)
        # Tokens' log-probabilities go out with the last of their text (held back with it at
        # a possible stop string, never sent if it was one), so that they spell the text.
        pending: list[TokenLogprob] = []
        try:
            if chat:
                yield sse(protocol.chat_chunk(self.id, self.created, self.model,
                                              {"role": "assistant", "content": ""},
                                              with_usage=usage))  # fmt: skip
            async for event in self.stream:
                if event.finish_reason == "error":
                    yield sse(self._error().body())
                    break
                lp = self._logprob(event)
                if lp:
                    pending.append(lp)
                sent = max(0, len(pending) - event.unsent)
                lps, pending = pending[:sent], pending[sent:]
                if lps:
                    yield chunk(event.text, lps=lps)
                elif event.text:
                    yield text_chunk(event.text)
                if event.finished:
                    yield chunk("", protocol.FINISH_REASONS[event.finish_reason])
                    if usage:
                        yield sse(protocol.usage_chunk(self.id, self.created, self.model,
                                                       job.endpoint, self._usage()))  # fmt: skip
            yield b"data: [DONE]\n\n"
        finally:
            self.stream.cancel()  # the client went away (or the server is stopping)

    async def collect(self, request: Request) -> Response:
        """The whole answer as one JSON object. A client that disconnects before it is ready
        cancels its request."""
        events: list[TokenEvent] = []

        async def watch(scope: anyio.CancelScope) -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            scope.cancel()

        try:
            async with anyio.create_task_group() as group:
                group.start_soon(watch, group.cancel_scope)
                async for event in self.stream:
                    events.append(event)
                group.cancel_scope.cancel()
        finally:
            self.stream.cancel()
        if not self.stream.finished:
            return Response(status_code=499)  # the client is gone: nobody reads this
        last = events[-1]
        if last.finish_reason == "error":
            return error_response(self._error())
        text = "".join(e.text for e in events)
        lps = [lp for lp in map(self._logprob, events) if lp is not None]
        lps = lps[: len(lps) - last.unsent]  # those cut with a stop string: not in the text
        finish = protocol.FINISH_REASONS[last.finish_reason]
        if self.job.endpoint == "chat":
            logprobs = protocol.chat_logprobs(lps) if self.job.logprobs is not None else None
            body = protocol.chat_response(self.id, self.created, self.model, text, finish,
                                          self._usage(), logprobs)  # fmt: skip
        else:
            logprobs = protocol.completion_logprobs(lps) if self.job.logprobs is not None else None
            body = protocol.completion_response(self.id, self.created, self.model, text, finish,
                                                self._usage(), logprobs)  # fmt: skip
        return JSONResponse(body)


MARKER = "\x00text\x00"  # stands for a chunk's text while its bytes are made


def sse(body: dict) -> bytes:
    return b"data: " + json_bytes(body) + b"\n\n"


def json_bytes(body) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def _too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is more than {limit:,} bytes (--max-body)",
                    code="request_too_large")  # fmt: skip


def _basic_password(value: str) -> str | None:
    """The password of an HTTP Basic Authorization value (base64 of "user:password")."""
    try:
        decoded = base64.b64decode(value, validate=True).decode("latin-1")
    except (binascii.Error, ValueError):
        return None
    return decoded.partition(":")[2]


async def _http_error(request: Request, exc: HTTPException) -> Response:
    """Starlette's own refusals (no such path, a method the path does not take), in
    OpenAI's shape, as OpenAI words them."""
    where = f"{request.method} {request.url.path[:200]}"
    message = {404: f"Invalid URL ({where})", 405: f"Method not allowed ({where})"}.get(
        exc.status_code, str(exc.detail)
    )
    return error_response(APIError(exc.status_code, message, headers=exc.headers))


async def _internal_error(request: Request, exc: Exception) -> Response:
    return error_response(APIError(500, "internal server error", type="server_error"))


def create_app(engine: Engine, config: ServerConfig) -> Starlette:
    """The server's ASGI app for `engine` (its thread starts with the app's lifespan)."""
    return Server(engine, config).app()
