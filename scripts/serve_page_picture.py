"""Draw docs/img/serve/live-page.png: the live page of `llama-np serve` (stories260K) while
four clients share the engine and the page's own chat streams a story.

    python scripts/serve_page_picture.py        # needs chromium and the serve extra

The clients' prompts start with the same 40 words (their first KV blocks are shared, and
found in the prefix cache), the engine runs at most 24 tokens a step (so a prompt is
prefilled in chunks beside the others' decode tokens), and every step is slowed by 4 ms so
that the page has something to show at a human pace.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import uvicorn  # noqa: E402

import llama_np  # noqa: E402
from llama_np.engine import Engine  # noqa: E402
from llama_np.server import ServerConfig, create_app  # noqa: E402
from llama_np.server.run import listen  # noqa: E402

OUT = ROOT / "docs" / "img" / "serve" / "live-page.png"
SHARED = (
    "Once upon a time, in a small town by the sea, there lived a girl named Lily who loved "
    "to play with her red ball in the park every day with her friends. "
)
ENDINGS = ["One day", "Her dog Max", "Tom said", "The sun was"]


def main() -> int:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("no chromium: the picture was not drawn", file=sys.stderr)
        return 1
    engine = Engine(llama_np.load(), kv_memory="16MiB", max_batch_tokens=24)
    engine.on_step.append(lambda record: time.sleep(0.004))
    app = create_app(engine, ServerConfig("stories260K"))
    sock = listen("127.0.0.1", 0)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    done = threading.Event()

    def client(ending: str) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            while not done.is_set():
                body = {"prompt": SHARED + ending, "max_tokens": 50, "temperature": 0.8}
                http.post("/v1/completions", json=body)

    clients = [threading.Thread(target=client, args=(e,)) for e in ENDINGS]
    for thread in clients:
        thread.start()
    time.sleep(3.0)  # the clients are under way when the page opens
    ask = quote("Once upon a time, there was a little dog")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run(
                [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                 "--window-size=1300,820", "--virtual-time-budget=2500", f"--screenshot={OUT}",
                 f"{url}/#ask={ask}&mode=completion&temperature=0&max_tokens=60"],
                check=True, capture_output=True, timeout=120,
            )  # fmt: skip
    finally:
        done.set()
        for thread in clients:
            thread.join(60)
        server.should_exit = True
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
