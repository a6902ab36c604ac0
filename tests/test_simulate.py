"""The serving simulator: the engine's own scheduler on a roofline clock.

The simulator must make the engine's decisions (the same steps, row for row, on the same
trace), time each step by the formulas `llama-np memory` uses (its compute-bound batch is
memory's critical batch), size the KV pool as the engine and the calculator do, and report
latencies as the engine's requests are measured. All of it is pure Python on small traces.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from util import byte_tokenizer, random_model, small_config

import llama_np
from llama_np.cli import main
from llama_np.engine import Engine, StepRecord
from llama_np.engine.scheduler import SchedulerConfig
from llama_np.errors import ArgumentError
from llama_np.paged_kv_cache import blocks_for
from llama_np.tools import calibrate, machine
from llama_np.tools.costs import forward_bytes, forward_flops, step_bytes, step_flops
from llama_np.tools.hardware import PRESETS, Hardware, custom_hardware
from llama_np.tools.known_models import known_config
from llama_np.tools.machine import MachinePeaks
from llama_np.tools.memory import critical_batch, weight_bytes
from llama_np.tools.serving_metrics import serving_metrics
from llama_np.tools.simulate import (
    KVPool,
    Overheads,
    RooflineClock,
    TraceRequest,
    bounds,
    kv_pool,
    parse_range,
    poisson_trace,
    simulate,
)

LLAMA31 = known_config("llama-3.1-8b")
H100 = PRESETS["h100"]


def tiny_clock(config, overheads=None) -> RooflineClock:
    return RooflineClock(config, custom_hardware(1e11, 1e10), 4, 4, overheads or Overheads())


# ---------------------------------------------------------------- costs of a serving step


@pytest.mark.parametrize("start, n", [(0, 1), (0, 16), (100, 1), (37, 200)])
def test_one_row_step_is_a_forward_pass(start, n):
    cfg = LLAMA31
    assert step_flops(cfg, [(start, n)]) == forward_flops(cfg, n, start)
    assert step_bytes(cfg, [(start, n)], 2, 1) == forward_bytes(cfg, n, start, 2, 1)


def test_a_decode_batch_reads_the_weights_once():
    cfg = known_config("llama-3-8b")
    rows = [(500, 1)] * 8
    assert step_flops(cfg, rows) == forward_flops(cfg, 1, 500, 1, 8)
    assert step_bytes(cfg, rows, 2, 2) == forward_bytes(cfg, 1, 500, 2, 2, 8)
    # one more sequence adds its KV cache and its embedding row, not the weights again
    extra = step_bytes(cfg, [*rows, (500, 1)], 2, 2) - step_bytes(cfg, rows, 2, 2)
    assert extra == cfg.kv_cache_bytes(501, 1, 2) + cfg.dim * 2


@pytest.mark.parametrize("position", [0, 200])
def test_decode_steps_turn_compute_bound_at_memory_s_critical_batch(position):
    """The clock's bound flips exactly where `llama-np memory` says decode turns
    compute-bound (critical_batch), one formula for both."""
    cfg = known_config("llama-3-8b")
    clock = RooflineClock(cfg, H100, 2, 2)
    batch = critical_batch(cfg, H100, position).batch
    assert clock.time([(position, 1)] * batch).bound == "compute"
    assert clock.time([(position, 1)] * (batch - 1)).bound == "memory"


def test_step_time_is_the_roofline_plus_overheads():
    cfg = known_config("stories15M")
    hw = custom_hardware(2e11, 3e10)
    o = Overheads(0.001, 0.0002, 0.00001, 1e-7)
    t = RooflineClock(cfg, hw, 4, 4, o).time([(10, 1), (0, 64)])
    assert t.compute_seconds == step_flops(cfg, [(10, 1), (0, 64)]) / 2e11
    assert t.memory_seconds == step_bytes(cfg, [(10, 1), (0, 64)], 4, 4) / 3e10
    extra = 0.001 + 2 * 0.0002 + 65 * 0.00001 + (11 + 64) * 1e-7
    assert t.seconds == pytest.approx(max(t.compute_seconds, t.memory_seconds) + extra)


# ---------------------------------------------------------------- the KV pool


def test_kv_pool_holds_the_128k_sequences_that_fit_beside_the_weights():
    weights = weight_bytes(LLAMA31, "bf16")
    device = Hardware("x", 1e15, 3e12, 100 * 10**9, "")
    pool = kv_pool(LLAMA31, 2, weights, device, memory_fraction=0.9)
    assert pool.budget == 90 * 10**9 - weights
    assert pool.block_bytes == 16 * 131_072  # 128 KiB per token, bf16
    per_seq = pool.block_bytes * blocks_for(131_072, 16)
    assert per_seq == 16 * 2**30  # 16 GiB at 131,072 tokens (15.625 GiB at 128,000)
    assert pool.block_bytes * blocks_for(128_000, 16) == 16_777_216_000
    assert pool.sequences(131_072) == (90 * 10**9 - weights) // per_seq == 4
    fp8 = kv_pool(LLAMA31, 1, weights, device, memory_fraction=0.9)
    assert fp8.sequences(131_072) == 8  # one byte a value: twice as many
    mha = LLAMA31.replace(n_kv_heads=LLAMA31.n_heads)
    assert kv_pool(mha, 2, weights, device, memory_fraction=0.9).sequences(131_072) == 1


def test_kv_pool_refuses_a_device_the_weights_fill():
    with pytest.raises(ArgumentError, match="no room for a KV cache"):
        kv_pool(LLAMA31, 2, weight_bytes(LLAMA31, "bf16"), PRESETS["tpu-v5e"])


def test_pool_of_a_given_budget_matches_the_engine_s():
    model = llama_np.load()
    engine = Engine(model, kv_memory="1MiB")
    pool = kv_pool(model.config, 4, model.weights_nbytes, PRESETS["h100"], kv_memory=2**20)
    assert pool.n_blocks == engine.pool.n_blocks


# ---------------------------------------------------------------- the trace


def test_poisson_trace():
    trace = poisson_trace(2000, 4.0, (10, 20), (5, 7), 512, shared_prefix=6, seed=3)
    gaps = np.diff([t.arrival for t in trace])
    assert np.mean(gaps) == pytest.approx(0.25, rel=0.1)  # 1 / rate
    assert {len(t.prompt) for t in trace} == set(range(10, 21))
    assert {t.max_new_tokens for t in trace} == {5, 6, 7}
    assert len({t.prompt[:6] for t in trace}) == 1 and trace[0].prompt[0] == 1
    assert len({t.prompt[:8] for t in trace}) > 1900  # then their own tokens
    assert all(t.arrival == 0 for t in poisson_trace(5, math.inf, (4, 4), (1, 1), 99))
    assert poisson_trace(5, 2.0, (4, 8), (1, 3), 99, seed=1) == poisson_trace(
        5, 2.0, (4, 8), (1, 3), 99, seed=1
    )


def test_parse_range():
    assert parse_range("256", "--x") == (256, 256)
    assert parse_range("16-512", "--x") == (16, 512)
    for bad in ("0", "9-3", "x", "1-2-3"):
        with pytest.raises(ArgumentError):
            parse_range(bad, "--x")


# ---------------------------------------------------------------- the simulation


def engine_rows(engine: Engine, trace) -> list[tuple]:
    for t in trace:
        engine.add_request(list(t.prompt), t.max_new_tokens, temperature=0, stop_ids=())
    while engine.has_unfinished():
        engine.step()
    return [(r.rows, r.running, r.waiting, r.blocks_used, r.cache_hits, r.preempted, r.finished)
            for r in engine.records]  # fmt: skip


@pytest.mark.parametrize(
    "budget, chunked, prefix, kv",
    [
        (32, True, True, "64KiB"),
        (200, False, False, "64KiB"),
        (24, True, True, "24KiB"),
    ],
    ids=["chunked+prefix", "whole prompts", "preempting"],
)
def test_the_simulator_makes_the_engine_s_decisions(budget, chunked, prefix, kv):
    """One scheduler, two clocks: on the same trace the simulated steps are the engine's,
    row for row (requests, prefill or decode, positions, tokens), with the same running and
    waiting counts, blocks, prefix hits, preemptions and finished requests."""
    config = small_config(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48,
                          vocab_size=300, max_seq_len=128)  # fmt: skip
    model = random_model(config, 0, byte_tokenizer(300))
    trace = poisson_trace(7, math.inf, (5, 60), (3, 20), 300, shared_prefix=4 * chunked, seed=1)
    engine = Engine(model, kv_memory=kv, block_size=4, max_seqs=4, max_batch_tokens=budget,
                    chunked_prefill=chunked, prefix_caching=prefix)  # fmt: skip
    expected = engine_rows(engine, trace)
    pool = KVPool(engine.pool.n_blocks * engine.cache.block_nbytes, engine.cache.block_nbytes, 4,
                  "the engine's")  # fmt: skip
    sim = simulate(trace, tiny_clock(config), SchedulerConfig(4, budget, chunked, 128), pool,
                   prefix)  # fmt: skip
    got = [(r.rows, r.running, r.waiting, r.blocks_used, r.cache_hits, r.preempted, r.finished)
           for r in sim.records]  # fmt: skip
    assert got == expected
    assert all(isinstance(r, StepRecord) for r in sim.records)
    if budget == 24:
        assert sim.preemptions > 0


def test_each_request_gets_its_tokens_at_the_clock_s_times():
    config = known_config("stories15M")
    clock = tiny_clock(config, Overheads(0.01, 0, 0))
    trace = poisson_trace(6, 3.0, (20, 40), (4, 9), config.vocab_size, seed=2)
    pool = KVPool(2**24, clock.config.kv_cache_bytes(16), 16, "")
    sim = simulate(trace, clock, SchedulerConfig(max_model_len=256), pool)
    for request, t in zip(sim.requests, trace, strict=True):
        assert request.arrival == t.arrival
        assert len(request.generated) == len(request.token_times) == t.max_new_tokens
        assert request.finish_reason == "max_new_tokens"
        assert request.token_times[0] > t.arrival
    ends = [r.start + r.seconds for r in sim.records]
    assert all(time in ends for r in sim.requests for time in r.token_times)
    assert sim.seconds == pytest.approx(max(ends))
    assert all(cost.seconds >= 0.01 for cost in sim.times)  # the overhead of every step


def test_prefix_caching_and_chunked_prefill_change_what_they_should():
    """A shared system prompt is found in the cache and cuts TTFT; chunked prefill bounds
    the gaps of running streams while long prompts arrive."""
    cfg = LLAMA31
    clock = RooflineClock(cfg, H100, 2, 2)
    pool = kv_pool(cfg, 2, weight_bytes(cfg, "bf16"), H100)
    trace = poisson_trace(30, 20.0, (3000, 6000), (64, 64), cfg.vocab_size, 2048, seed=0)
    config = SchedulerConfig(64, 512, True, 8192)
    on = simulate(trace, clock, config, pool, prefix_caching=True)
    off = simulate(trace, clock, config, pool, prefix_caching=False)
    assert on.hit_rate > 0.3 and off.hit_rate == 0
    assert serving_metrics(on.requests).ttft.p50 < serving_metrics(off.requests).ttft.p50
    whole = simulate(trace, clock, SchedulerConfig(64, 8192, False, 8192), pool, False)
    assert serving_metrics(off.requests).itl.p99 < serving_metrics(whole.requests).itl.p99


def test_bounds_count_compute_bound_steps():
    cfg = known_config("llama-3-8b")
    clock = RooflineClock(cfg, H100, 2, 2)
    pool = kv_pool(cfg, 2, weight_bytes(cfg, "bf16"), H100)
    trace = poisson_trace(400, math.inf, (16, 16), (40, 40), cfg.vocab_size)
    sim = simulate(trace, clock, SchedulerConfig(400, 8192, True, 8192), pool)
    b = bounds(sim)
    assert b.decode_steps > 0 and b.decode_compute > 0
    assert b.first_compute_batch >= critical_batch(cfg, H100, 16).batch


def test_a_prompt_too_long_for_one_step_without_chunking_is_refused():
    config = known_config("stories15M")
    pool = KVPool(2**24, config.kv_cache_bytes(16), 16, "")
    trace = [TraceRequest(0.0, tuple(range(1, 101)), 4)]
    sim = simulate(trace, tiny_clock(config), SchedulerConfig(4, 64, False, 256), pool)
    assert [r.n_tokens for r in sim.rejected] == [100] and not sim.requests  # the engine's check


# ---------------------------------------------------------------- latencies


class Timed:
    def __init__(self, arrival, times, prompt=3):
        self.arrival, self.token_times, self.prompt = arrival, times, [0] * prompt


def test_serving_metrics():
    m = serving_metrics([Timed(0.0, [1.0, 1.5, 2.0]), Timed(1.0, [4.0, 5.0]), Timed(2.0, [])])
    assert m.requests == 2 and m.output_tokens == 5 and m.prompt_tokens == 6
    assert m.seconds == 5.0 and m.output_tokens_per_second == 1.0
    assert (m.ttft.p50, m.tpot.p50) == (2.0, 0.75)  # TTFTs 1 and 3; TPOTs 0.5 and 1
    assert m.itl.p50 == 0.5 and m.itl.p99 == pytest.approx(0.99)  # gaps 0.5, 0.5, 1


# ---------------------------------------------------------------- calibration


def test_fit_overheads_recovers_a_known_step_cost():
    """Records whose wall times are roofline + a + b·seqs + c·tokens give back a, b, c."""
    cfg = known_config("stories15M")
    clock = tiny_clock(cfg)
    a, b, c, d = 0.004, 0.0007, 0.00003, 2e-6
    rng = np.random.default_rng(0)
    records, now = [], 0.0
    for i in range(40):
        rows = tuple((j, "decode", int(rng.integers(0, 200)), 1) for j in range(rng.integers(1, 9)))
        if i % 3 == 0:
            rows += ((99, "prefill", 0, int(rng.integers(2, 300))),)
        records.append(StepRecord(i, now, 0, 0, rows, 0, 0, 0, 0, 0, 0, (), ()))
        seqs, tokens = len(rows), sum(n for *_, n in rows)
        positions = sum(s + n for *_, s, n in rows)
        now += clock.time([(s, n) for *_, s, n in rows]).seconds
        now += a + b * seqs + c * tokens + d * positions
        now += 0.5 if i == 20 else 0.0  # a step that another process stalled
    fit = calibrate.fit_overheads(records, clock)
    assert fit.overheads.step == pytest.approx(a, rel=1e-3)
    assert fit.overheads.per_seq == pytest.approx(b, rel=1e-3)
    assert fit.overheads.per_token == pytest.approx(c, rel=1e-3)
    assert fit.overheads.per_position == pytest.approx(d, rel=1e-3)
    assert fit.steps == 37  # the first (warm-up), the last (no next start), the stalled one


def test_check_against_the_engine_runs(monkeypatch):
    """The whole check on a tiny model (its ±25% is for stories110M on a quiet machine:
    docs/serving.md): calibrated, simulated and measured, with finite ratios."""
    config = known_config("stories260K")
    model = llama_np.load()
    clock = RooflineClock(config, custom_hardware(5e10, 1e10), 4, 4)
    pool = kv_pool(config, 4, 0, clock.hardware, kv_memory=2**22)
    trace = poisson_trace(4, 200.0, (8, 40), (4, 8), config.vocab_size, seed=1)
    warm = poisson_trace(6, math.inf, (8, 30), (6, 10), config.vocab_size, seed=2)
    result = calibrate.check(model, clock, SchedulerConfig(8, 64, True, 512), pool, trace, True,
                             warm)  # fmt: skip
    assert (
        result.measured.output_tokens
        == result.predicted.output_tokens
        == sum(t.max_new_tokens for t in trace)
    )
    assert math.isfinite(result.throughput_ratio) and math.isfinite(result.tpot_ratio)
    assert "within" in calibrate.format_check(result)


# ---------------------------------------------------------------- the command


def test_simulate_command_says_how_many_128k_sequences_fit(capsys):
    argv = ["simulate", "llama-3.1-8b", "--hardware", "h100", "--context", "131072",
            "--rate", "0.2", "--requests", "3", "--output-tokens", "16"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    fit = PRESETS["h100"].memory_bytes * 0.9 - weight_bytes(LLAMA31, "bf16")
    n = int(fit // (16 * 2**30))
    assert f"sequences of 131,072  {n} fit at once (17,179,869,184 bytes (16 GiB) each)" in out
    assert "prompts 131,056 tokens, outputs 16 tokens" in out
    for line in ("throughput", "TTFT", "TPOT", "ITL", "compute-bound"):
        assert f"\n{line} " in out


def test_simulate_compare(capsys):
    argv = ["simulate", "llama-3-8b", "--hardware", "mi300x", "--requests", "20",
            "--prompt-tokens", "1000-3000", "--output-tokens", "32", "--shared-prefix", "512",
            "--compare"]  # fmt: skip
    assert main(argv) == 0
    table = capsys.readouterr().out.split("variant")[1].splitlines()
    names = [line.split("  ")[0] for line in table[1:]]
    assert names == ["as above", "chunked prefill off (3,000-token steps)", "prefix caching off",
                     "fp8 KV cache", "MHA (32 KV heads, not 8)"]  # fmt: skip


def test_simulate_this_machine_without_overheads(capsys, monkeypatch):
    monkeypatch.setattr(machine, "peaks", lambda *a, **k: MachinePeaks(1e11, 2e10, "test"))
    argv = ["simulate", "stories15M", "--hardware", "this-machine", "--no-overheads",
            "--requests", "4", "--prompt-tokens", "16-64", "--output-tokens", "8"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "weights 4 bytes each" in out and "the engine's default: 1 GiB" in out
    assert "step time           max(FLOPs / 1e+11, bytes / 2e+10)\n" in out  # no overheads


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--against-engine"], "go with --hardware this-machine"),
        (["--no-chunked-prefill", "--max-batch-tokens", "100"], "without chunked prefill"),
        (["--prompt-tokens", "1000", "--output-tokens", "100"], "do not fit the context"),
        (["--rate", "0"], "--rate must be > 0"),
        (["--requests", "2000000000"], "--requests must be at most 10,000"),
        (["--seed", "-1"], "--seed must be in 0..2**63-1"),
    ],
)
def test_simulate_refuses(extra, message, capsys):
    assert main(["simulate", "stories15M", "--hardware", "h100", *extra]) == 1
    assert message in capsys.readouterr().err
