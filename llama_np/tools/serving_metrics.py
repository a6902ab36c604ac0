"""What a serving run achieved: throughput and latency percentiles, from each request's
arrival and token times.

Throughput is work per second for everyone together (output tokens per second, requests per
second); latency is how long one person waits:

* TTFT, time to first token: from the request's arrival to its first token (queueing, then
  its prefill, which may be spread over several steps by chunked prefill).
* TPOT, time per output token: a request's (last token − first token) ÷ (tokens − 1), its
  average pace once it streams; its percentiles are over requests.
* ITL, inter-token latency: every gap between two consecutive tokens of a request; its p99
  is the stall a reader notices (a long prompt prefilled beside the stream, a preemption).

The engine's requests (time.perf_counter() times) and the simulator's (its clock) carry the
same fields, so both are measured by these same functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

PERCENTILES = (50, 90, 99)


class Timed(Protocol):
    """What is read of a request (engine.request.Request has it)."""

    arrival: float
    token_times: list[float]
    prompt: list[int]


@dataclass(frozen=True)
class Percentiles:
    """p50, p90 and p99 of some seconds (NaN when there were none)."""

    p50: float
    p90: float
    p99: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Percentiles:
        if len(seconds) == 0:
            return cls(float("nan"), float("nan"), float("nan"))
        return cls(*(float(v) for v in np.percentile(np.asarray(seconds), PERCENTILES)))


@dataclass(frozen=True)
class ServingMetrics:
    requests: int  # requests that produced at least one token
    prompt_tokens: int  # their prompts' tokens
    output_tokens: int  # tokens they generated
    seconds: float  # from the first arrival to the last token
    ttft: Percentiles  # seconds
    tpot: Percentiles  # seconds, over requests with 2+ tokens
    itl: Percentiles  # seconds, over every gap of every request

    @property
    def output_tokens_per_second(self) -> float:
        return self.output_tokens / self.seconds if self.seconds > 0 else float("nan")

    @property
    def tokens_per_second(self) -> float:
        """Prompt and output tokens processed per second."""
        total = self.prompt_tokens + self.output_tokens
        return total / self.seconds if self.seconds > 0 else float("nan")

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else float("nan")


def serving_metrics(requests: Sequence[Timed]) -> ServingMetrics:
    """Throughput and latencies of the requests that produced tokens."""
    done = [r for r in requests if r.token_times]
    if not done:
        nan = Percentiles.of([])
        return ServingMetrics(0, 0, 0, 0.0, nan, nan, nan)
    start = min(r.arrival for r in done)
    end = max(r.token_times[-1] for r in done)
    ttft = [r.token_times[0] - r.arrival for r in done]
    tpot = [
        (r.token_times[-1] - r.token_times[0]) / (len(r.token_times) - 1)
        for r in done
        if len(r.token_times) > 1
    ]
    itl = np.concatenate([np.diff(r.token_times) for r in done])  # (gaps,)
    return ServingMetrics(
        requests=len(done),
        prompt_tokens=sum(len(r.prompt) for r in done),
        output_tokens=sum(len(r.token_times) for r in done),
        seconds=end - start,
        ttft=Percentiles.of(ttft),
        tpot=Percentiles.of(tpot),
        itl=Percentiles.of(itl),
    )


def format_seconds(seconds: float) -> str:
    """`412 µs`, `23.4 ms`, `1.25 s`, `3.2 min`: 3 significant digits in a readable unit."""
    if seconds != seconds:  # NaN
        return "-"
    for unit, size in (("min", 60.0), ("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if abs(seconds) >= size or unit == "µs":
            if unit == "min" and seconds < 600:
                continue
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def format_percentiles(p: Percentiles) -> str:
    return f"p50 {format_seconds(p.p50)}, p90 {format_seconds(p.p90)}, p99 {format_seconds(p.p99)}"
