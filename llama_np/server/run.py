"""The server process: listen, serve with uvicorn, and on SIGINT/SIGTERM shut down cleanly.

    sock = listen("127.0.0.1", 8080)       # early: a port in use is an error before the load
    serve(create_app(engine, config), sock)

On the first SIGINT or SIGTERM the server stops accepting connections, the bridge cancels
every request in flight (each stream gets its last chunk, finish_reason "abort", and
[DONE]), uvicorn waits for the connections to close and the engine thread ends: the process
exits with status 0. A second SIGINT forces the exit.
"""

from __future__ import annotations

import logging
import signal
import socket

import uvicorn

from ..errors import ArgumentError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (port 0: any free port), or ArgumentError saying why not."""
    if not 0 <= port <= 65535:
        raise ArgumentError(f"--port must be in 0..65535, got {port}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as error:
        raise ArgumentError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    sock.listen(2048)  # clients that come while the model loads wait in line, not refused
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server, which also says when it is ready (the app warmed up, the socket
    served) and tells the app to end its streams when a signal comes."""

    def __init__(self, config: uvicorn.Config, on_ready, on_exit) -> None:
        super().__init__(config)
        self.on_ready, self.on_exit = on_ready, on_exit

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started:
            self.on_ready()

    def handle_exit(self, sig, frame) -> None:
        first = not self.should_exit
        super().handle_exit(sig, frame)
        if first:
            self.on_exit()


def serve(
    app, sock: socket.socket, *, on_ready=lambda: None, log_level="warning", max_connections=None
) -> None:
    """Run `app` (create_app's) on the listening socket until SIGINT or SIGTERM; returns then.
    on_ready() is called once it serves."""
    config = uvicorn.Config(
        app,
        lifespan="on",
        log_level=log_level,
        access_log=log_level in ("info", "debug", "trace"),
        timeout_keep_alive=5,  # an idle connection is closed after 5 s
        timeout_graceful_shutdown=10,  # streams end at once; this bounds the rest
        limit_concurrency=max_connections,  # more connections get 503 from uvicorn itself
        h11_max_incomplete_event_size=64 * 1024,  # request line and headers
    )
    server = _Server(config, on_ready, app.state.server.bridge.drain_threadsafe)
    # uvicorn passes a caught signal on to the handler it found when it started, once it has
    # shut down; these handlers take it, so the process exits 0 instead of dying by it.
    previous = {s: signal.signal(s, lambda *_: None) for s in SIGNALS}
    logging.getLogger("uvicorn.error").propagate = False
    try:
        server.run(sockets=[sock])
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if not server.started:
        raise ArgumentError("the server did not start (see the error above)")
