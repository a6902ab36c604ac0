"""Damaged checkpoints: loading either works or raises a LlamaNpError, never anything else.

Hypothesis truncates files and overwrites bytes of small valid safetensors and .pth
checkpoints (the .pth both as raw zip bytes and as a pickle repacked into a valid zip, so the
damage reaches the unpickler past the zip's CRC check).
"""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
from checkpoint_writers import random_tensors, write_hf, write_meta
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import llama_np
from llama_np.config import LlamaConfig
from llama_np.dtypes import to_float32
from llama_np.errors import LlamaNpError

TINY = LlamaConfig(
    dim=16, n_layers=1, n_heads=2, n_kv_heads=1, hidden_dim=64, vocab_size=16, max_seq_len=8
)
FUZZ = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    """Valid checkpoint directories: an HF one (BF16) and a Meta one, and their files' bytes."""
    tensors = random_tensors(TINY)
    hf = write_hf(tmp_path_factory.mktemp("hf"), TINY, tensors, dtype="BF16")
    meta = write_meta(tmp_path_factory.mktemp("meta"), TINY, tensors)
    return {
        "hf": (hf, (hf / "model.safetensors").read_bytes()),
        "meta": (meta, (meta / "consolidated.00.pth").read_bytes()),
    }


@st.composite
def damaged(draw, original: bytes, focus: int) -> bytes:
    """`original` truncated, or with a few bytes overwritten (mostly in its first `focus`)."""
    data = bytearray(original)
    if draw(st.booleans()):
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    for _ in range(draw(st.integers(1, 4))):
        end = focus if draw(st.integers(0, 3)) else len(data)
        data[draw(st.integers(0, min(end, len(data)) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


def load_or_refuse(directory) -> None:
    try:
        model = llama_np.load(directory)
    except LlamaNpError:
        return
    # Loaded (the damage hit only weight values): the weights are float32 of the right shapes.
    assert model.weights.embedding.shape == (TINY.vocab_size, TINY.dim)
    assert all(layer.wqkv.dtype == np.float32 for layer in model.weights.layers)


@FUZZ
@given(data=st.data())
def test_damaged_safetensors(originals, data):
    directory, original = originals["hf"]
    header_end = 8 + int.from_bytes(original[:8], "little")
    try:
        (directory / "model.safetensors").write_bytes(data.draw(damaged(original, header_end)))
        load_or_refuse(directory)
    finally:
        (directory / "model.safetensors").write_bytes(original)


@FUZZ
@given(data=st.data())
def test_damaged_pth_bytes(originals, data):
    directory, original = originals["meta"]
    path = directory / "consolidated.00.pth"
    try:
        path.write_bytes(data.draw(damaged(original, len(original))))
        load_or_refuse(directory)
    finally:
        path.write_bytes(original)


@FUZZ
@given(data=st.data())
def test_damaged_pth_pickle(originals, data):
    directory, original = originals["meta"]
    path = directory / "consolidated.00.pth"
    with zipfile.ZipFile(path) as z:
        members = {name: z.read(name) for name in z.namelist()}
    pickle_name = next(n for n in members if n.endswith("data.pkl"))
    members[pickle_name] = data.draw(damaged(members[pickle_name], len(members[pickle_name])))
    try:
        with zipfile.ZipFile(path, "w") as z:
            for name, blob in members.items():
                z.writestr(name, blob)
        load_or_refuse(directory)
    finally:
        path.write_bytes(original)


def test_undamaged_originals_load(originals):
    for directory, _ in originals.values():
        model = llama_np.load(directory)
        assert to_float32(model.weights.final_norm).shape == (TINY.dim,)
