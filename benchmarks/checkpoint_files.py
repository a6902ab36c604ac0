"""Checkpoint files with random weights of a registry shape, for the load and memory benchmarks.

Loading is measured from real files, in the formats people download: a Hugging Face directory
(config.json + model.safetensors, bf16 like the Hub's TinyLlama and SmolLM2), a llama2.c .bin
(float32), and GGUF (F32; llama.cpp's llama-quantize makes Q8_0 / Q4_K_M from it). Each tensor
is generated, written and dropped in turn, so writing a 1.1B model needs one tensor of memory.
Values are uniform with standard deviation 0.02 (norms 1): it runs like a real model.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from llama_np.config import LlamaConfig
from llama_np.dtypes import bfloat16_from_float32
from llama_np.model import tensor_names

HF_NAMES = {  # Meta's per-layer names -> Hugging Face's
    "attention_norm.weight": "input_layernorm.weight",
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
}
HF_GLOBAL = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


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


def hf_name(name: str) -> str:
    if name in HF_GLOBAL:
        return HF_GLOBAL[name]
    _, i, rest = name.split(".", 2)
    return f"model.layers.{i}.{HF_NAMES[rest]}"


def write_hf(config: LlamaConfig, directory: Path, dtype: str = "BF16", seed: int = 0) -> Path:
    """A Hugging Face model directory (config.json + one model.safetensors) of random weights."""
    if dtype not in ("BF16", "F32"):
        raise ValueError(f"dtype must be BF16 or F32, got {dtype!r}")
    directory.mkdir(parents=True, exist_ok=True)
    item = 2 if dtype == "BF16" else 4
    header, offset = {}, 0
    for name, shape in tensor_names(config).items():
        n_bytes = int(np.prod(shape)) * item
        header[hf_name(name)] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + n_bytes],
        }
        offset += n_bytes
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)  # the data area starts 8-byte aligned
    with open(directory / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for _, array in random_tensors(config, seed):  # same order as the header
            f.write(bfloat16_from_float32(array).tobytes() if item == 2 else array.tobytes())
    hf_config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": config.dim,
        "intermediate_size": config.hidden_dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "tie_word_embeddings": config.tie_embeddings,
        "torch_dtype": "bfloat16" if dtype == "BF16" else "float32",
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    (directory / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    return directory


def write_llama2c(config: LlamaConfig, path: Path, seed: int = 0) -> Path:
    """A llama2.c legacy (version 0, float32) .bin of random weights.

    The legacy layout stacks each kind of tensor over layers (all wq, then all wk, ...), so
    the tensors are generated per kind; RoPE tables (ignored by llama_np) are zeros.
    """
    tensors = dict(random_tensors(config, seed))
    L = config.n_layers
    vocab = config.vocab_size if config.tie_embeddings else -config.vocab_size
    dims = (config.dim, config.hidden_dim, L, config.n_heads, config.n_kv_heads, vocab)
    with open(path, "wb") as f:
        f.write(struct.pack("<7i", *dims, config.max_seq_len))
        f.write(tensors.pop("tok_embeddings.weight").tobytes())
        kinds = ["attention_norm", "attention.wq", "attention.wk", "attention.wv"]
        kinds += ["attention.wo", "ffn_norm", "feed_forward.w1", "feed_forward.w2"]
        kinds += ["feed_forward.w3"]
        for kind in kinds:
            for i in range(L):
                f.write(tensors.pop(f"layers.{i}.{kind}.weight").tobytes())
        f.write(tensors.pop("norm.weight").tobytes())
        rope = np.zeros((2, config.max_seq_len, config.head_dim // 2), dtype=np.float32)
        f.write(rope.tobytes())  # freq_cis_real, freq_cis_imag
        if not config.tie_embeddings:
            f.write(tensors.pop("output.weight").tobytes())
    return path
