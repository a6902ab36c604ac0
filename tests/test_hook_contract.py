"""The hook contract (llama_np/hooks.py): read-only views, replacement by returning, k/v hooks
before the cache write, and kv_head's mapping of query heads to K/V heads."""

import numpy as np
import pytest

import llama_np
from llama_np.errors import ArgumentError
from llama_np.hooks import kv_head

POINTS = ["embed", "layers.1.attn.q", "layers.1.attn.k", "layers.1.attn.v",
          "layers.1.attn.scores", "layers.1.attn.probs", "layers.1.attn.out",
          "layers.1.mlp.out", "layers.1.resid", "logits"]  # fmt: skip


@pytest.fixture(scope="module")
def model():
    return llama_np.load()


@pytest.fixture(scope="module")
def tokens(model):
    return model.tokenizer.encode("Lily and Tom went to the")


def run(model, tokens, point=None, fn=None):
    remove = model.add_hook(point, fn) if point else (lambda: None)
    try:
        cache = model.new_cache()
        logits = model.prefill(tokens, cache)
        logits = model.decode(int(logits.argmax()), cache)
    finally:
        remove()
    return logits, cache


@pytest.mark.parametrize("point", POINTS)
def test_an_in_place_edit_is_refused(model, tokens, point):
    def edit(name, array):
        array[...] = 0

    with pytest.raises(ValueError, match="read-only"):
        run(model, tokens, point, edit)


@pytest.mark.parametrize("point", POINTS)
def test_a_returned_array_replaces_the_activation(model, tokens, point):
    plain, _ = run(model, tokens)
    same, _ = run(model, tokens, point, lambda name, a: None)  # None keeps the activation
    if point.endswith((".scores", ".probs")) and model.compiled_attention:  # hooks.py
        np.testing.assert_allclose(same, plain, rtol=1e-5, atol=1e-5)
    else:
        np.testing.assert_array_equal(same, plain)
    changed, _ = run(model, tokens, point, lambda name, a: a * np.float32(0.5))
    assert not np.allclose(changed, plain, atol=1e-3)


def test_a_replacement_of_the_wrong_shape_is_refused(model, tokens):
    with pytest.raises(ArgumentError, match=r"layers\.1\.attn\.probs returned shape"):
        run(model, tokens, "layers.1.attn.probs", lambda name, a: a[:1])


@pytest.mark.parametrize("part", ["k", "v"])
def test_k_and_v_replacements_reach_the_cache(model, tokens, part):
    """The k/v hooks run before the cache write: the cache stores the replacement, and the
    decode step that follows reads it."""

    def zero_kv_head_2(name, a):  # (T, KVH, HD)
        out = a.copy()
        out[:, 2] = 0
        return out

    plain, plain_cache = run(model, tokens)
    changed, cache = run(model, tokens, f"layers.1.attn.{part}", zero_kv_head_2)
    stored = getattr(cache, part)[1, 0, 2, : len(tokens) + 1]  # layer 1, K/V head 2
    assert not stored.any()
    assert getattr(plain_cache, part)[1, 0, 2, : len(tokens) + 1].any()
    others = getattr(cache, part)[1, 0, [0, 1, 3], : len(tokens)]
    np.testing.assert_array_equal(
        others, getattr(plain_cache, part)[1, 0, [0, 1, 3], : len(tokens)]
    )
    assert not np.allclose(changed, plain, atol=1e-3)


def test_kv_head_is_the_head_attention_reads(model, tokens):
    """Independent reference: scores of query head h recomputed in float64 from the recorded
    queries and the cached keys of K/V head kv_head(h) (and not of any other)."""
    from llama_np.hooks import record

    cfg = model.config
    with record(model, ["layers.2.attn.q", "layers.2.attn.scores"]) as rec:
        cache = model.new_cache()
        model.prefill(tokens, cache)
    q = rec["layers.2.attn.q"][0].astype(np.float64)  # (T, H, HD)
    scores = rec["layers.2.attn.scores"][0]  # (H, T, S)
    keys = cache.k[2, 0, :, : len(tokens)].astype(np.float64)  # (KVH, S, HD)
    visible = np.tril(np.ones((len(tokens), len(tokens)), dtype=bool))
    G = cfg.n_heads // cfg.n_kv_heads
    assert [kv_head(cfg, h) for h in range(cfg.n_heads)] == list(
        np.repeat(np.arange(cfg.n_kv_heads), G)
    )
    for h in range(cfg.n_heads):
        for kvh in range(cfg.n_kv_heads):
            ref = q[:, h] @ keys[kvh].T / np.sqrt(cfg.head_dim)
            same = np.allclose(ref[visible], scores[h][visible], atol=1e-4)
            assert same == (kvh == kv_head(cfg, h)), (h, kvh)
    with pytest.raises(ArgumentError, match="query head 8"):
        kv_head(cfg, cfg.n_heads)
