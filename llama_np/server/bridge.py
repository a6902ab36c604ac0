"""The engine thread, seen from the server's event loop: handlers submit, read, cancel.

    bridge = Bridge(engine, max_queue=64)
    bridge.start()                                      # in the event loop (the app's startup)
    stream = bridge.submit(tokens, 50, temperature=0)   # APIError 503 when the queue is full
    async for event in stream: ...                      # TokenEvents; the last one finished
    stream.cancel()                                     # the client left: its blocks go back

One thread (EngineThread) runs the engine's steps; it hands the events to the event loop
with `call_soon_threadsafe`, and nothing else crosses between the two. A step's events go over
together: one wake-up of the loop per step, not one per request. Admission happens here: at
most max_seqs running + max_queue waiting requests are in flight. The count lives in the
loop's thread (no lock) and drops when a request's last event arrives, however it ended
(finished, cancelled, failed), so a request can never be counted twice or lost.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence

from ..engine import Engine, Request, TokenEvent
from ..engine.background import EngineThread
from .protocol import APIError

log = logging.getLogger("llama_np.server")
RETRY_AFTER = 1  # seconds a client refused for a full queue is told to wait


class RequestStream:
    """One request's events, as they come: `async for event in stream`."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.request: Request | None = None
        self.finished = False  # the last event has arrived
        self._events: asyncio.Queue[TokenEvent] = asyncio.Queue()

    def _arrived(self, event: TokenEvent) -> None:  # in the loop's thread
        self._events.put_nowait(event)
        if event.finished:
            self.finished = True
            self.bridge._ended(self)

    async def __aiter__(self) -> AsyncIterator[TokenEvent]:
        while True:
            event = await self._events.get()
            yield event
            if event.finished:
                return

    def cancel(self) -> None:
        """End the request at the engine's next step (nothing if it has ended)."""
        if not self.finished and self.request is not None:
            self.bridge.thread.cancel(self.request.id)


class Bridge:
    """An Engine stepping in its own thread, with admission control, for asyncio handlers."""

    def __init__(self, engine: Engine, max_queue: int) -> None:
        self.engine = engine
        self.thread = EngineThread(engine)
        self.limit = engine.scheduler.config.max_seqs + max_queue
        self.in_flight: dict[int, RequestStream] = {}  # by request id
        self.draining = False  # shutting down: no new requests
        self.on_finished: list[Callable[[Request], None]] = []  # called in the loop's thread
        self._loop: asyncio.AbstractEventLoop | None = None
        self._arrivals: deque[tuple[RequestStream, TokenEvent]] = deque()  # to hand over
        self._handover = threading.Lock()
        self._handover_due = False  # a _deliver is scheduled in the loop

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.thread.start()

    def warm_up(self) -> None:
        """One short greedy request before any client's (blocking: run it in a thread), as
        llama-server does: compiled kernels load or compile now (~1 s on their first call),
        not during the first client's answer."""
        bos = self.engine.model.config.bos_id
        try:
            for _ in self.thread.stream([bos], 2, temperature=0, stop_ids=()):
                pass
        except RuntimeError:  # told to stop (SIGINT, SIGTERM) before it started: nothing to warm
            pass

    def submit(self, prompt: Sequence[int], max_new_tokens: int, **kwargs) -> RequestStream:
        """Add a request (Engine.add_request's arguments; its errors raise here)."""
        if self.draining:
            raise APIError(
                503, "the server is shutting down", type="server_error", code="shutting_down"
            )
        if len(self.in_flight) >= self.limit:
            raise APIError(
                503,
                f"the server is busy: {len(self.in_flight)} requests in flight, as many as it "
                f"takes (--max-seqs running + --max-queue waiting); retry in {RETRY_AFTER} s",
                type="server_error",
                code="queue_full",
                headers={"Retry-After": str(RETRY_AFTER)},
            )
        stream = RequestStream(self)

        def on_event(event: TokenEvent) -> None:  # in the engine's thread
            self._arrivals.append((stream, event))
            with self._handover:
                if self._handover_due:
                    return  # the loop has yet to take the earlier ones: it takes this too
                self._handover_due = True
            try:
                self._loop.call_soon_threadsafe(self._deliver)
            except RuntimeError:  # the loop has closed: the server is gone
                pass

        if not self.thread.alive:  # ended by a bug (its traceback is in the log)
            raise APIError(503, "the engine has stopped; restart the server",
                           type="server_error", code="engine_stopped")  # fmt: skip
        stream.request = self.thread.submit(prompt, max_new_tokens, on_event, **kwargs)
        self.in_flight[stream.request.id] = stream
        return stream

    def _deliver(self) -> None:
        """Hand the events that arrived to their streams (in the loop's thread)."""
        with self._handover:
            self._handover_due = False  # from now on, a new event schedules a new _deliver
        while self._arrivals:
            stream, event = self._arrivals.popleft()
            stream._arrived(event)

    def _ended(self, stream: RequestStream) -> None:
        request = stream.request
        self.in_flight.pop(request.id, None)
        if request.finish_reason == "kv_memory":  # the client sees "length"; the operator this
            log.warning(
                "request %d was cut short at %d tokens: alone, it outgrew the whole KV cache "
                "(--kv-memory)", request.id, request.n_tokens,
            )  # fmt: skip
        for observer in self.on_finished:
            observer(request)

    def drain(self) -> None:
        """Stop taking requests and cancel those in flight: each stream gets its last event
        (finish reason "abort") and ends cleanly. In the loop's thread."""
        self.draining = True
        self.thread.stop(timeout=0)  # cancels everything in flight; does not wait

    def drain_threadsafe(self) -> None:
        """drain(), from any thread or a signal handler: it runs in the event loop."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.drain)

    def stop(self, timeout: float = 10.0) -> None:
        """Drain, then wait for the engine thread to end (blocking: run it in a thread)."""
        self.draining = True
        self.thread.stop(timeout)
