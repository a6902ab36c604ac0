"""The explorer page, loaded in a real headless browser (Chromium): no script errors, and the
DOM holds the heads, the tokens and a row of attention probabilities that sums to 1 and is
the row the model computed.

Chromium comes from Debian's packages (`.ci/run` installs it); without it this test is
skipped locally, and fails in CI (CI=true), where it must run.
"""

import re

import browser
import numpy as np
import pytest
from browser import Elements

import llama_np
from llama_np.tools.colors import PHASE_COLORS
from llama_np.tools.explorer import write_html
from llama_np.tools.machine import MachinePeaks
from llama_np.tools.profile import profile_generation
from llama_np.tools.trace import token_labels, trace_attention

PEAKS = MachinePeaks(50e9, 5e9, "test")


def dump_dom(url: str, width: int = 1200) -> tuple[str, str]:
    """The DOM after the page's scripts ran, in a window `width` pixels wide, and the
    browser's log (console messages)."""
    return browser.dump_dom(url, f"--window-size={width},900", what="the explorer test")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    model = llama_np.load()
    trace = trace_attention(model, "Once upon a time", 6)
    prompt = [int(t) for t in trace.tokens[: trace.n_prompt]]
    profile = profile_generation(model, prompt, 3, PEAKS, repeats=1, batch=2)
    path = write_html(tmp_path_factory.mktemp("explorer") / "explorer.html", trace, profile,
                      model.config.n_kv_heads)  # fmt: skip
    return path, trace, profile


def test_page_is_self_contained(page):
    html = page[0].read_text()
    assert "<link" not in html and " src=" not in html  # no stylesheet or script files
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", html))
    assert urls <= {"http://www.w3.org/2000/svg"}  # an XML namespace name, never fetched


def test_page_in_a_headless_browser(page):
    path, trace, profile = page
    layer, head, query = 3, 5, 7  # picked by the address, as a student's hover would
    dom, log = dump_dom(f"{path.as_uri()}#layer={layer}&head={head}&query={query}")
    assert "Uncaught" not in log, log[-2000:]
    doc = Elements()
    doc.feed(dom)
    assert doc.by_id("errors")["text"] == ""
    assert 'data-ready="yes"' in dom

    H = trace.probs.shape[1]
    heads = [e for e in doc.all if e["tag"] == "option" and e["text"].startswith("head ")]
    assert [e["text"] for e in heads] == [f"head {h}" for h in range(H)]
    tokens = doc.by_class("tok")
    assert [e["text"] for e in tokens] == token_labels(trace)
    assert len(doc.by_class("prefill")) >= trace.n_prompt  # tokens and table rows
    assert [e["data-index"] for e in tokens if "prefill" in e["class"]] == [
        str(n) for n in range(trace.n_prompt)
    ]
    assert "query head 5 reads K/V head 2" in doc.by_id("gqa")["text"]

    assert doc.by_id("query-label")["data-index"] == str(query)
    row = np.array([float(e["data-p"]) for e in doc.by_class("p")])
    assert row.shape == (query + 1,)
    assert row.sum() == pytest.approx(1, abs=1e-3)
    assert float(doc.by_id("row-sum")["text"]) == pytest.approx(1, abs=1e-3)
    np.testing.assert_allclose(row, trace.probs[layer, head, query, : query + 1], atol=1e-4)

    # the heat map labels its columns with the keys, one per token
    keys = [e for e in doc.by_class("key") if e["tag"] == "th"]
    assert [e["text"] for e in keys] == token_labels(trace)

    # the roofline: one roof (the machine's), its two regions named, each phase in its colour
    circles = [e for e in doc.all if e["tag"] == "circle"]
    assert [e["data-phase"] for e in circles] == ["prefill", "decode", "batch-decode"]
    assert all(e["fill"] == PHASE_COLORS[e["data-phase"]] for e in circles)
    assert len([e for e in doc.all if e["tag"] == "polyline"]) == 1
    assert [e["text"] for e in doc.by_class("region-label")] == ["memory-bound", "compute-bound"]
    regions = [e for e in doc.by_class("region") if e["tag"] == "rect"]
    assert [e["data-bound"] for e in regions] == ["memory"]
    ridge = profile.peaks.ridge  # the shaded region ends at the ridge
    assert float(regions[0]["width"]) > 0 and ridge > 0
    # the token strip and the legend take the phase colours from the same table
    style = doc.all[0].get("style", "")  # <html style="--prefill: ...">
    for phase, color in PHASE_COLORS.items():
        assert f"--{phase}: {color}" in style


PROBE = """<script>
const strip = document.getElementById("tokens");
document.body.dataset.stripOverflow = String(strip.scrollWidth - strip.clientWidth);
document.body.dataset.stripRows = String(new Set([...strip.children].map(e => e.offsetTop)).size);
document.body.dataset.pageOverflow = String(document.documentElement.scrollWidth - innerWidth);
</script></body>"""


def test_long_generations_wrap_instead_of_overflowing(tmp_path):
    """Sixty tokens in a 700-pixel window: the token strip wraps onto several lines, and
    nothing makes the page scroll sideways (the heat map scrolls inside its own box)."""
    model = llama_np.load()
    trace = trace_attention(model, "Once upon a time", 60, layers=[0])
    html = write_html(tmp_path / "page.html", trace, None, model.config.n_kv_heads).read_text()
    probed = tmp_path / "probed.html"
    probed.write_text(html.replace("</body>", PROBE), encoding="utf-8")
    dom, log = dump_dom(probed.as_uri(), width=700)
    assert "Uncaught" not in log, log[-2000:]
    body = re.search(r"<body([^>]*)>", dom)[1]
    attrs = dict(re.findall(r'data-([\w-]+)="([^"]*)"', body))
    assert attrs["ready"] == "yes"
    assert int(attrs["strip-overflow"]) <= 0
    assert int(attrs["strip-rows"]) > 1
    assert int(attrs["page-overflow"]) <= 0


def page_json(path) -> dict:
    import json

    text = path.read_text()
    data = re.search(r'<script id="data" type="application/json">(.*?)</script>', text, re.S)
    return json.loads(data[1].replace("<\\/", "</"))


def test_trace_and_profile_write_the_page(tmp_path, monkeypatch, capsys):
    from llama_np.cli import main
    from llama_np.tools import machine

    monkeypatch.setattr(machine, "peaks", lambda remeasure=False, threads=None: PEAKS)
    trace_page, profile_page = tmp_path / "trace.html", tmp_path / "random.html"
    assert main(["trace", "-p", "Once upon a time", "-n", "3", "--heads", "1,6",
                 "--html", str(trace_page)]) == 0  # fmt: skip
    data = page_json(trace_page)
    assert data["attention"]["heads"] == [1, 6] and len(data["attention"]["probs"]) == 5
    assert [p["phase"] for p in data["roofline"]["phases"]] == ["prefill", "decode"]
    argv = ["profile", "--random", "stories260K", "-n", "2", "--repeats", "1", "--html",
            str(profile_page), "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    data = page_json(profile_page)
    assert data["attention"] is None  # random weights: no text to show, the roofline only
    assert data["roofline"]["model"] == "stories260K"
