"""The live page at `/`: chat with the model, and beside it the scheduler as it runs.

The page is one self-contained HTML file (no scripts, styles or fonts from the network). It
chats through the server's own OpenAI endpoint (streamed), and polls GET /scheduler four
times a second for what the engine did since its last poll: each step's rows (which request,
a prefill chunk or a decode token, at which positions), the requests running and waiting,
and the KV blocks used, shared, cached and free. It draws the steps as a timeline, one lane
per request, prefill in one colour and decode in another: the colours every chart and page
of this project uses for the two phases.

`SchedulerView` is the server's side: an observer of every engine step (engine.on_step, in
the engine's thread) that keeps the latest step records, and, only when the page has asked
since, a snapshot of the requests and the pool. So an unwatched server pays one append per
step, and a watched one a snapshot four times a second, not one per step.
"""

from __future__ import annotations

import json
import threading
from collections import deque

from ..engine import Engine, StepRecord
from ..tools.colors import PHASE_COLORS  # prefill blue, decode orange: as every chart

MAX_STEPS = 400  # step records one poll returns at most (the latest)
MAX_LISTED = 64  # waiting requests listed at most


class SchedulerView:
    """What GET /scheduler returns: the engine's latest steps and, at the step after each
    poll, who is running and waiting and how the KV pool is shared."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._steps: deque[StepRecord] = deque(maxlen=MAX_STEPS)
        self._want_state = True  # a poll asked: take a snapshot at the next step
        self._state = self._take_state()
        engine.on_step.append(self._on_step)

    def _on_step(self, record: StepRecord) -> None:  # in the engine's thread, after a step
        with self._lock:
            self._steps.append(record)
            if self._want_state:
                self._want_state = False
                self._state = self._take_state()

    def _take_state(self, idle: bool = False) -> dict:
        """Requests and pool, as the engine's thread sees them between two steps (or, `idle`,
        with no request at all: the lists are not read, another thread may fill them)."""
        scheduler, pool = self.engine.scheduler, self.engine.pool

        def row(r) -> list[int]:
            return [r.id, len(r.prompt), r.n_computed, len(r.generated), r.n_cached,
                    r.max_new_tokens]  # fmt: skip

        running = [] if idle else [row(r) for r in scheduler.running]
        waiting = [] if idle else [row(r) for r in list(scheduler.waiting)[:MAX_LISTED]]
        return {
            "running": running,
            "waiting": waiting,
            "n_waiting": 0 if idle else len(scheduler.waiting),
            "pool": {
                "blocks": pool.n_blocks,
                "used": pool.n_used,
                "free": pool.n_free,
                "cached": pool.n_cached,
                "shared": sum(1 for n in pool.ref_counts if n > 1),
                "hit_rate": pool.hit_rate,
            },
        }

    def snapshot(self, since: int) -> dict:
        """Steps from index `since` on (the latest MAX_STEPS), and the latest state."""
        with self._lock:
            steps = [s for s in self._steps if s.index >= since]
            state = self._state
            self._want_state = True
        if not self.engine.has_unfinished():  # idle: no step will come to take a snapshot
            state = self._take_state(idle=True)
        config = self.engine.scheduler.config
        return {
            "limits": {
                "max_seqs": config.max_seqs,
                "max_batch_tokens": config.max_batch_tokens,
                "context": config.max_model_len,
                "block_size": self.engine.pool.block_size,
            },
            "steps": [
                [
                    s.index,
                    round(s.start, 6),
                    round(s.seconds, 6),
                    [list(r) for r in s.rows],
                    s.running,
                    s.waiting,
                    s.blocks_used,
                    s.blocks_free,
                    s.blocks_cached,
                    s.cache_hits,
                    list(s.preempted),
                    list(s.finished),
                ]
                for s in steps
            ],
            **state,
        }


def page_html(model_name: str, context: int, chat: bool) -> str:
    """The page, with the model's name, its context, whether it chats (a story model only
    continues text) and the phase colours filled in."""
    settings = {"model": model_name, "context": context, "chat": chat, "colors": PHASE_COLORS}
    settings = json.dumps(settings)
    return PAGE.replace("__SETTINGS__", settings.replace("</", "<\\/"))


PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>llama-np serve</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  body { font: 14px system-ui, sans-serif; margin: 12px; color: #222; }
  h1 { font-size: 18px; margin: 0 0 8px; } h2 { font-size: 15px; margin: 12px 0 6px; }
  .cols { display: flex; gap: 16px; align-items: flex-start; }
  #chat { flex: 0 0 36%; min-width: 280px; } #sched { flex: 1; min-width: 360px; }
  #log { border: 1px solid #ccc; border-radius: 4px; height: 420px; overflow-y: auto; padding: 6px; background: #fafafa; }
  .msg { margin: 4px 0; white-space: pre-wrap; } .msg.user { color: #555; } .msg.user::before { content: "you: "; font-weight: 600; }
  .msg.assistant::before { content: "model: "; font-weight: 600; color: var(--decode); } .msg.error { color: #b00; }
  textarea { width: 100%; box-sizing: border-box; height: 60px; font: inherit; }
  .row { display: flex; gap: 8px; align-items: center; flex-wrap: wrap; margin: 4px 0; }
  .stats { display: grid; grid-template-columns: repeat(4, auto); gap: 2px 14px; }
  .stats b { font-variant-numeric: tabular-nums; }
  table { border-collapse: collapse; font-size: 12px; font-variant-numeric: tabular-nums; }
  td, th { border-bottom: 1px solid #eee; padding: 1px 6px; text-align: right; }
  .kind-prefill { color: var(--prefill); font-weight: 600; } .kind-decode { color: var(--decode); font-weight: 600; }
  .swatch { display: inline-block; width: 10px; height: 10px; vertical-align: middle; }
  #kvbar { display: flex; height: 16px; border: 1px solid #999; width: 100%; }
  #kvbar div { height: 100%; }
  .muted { color: #777; font-size: 12px; }
</style>
</head>
<body data-ready="no" data-chat="idle">
<h1>llama-np serve: <span id="model"></span></h1>
<div class="cols">
<section id="chat">
  <h2>Talk to the model</h2>
  <div id="log"></div>
  <textarea id="input" placeholder="Message (Enter sends, Shift+Enter: new line)"></textarea>
  <div class="row">
    <button id="send">Send</button>
    <label><select id="mode"><option value="chat">chat</option><option value="completion">continue text</option></select></label>
    <label>temperature <input id="temperature" type="number" value="1" min="0" step="0.1" style="width:4em"></label>
    <label>max tokens <input id="max_tokens" type="number" value="200" min="1" style="width:5em"></label>
    <button id="clear">New conversation</button>
  </div>
  <div class="row"><label>API key <input id="key" type="password" style="width:12em"></label>
  <span class="muted">only if the server was started with --api-key</span></div>
  <p class="muted">"chat" writes the conversation with the model's chat template; "continue text" sends the text as a plain prompt
  (for story models such as stories260K). Every message resends the whole conversation: watch the prefix cache take it.</p>
</section>
<section id="sched">
  <h2>The scheduler, live</h2>
  <div class="stats">
    <span>running <b id="n-running">0</b></span><span>waiting <b id="n-waiting">0</b></span>
    <span>steps/s <b id="steps-rate">0</b></span><span>prefix cache hits <b id="hit-rate">-</b></span>
    <span>decode tokens/s <b id="decode-rate">0</b></span><span>prefill tokens/s <b id="prefill-rate">0</b></span>
    <span>TTFT (median) <b id="ttft">-</b></span><span>TPOT (median) <b id="tpot">-</b></span>
  </div>
  <h2>KV cache blocks</h2>
  <div id="kvbar"></div>
  <div class="muted" id="kvtext"></div>
  <h2>Steps <span class="muted">(newest right; one lane per request:
    <span class="swatch" style="background:var(--prefill)"></span> prefill chunk,
    <span class="swatch" style="background:var(--decode)"></span> decode token)</span></h2>
  <svg id="timeline" width="100%" height="60" xmlns="http://www.w3.org/2000/svg"></svg>
  <div class="row" style="align-items:flex-start">
    <div><h2>Last step <span class="muted" id="last-step"></span></h2>
      <table id="rows"><thead><tr><th>request</th><th>kind</th><th>positions</th><th>tokens</th></tr></thead><tbody></tbody></table></div>
    <div><h2>Requests</h2>
      <table id="requests"><thead><tr><th>request</th><th>state</th><th>prompt</th><th>cached</th><th>in cache</th><th>generated</th></tr></thead><tbody></tbody></table></div>
  </div>
  <div id="errors" class="msg error"></div>
</section>
</div>
<script id="settings" type="application/json">__SETTINGS__</script>
<script>
"use strict";
const S = JSON.parse(document.getElementById("settings").textContent);
document.documentElement.style.setProperty("--prefill", S.colors.prefill);
document.documentElement.style.setProperty("--decode", S.colors.decode);
const $ = (id) => document.getElementById(id);
// Absolute addresses: the page's own may carry user:password@ (HTTP Basic, the API key), and
// fetch() refuses an address with credentials in it, even a relative one resolved against it.
const api = (path) => location.origin + path;
$("model").textContent = S.model + " (context " + S.context + ")";
const params = new URLSearchParams(location.hash.slice(1));
if (params.get("key")) sessionStorage.setItem("llama-np-key", params.get("key"));
$("key").value = sessionStorage.getItem("llama-np-key") || "";
$("key").addEventListener("change", () => sessionStorage.setItem("llama-np-key", $("key").value));
if (!S.chat) { $("mode").value = "completion"; $("mode").options[0].disabled = true; }  // a story model: no chat format
for (const name of ["mode", "temperature", "max_tokens"]) if (params.get(name) !== null) $(name).value = params.get(name);

function headers() {
  const h = {"Content-Type": "application/json"};
  if ($("key").value) h["Authorization"] = "Bearer " + $("key").value;
  return h;
}
function fail(text) { $("errors").textContent = text; }

// ------------------------------------------------------------------ chat
let conversation = [];  // {role, content} of the chat so far
function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;
  $("log").appendChild(div);
  $("log").scrollTop = $("log").scrollHeight;
  return div;
}
async function send() {
  const text = $("input").value;
  if (!text.trim() || document.body.dataset.chat === "busy") return;
  $("input").value = "";
  document.body.dataset.chat = "busy";
  const chat = $("mode").value === "chat";
  addMessage("user", text);
  const reply = addMessage("assistant", "");
  const body = {stream: true, max_tokens: Number($("max_tokens").value), temperature: Number($("temperature").value)};
  if (chat) body.messages = conversation.concat([{role: "user", content: text}]);
  else body.prompt = text;
  try {
    const response = await fetch(api(chat ? "/v1/chat/completions" : "/v1/completions"), {method: "POST", headers: headers(), body: JSON.stringify(body)});
    if (!response.ok) {
      const error = await response.json().catch(() => ({error: {message: response.statusText}}));
      throw new Error(response.status + ": " + error.error.message);
    }
    const reader = response.body.getReader(), decoder = new TextDecoder();
    let buffer = "", finish = null;
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end); buffer = buffer.slice(end + 2);
        if (!event.startsWith("data: ") || event === "data: [DONE]") continue;
        const chunk = JSON.parse(event.slice(6));
        if (chunk.error) throw new Error(chunk.error.message);
        for (const choice of chunk.choices) {
          reply.textContent += chat ? (choice.delta.content || "") : choice.text;
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
    }
    reply.dataset.finish = finish;
    if (chat) conversation.push({role: "user", content: text}, {role: "assistant", content: reply.textContent});
  } catch (error) {
    reply.className = "msg error";
    reply.textContent = String(error.message || error);
  }
  document.body.dataset.chat = "done";
}
$("send").addEventListener("click", send);
$("input").addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send(); } });
$("clear").addEventListener("click", () => { conversation = []; $("log").textContent = ""; });

// ------------------------------------------------------------------ the scheduler
const STEPS_SHOWN = 80;
let steps = [], next = 0, latest = null, lastNew = 0;
const fmt = (x) => x === null || x === undefined ? "-" : x < 1 ? (1000 * x).toFixed(1) + " ms" : x.toFixed(2) + " s";

function rates() {  // tokens/s over the steps of the last two seconds (engine clock)
  if (!steps.length || performance.now() - lastNew > 1500) return {steps: 0, decode: 0, prefill: 0};
  const end = steps[steps.length - 1][1] + steps[steps.length - 1][2];
  const recent = steps.filter((s) => s[1] >= end - 2);
  const span = Math.max(end - recent[0][1], 1e-3);
  let decode = 0, prefill = 0;
  for (const s of recent) for (const [, kind, , n] of s[3]) { if (kind === "decode") decode += n; else prefill += n; }
  return {steps: recent.length / span, decode: decode / span, prefill: prefill / span};
}

function svg(name, attrs) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}

function drawTimeline() {
  const box = $("timeline"), shown = steps.slice(-STEPS_SHOWN);
  box.textContent = "";
  const ids = [...new Set(shown.flatMap((s) => s[3].map((r) => r[0])))].sort((a, b) => a - b);
  const lane = new Map(ids.map((id, i) => [id, i]));
  const W = box.clientWidth || 600, label = 44, w = (W - label) / STEPS_SHOWN, h = Math.max(6, Math.min(16, 240 / Math.max(ids.length, 1)));
  box.setAttribute("height", Math.max(30, ids.length * h + 4));
  ids.forEach((id, i) => { const t = svg("text", {x: 0, y: i * h + h - 2, "font-size": Math.min(11, h), fill: "#555"}); t.textContent = "#" + id; box.appendChild(t); });
  shown.forEach((s, j) => {
    for (const [id, kind, start, n] of s[3]) {
      const rect = svg("rect", {x: label + j * w, y: lane.get(id) * h, width: Math.max(w - 1, 1), height: h - 1,
        fill: S.colors[kind], class: "step-row", "data-kind": kind, "data-request": id, "data-step": s[0]});
      const title = svg("title", {}); title.textContent = "step " + s[0] + ": request " + id + ", " + kind + " of " + n + " token" + (n > 1 ? "s" : "") + " at positions " + start + ".." + (start + n - 1);
      rect.appendChild(title); box.appendChild(rect);
    }
  });
}

function drawTables(state) {
  const last = steps[steps.length - 1];
  const rows = $("rows").tBodies[0]; rows.textContent = "";
  if (last) {
    $("last-step").textContent = "#" + last[0] + ": " + (1000 * last[2]).toFixed(2) + " ms, " + last[3].reduce((a, r) => a + r[3], 0) + " tokens";
    for (const [id, kind, start, n] of last[3]) {
      const tr = rows.insertRow(); tr.className = "last-row"; tr.dataset.kind = kind;
      for (const [text, cls] of [["#" + id], [kind, "kind-" + kind], [start + ".." + (start + n - 1)], [n]]) { const td = tr.insertCell(); td.textContent = text; if (cls) td.className = cls; }
    }
  }
  const reqs = $("requests").tBodies[0]; reqs.textContent = "";
  for (const [list, name] of [[state.running, "running"], [state.waiting, "waiting"]]) {
    for (const [id, prompt, computed, generated, cached, max] of list) {
      const tr = reqs.insertRow(); tr.className = "request " + name; tr.dataset.request = id;
      for (const text of ["#" + id, name, prompt, cached, computed, generated + " / " + max]) tr.insertCell().textContent = text;
    }
  }
}

function drawPool(pool) {
  const bar = $("kvbar"); bar.textContent = "";
  const parts = [["shared", pool.shared, "#555"], ["used", pool.used - pool.shared, "#999"],
                 ["cached", Math.max(pool.cached - pool.used, 0), "#cde5cd"], ["free", pool.free - Math.max(pool.cached - pool.used, 0), "#fff"]];
  for (const [name, n, colour] of parts) {
    if (n <= 0) continue;
    const div = document.createElement("div"); div.style.width = (100 * n / pool.blocks) + "%"; div.style.background = colour;
    div.title = name + ": " + n + " blocks"; div.className = "kv-" + name; bar.appendChild(div);
  }
  $("kvtext").textContent = pool.used + " used (" + pool.shared + " shared by several requests), " + pool.free + " free of " + pool.blocks +
    " blocks; " + pool.cached + " hold a known prefix (cached, used or free), kept until their memory is needed";
  $("kvtext").dataset.used = pool.used; $("kvtext").dataset.free = pool.free; $("kvtext").dataset.shared = pool.shared;
}

async function poll() {
  try {
    const response = await fetch(api("/scheduler?since=" + next), {headers: headers()});
    if (!response.ok) { const e = await response.json(); fail("/scheduler: " + e.error.message); return; }
    const data = await response.json();
    if (data.steps.length) { lastNew = performance.now(); next = data.steps[data.steps.length - 1][0] + 1; }
    steps = steps.concat(data.steps).slice(-4 * STEPS_SHOWN);
    const r = rates();
    $("n-running").textContent = data.running.length; $("n-waiting").textContent = data.n_waiting;
    $("steps-rate").textContent = r.steps.toFixed(0); $("decode-rate").textContent = r.decode.toFixed(0); $("prefill-rate").textContent = r.prefill.toFixed(0);
    $("hit-rate").textContent = (100 * data.pool.hit_rate).toFixed(0) + "%";
    $("ttft").textContent = fmt(data.latency.ttft); $("tpot").textContent = fmt(data.latency.tpot);
    drawPool(data.pool); drawTimeline(); drawTables(data);
    fail("");
    document.body.dataset.ready = "yes";
  } catch (error) { fail("/scheduler: " + error); }
}
poll();
setInterval(poll, 250);
if (params.get("ask")) { $("input").value = params.get("ask"); send(); }
</script>
</body>
</html>
"""
