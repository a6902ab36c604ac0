"""Smoke test of benchmarks/serve.py on stories260K: the trace replays against real server
processes and the report is written. Checks structure and that every figure is a positive
number, never speed."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("bench_serve", ROOT / "benchmarks" / "serve.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_traces():
    bench = load_benchmark()
    mixed = bench.make_trace("mixed", 200, 4.0, 512, 448, seed=1)
    arrivals = np.array([r.arrival for r in mixed])
    assert np.all(np.diff(arrivals) >= 0)
    assert 200 / arrivals[-1] == pytest.approx(4.0, rel=0.25)  # Poisson at 4 per second
    assert {len(r.prompt) for r in mixed} == set(bench.PROMPT_LENGTHS)
    assert {r.max_tokens for r in mixed} == set(bench.OUTPUT_LENGTHS)
    assert all(r.prompt[0] == 1 and 3 <= min(r.prompt[1:]) for r in mixed)
    assert all(len(r.prompt) + r.max_tokens <= 448 for r in mixed)
    shared = bench.make_trace("shared", 20, 4.0, 512, 448, seed=1)
    prefix = shared[0].prompt[: 1 + bench.SYSTEM_PROMPT]
    assert all(r.prompt[: len(prefix)] == prefix for r in shared)
    assert len({tuple(r.prompt) for r in shared}) == 20
    assert bench.make_trace("mixed", 200, 4.0, 512, 448, seed=1) == mixed  # reproducible


@pytest.mark.slow
def test_benchmark_writes_json_and_markdown(tmp_path, monkeypatch):
    bench = load_benchmark()
    monkeypatch.setattr(bench, "FILES", tmp_path / "gguf")
    args = ["--models", "stories260K", "--quants", "F32", "--clients", "2", "--requests", "4"]
    args += ["--traces", "shared", "--rate", "inf"]
    assert bench.main([*args, "--llama-cpp", "", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "serve.json").read_text())
    runs = results["runs"]
    assert [(r["server"], r["clients"]) for r in runs] == [
        ("llama_np", 2), ("llama_np one at a time", 1),
    ]  # fmt: skip
    for r in runs:
        assert r["requests"] == r["of"] == 4 and r["errors"] == 0
        assert r["output_tok_s"] > 0 and r["output_tokens"] > 0
        assert 0 < r["ttft_p50_ms"] <= r["ttft_p99_ms"]
        assert 0 < r["tpot_p50_ms"] <= r["tpot_p99_ms"]
    (ratio,) = results["ratios"]
    assert ratio["throughput_vs_one_at_a_time"] > 0
    assert ratio["throughput_vs_llama_server"] is None  # no llama.cpp given
    assert "| stories260K | F32 | shared | llama_np | 2 |" in (tmp_path / "serve.md").read_text()
