"""scripts/convert_llama2c_to_hf.py on the bundled stories260K: both loaders must agree.

The llama2.c file uses interleaved RoPE pairs; the converted HF directory uses half-split pairs
with permuted wq/wk rows. Equal logits on a real trained model check that permutation.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import llama_np
from llama_np.checkpoints import DEFAULT_CHECKPOINT

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "convert_llama2c_to_hf.py"


def load_script():
    spec = importlib.util.spec_from_file_location("convert_llama2c_to_hf", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("stories260K-hf")
    load_script().main([str(DEFAULT_CHECKPOINT / "stories260K.bin"), str(out)])
    return out


def test_converted_directory_is_an_hf_checkpoint(converted):
    assert {p.name for p in converted.iterdir()} == {
        "config.json",
        "model.safetensors",
        "tok512.bin",
    }
    model = llama_np.load(converted)
    assert model.config.rope_interleaved is False
    assert model.tokenizer is not None


def test_llama2c_and_converted_hf_give_the_same_logits_and_text(converted):
    original, hf = llama_np.load(), llama_np.load(converted)
    tokens = original.tokenizer.encode("Once upon a time, there was a little dog")
    logits = [m.prefill(tokens, m.new_cache(), all_logits=True) for m in (original, hf)]
    assert np.abs(logits[0] - logits[1]).max() < 1e-4
    texts = [
        llama_np.generate_text(m, "Once upon a time", max_new_tokens=40, temperature=0.0)
        for m in (original, hf)
    ]
    assert texts[0] == texts[1] and len(texts[0]) > 40


def test_without_the_permutation_the_logits_differ(converted, monkeypatch):
    # The check above can fail: skipping the permutation changes the model's output.
    module = load_script()
    monkeypatch.setattr(module, "permute_for_half_split", lambda w, n_heads: w)
    unpermuted = module.convert(DEFAULT_CHECKPOINT / "stories260K.bin", converted.parent / "raw")
    original, hf = llama_np.load(), llama_np.load(unpermuted)
    tokens = original.tokenizer.encode("Once upon a time")
    logits = [m.prefill(tokens, m.new_cache(), all_logits=True) for m in (original, hf)]
    assert np.abs(logits[0] - logits[1]).max() > 0.1
