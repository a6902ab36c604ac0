"""`llama-np serve`: an OpenAI-compatible HTTP server on the serving engine, with a live page
that shows the scheduler at work.

    app.py       the HTTP app: routes, the API key, bodies, streams (Starlette)
    protocol.py  OpenAI's request fields checked, its responses and errors built
    bridge.py    the engine thread seen from the event loop: submit, events, cancel, admission
    metrics.py   GET /metrics in Prometheus' text format
    page.py      the live page (GET /) and the scheduler's view it polls (GET /scheduler)
    run.py       the process: listen, uvicorn, a clean shutdown on SIGINT/SIGTERM

Needs the `serve` extra (Starlette and uvicorn): pip install -e '.[serve]'.
"""

from .app import ServerConfig, create_app

__all__ = ["ServerConfig", "create_app"]
