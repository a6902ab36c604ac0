"""Hook points: the documented catalogue, zero cost when unused, and values that match the
forward pass (attention recomputed independently from the recorded queries and keys)."""

import re

import numpy as np
import pytest

import llama_np
from llama_np import hooks
from llama_np.errors import ArgumentError
from llama_np.hooks import AttentionRecorder, hook_points, match_points, record
from llama_np.layers import softmax

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def model():
    return llama_np.load()


def run(model, n_decode=3):
    """Greedy prefill + n_decode steps on a fresh cache; returns every logits array."""
    cache = model.new_cache(32)
    logits = [model.prefill(model.tokenizer.encode(PROMPT), cache)]
    for _ in range(n_decode):
        logits.append(model.decode(int(logits[-1].argmax()), cache))
    return logits


def documented_shapes(config, phase, T, S, B=1):
    """Shape of every point from the table in hooks.py's docstring, for "prefill", "decode"
    or "batched" decode."""
    sizes = dict(T=T, S=S, B=B, D=config.dim, H=config.n_heads, KVH=config.n_kv_heads)
    sizes.update(HD=config.head_dim, V=config.vocab_size)
    shapes = {}
    for line in hooks.__doc__.splitlines():
        columns = re.split(r"\s{2,}", line.strip())
        if len(columns) != 5 or not columns[1].startswith("("):
            continue
        point, prefill, decode, batched, _ = columns
        shape = {"prefill": prefill, "decode": decode, "batched": batched}[phase]
        shape = shape.split(" or ")[0].removesuffix(" int")
        for layer in range(config.n_layers):
            shapes[point.replace("{i}", str(layer))] = eval(shape, {}, sizes)
    return shapes


def test_every_point_fires_with_its_documented_shape(model):
    with record(model, "*") as rec:
        run(model, n_decode=1)
    T = len(model.tokenizer.encode(PROMPT))
    for i, (phase, S) in enumerate([("prefill", T), ("decode", T + 1)]):
        seen = {name: arrays[i].shape for name, arrays in rec.arrays.items()}
        assert seen == documented_shapes(model.config, phase, T, S), phase
    assert sorted(rec.arrays) == sorted(hook_points(model.config.n_layers))


def test_patterns_match_at_registration(model):
    assert match_points("layers.*.attn.probs", 5) == [f"layers.{i}.attn.probs" for i in range(5)]
    assert match_points("logits", 5) == ["logits"]
    assert match_points("layers.[01].resid", 5) == ["layers.0.resid", "layers.1.resid"]
    for bad in ("layers.5.attn.probs", "layers.0.attn.prob", "logit"):
        with pytest.raises(ArgumentError, match="matches no point"):
            model.add_hook(bad, lambda name, a: None)
    calls = []
    remove = model.add_hook("layers.*.mlp.out", lambda name, a: calls.append(name))
    run(model, n_decode=0)
    assert calls == [f"layers.{i}.mlp.out" for i in range(5)]
    remove()
    assert model.hooks == {}


def test_no_hooks_changes_nothing(model):
    """Hooks that return None change no number; those on attention's scores and probs run
    decode attention in NumPy rather than the compiled kernel: the last bits only."""
    before = run(model)
    every_point = model.add_hook("*", lambda name, a: None)
    with_attention = run(model)
    every_point()
    but_attention = [
        p for p in hook_points(model.config.n_layers) if not p.endswith((".scores", ".probs"))
    ]
    removes = [model.add_hook(point, lambda name, a: None) for point in but_attention]
    during = run(model)
    for remove in removes:
        remove()
    assert model.hooks == {}
    after = run(model)
    for a, b, c in zip(before, during, after, strict=True):
        assert np.array_equal(a, b) and np.array_equal(a, c)
    exact = not model.compiled_attention  # NumPy's attention either way
    for a, b in zip(before, with_attention, strict=True):
        assert np.array_equal(a, b) if exact else np.allclose(a, b, rtol=1e-5, atol=1e-5)


def test_recorded_attention_matches_recomputation_from_q_and_k(model):
    cfg = model.config
    G = cfg.n_heads // cfg.n_kv_heads
    with (
        AttentionRecorder(model) as attn,
        record(model, ["layers.*.attn.q", "layers.*.attn.k"]) as qk,
    ):
        run(model, n_decode=4)
    probs = attn.probs()  # (L, H, N, N)
    N = len(attn.tokens)
    assert probs.shape == (cfg.n_layers, cfg.n_heads, N, N)
    assert probs.dtype == np.float32
    assert np.allclose(probs.sum(axis=-1), 1.0, atol=1e-5)
    assert not probs[..., np.triu_indices(N, k=1)[0], np.triu_indices(N, k=1)[1]].any()  # causal
    for layer in range(cfg.n_layers):
        q = np.concatenate(qk[f"layers.{layer}.attn.q"])  # (N, H, HD)
        k = np.concatenate(qk[f"layers.{layer}.attn.k"])  # (N, KVH, HD)
        for h in range(cfg.n_heads):
            for n in range(N):
                scores = k[: n + 1, h // G] @ q[n, h] / np.sqrt(np.float32(cfg.head_dim))
                expected = softmax(scores.astype(np.float32))
                np.testing.assert_allclose(probs[layer, h, n, : n + 1], expected, atol=2e-6)


def test_attention_recorder_tokens_and_pieces(model):
    with AttentionRecorder(model, layers=[3, 1]) as rec:
        text = llama_np.generate_text(model, PROMPT, 6, temperature=0)
    prompt = model.tokenizer.encode(PROMPT)
    assert rec.n_prompt == len(prompt)
    assert list(rec.tokens[: rec.n_prompt]) == prompt
    # generate() does not run its last sampled token, so 5 of the 6 have rows
    assert len(rec.tokens) == len(prompt) + 5
    generated = "".join(rec.pieces()[rec.n_prompt :])
    assert text.startswith(generated) and len(generated) < len(text)
    assert rec.probs().shape[:2] == (2, model.config.n_heads)


def test_attention_recorder_rejects_two_sequences(model):
    with AttentionRecorder(model) as rec:
        run(model, n_decode=1)
        run(model, n_decode=1)
    with pytest.raises(ArgumentError, match="empty cache"):
        rec.probs()
    with pytest.raises(ArgumentError, match="layers"):
        AttentionRecorder(model, layers=[5])


def test_recorder_copies(model):
    with record(model, ["layers.0.attn.scores", "layers.0.attn.probs"]) as rec:
        cache = model.new_cache(16)
        logits = model.prefill(model.tokenizer.encode(PROMPT), cache)
        scores = rec["layers.0.attn.scores"][0].copy()
        model.decode(int(logits.argmax()), cache)
        model.decode(5, cache)
    # softmax runs in place on the scores buffer: a recorder keeping views would hold probs
    assert np.isneginf(rec["layers.0.attn.scores"][0][:, 0, 1:]).all()
    assert not np.array_equal(rec["layers.0.attn.scores"][0], rec["layers.0.attn.probs"][0])
    assert np.array_equal(rec["layers.0.attn.scores"][0], scores)
    assert len(rec["layers.0.attn.probs"]) == 3


def test_every_point_fires_in_batched_decode_with_its_documented_shape(model):
    prompts = ["Once upon a time", "Lily"]
    lengths = [len(model.tokenizer.encode(p)) for p in prompts]
    with record(model, "*") as rec:
        llama_np.generate_batch(model, prompts, 2, temperature=0)
    # passes: both prompts prefilled in one step (the serving engine), one batched decode step
    seen = {name: arrays[-1].shape for name, arrays in rec.arrays.items()}
    assert seen == documented_shapes(model.config, "batched", 1, max(lengths) + 1, B=2)


def test_attention_recorder_records_each_sequence_of_a_batch(model):
    """Batched decode runs Model.block, so its attention is recorded too; every sequence's
    rows equal that prompt generated alone."""
    prompts = ["Once upon a time", "Lily and Tom"]
    with AttentionRecorder(model) as batch:
        texts = llama_np.generate_batch(model, prompts, 6, temperature=0)
    for b, prompt in enumerate(prompts):
        with AttentionRecorder(model) as alone:
            assert llama_np.generate_text(model, prompt, 6, temperature=0) == texts[b]
        assert np.array_equal(batch.sequence_tokens(b), alone.tokens)
        np.testing.assert_allclose(batch.probs(seq=b), alone.probs(), rtol=1e-4, atol=1e-5)


def test_hooks_see_chunked_attention_of_a_long_prompt(monkeypatch):
    """A 300-token prompt runs chunked with or without hooks; the hooks see the blocks' rows,
    which put together are the full attention an unchunked run computes."""
    from util import random_model, small_config

    import llama_np.model as model_module

    m = random_model(small_config(max_seq_len=320))
    tokens = list(np.random.default_rng(1).integers(0, 64, size=300))
    calls = []
    real = model_module.chunked_attention
    monkeypatch.setattr(model_module, "chunked_attention", lambda *a: calls.append(1) or real(*a))
    plain = m.prefill(tokens, m.new_cache())
    assert len(calls) == m.config.n_layers  # un-hooked: chunked
    with AttentionRecorder(m) as rec:
        hooked = m.prefill(tokens, m.new_cache())
    assert len(calls) == 2 * m.config.n_layers  # hooked: still chunked
    assert np.array_equal(plain, hooked)
    monkeypatch.setattr(model_module, "ATTENTION_CHUNK", 1000)  # one block: the full matrix
    with AttentionRecorder(m) as full:
        m.prefill(tokens, m.new_cache())
    np.testing.assert_allclose(rec.probs(), full.probs(), atol=1e-6)


def test_a_hook_replaces_by_returning_and_cannot_edit_in_place(model):
    tokens = model.tokenizer.encode(PROMPT)
    plain = model.prefill(tokens, model.new_cache())

    def edit_in_place(name, a):
        a[...] = 0

    remove = model.add_hook("layers.0.mlp.out", edit_in_place)
    with pytest.raises(ValueError, match="read-only"):
        model.prefill(tokens, model.new_cache())
    remove()
    remove = model.add_hook("layers.0.mlp.out", lambda name, a: np.zeros_like(a))
    ablated = model.prefill(tokens, model.new_cache())
    remove()
    assert not np.allclose(plain, ablated)
    remove = model.add_hook("layers.0.mlp.out", lambda name, a: np.zeros(3))
    with pytest.raises(ArgumentError, match="must return an array of the activation's shape"):
        model.prefill(tokens, model.new_cache())
    remove()


def test_a_replaced_key_is_what_the_cache_holds(model):
    tokens = model.tokenizer.encode(PROMPT)
    remove = model.add_hook("layers.1.attn.k", lambda name, a: a * 2)
    cache = model.new_cache(16)
    with record(model, "layers.1.attn.k") as rec:  # registered second: sees the doubled keys
        model.prefill(tokens, cache)
    remove()
    k = rec["layers.1.attn.k"][0]  # (T, KVH, HD)
    assert np.array_equal(cache.k[1, 0, :, : len(tokens)], k.transpose(1, 0, 2))


def test_a_tokens_hook_replaces_the_ids_and_removing_twice_is_harmless(model):
    """The tokens point replaces the ids as any point replaces its activation (its return
    was ignored), checked against the vocabulary; remove() twice does nothing the second
    time, as a torch hook handle."""
    tokens = model.tokenizer.encode(PROMPT)
    other = model.tokenizer.encode("Lily went home")[: len(tokens)]
    other += [5] * (len(tokens) - len(other))
    expected = model.prefill(other, model.new_cache())
    remove = model.add_hook("tokens", lambda name, ids: np.array(other))
    np.testing.assert_array_equal(model.prefill(tokens, model.new_cache()), expected)
    remove()
    remove()
    remove = model.add_hook("tokens", lambda name, ids: ids + model.config.vocab_size)
    with pytest.raises(ArgumentError, match=r"a hook on tokens returned id \d+, outside"):
        model.prefill(tokens, model.new_cache())
    remove()
    assert not model.hooks


def test_break_at_step_1_of_a_batch_stops_in_decode(model, monkeypatch):
    stops = []
    monkeypatch.setattr("sys.breakpointhook", lambda: stops.append(model.step.phase))
    remove = hooks.break_at(model, "layers.0.attn.probs", step=1)
    llama_np.generate_batch(model, ["Once upon a time", "Lily"], 3, temperature=0)
    remove()
    assert stops == ["decode"]
