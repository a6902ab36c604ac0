"""A `llama-np serve` app running in this process, on a loopback port, for the server tests:
real HTTP (uvicorn, with the settings `llama-np serve` gives it), so the `openai` client and a
browser talk to it as to any server, and the test can look at the engine behind it (its pool,
its steps) directly.
"""

from __future__ import annotations

import threading
import time

import uvicorn

import llama_np
from llama_np.engine import Engine
from llama_np.server import ServerConfig, create_app
from llama_np.server.run import listen, uvicorn_config

# Chat template of the test model: stories260K has none, so its tokenizer is given this one,
# and the server renders messages with it as with any checkpoint's own (no special tokens,
# so that its rendering is also a plain `llama-np generate -p` prompt).
TEMPLATE = (
    "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def chat_model() -> llama_np.Model:
    """stories260K, its tokenizer given TEMPLATE as its chat template."""
    model = llama_np.load()
    model.tokenizer.chat_template = TEMPLATE
    return model


class LiveServer:
    """create_app(engine, config) served by uvicorn in a thread: `.url`, `.engine`, `.server`
    (the app's state), `.close()`."""

    def __init__(
        self, engine: Engine, config: ServerConfig, max_connections: int | None = None
    ) -> None:
        self.engine = engine
        self.app = create_app(engine, config)
        self.server = self.app.state.server
        sock = listen("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self._uvicorn = uvicorn.Server(uvicorn_config(self.app, max_connections=max_connections))
        self._thread = threading.Thread(
            target=self._uvicorn.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._uvicorn.started:
            assert self._thread.is_alive() and time.monotonic() < deadline, "no server"
            time.sleep(0.01)

    def wait_idle(self, timeout: float = 30) -> None:
        """Until no request is in flight and the engine has nothing left to do."""
        deadline = time.monotonic() + timeout
        while self.server.bridge.in_flight or self.engine.has_unfinished():
            assert time.monotonic() < deadline, "the server did not become idle"
            time.sleep(0.01)

    def close(self) -> None:
        self._uvicorn.should_exit = True
        self._thread.join(30)
        assert not self._thread.is_alive()


class Gate:
    """An engine observer that holds the engine thread after each step while closed (to keep
    requests in flight on purpose), or slows each step by `delay` seconds."""

    def __init__(self, engine: Engine, delay: float = 0.0) -> None:
        self.engine, self.delay = engine, delay
        self.open = threading.Event()
        self.open.set()
        engine.on_step.append(self)

    def __call__(self, record) -> None:
        if self.delay:
            time.sleep(self.delay)
        self.open.wait(30)

    def remove(self) -> None:
        self.open.set()
        self.engine.on_step.remove(self)
