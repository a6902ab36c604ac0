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

log = logging.getLogger("llama_np.server")

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


def uvicorn_config(app, *, log_level: str = "warning", max_connections: int | None = None):
    """uvicorn's settings for `app` (create_app's): its timeouts and limits."""
    timeout = app.state.server.config.timeout
    return uvicorn.Config(
        app,
        http=_bounded_protocol(timeout, max_connections),
        lifespan="on",
        log_level=log_level,
        access_log=log_level in ("info", "debug", "trace"),
        timeout_keep_alive=5,  # an idle connection is closed after 5 s
        timeout_graceful_shutdown=10,  # streams end at once; this bounds the rest
        limit_concurrency=max_connections,  # more requests get 503 from uvicorn itself
        h11_max_incomplete_event_size=64 * 1024,  # request line and headers
    )


def _bounded_protocol(timeout: float, max_connections: int | None) -> type:
    """uvicorn's HTTP protocol, which also closes a connection whose request line and headers
    have not all come `timeout` seconds after its first byte (or after it opened), and one
    that opens while `max_connections` are open. uvicorn closes idle connections between
    requests and the app times out bodies; without this, clients that open connections and
    send nothing, or half a header, would hold them forever and, at the process's limit of
    open files, lock every other client out (slowloris)."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol  # h11, or httptools if installed

    class BoundedProtocol(AutoHTTPProtocol):
        header_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if max_connections is not None and len(self.connections) > max_connections:
                transport.close()
                return
            self._await_headers()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._await_headers()

        def connection_lost(self, exc) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
            super().connection_lost(exc)

        def _waiting(self) -> bool:  # for a request's headers: none yet, or the last answered
            return self.cycle is None or self.cycle.response_complete

        def _await_headers(self) -> None:
            if not self._waiting() and self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None
            elif self._waiting() and self.header_timer is None:
                self.header_timer = self.loop.call_later(timeout, self._headers_late)

        def _headers_late(self) -> None:
            self.header_timer = None
            if self._waiting() and not self.transport.is_closing():
                log.info(
                    "a client sent no whole request in %s s: its connection is closed", timeout
                )
                self.transport.close()

    return BoundedProtocol


def _allow_open_files(n: int) -> None:
    """Raise this process's limit of open files to n if it is lower (as far as the hard limit
    allows): each connection is one, and a soft limit of 1024 is common."""
    try:
        import resource
    except ImportError:  # Windows: no such limit
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < n:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (n if hard == resource.RLIM_INFINITY else min(n, hard), hard)
        )


def serve(
    app, sock: socket.socket, *, on_ready=lambda: None, log_level="warning", max_connections=None
) -> None:
    """Run `app` (create_app's) on the listening socket until SIGINT or SIGTERM; returns then.
    on_ready() is called once it serves; connections past `max_connections` are closed."""
    config = uvicorn_config(app, log_level=log_level, max_connections=max_connections)
    if max_connections is not None:
        _allow_open_files(max_connections + 256)  # + the model's files, the engine, the loop
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
