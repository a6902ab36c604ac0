"""Checkpoint files with random weights of a registry shape, for the load and memory benchmarks.

Loading is measured from real files, in the formats people download: a Hugging Face directory
(config.json + model.safetensors, bf16 like the Hub's TinyLlama and SmolLM2), and GGUF (F32,
llama_cpp.py; llama.cpp's llama-quantize makes Q8_0 / Q4_K_M from it). Each tensor
is generated, written and dropped in turn, so writing a 1.1B model needs one tensor of memory.
Values are uniform with standard deviation 0.02 (norms 1): it runs like a real model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from llama_np.checkpoints.export import hf_config
from llama_np.checkpoints.hf import hf_name
from llama_np.checkpoints.safetensors import write_safetensors
from llama_np.config import LlamaConfig
from llama_np.dtypes import bfloat16_from_float32
from llama_np.schema import tensor_names


def random_tensors(config: LlamaConfig, seed: int = 0) -> Iterator[tuple[str, np.ndarray]]:
    """(Meta name, float32 (out, in) tensor) pairs, one at a time."""
    rng = np.random.default_rng(seed)
    for name, shape in tensor_names(config).items():
        if name.endswith("norm.weight"):
            yield name, np.ones(shape, dtype=np.float32)
        else:
            array = rng.random(shape, dtype=np.float32)  # (out, in), uniform: fast to draw
            array -= np.float32(0.5)
            array *= np.float32(0.02 * 12**0.5)  # standard deviation 0.02
            yield name, array


def write_hf(config: LlamaConfig, directory: Path, dtype: str = "BF16", seed: int = 0) -> Path:
    """A Hugging Face model directory (config.json + one model.safetensors) of random weights,
    written with llama_np's own streaming safetensors writer and config.json of its export."""
    if dtype not in ("BF16", "F32"):
        raise ValueError(f"dtype must be BF16 or F32, got {dtype!r}")
    directory.mkdir(parents=True, exist_ok=True)
    stream = random_tensors(config, seed)  # in tensor_names order, one at a time

    def make() -> np.ndarray:
        _, array = next(stream)
        return bfloat16_from_float32(array) if dtype == "BF16" else array

    entries = [(hf_name(n), shape, dtype, make) for n, shape in tensor_names(config).items()]
    write_safetensors(directory / "model.safetensors", entries)
    torch_dtype = "bfloat16" if dtype == "BF16" else "float32"
    (directory / "config.json").write_text(json.dumps(hf_config(config, torch_dtype), indent=2))
    return directory
