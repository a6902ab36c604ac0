"""An engine stepping in a thread of its own: how a server drives it.

    loop = EngineThread(Engine(model)).start()
    for event in loop.stream("Once upon a time", 50, temperature=0):   # from any thread
        print(event.text, end="")
    loop.stop()

One thread runs `engine.step()` while any request is in flight and sleeps when none is.
Other threads only submit, receive and cancel: `submit` registers a callback that gets each
TokenEvent of that request (called in the engine thread: hand it on, e.g. with asyncio's
`loop.call_soon_threadsafe`, and return), `cancel` ends a request at the next step and frees
its KV blocks, `stream` is the blocking iterator for plain threads. A bug in a step ends the
thread with its traceback; every request in flight then gets a last event with finish_reason
"error", and `submit` refuses new ones.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence

from .engine import Engine, TokenEvent
from .request import Request

Callback = Callable[[TokenEvent], None]


class EngineThread:
    """Runs `engine` in a background thread; thread-safe submit, cancel and stream."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._callbacks: dict[int, Callback] = {}  # request id -> who gets its events
        self._lock = threading.Lock()  # callbacks are registered before any event is sent
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="llama_np-engine", daemon=True)

    def start(self) -> EngineThread:
        self._thread.start()
        return self

    def submit(
        self, prompt: str | Sequence[int], max_new_tokens: int, on_event: Callback, **kwargs
    ) -> Request:
        """Add a request (Engine.add_request's arguments, checked now: errors raise here);
        `on_event(event)` is called in the engine thread with each of its events, the last
        with finished=True; it must return quickly and not raise."""
        if self._stopping:
            raise RuntimeError("the engine thread is stopping or stopped: no new requests")
        with self._lock:
            request = self.engine.add_request(prompt, max_new_tokens, **kwargs)
            self._callbacks[request.id] = on_event
        self._wake.set()
        return request

    def cancel(self, request_id: int) -> None:
        """End a request at the next step (its last event says "cancelled")."""
        self.engine.abort(request_id)
        self._wake.set()

    def stream(
        self, prompt: str | Sequence[int], max_new_tokens: int, **kwargs
    ) -> Iterator[TokenEvent]:
        """The request's events as they come, for a plain thread (blocks between them).
        Leaving the loop early cancels the request."""
        events: queue.SimpleQueue[TokenEvent] = queue.SimpleQueue()
        request = self.submit(prompt, max_new_tokens, events.put, **kwargs)
        finished = False
        try:
            while not finished:
                event = events.get()
                finished = event.finished
                yield event
        finally:
            if not finished:
                self.cancel(request.id)

    def stop(self, timeout: float | None = 10.0) -> None:
        """Cancel what is in flight (each request gets its last event), then end the thread."""
        self._stopping = True
        with self._lock:
            in_flight = list(self._callbacks)
        for request_id in in_flight:
            self.engine.abort(request_id)
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        """Whether it takes requests: started, not stopping, not ended by a bug."""
        return self._thread.is_alive() and not self._stopping

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._callbacks)

    def _run(self) -> None:
        try:
            self._loop()
        finally:  # stopped, or a bug in a step (its traceback is printed): no one waits forever
            self._stopping = True
            self._dispatch(self._fail_all())

    def _loop(self) -> None:
        while True:
            if not self.engine.has_unfinished():
                if self._stopping:
                    return
                self._wake.wait()
                self._wake.clear()
                continue
            self._dispatch(self.engine.step())

    def _dispatch(self, events: list[TokenEvent]) -> None:
        """Hand each event to its request's callback (which must not raise)."""
        with self._lock:
            for event in events:
                callback = self._callbacks.get(event.request_id)
                if event.finished:
                    self._callbacks.pop(event.request_id, None)
                if callback is not None:
                    callback(event)

    def _fail_all(self) -> list[TokenEvent]:
        """End every request still in flight with finish_reason "error"."""
        events = []
        for request in list(self.engine.requests.values()):
            request.error = RuntimeError("the engine thread stopped")
            self.engine.scheduler.finish(request, "error")
            self.engine.requests.pop(request.id, None)
            events.append(TokenEvent(request.id, "", None, True, "error"))
        return events
