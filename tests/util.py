"""Helpers shared by the tests: random-weight models of any config; a CLI run whose reader
closes stdout early."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from llama_np import LlamaConfig, Model
from llama_np.dtypes import bfloat16_from_float32, to_float32
from llama_np.schema import tensor_specs
from llama_np.tokenizers import Llama2cTokenizer


def random_tensors(
    config: LlamaConfig, seed: int = 0, scale: float = 0.2, biases: bool = False
) -> dict[str, np.ndarray]:
    """Checkpoint tensors (Meta names, (out, in) shapes) with random float32 values.

    Norm weights are near 1, the rest N(0, scale²). Values are rounded to bfloat16, so F32,
    F16-ish and BF16 files written from the same tensors hold (nearly) the same model.
    `biases` adds the schema's optional q/k/v/o biases.
    """
    rng = np.random.default_rng(seed)
    tensors = {}
    specs = tensor_specs(config)
    for name, spec in specs.items():
        shape = spec.shape
        if not spec.required and not biases:
            continue
        if name.endswith("norm.weight"):
            array = 1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)
        else:
            array = scale * rng.standard_normal(shape, dtype=np.float32)
        tensors[name] = to_float32(bfloat16_from_float32(array))
    return tensors


def random_model(config: LlamaConfig, seed: int = 0, tokenizer=None) -> Model:
    return Model.from_tensors(config, random_tensors(config, seed), tokenizer)


def byte_tokenizer(vocab_size: int = 300) -> Llama2cTokenizer:
    """A llama2.c-style vocabulary: <unk>, <s>, </s>, 256 byte pieces, then short words."""
    pieces = [b"<unk>", b"\n<s>\n", b"\n</s>\n"] + [f"<0x{b:02X}>".encode() for b in range(256)]
    words = [f" w{i}".encode() for i in range(vocab_size - len(pieces))]
    return Llama2cTokenizer(pieces + words, [0.0] * 259 + [-float(i) for i in range(len(words))])


def small_config(**overrides) -> LlamaConfig:
    fields = dict(
        dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48, vocab_size=64, max_seq_len=64
    )
    fields.update(overrides)
    return LlamaConfig(**fields)


def closed_after_first_line(argv: list[str], env: dict | None = None):
    """Run `python -m llama_np ARGV` with its stdout a pipe that the reader closes after one
    line, as `| head -1` does."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "llama_np", *argv], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    first = proc.stdout.readline()
    proc.stdout.close()  # the reader is gone: every later write to stdout fails
    err = proc.stderr.read().decode()
    return proc.wait(timeout=300), first.decode(), err
