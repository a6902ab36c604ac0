"""The serving engine against its reference, generate() of each prompt alone.

Whatever runs beside a request (other requests arriving and leaving, its prompt in chunks,
its blocks shared with another prompt's prefix, its blocks taken back and recomputed), its
tokens and every logit it samples from must equal generate() of that prompt by itself; and
the block pool's books must balance after every step.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from util import byte_tokenizer, random_model, small_config

import llama_np
from llama_np import ArgumentError, ContextLengthError, GenerationStats, generate
from llama_np.engine import Engine
from llama_np.engine.blocks import BlockPool
from llama_np.engine.scheduler import Scheduler, SchedulerConfig
from llama_np.hooks import AttentionRecorder

STORIES15M = dict(dim=288, n_layers=6, n_heads=6, n_kv_heads=6, hidden_dim=768, vocab_size=512)


def models() -> dict[str, llama_np.Model]:
    """stories260K (real, GQA 8/4), a stories15M-shaped one (MHA) and a deeper GQA one."""
    tok = byte_tokenizer(512)
    return {
        "stories260K": llama_np.load(),
        "stories15M-shaped": random_model(small_config(**STORIES15M, max_seq_len=256), 1, tok),
        "gqa": random_model(
            small_config(
                dim=64,
                n_layers=3,
                n_heads=8,
                n_kv_heads=2,
                hidden_dim=96,
                vocab_size=512,
                max_seq_len=128,
            ),
            2,
            tok,
        ),
    }


MODELS = models()


def logits_by_position(model: llama_np.Model, run) -> dict[tuple[int, int], np.ndarray]:
    """Run `run()` and keep every logits row the model computed, by (sequence, position of
    the token it follows): generate's sequence is 0, the engine's are request ids."""
    seen = {}

    def keep(name, logits):
        step = model.step
        rows = logits.reshape(-1, logits.shape[-1])  # (B, V); prefill's (V,) is one row
        for b, row in enumerate(rows):
            seen[(int(step.seqs[b]), int(step.ends[b]))] = row.copy()

    remove = model.add_hook("logits", keep)
    try:
        run()
    finally:
        remove()
    return seen


def reference(model, prompt: list[int], n: int, **sampling):
    """generate() alone: its tokens, its stop reason and the logits of every sampled token."""
    stats = GenerationStats()
    logits = logits_by_position(
        model, lambda: list(generate(model, prompt, n, stats=stats, stop_ids=(), **sampling))
    )
    return stats.tokens, stats.stop_reason, {pos: row for (_, pos), row in logits.items()}


def run_engine(engine: Engine, prompts, n: int, arrivals=None, **sampling):
    """Add prompt i at step arrivals[i] (all at once by default), step until all end, check
    the pool after every step; -> the requests and every logits row, by (id, position)."""
    arrivals = arrivals or [0] * len(prompts)
    requests = {}

    def go():
        step = 0
        while len(requests) < len(prompts) or engine.has_unfinished():
            for i, prompt in enumerate(prompts):
                if arrivals[i] == step:
                    requests[i] = engine.add_request(prompt, n, stop_ids=(), **sampling)
            engine.step()
            engine.pool.check()
            check_shared_blocks_match(engine)
            step += 1
            assert step < 10_000, "the engine is not finishing"

    logits = logits_by_position(engine.model, go)
    assert engine.pool.n_used == 0, "blocks leaked"
    return [requests[i] for i in range(len(prompts))], logits


def check_shared_blocks_match(engine: Engine) -> None:
    """A cached block is listed by a request only if it holds that request's tokens."""
    pool, size = engine.pool, engine.pool.block_size
    for request in engine.scheduler.running:
        for b, block in enumerate(request.blocks):
            if pool.keys[block] is not None and (b + 1) * size <= request.n_computed:
                assert pool.tokens[block] == tuple(request.tokens[b * size : (b + 1) * size])


def assert_same(model, requests, logits, prompts, n, **sampling):
    for request, prompt in zip(requests, prompts, strict=True):
        tokens, reason, expected = reference(model, prompt, n, **sampling)
        assert request.generated == tokens, (request.id, request.finish_reason, reason)
        assert request.finish_reason == reason
        for pos, row in expected.items():
            got = logits[(request.id, pos)]
            scale = np.abs(row).max()
            np.testing.assert_allclose(got, row, rtol=1e-4, atol=1e-4 * scale)


def prompts_with_shared_prefixes(rng: np.random.Generator, n: int, vocab: int, longest: int):
    """n prompts, some starting with the same tokens (so prefix blocks can be shared)."""
    base = rng.integers(3, vocab, size=longest).tolist()
    prompts = []
    for _ in range(n):
        shared = int(rng.integers(0, longest))
        own = int(rng.integers(1, longest - shared + 1))
        prompts.append([1, *base[:shared], *rng.integers(3, vocab, size=own).tolist()])
    return prompts


@pytest.mark.parametrize("name", list(MODELS))
def test_a_mixed_batch_equals_each_prompt_alone(name):
    """Arrivals at different steps, prompts in chunks of 7 beside others' decode tokens,
    blocks of 4 shared by prefix: every token and logit as generate() alone."""
    model = MODELS[name]
    prompts = prompts_with_shared_prefixes(np.random.default_rng(0), 5, 512, 30)
    engine = Engine(model, block_size=4, max_batch_tokens=7, kv_memory="16MiB")
    requests, logits = run_engine(engine, prompts, 12, arrivals=[0, 0, 3, 5, 9], temperature=0)
    assert_same(model, requests, logits, prompts, 12, temperature=0)
    assert sum(r.n_cached for r in requests) > 0  # some prefix was shared
    kinds = {kind for record in engine.records for _, kind, *_ in record.rows}
    assert kinds == {"prefill", "decode"}
    assert any(
        {kind for _, kind, *_ in record.rows} == {"prefill", "decode"} for record in engine.records
    )  # a prefill chunk ran beside decode tokens in one step


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    n_prompts=st.integers(1, 5),
    block_size=st.sampled_from([1, 2, 3, 8, 16, 64]),
    budget=st.integers(1, 40),
    prefix_caching=st.booleans(),
    tiny_pool=st.booleans(),
    chunked=st.booleans(),
)
def test_engine_equals_generate_over_arrivals_chunks_blocks_and_preemption(
    seed, n_prompts, block_size, budget, prefix_caching, tiny_pool, chunked
):
    model = MODELS["gqa"]
    rng = np.random.default_rng(seed)
    prompts = prompts_with_shared_prefixes(rng, n_prompts, 512, 24)
    n_new = int(rng.integers(1, 10))
    arrivals = sorted(rng.integers(0, 6, size=n_prompts).tolist())
    longest = max(len(p) for p in prompts) + n_new
    if not chunked:
        budget = max(budget, longest)  # whole prompts must fit one step
    # a tiny pool holds the longest request alone (preemption), else everyone at once
    per_request = -(-longest // block_size)
    n_blocks = per_request if tiny_pool else per_request * n_prompts
    engine = Engine(
        model,
        kv_memory=n_blocks * model.config.kv_cache_bytes(block_size),
        block_size=block_size,
        max_batch_tokens=budget,
        prefix_caching=prefix_caching,
        chunked_prefill=chunked,
    )
    requests, logits = run_engine(engine, prompts, n_new, arrivals, temperature=0)
    assert_same(model, requests, logits, prompts, n_new, temperature=0)


def test_a_tiny_pool_preempts_and_recomputes():
    model = MODELS["gqa"]
    # three prompts of 2 blocks are admitted; growing to 5 blocks each, they cannot all stay
    prompts = [[1, *range(10, 16)], [1, *range(40, 46)], [1, *range(70, 76)]]
    engine = Engine(model, block_size=4, kv_memory=8 * model.config.kv_cache_bytes(4))
    requests, logits = run_engine(engine, prompts, 12, temperature=0)
    assert engine.scheduler.n_preemptions > 0
    assert any(record.preempted for record in engine.records)
    assert_same(model, requests, logits, prompts, 12, temperature=0)


def test_seeded_sampling_does_not_depend_on_the_batch():
    model = MODELS["stories260K"]
    settings = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=1234)
    alone = Engine(model).generate(["Once upon a time"], 30, **settings)[0]
    crowd = Engine(model, max_batch_tokens=5).generate(
        ["Lily", "Once upon a time", "The dog ran", "Once upon a time"], 30, **settings
    )
    assert crowd[1].tokens == alone.tokens and crowd[3].tokens == alone.tokens
    text = llama_np.generate_text(model, "Once upon a time", 30, **settings)
    assert alone.text == text  # the same seed, the same draws as generate()


def test_prefix_caching_prefills_only_the_rest():
    model = MODELS["stories260K"]
    system = "Once upon a time, there was a little girl named Lily. She liked to play."
    engine = Engine(model, block_size=4)
    first = engine.generate([system + " One day"], 5, temperature=0)[0]
    second = engine.generate([system + " Her mom"], 5, temperature=0)[0]
    shared = len(model.tokenizer.encode(system, bos=True)) // 4 * 4  # whole blocks
    assert first.cached_tokens == 0
    assert shared - 4 <= second.cached_tokens <= shared
    assert engine.pool.hit_rate > 0
    # freed blocks stay cached until their memory is needed (least recently used first)
    assert engine.pool.n_used == 0 and engine.pool.n_cached > 0
    off = Engine(model, block_size=4, prefix_caching=False)
    off.generate([system + " One day"], 5, temperature=0)
    assert off.generate([system + " Her mom"], 5, temperature=0)[0].cached_tokens == 0


def test_cancel_frees_blocks_at_the_next_step():
    engine = Engine(MODELS["stories260K"])
    request = engine.add_request("Once upon a time", 100, temperature=0)
    for _ in range(3):
        engine.step()
    assert engine.pool.n_used > 0
    engine.abort(request.id)
    (event,) = engine.step()
    assert event.finished and event.finish_reason == "cancelled"
    assert engine.pool.n_used == 0 and not engine.has_unfinished()
    engine.abort(request.id)  # again, or an unknown id: nothing happens
    engine.abort(12345)
    assert engine.step() == []


def test_requests_that_can_never_fit_are_refused_at_once():
    model = MODELS["gqa"]  # context 128
    engine = Engine(model, block_size=16, kv_memory=2 * model.config.kv_cache_bytes(16))
    with pytest.raises(ContextLengthError, match="whole pool has 2"):
        engine.add_request(list(range(1, 40)), 5)  # 40 positions > 32 in the pool
    with pytest.raises(ContextLengthError, match="context of 128"):
        Engine(model).add_request([1] * 129, 5)
    assert not engine.has_unfinished()


def test_a_request_that_outgrows_the_whole_pool_ends_with_kv_memory():
    model = MODELS["gqa"]
    engine = Engine(model, block_size=4, kv_memory=3 * model.config.kv_cache_bytes(4))
    (done,) = engine.generate([[1, 5, 6, 7]], 50, temperature=0)
    # 12 positions: the prompt and 8 tokens run through the model, a 9th sampled from the last
    assert done.finish_reason == "kv_memory" and len(done.tokens) == 12 - 4 + 1
    assert engine.pool.n_used == 0


def test_scheduler_keeps_the_token_budget_and_the_sequence_cap():
    engine = Engine(MODELS["stories260K"], max_batch_tokens=6, max_seqs=3)
    requests = [
        engine.add_request("Once upon a time there was", 8, temperature=0) for _ in range(5)
    ]
    while engine.has_unfinished():
        engine.step()
        record = engine.records[-1]
        assert record.n_tokens <= 6 and record.running <= 3
    assert all(r.finish_reason in ("max_new_tokens", "end_token") for r in requests)
    # first come, first served: requests are admitted in order
    first_step = {}
    for record in engine.records:
        for request_id, _kind, _start, _ in record.rows:
            first_step.setdefault(request_id, record.index)
    assert list(first_step) == sorted(first_step)


def test_without_chunked_prefill_a_prompt_runs_whole():
    engine = Engine(MODELS["stories260K"], max_batch_tokens=64, chunked_prefill=False)
    engine.generate(["Once upon a time " * 5, "Lily"], 3, temperature=0)
    prefill_rows = [row for record in engine.records for row in record.rows if row[1] == "prefill"]
    assert all(start == 0 for _, _, start, _ in prefill_rows)


def test_scheduler_preempts_the_newest_request():
    pool = BlockPool(n_blocks=4, block_size=2)
    scheduler = Scheduler(SchedulerConfig(max_batch_tokens=100, max_model_len=64), pool)
    engine = Engine(MODELS["gqa"])  # for Request objects
    old = engine.add_request([1, 2, 3, 4], 5)
    new = engine.add_request([1, 4, 5, 6], 5)
    for request in (old, new):
        scheduler.add(request)
    step = scheduler.schedule()  # both prompts: 2 blocks each, the pool is full
    assert step.requests == [old, new] and pool.n_free == 0
    scheduler.computed(step)
    old.tokens.append(9)  # each sampled a token: position 4 needs a third block
    new.tokens.append(9)
    step = scheduler.schedule()
    assert step.preempted == [new] and step.requests == [old]
    assert new.status == "waiting" and new.blocks == [] and new.n_computed == 0
    pool.check()


def test_hooks_see_which_rows_belong_to_which_request():
    """In a mixed step attention runs per group of equal T: model.attending names it, and
    an AttentionRecorder rebuilds each request's attention exactly as for generate() alone."""
    model = MODELS["stories260K"]
    prompts = ["Lily", "Once upon a time there was"]
    groups = []

    def look(name, probs):
        step, group = model.step, model.attending
        groups.append((step.phase, tuple(step.seqs[group]), int(step.counts[group[0]])))
        assert probs.ndim == (3 if len(group) == 1 else 4)

    remove = model.add_hook("layers.0.attn.probs", look)
    try:
        with AttentionRecorder(model) as rec:
            engine = Engine(model, max_batch_tokens=4)
            requests = [engine.add_request(p, 6, temperature=0) for p in prompts]
            while engine.has_unfinished():
                engine.step()
    finally:
        remove()
    # request 0's decode token beside a chunk of request 1's prompt: two groups
    assert ("mixed", (0,), 1) in groups and ("mixed", (1,), 3) in groups
    for request, prompt in zip(requests, prompts, strict=True):
        with AttentionRecorder(model) as alone:
            llama_np.generate_text(model, prompt, 6, temperature=0)
        np.testing.assert_array_equal(rec.sequence_tokens(request.id), alone.tokens)
        np.testing.assert_allclose(rec.probs(request.id), alone.probs(), atol=1e-5)


def test_without_chunked_prefill_a_prompt_longer_than_a_step_is_refused():
    engine = Engine(MODELS["gqa"], max_batch_tokens=8, chunked_prefill=False)
    with pytest.raises(ContextLengthError, match=r"must run in one step.*max_batch_tokens"):
        engine.add_request(list(range(1, 12)), 3)
    assert engine.generate([list(range(1, 9))], 3, temperature=0)[0].tokens  # 8 fit


def test_a_second_thread_stepping_at_once_is_refused():
    """Two threads stepping one engine crashed inside the forward pass (an IndexError); a
    step that begins while another runs is refused by name, and the engine goes on."""
    model = llama_np.load()
    engine = Engine(model, kv_memory="1MiB")
    started, release = threading.Event(), threading.Event()

    def slow(name, array):  # holds the first step inside its forward pass
        started.set()
        release.wait(10)

    remove = model.add_hook("embed", slow)
    engine.add_request("Once upon a time", 5, temperature=0)
    first = threading.Thread(target=engine.step)
    first.start()
    try:
        assert started.wait(10)
        with pytest.raises(ArgumentError, match="another thread is running a step"):
            engine.step()
    finally:
        release.set()
        first.join(10)
        remove()
    assert engine.generate(["Lily"], 3, temperature=0)[0].finish_reason == "max_new_tokens"


def test_abort_checks_its_argument():
    engine = Engine(llama_np.load(), kv_memory="1MiB")
    for bad in ("x", None, 1.5):
        with pytest.raises(ArgumentError, match="request_id"):
            engine.abort(bad)
    engine.abort(12345)  # an unknown id is a no-op (it may have finished already)
