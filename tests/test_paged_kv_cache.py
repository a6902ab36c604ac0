"""The paged KV cache: rows land in their sequence's blocks, reads gather them back in order,
and the compiled decode kernel equals the NumPy path (gather, then layers.attention)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from util import small_config

from llama_np import kernels
from llama_np.layers import attention
from llama_np.model import Step
from llama_np.paged_kv_cache import PagedKVCache


def test_rows_land_in_their_blocks_and_read_back_in_table_order():
    config = small_config(n_kv_heads=2, n_heads=4, dim=32)  # HD 8
    cache = PagedKVCache(config, n_blocks=6, block_size=2)
    assert cache.k.shape == (2, 2, 6, 2, 8) and cache.nbytes == 2 * 2 * 2 * 6 * 2 * 8 * 4
    assert cache.block_nbytes == config.kv_cache_bytes(2)
    tables = np.array([[4, 1, 0], [2, 5, 2]])  # sequence 1 pads its table with its own block
    step = Step("mixed", np.array([7, 9]), np.array([1, 0]), np.array([4, 3]), tables)
    k = np.arange(1, 8, dtype=np.float32)[:, None, None] * np.ones((7, 2, 8), np.float32)
    cache.write(0, step, k, -k)  # rows 0-3: sequence 0 at 1..4; rows 4-6: sequence 1 at 0..2
    for row, (table, pos) in enumerate([(0, 1), (0, 2), (0, 3), (0, 4), (1, 0), (1, 1), (1, 2)]):
        block = tables[table, pos // 2]
        assert (cache.k[0, :, block, pos % 2] == row + 1).all()
        assert (cache.v[0, :, block, pos % 2] == -row - 1).all()
    k_read, v_read = cache.read(0, step, np.array([0, 1]))
    assert k_read.shape == (2, 2, 5, 8)  # S = the furthest end, 5
    np.testing.assert_array_equal(k_read[0, 0, 1:5, 0], [1, 2, 3, 4])
    np.testing.assert_array_equal(k_read[1, 0, :3, 0], [5, 6, 7])
    np.testing.assert_array_equal(v_read[1, 1, :3, 0], [-5, -6, -7])
    cache.zero([4])
    assert not cache.k[:, :, 4].any() and cache.k[:, :, 1].any()


@pytest.mark.skipif(
    kernels.active() == "numpy",
    reason=f"compiled kernels not active: {kernels.numba_unavailable() or 'numpy selected'}",
)
@settings(max_examples=40, deadline=None)
@given(
    B=st.integers(1, 5),
    kvh=st.integers(1, 3),
    G=st.sampled_from([1, 2, 4]),
    HD=st.sampled_from([4, 8, 64]),
    block_size=st.sampled_from([1, 3, 16]),
    data=st.data(),
)
def test_paged_decode_kernel_equals_gather_then_attention(B, kvh, G, HD, block_size, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    ends = np.array(data.draw(st.lists(st.integers(1, 40), min_size=B, max_size=B)))
    n = -(-int(ends.max()) // block_size)
    n_blocks = B * n + 2
    config = small_config(dim=kvh * G * HD, n_heads=kvh * G, n_kv_heads=kvh, n_layers=1)
    cache = PagedKVCache(config, n_blocks, block_size)
    cache.k[:] = rng.standard_normal(cache.k.shape, dtype=np.float32)
    cache.v[:] = rng.standard_normal(cache.v.shape, dtype=np.float32)
    tables = rng.permutation(n_blocks)[: B * n].reshape(B, n)  # scattered blocks
    step = Step("decode", np.arange(B), ends - 1, np.ones(B, dtype=np.int64), tables)
    q = rng.standard_normal((B, 1, kvh * G, HD), dtype=np.float32)
    group = np.arange(B)
    got = cache.attend(0, step, group, q)
    k, v = cache.read(0, step, group)
    expected = attention(q, k, v, step.ends)  # (B, 1, H*HD)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(
    kernels.active() == "numpy",
    reason=f"compiled kernels not active: {kernels.numba_unavailable() or 'numpy selected'}",
)
@pytest.mark.parametrize("dim", [32, 256])  # products in BLAS; in the compiled kernels
def test_decode_attends_in_the_kernel_when_the_products_do(monkeypatch, dim):
    """Model.decode's attention runs in the compiled kernel (the contiguous cache as a pool of
    one block) when the model's products run compiled; a model whose products all run in BLAS
    (small matrices) keeps NumPy's attention, not to load numba for it alone. A probs hook
    needs the probabilities as an array: NumPy's attention runs then. The logits agree up to
    the order of the sums."""
    from util import random_model

    from llama_np import kv_cache

    model = random_model(small_config(dim=dim, hidden_dim=2 * dim, n_heads=8, n_kv_heads=2))
    assert model.compiled_attention == (dim == 256) == model.uses_compiled_kernels
    layers = model.config.n_layers if model.compiled_attention else 0
    calls = []
    real = kv_cache.kernels.decode_attention
    monkeypatch.setattr(
        kv_cache.kernels, "decode_attention", lambda *a, **k: calls.append(1) or real(*a, **k)
    )

    def decode() -> np.ndarray:
        cache = model.new_cache(16)
        model.prefill([1, 40, 30, 20], cache)
        return model.decode(10, cache)

    fast = decode()
    assert len(calls) == layers
    remove = model.add_hook("layers.0.attn.probs", lambda name, a: None)
    try:
        watched = decode()
    finally:
        remove()
    assert len(calls) == 2 * layers - (1 if layers else 0)  # layer 0 in NumPy
    np.testing.assert_allclose(watched, fast, rtol=1e-5, atol=1e-5)
