"""Configs of real Llama models, by name, for calculators and benchmarks.

Shapes are from each model's published config.json / params.json. Hugging Face releases
pair RoPE dimensions half-split; llama2.c's stories models pair them interleaved.
"""

from __future__ import annotations

from .config import LlamaConfig, RopeScaling
from .errors import ConfigError

_LLAMA31_SCALING = RopeScaling("llama3", 8.0, 1.0, 4.0, 8192)
_LLAMA32_SCALING = RopeScaling("llama3", 32.0, 1.0, 4.0, 8192)
_LLAMA3_STOP = (128001, 128008, 128009)


def _stories(name: str, dim: int, layers: int, heads: int, kv: int, hidden: int,
             vocab: int, ctx: int) -> LlamaConfig:  # fmt: skip
    return LlamaConfig(dim=dim, n_layers=layers, n_heads=heads, n_kv_heads=kv,
                       hidden_dim=hidden, vocab_size=vocab, max_seq_len=ctx, tie_embeddings=True,
                       stop_ids=(2, 1), name=name)  # fmt: skip


def _hf(name: str, dim: int, layers: int, heads: int, kv: int, hidden: int, vocab: int,
        ctx: int, **kw) -> LlamaConfig:  # fmt: skip
    return LlamaConfig(dim=dim, n_layers=layers, n_heads=heads, n_kv_heads=kv,
                       hidden_dim=hidden, vocab_size=vocab, max_seq_len=ctx,
                       rope_interleaved=False, name=name, **kw)  # fmt: skip


KNOWN_MODELS: dict[str, LlamaConfig] = {
    c.name: c
    for c in [
        _stories("stories260K", 64, 5, 8, 4, 172, 512, 512),
        _stories("stories15M", 288, 6, 6, 6, 768, 32000, 256),
        _stories("stories42M", 512, 8, 8, 8, 1376, 32000, 1024),
        _stories("stories110M", 768, 12, 12, 12, 2048, 32000, 1024),
        _hf("tinyllama-1.1b", 2048, 22, 32, 4, 5632, 32000, 2048),
        _hf(
            "smollm2-135m",
            576,
            30,
            9,
            3,
            1536,
            49152,
            8192,
            rope_theta=100000.0,
            tie_embeddings=True,
            bos_id=1,
            stop_ids=(2,),
        ),  # fmt: skip
        _hf("llama-2-7b", 4096, 32, 32, 32, 11008, 32000, 4096),
        _hf("llama-2-13b", 5120, 40, 40, 40, 13824, 32000, 4096),
        _hf("llama-2-70b", 8192, 80, 64, 8, 28672, 32000, 4096),
        _hf(
            "llama-3-8b",
            4096,
            32,
            32,
            8,
            14336,
            128256,
            8192,
            rope_theta=500000.0,
            bos_id=128000,
            stop_ids=_LLAMA3_STOP,
        ),  # fmt: skip
        _hf(
            "llama-3-70b",
            8192,
            80,
            64,
            8,
            28672,
            128256,
            8192,
            rope_theta=500000.0,
            bos_id=128000,
            stop_ids=_LLAMA3_STOP,
        ),  # fmt: skip
        _hf(
            "llama-3.1-8b",
            4096,
            32,
            32,
            8,
            14336,
            128256,
            131072,
            rope_theta=500000.0,
            rope_scaling=_LLAMA31_SCALING,
            bos_id=128000,
            stop_ids=_LLAMA3_STOP,
        ),  # fmt: skip
        _hf(
            "llama-3.1-70b",
            8192,
            80,
            64,
            8,
            28672,
            128256,
            131072,
            rope_theta=500000.0,
            rope_scaling=_LLAMA31_SCALING,
            bos_id=128000,
            stop_ids=_LLAMA3_STOP,
        ),  # fmt: skip
        _hf(
            "llama-3.2-1b",
            2048,
            16,
            32,
            8,
            8192,
            128256,
            131072,
            head_dim=64,
            rope_theta=500000.0,
            rope_scaling=_LLAMA32_SCALING,
            tie_embeddings=True,
            bos_id=128000,
            stop_ids=_LLAMA3_STOP,
        ),  # fmt: skip
        _hf(
            "llama-3.2-3b",
            3072,
            28,
            24,
            8,
            8192,
            128256,
            131072,
            head_dim=128,
            rope_theta=500000.0,
            rope_scaling=_LLAMA32_SCALING,
            tie_embeddings=True,
            bos_id=128000,
            stop_ids=_LLAMA3_STOP,
        ),  # fmt: skip
    ]
}


def known_config(name: str) -> LlamaConfig:
    """The config of a known model by name (case-insensitive)."""
    for key, config in KNOWN_MODELS.items():
        if key.lower() == name.lower():
            return config
    raise ConfigError(f"unknown model name {name!r}; known: {', '.join(KNOWN_MODELS)}")
