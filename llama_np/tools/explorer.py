"""One self-contained HTML page to explore a generation: attention and the roofline.

    write_html("explorer.html", trace=trace, profile=profile)

The page needs no network: its script, its styles and the data (attention probabilities of
every recorded layer and head, the profile's phases and peaks) are inline. In it a student
picks a layer and a head, hovers a token to see where it attends (prefill rows and decode
rows in the phase colours every chart uses, colors.PHASE_COLORS), reads that row's
probabilities, and sees both phases on the roofline, its memory-bound and compute-bound
regions shaded. Errors the script meets are written into the page (#errors), so a headless
browser test can read them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .atomic import write_text
from .colors import PHASE_COLORS
from .profile import Profile
from .trace import AttentionTrace, token_labels


def page_data(
    trace: AttentionTrace | None,
    profile: Profile | None,
    kv_heads: int | None = None,
    heads: list[int] | None = None,
) -> dict:
    """The JSON the page embeds: `heads` of every traced layer (default: all)."""
    data: dict = {"attention": None, "roofline": None, "colors": PHASE_COLORS}
    if trace is not None:
        N = len(trace.tokens)
        heads = list(range(trace.probs.shape[1])) if heads is None else list(heads)
        rows = []  # rows[l][h][n] = the n+1 probabilities of token n over tokens 0..n
        for li in range(len(trace.layers)):
            rows.append(
                [
                    [np.round(trace.probs[li, h, n, : n + 1], 5).tolist() for n in range(N)]
                    for h in heads
                ]
            )
        data["attention"] = {
            "layers": list(trace.layers),
            "heads": heads,
            "n_heads": int(trace.probs.shape[1]),
            "kv_heads": kv_heads,
            "tokens": token_labels(trace),
            "n_prompt": trace.n_prompt,
            "probs": rows,
        }
    if profile is not None:
        data["roofline"] = {
            "model": profile.model,
            "peaks": {
                "threads": profile.peaks.threads,
                "flops": profile.peaks.matmul_flops,
                "bandwidth": profile.peaks.memory_bandwidth,
            },
            "phases": [profile.phase(name) for name in profile.phases()],
            "ttft_ms": 1e3 * profile.ttft,
            "tpot_ms": 1e3 * profile.tpot,
            "warnings": profile.warnings,
        }
    return data


def write_html(
    path: str | Path,
    trace: AttentionTrace | None = None,
    profile: Profile | None = None,
    kv_heads: int | None = None,
    heads: list[int] | None = None,
) -> Path:
    """Write the explorer page for a trace and/or a profile to `path`; `kv_heads` (the
    model's KVH) lets the page say which K/V head serves the chosen query head."""
    payload = json.dumps(page_data(trace, profile, kv_heads, heads), separators=(",", ":"))
    payload = payload.replace("</", "<\\/")  # token text cannot close the script element
    html = PAGE.replace("__DATA__", payload)
    path = Path(path)
    write_text(path, html)
    return path


PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>llama_np explorer</title>
<style>
  body { font: 14px system-ui, sans-serif; margin: 16px; color: #222; max-width: 1200px; }
  h1 { font-size: 20px; margin: 0 0 8px; }
  h2 { font-size: 16px; margin: 18px 0 6px; }
  .controls label { margin-right: 14px; }
  #tokens { display: flex; flex-wrap: wrap; gap: 2px; margin: 8px 0; }
  .tok { padding: 2px 3px; border: 1px solid #ccc; border-radius: 3px; cursor: pointer;
         white-space: pre; font-family: ui-monospace, monospace; }
  .tok.prefill { border-bottom: 3px solid var(--prefill); }
  .tok.decode { border-bottom: 3px solid var(--decode); }
  .prefill-text { color: var(--prefill); }
  .decode-text { color: var(--decode); }
  .tok.query { outline: 2px solid #000; }
  .tok.future { color: #bbb; }
  #row { font-family: ui-monospace, monospace; font-size: 12px; overflow-wrap: anywhere; }
  #row .p { display: inline-block; margin-right: 8px; }
  .heat-wrap { overflow-x: auto; max-width: 100%; }
  table.heat { border-collapse: collapse; font-size: 10px; }
  table.heat td { width: 14px; height: 14px; padding: 0; border: 1px solid #fff; }
  table.heat th { font-weight: normal; font-family: ui-monospace, monospace; text-align: right;
                  padding-right: 4px; white-space: pre; }
  table.heat thead th { writing-mode: vertical-rl; transform: rotate(180deg); text-align: left;
                        padding: 0 0 4px; vertical-align: bottom; width: 14px; }
  table.heat tr.sel th, table.heat th.sel { font-weight: bold; }
  .legend span { display: inline-block; width: 14px; height: 10px; margin: 0 4px; }
  #errors { color: #b00; white-space: pre-wrap; }
  .warn { color: #b00; }
  svg text { font: 11px system-ui, sans-serif; }
</style>
</head>
<body>
<h1>llama_np explorer</h1>
<pre id="errors"></pre>
<section id="attention-section">
  <h2>Attention</h2>
  <div class="controls">
    <label>layer <select id="layer"></select></label>
    <label>head <select id="head"></select></label>
    <span id="gqa"></span>
  </div>
  <p>Hover a token (or a row of the table below): its row of attention probabilities colours the tokens it attends to
  (darker = more). Underlined <span class="prefill-text">blue</span>: prompt tokens, whose
  rows came from one prefill pass; <span class="decode-text">orange</span>: generated
  tokens, each row from one decode step reading the KV cache. Grey: the future, hidden by
  the causal mask. The page's address can pick the view: <code>#layer=0&amp;head=3&amp;query=5</code>.</p>
  <div id="tokens"></div>
  <div id="row-info">query <b id="query-label"></b> (<span id="query-phase"></span> row):
    probabilities sum to <b id="row-sum"></b></div>
  <div id="row"></div>
  <h2>The whole head: rows are queries (the token attending), columns keys (the token attended to)</h2>
  <div class="legend">colour = attention probability, 0 <span style="background:#fff;border:1px solid #ccc"></span>
    to 1 <span style="background:var(--prefill)"></span> prefill rows,
    <span style="background:var(--decode)"></span> decode rows</div>
  <div class="heat-wrap"><table class="heat" id="heat"></table></div>
</section>
<section id="roofline-section">
  <h2>Roofline</h2>
  <p id="roofline-summary"></p>
  <svg id="roofline" width="640" height="400" role="img"></svg>
  <ul id="roofline-warnings" class="warn"></ul>
</section>
<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
const errors = document.getElementById("errors");
window.addEventListener("error", e => { errors.textContent += "error: " + e.message + "\n"; });
const DATA = JSON.parse(document.getElementById("data").textContent);
const $ = id => document.getElementById(id);

function mix(c, p) {  // white -> colour c at probability p (sqrt scale: small ones visible)
  const t = Math.sqrt(Math.max(0, Math.min(1, p)));
  return "rgb(" + c.map(v => Math.round(255 + (v - 255) * t)).join(",") + ")";
}
// One colour per phase, the same on every chart (llama_np/tools/colors.py, embedded in DATA)
const C = DATA.colors;
const rgbOf = hex => [1, 3, 5].map(i => parseInt(hex.slice(i, i + 2), 16));
const BLUE = rgbOf(C.prefill), ORANGE = rgbOf(C.decode);
for (const phase in C) document.documentElement.style.setProperty("--" + phase, C[phase]);

function attentionView(A) {
  const layerSel = $("layer"), headSel = $("head");
  A.layers.forEach((l, i) => layerSel.add(new Option("layer " + l, i)));
  A.heads.forEach((h, i) => headSel.add(new Option("head " + h, i)));
  const N = A.tokens.length;
  // #layer=L&head=H&query=N (model layer, query head, token) picks what is shown first
  const want = Object.fromEntries(new URLSearchParams(location.hash.slice(1)));
  const li = A.layers.indexOf(+want.layer), hi = A.heads.indexOf(+want.head);
  if (want.layer !== undefined && li >= 0) layerSel.value = li;
  if (want.head !== undefined && hi >= 0) headSel.value = hi;
  let query = want.query !== undefined && +want.query >= 0 && +want.query < N ? +want.query : N - 1;
  const tokenEls = A.tokens.map((text, n) => {
    const el = document.createElement("span");
    el.className = "tok " + (n < A.n_prompt ? "prefill" : "decode");
    el.textContent = text;
    el.dataset.index = n;
    el.addEventListener("mouseenter", () => { query = n; draw(); });
    $("tokens").appendChild(el);
    return el;
  });
  function row(n) { return A.probs[+layerSel.value][+headSel.value][n]; }
  function draw() {
    const r = row(query), color = query < A.n_prompt ? BLUE : ORANGE;
    tokenEls.forEach((el, n) => {
      el.classList.toggle("query", n === query);
      el.classList.toggle("future", n > query);
      el.style.background = n <= query ? mix(color, r[n]) : "";
      el.title = n <= query ? "p = " + r[n].toFixed(4) : "future: masked";
    });
    $("query-label").textContent = A.tokens[query];
    $("query-label").dataset.index = query;
    $("query-phase").textContent = query < A.n_prompt ? "prefill" : "decode";
    $("row-sum").textContent = r.reduce((a, b) => a + b, 0).toFixed(4);
    $("row").innerHTML = "";
    r.forEach((p, n) => {
      const s = document.createElement("span");
      s.className = "p";
      s.dataset.p = p;
      s.textContent = A.tokens[n] + ": " + p.toFixed(3);
      $("row").appendChild(s);
    });
    [...$("heat").tBodies[0].rows].forEach((tr, n) => tr.classList.toggle("sel", n === query));
    [...$("heat").tHead.rows[0].cells].forEach((th, s) => th.classList.toggle("sel", s === query + 1));
  }
  function drawHeat() {
    const table = $("heat");
    table.innerHTML = "";
    const head = table.createTHead().insertRow();  // the keys, one label per column
    head.appendChild(document.createElement("th"));
    A.tokens.forEach((text, s) => {
      const th = document.createElement("th");
      th.textContent = text;
      th.className = "key " + (s < A.n_prompt ? "prefill" : "decode");
      th.title = "key " + text;
      head.appendChild(th);
    });
    const body = table.createTBody();
    for (let n = 0; n < N; n++) {
      const tr = body.insertRow();
      tr.className = n < A.n_prompt ? "prefill" : "decode";
      const th = document.createElement("th");
      th.textContent = A.tokens[n];
      tr.appendChild(th);
      const r = row(n), color = n < A.n_prompt ? BLUE : ORANGE;
      for (let s = 0; s < N; s++) {
        const td = tr.insertCell();
        if (s <= n) { td.style.background = mix(color, r[s]); td.title = A.tokens[n] + " -> " + A.tokens[s] + ": " + r[s].toFixed(4); }
        else td.style.background = "#eee";
        td.addEventListener("mouseenter", () => { query = n; draw(); });
      }
    }
  }
  function update() {
    const h = A.heads[+headSel.value];
    if (A.kv_heads) {
      const G = A.n_heads / A.kv_heads;
      $("gqa").textContent = "query head " + h + " reads K/V head " + Math.floor(h / G) +
        " (G = H / KVH = " + A.n_heads + " / " + A.kv_heads + " = " + G + " query heads share each K/V head)";
    }
    drawHeat(); draw();
  }
  layerSel.addEventListener("change", update);
  headSel.addEventListener("change", update);
  update();
}

function rooflineView(R) {
  const svg = $("roofline"), W = 640, H = 400, L = 70, Rm = 20, T = 20, B = 50;
  const ns = "http://www.w3.org/2000/svg";
  const el = (name, attrs, text) => {
    const e = document.createElementNS(ns, name);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    svg.appendChild(e); return e;
  };
  const pf = R.peaks.flops / 1e9, pb = R.peaks.bandwidth / 1e9, ridge = pf / pb;
  const xs = R.phases.map(p => p.intensity).concat([ridge]);
  const ys = R.phases.map(p => p.gflops_per_second).concat([pf]);
  const x0 = Math.min(...xs) / 4, x1 = Math.max(...xs) * 8;
  const y0 = Math.min(...ys, pb * x0) / 2, y1 = Math.max(...ys) * 3;
  const X = v => L + (Math.log10(v) - Math.log10(x0)) / (Math.log10(x1) - Math.log10(x0)) * (W - L - Rm);
  const Y = v => H - B - (Math.log10(v) - Math.log10(y0)) / (Math.log10(y1) - Math.log10(y0)) * (H - T - B);
  // The two regions: left of the ridge a pass waits for memory, right of it for arithmetic.
  el("rect", {x: L, y: T, width: X(ridge) - L, height: H - T - B, fill: "#eeeeee", class: "region",
              "data-bound": "memory"});
  el("text", {x: X(ridge) - 6, y: T + 16, "text-anchor": "end", fill: "#666", class: "region-label"},
     "memory-bound");
  el("text", {x: X(ridge) + 6, y: T + 16, "text-anchor": "start", fill: "#666", class: "region-label"},
     "compute-bound");
  el("rect", {x: L, y: T, width: W - L - Rm, height: H - T - B, fill: "none", stroke: "#999"});
  for (let e = Math.ceil(Math.log10(x0)); e <= Math.log10(x1); e++) {
    el("text", {x: X(10 ** e), y: H - B + 16, "text-anchor": "middle"}, String(10 ** e));
  }
  for (let e = Math.ceil(Math.log10(y0)); e <= Math.log10(y1); e++) {
    el("text", {x: L - 6, y: Y(10 ** e) + 4, "text-anchor": "end"}, String(10 ** e));
  }
  el("text", {x: (W + L) / 2, y: H - 12, "text-anchor": "middle"}, "arithmetic intensity (FLOPs per byte read)");
  el("text", {x: 14, y: (H - B + T) / 2, transform: "rotate(-90 14 " + (H - B + T) / 2 + ")", "text-anchor": "middle"}, "GFLOP/s");
  const pts = [];
  for (let k = 0; k <= 60; k++) {
    const x = x0 * (x1 / x0) ** (k / 60);
    pts.push(X(x) + "," + Y(Math.min(pf, pb * x)));
  }
  el("polyline", {points: pts.join(" "), fill: "none", stroke: "#000", "stroke-width": 2, class: "ceiling"});
  el("line", {x1: X(ridge), x2: X(ridge), y1: T, y2: H - B, stroke: "#999", "stroke-dasharray": "2 3"});
  el("text", {x: W - Rm - 4, y: Y(pf) - 6, "text-anchor": "end"},
     "this machine: " + pf.toFixed(1) + " GFLOP/s, " + pb.toFixed(1) + " GB/s, ridge " + ridge.toFixed(1) + " FLOP/B");
  R.phases.forEach((p, i) => {
    const cx = X(p.intensity), cy = Y(p.gflops_per_second);
    el("circle", {cx: cx, cy: cy, r: 7, fill: C[p.phase] || "#555", stroke: "#000", class: "phase", "data-phase": p.phase});
    el("text", {x: cx + 10, y: cy + 4 + 12 * (i % 2)}, p.phase + ": " + p.intensity.toFixed(2) + " FLOP/B, " + p.gflops_per_second.toPrecision(3) + " GFLOP/s");
  });
  $("roofline-summary").textContent = R.model + ": TTFT " + R.ttft_ms.toPrecision(3) + " ms (prefill), TPOT " +
    R.tpot_ms.toPrecision(3) + " ms (one decode step). Points above their line are explained below.";
  R.warnings.forEach(w => { const li = document.createElement("li"); li.textContent = w; $("roofline-warnings").appendChild(li); });
}

try {
  if (DATA.attention) attentionView(DATA.attention); else $("attention-section").hidden = true;
  if (DATA.roofline) rooflineView(DATA.roofline); else $("roofline-section").hidden = true;
  document.body.dataset.ready = "yes";
} catch (e) {
  errors.textContent += "error: " + e + "\n";
}
</script>
</body>
</html>
"""
