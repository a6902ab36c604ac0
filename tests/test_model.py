"""Prefill, decode and the KV cache agree with each other and with a from-scratch forward."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from util import random_model, random_tensors, small_config

import llama_np.model as model_module
from llama_np import ArgumentError, ContextLengthError, KVCache, Model
from llama_np.engine import Engine
from llama_np.layers import chunked_attention as chunked
from llama_np.model import Step


def reference_forward(config, tensors, tokens):
    """Logits (T, V) for every position, computed in float64 with no cache at all.

    Built from the checkpoint tensors (Meta names, (out, in) shapes, as every loader gives
    them), not from the engine's fused and transposed copies, and written independently of
    layers.py: RoPE by explicit rotations per position and pair (interleaved or half-split),
    K/V heads repeated for their query groups, optional q/k/v/o biases added.
    """
    c = config
    H, KVH, HD = c.n_heads, c.n_kv_heads, c.head_dim
    T = len(tokens)
    freqs = 1.0 / c.rope_theta ** (np.arange(0, HD, 2) / HD)
    w = {name: np.asarray(a, dtype=np.float64) for name, a in tensors.items()}

    def rope(x):  # (T, n, HD)
        out = np.empty_like(x)
        for i, f in enumerate(freqs):
            a, b = (2 * i, 2 * i + 1) if c.rope_interleaved else (i, i + HD // 2)
            cos, sin = np.cos(np.arange(T) * f)[:, None], np.sin(np.arange(T) * f)[:, None]
            out[:, :, a] = x[:, :, a] * cos - x[:, :, b] * sin
            out[:, :, b] = x[:, :, a] * sin + x[:, :, b] * cos
        return out

    def norm(x, weight):
        return x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + c.norm_eps) * weight

    def linear(x, name):  # x @ W.T (+ b), W stored (out, in)
        y = x @ w[name + ".weight"].T
        return y + w[name + ".bias"] if name + ".bias" in w else y

    x = w["tok_embeddings.weight"][tokens]
    for i in range(c.n_layers):
        p = f"layers.{i}."
        h = norm(x, w[p + "attention_norm.weight"])
        q = rope(linear(h, p + "attention.wq").reshape(T, H, HD))
        k = rope(linear(h, p + "attention.wk").reshape(T, KVH, HD))
        v = linear(h, p + "attention.wv").reshape(T, KVH, HD)
        k, v = np.repeat(k, H // KVH, axis=1), np.repeat(v, H // KVH, axis=1)
        scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(HD)
        scores[:, np.triu(np.ones((T, T), dtype=bool), 1)] = -np.inf
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        x = x + linear(np.einsum("hts,shd->thd", probs, v).reshape(T, H * HD), p + "attention.wo")
        h = norm(x, w[p + "ffn_norm.weight"])
        gate, up = linear(h, p + "feed_forward.w1"), linear(h, p + "feed_forward.w3")
        x = x + linear(gate / (1 + np.exp(-gate)) * up, p + "feed_forward.w2")
    classifier = w["tok_embeddings.weight" if c.tie_embeddings else "output.weight"]
    return norm(x, w["norm.weight"]) @ classifier.T


configs = st.builds(
    lambda kv, groups, hd, layers, interleaved, tied: small_config(
        n_kv_heads=kv,
        n_heads=kv * groups,
        dim=kv * groups * hd,
        n_layers=layers,
        rope_interleaved=interleaved,
        tie_embeddings=tied,
    ),
    kv=st.integers(1, 3),
    groups=st.integers(1, 3),
    hd=st.sampled_from([2, 4, 8]),
    layers=st.integers(1, 2),
    interleaved=st.booleans(),
    tied=st.booleans(),
)


@given(config=configs, biases=st.booleans(), data=st.data())
@settings(max_examples=40, deadline=None)
def test_prefill_matches_independent_reference(config, biases, data):
    tensors = random_tensors(config, data.draw(st.integers(0, 1000)), biases=biases)
    model = Model.from_tensors(config, tensors)
    tokens = data.draw(st.lists(st.integers(0, config.vocab_size - 1), min_size=1, max_size=12))
    logits = model.prefill(tokens, model.new_cache(), all_logits=True)
    assert logits.dtype == np.float32 and logits.shape == (len(tokens), config.vocab_size)
    expected = reference_forward(config, tensors, tokens)
    np.testing.assert_allclose(logits, expected, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("pieces", [[300], [100, 200], [127, 2, 171]])
def test_long_prompts_run_chunked_and_match_the_reference(pieces, monkeypatch):
    """T > ATTENTION_CHUNK runs attention in blocks of queries, also when the prompt arrives
    in pieces whose blocks start mid-cache (the mask offset inside each block)."""
    config = small_config(max_seq_len=320, vocab_size=64)
    tensors = random_tensors(config, seed=3, scale=0.1)
    model = Model.from_tensors(config, tensors)
    tokens = np.random.default_rng(0).integers(0, 64, size=sum(pieces)).tolist()
    blocks = []
    monkeypatch.setattr(
        model_module, "chunked_attention", lambda *a: blocks.append(a[0].shape) or chunked(*a)
    )
    cache, start, logits = model.new_cache(), 0, []
    for n in pieces:
        logits.append(model.prefill(tokens[start : start + n], cache, all_logits=True))
        start += n
    expected = reference_forward(config, tensors, tokens)
    np.testing.assert_allclose(np.concatenate(logits), expected, rtol=5e-4, atol=5e-4)
    long_pieces = [n for n in pieces if n > model_module.ATTENTION_CHUNK]
    assert len(blocks) == len(long_pieces) * config.n_layers


@given(config=configs, data=st.data())
@settings(max_examples=60, deadline=None)
def test_cached_decode_and_chunked_prefill_equal_full_prefill(config, data):
    """Catches a KV write one slot late, a wrong mask offset, or a stale cache read."""
    model = random_model(config, seed=data.draw(st.integers(0, 1000)))
    tokens = data.draw(st.lists(st.integers(0, config.vocab_size - 1), min_size=2, max_size=16))
    split = data.draw(st.integers(1, len(tokens) - 1))
    full = model.prefill(tokens, model.new_cache(), all_logits=True)  # (T, V)

    cache = model.new_cache()  # prefix by prefill, then one token at a time by decode
    steps = [model.prefill(tokens[:split], cache)]
    steps += [model.decode(t, cache) for t in tokens[split:]]
    np.testing.assert_allclose(np.stack(steps), full[split - 1 :], rtol=1e-4, atol=1e-4)
    assert cache.length == len(tokens)

    cache = model.new_cache()  # prefix by prefill, then the rest by a second prefill
    model.prefill(tokens[:split], cache)
    rest = model.prefill(tokens[split:], cache, all_logits=True)
    np.testing.assert_allclose(rest, full[split:], rtol=1e-4, atol=1e-4)


@given(config=configs, data=st.data())
@settings(max_examples=40, deadline=None)
def test_batched_decode_equals_each_sequence_decoded_alone(config, data):
    """Sequences of different lengths decode together as each alone; with compiled kernels
    this is their decode attention over the contiguous cache (kv_cache.attend), and the
    NumPy path otherwise. Catches a sequence reading another's rows or positions."""
    model = random_model(config, seed=data.draw(st.integers(0, 1000)))
    token = st.integers(0, config.vocab_size - 1)
    prompts = data.draw(st.lists(st.lists(token, min_size=1, max_size=12), min_size=2, max_size=5))
    steps = data.draw(st.lists(st.lists(token, min_size=len(prompts), max_size=len(prompts)),
                               min_size=1, max_size=3))  # fmt: skip
    batch = model.new_cache(16, batch_size=len(prompts))
    for b, prompt in enumerate(prompts):
        model.prefill(prompt, batch, seq=b)
    together = np.stack([model.decode_batch(tokens, batch) for tokens in steps])  # (N, B, V)
    for b, prompt in enumerate(prompts):
        cache = model.new_cache(16)
        model.prefill(prompt, cache)
        alone = np.stack([model.decode(tokens[b], cache) for tokens in steps])  # (N, V)
        np.testing.assert_allclose(together[:, b], alone, rtol=1e-4, atol=1e-4)


def test_prefill_logits_last_position_only_by_default():
    model = random_model(small_config())
    last = model.prefill([1, 2, 3], model.new_cache())
    every = model.prefill([1, 2, 3], model.new_cache(), all_logits=True)
    assert last.shape == (64,)
    np.testing.assert_allclose(last, every[-1], rtol=1e-5, atol=1e-6)


def test_no_float64_anywhere_in_the_forward_pass():
    """Every array a hook sees, the cache and the logits are float32."""
    model = random_model(small_config())
    seen = {}
    points = ["logits"] + [
        f"layers.{i}.{p}"
        for i in range(2)
        for p in ("attn.scores", "attn.probs", "attn.out", "mlp.out", "resid")
    ]
    for name in points:
        model.add_hook(name, lambda n, a: seen.setdefault(n, set()).add(a.dtype))
    cache = model.new_cache()
    logits = model.prefill([1, 2, 3], cache)
    logits2 = model.decode(4, cache)
    assert set(seen) == set(points)
    assert all(dtypes == {np.dtype(np.float32)} for dtypes in seen.values()), seen
    assert logits.dtype == logits2.dtype == cache.k.dtype == np.float32
    assert model.rope.dtype == np.complex64
    for lw in model.weights.layers:
        assert all(a.dtype == np.float32 for a in vars(lw).values() if a is not None)


def test_kv_cache_is_preallocated_and_counted():
    config = small_config()
    cache = KVCache(config, max_seq_len=10, batch_size=2)
    assert cache.k.shape == (2, 2, 2, 10, 8)  # (L, B, KVH, S_max, HD)
    assert cache.nbytes == 2 * 2 * 2 * 2 * 10 * 8 * 4
    assert cache.bytes_per_token == config.kv_cache_bytes(1)
    assert cache.lengths == [0, 0]


def test_kv_cache_writes_slices_and_reads_views():
    cache = KVCache(small_config(), max_seq_len=8)
    k = np.ones((3, 2, 8), dtype=np.float32)  # (T, KVH, HD)
    step = Step("prefill", np.array([0]), np.array([2]), np.array([3]))
    cache.write(1, step, k, 2 * k)
    k_all, v_all = cache.read(1, step, np.array([0]))
    assert k_all.shape == v_all.shape == (1, 2, 5, 8) and np.shares_memory(k_all, cache.k)
    assert (cache.k[1, 0, :, 2:5] == 1).all() and (cache.k[1, 0, :, :2] == 0).all()
    assert (cache.v[1, 0, :, 2:5] == 2).all()


@pytest.mark.parametrize("rows", [[0, 1, 2], [1, 2, 3]], ids=["rows 0-2", "rows 1-3"])
def test_kv_cache_batched_write_puts_each_sequence_at_its_own_position(rows):
    """Batched decode: one new position per sequence, each at its own start. Exactly those
    (layer, row, position) slots change, every one of them (the last sequence's too), and
    `read` shows each row through the furthest new position, as views of the cache."""
    cache = KVCache(small_config(), max_seq_len=8, batch_size=4)  # k: (L, B, KVH, S_max, HD)
    gen = np.random.default_rng(0)
    cache.k[:] = gen.standard_normal(cache.k.shape, dtype=np.float32)  # what was cached before
    cache.v[:] = gen.standard_normal(cache.v.shape, dtype=np.float32)
    expected_k, expected_v = cache.k.copy(), cache.v.copy()
    starts = np.array([5, 0, 3])  # (B,) each sequence's length before this token
    k = gen.standard_normal((3, 2, 8), dtype=np.float32)  # (R = B, KVH, HD)
    v = gen.standard_normal((3, 2, 8), dtype=np.float32)
    for b, start in enumerate(starts):
        expected_k[1, rows[b], :, start] = k[b]
        expected_v[1, rows[b], :, start] = v[b]

    step = Step("decode", np.array(rows), starts, np.ones(3, dtype=np.int64))
    cache.write(1, step, k, v)
    np.testing.assert_array_equal(cache.k, expected_k)
    np.testing.assert_array_equal(cache.v, expected_v)
    k_all, v_all = cache.read(1, step, np.arange(3))
    assert k_all.shape == v_all.shape == (3, 2, 6, 8)  # (B, KVH, max(starts) + 1, HD)
    assert np.shares_memory(k_all, cache.k) and np.shares_memory(v_all, cache.v)
    np.testing.assert_array_equal(k_all, expected_k[1, rows, :, :6])
    np.testing.assert_array_equal(v_all, expected_v[1, rows, :, :6])


def test_cache_overflow_raises_clear_error():
    model = random_model(small_config())
    cache = model.new_cache(max_seq_len=4)
    model.prefill([1, 2, 3], cache)
    model.decode(4, cache)
    with pytest.raises(ContextLengthError, match="max_seq_len 4"):
        model.decode(5, cache)
    with pytest.raises(ContextLengthError, match="KV cache full"):
        model.prefill([1, 2, 3, 4, 5], model.new_cache(max_seq_len=4))


@pytest.mark.parametrize("bad", [[], [64], [-1], [[1, 2]], ["a"], [1.5]])
def test_bad_tokens_raise_argument_error(bad):
    model = random_model(small_config())
    with pytest.raises(ArgumentError):
        model.prefill(bad, model.new_cache())


def test_new_cache_rejects_sizes_beyond_the_context():
    model = random_model(small_config())
    with pytest.raises(ArgumentError, match=r"1\.\.64"):
        model.new_cache(max_seq_len=65)


def test_unused_hooks_cost_nothing(monkeypatch):
    """With no hook registered (none yet, or every one removed) no hook machinery runs in
    prefill, chunked prefill, decode, batched decode or a serving engine's steps (a paged
    cache): Model._run_hooks and
    Model._attention_hook are never called and attention is handed no hook. Counted, not
    timed; one registered hook makes the same counters move."""
    calls = []

    def spy(name, real):
        def wrapper(*args):
            calls.append(name)
            return real(*args)

        return wrapper

    def attention_spy(real):
        def wrapper(q, k, v, ends, *rest):  # (..., hook) or (..., chunk, hook)
            if rest and rest[-1] is not None:
                calls.append("attention given a hook")
            return real(q, k, v, ends, *rest)

        return wrapper

    monkeypatch.setattr(Model, "_run_hooks", spy("_run_hooks", Model._run_hooks))
    monkeypatch.setattr(Model, "_attention_hook", spy("_attention_hook", Model._attention_hook))
    monkeypatch.setattr(model_module, "attention", attention_spy(model_module.attention))
    monkeypatch.setattr(model_module, "chunked_attention", attention_spy(chunked))
    monkeypatch.setattr(model_module, "ATTENTION_CHUNK", 4)  # prompts of 5+ tokens: chunked

    def run(model):
        model.prefill([1, 2, 3], model.new_cache(), all_logits=True)
        cache = model.new_cache()
        model.prefill([1, 2, 3, 4, 5, 6], cache)  # attention in blocks of 4 queries
        model.decode(7, cache)
        batch = model.new_cache(16, batch_size=2)
        model.prefill([1, 2], batch, seq=0)
        model.prefill([3], batch, seq=1)
        model.decode_batch([4, 5], batch)
        Engine(model).generate([[1, 2, 3], [4, 5, 6, 7, 8]], 3, temperature=0, stop_ids=())

    model = random_model(small_config())
    run(model)
    assert calls == []
    remove = model.add_hook("layers.*.attn.probs", lambda n, a: None)
    run(model)
    assert "_attention_hook" in calls and "attention given a hook" in calls  # the spies work
    calls.clear()
    remove()
    assert model.hooks == {}
    run(model)
    assert calls == []
