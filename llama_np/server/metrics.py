"""GET /metrics: the server's state and history in Prometheus' text format.

Gauges are read from the engine when scraped (requests running and waiting, KV blocks used,
free and cached, the prefix cache's hit rate); counters and histograms are fed by each
request as it ends (prompt and generated tokens, time to first token, time per output
token, by finish reason), in the event loop's thread, so nothing here needs a lock. Names
follow vLLM's where it has one (vllm:time_to_first_token_seconds ->
llama_np_time_to_first_token_seconds).
"""

from __future__ import annotations

import bisect
import statistics
from collections import Counter, deque

from ..engine import Engine, Request

PREFIX = "llama_np_"
# Seconds, from a fraction of a millisecond (stories260K) to minutes (big models, long queues).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0)
TTFT_BUCKETS += (2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
TPOT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2)
TPOT_BUCKETS += (0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
RECENT = 256  # requests the live page's medians are taken over


def label_value(text: str) -> str:
    """A Prometheus label value: backslash, quote and newline escaped."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Histogram:
    """Counts of observations at or below each bucket's upper bound, their sum and count."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: str) -> list[str]:
        """The exposition's lines: cumulative buckets, then _sum and _count."""
        out, total = [], 0
        for bound, n in zip((*self.buckets, "+Inf"), self.counts, strict=True):
            total += n
            out.append(f'{name}_bucket{{{labels},le="{bound}"}} {total}')
        return [
            *out,
            f"{name}_sum{{{labels}}} {self.sum!r}",
            f"{name}_count{{{labels}}} {self.count}",
        ]


class Metrics:
    """What the server has done, for /metrics and the live page."""

    def __init__(self, engine: Engine, model_name: str) -> None:
        self.engine = engine
        self.model_name = model_name
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.cached_tokens = 0  # prompt tokens taken from the prefix cache
        self.finished: Counter[str] = Counter()  # by the engine's finish reason
        self.ttft = Histogram(TTFT_BUCKETS)
        self.tpot = Histogram(TPOT_BUCKETS)
        self.recent: deque[tuple[float, float | None]] = deque(maxlen=RECENT)  # (ttft, tpot)

    def request_finished(self, request: Request) -> None:
        """Count a request that ended (Bridge.on_finished: in the loop's thread)."""
        self.finished[request.finish_reason or "error"] += 1
        self.prompt_tokens += len(request.prompt)
        self.cached_tokens += request.n_cached
        self.generated_tokens += len(request.generated)
        times = request.token_times
        if not times:
            return
        ttft = times[0] - request.arrival
        self.ttft.observe(ttft)
        tpot = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else None
        if tpot is not None:
            self.tpot.observe(tpot)
        self.recent.append((ttft, tpot))

    def medians(self) -> dict:
        """Median TTFT and TPOT of the latest requests (the live page's figures)."""
        ttfts = [t for t, _ in self.recent]
        tpots = [p for _, p in self.recent if p is not None]
        return {
            "ttft": statistics.median(ttfts) if ttfts else None,
            "tpot": statistics.median(tpots) if tpots else None,
            "requests": len(self.recent),
        }

    def render(self) -> str:
        """The Prometheus text exposition (format 0.0.4)."""
        engine, pool = self.engine, self.engine.pool
        scheduler = engine.scheduler
        label = f'model_name="{label_value(self.model_name)}"'
        lines: list[str] = []

        def metric(name: str, kind: str, help: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP {PREFIX}{name} {help}")
            lines.append(f"# TYPE {PREFIX}{name} {kind}")
            for labels, value in samples:
                tags = ",".join(t for t in (label, labels) if t)
                lines.append(f"{PREFIX}{name}{{{tags}}} {value}")

        metric("requests_running", "gauge", "Requests running (in the batch).",
               [("", len(scheduler.running))])  # fmt: skip
        metric("requests_waiting", "gauge", "Requests waiting to be scheduled.",
               [("", len(scheduler.waiting))])  # fmt: skip
        metric("kv_blocks", "gauge", "KV cache blocks by state: used (held by requests), "
               "free, cached (holding a known prefix, used or free).",
               [('state="used"', pool.n_used), ('state="free"', pool.n_free),
                ('state="cached"', pool.n_cached)])  # fmt: skip
        metric("kv_blocks_total", "gauge", "KV cache blocks in the pool.", [("", pool.n_blocks)])
        metric("kv_block_size", "gauge", "Positions per KV cache block.",
               [("", pool.block_size)])  # fmt: skip
        metric("prefix_cache_hit_rate", "gauge",
               "Prompt tokens found in the prefix cache / prompt tokens looked up.",
               [("", pool.hit_rate)])  # fmt: skip
        metric("prompt_tokens_total", "counter", "Prompt tokens of finished requests.",
               [("", self.prompt_tokens)])  # fmt: skip
        metric("prompt_tokens_cached_total", "counter",
               "Prompt tokens of finished requests that came from the prefix cache.",
               [("", self.cached_tokens)])  # fmt: skip
        metric("generation_tokens_total", "counter", "Tokens generated by finished requests.",
               [("", self.generated_tokens)])  # fmt: skip
        by_reason = [(f'finished_reason="{r}"', n) for r, n in sorted(self.finished.items())]
        metric("request_success_total", "counter", "Finished requests, by finish reason.",
               by_reason)  # fmt: skip
        metric("engine_steps_total", "counter", "Engine steps run.", [("", engine.n_steps)])
        metric("preemptions_total", "counter", "Requests whose KV blocks were taken back.",
               [("", scheduler.n_preemptions)])  # fmt: skip
        for name, hist, help in (
            ("time_to_first_token_seconds", self.ttft,
             "Seconds from a request's arrival to its first token."),
            ("time_per_output_token_seconds", self.tpot,
             "Mean seconds between a request's tokens after the first."),
        ):  # fmt: skip
            lines.append(f"# HELP {PREFIX}{name} {help}")
            lines.append(f"# TYPE {PREFIX}{name} histogram")
            lines += hist.lines(f"{PREFIX}{name}", label)
        return "\n".join(lines) + "\n"
