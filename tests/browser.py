"""A page in a real headless browser (Chromium), for the tests of this project's HTML pages
(the explorer, the server's live page): its DOM after the scripts ran, and its elements.

Chromium comes from Debian's packages (`.ci/run` installs it); without it a page test is
skipped locally, and fails in CI (CI=true), where it must run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser

import pytest

BROWSER = next(
    (shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)),
    None,
)


def dump_dom(url: str, *flags: str, what: str = "the page test") -> tuple[str, str]:
    """The DOM of `url` after its scripts ran (Chromium's `--dump-dom`, with extra `flags`
    such as a window size or a virtual-time budget), and the browser's log."""
    if BROWSER is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run {what}: .ci/run installs chromium")
        pytest.skip("no chromium here: apt-get install chromium (CI installs it) to run this")
    with tempfile.TemporaryDirectory() as profile_dir:
        result = subprocess.run(
            [BROWSER, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", f"--user-data-dir={profile_dir}", "--enable-logging=stderr",
             "--v=0", *flags, "--dump-dom", url],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout, result.stderr


VOID = ("br", "img", "input", "meta", "link", "line", "circle", "rect", "polyline")


class Elements(HTMLParser):
    """Every element's attributes and text, by id and by class."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[dict] = []
        self.all: list[dict] = []

    def handle_starttag(self, tag, attrs):
        element = {"tag": tag, **dict(attrs), "text": ""}
        self.all.append(element)
        if tag not in VOID:  # elements without an end tag hold no text
            self.stack.append(element)

    def handle_endtag(self, tag):
        if self.stack and self.stack[-1]["tag"] == tag:
            self.stack.pop()

    def handle_data(self, data):
        for element in self.stack:
            element["text"] += data

    def by_id(self, id_: str) -> dict:
        (element,) = [e for e in self.all if e.get("id") == id_]
        return element

    def by_class(self, name: str) -> list[dict]:
        return [e for e in self.all if name in e.get("class", "").split()]
