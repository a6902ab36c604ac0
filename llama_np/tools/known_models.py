"""Configs of real Llama models, by name, for calculators and benchmarks.

Shapes are from each model's published config.json / params.json. Hugging Face releases
pair RoPE dimensions half-split; llama2.c's stories models pair them interleaved.
"""

from __future__ import annotations

from ..config import LlamaConfig, RopeScaling
from ..errors import ConfigError

_LLAMA31_SCALING = RopeScaling("llama3", 8.0, 1.0, 4.0, 8192)
_LLAMA32_SCALING = RopeScaling("llama3", 32.0, 1.0, 4.0, 8192)
_LLAMA3_STOP = (128001, 128008, 128009)


_HF = dict(rope_interleaved=False)
_LLAMA3 = dict(_HF, rope_theta=500000.0, bos_id=128000, stop_ids=_LLAMA3_STOP)


def _config(name: str, dims: tuple[int, ...], **kw) -> LlamaConfig:
    dim, n_layers, n_heads, n_kv_heads, hidden_dim, vocab_size, max_seq_len = dims
    return LlamaConfig(dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
                       hidden_dim=hidden_dim, vocab_size=vocab_size, max_seq_len=max_seq_len,
                       name=name, **kw)  # fmt: skip


_STORIES = dict(tie_embeddings=True, stop_ids=(2, 1))

# name: (dim, n_layers, n_heads, n_kv_heads, hidden_dim, vocab_size, max_seq_len), extras
KNOWN_MODELS: dict[str, LlamaConfig] = {
    c.name: c
    for c in [
        _config("stories260K", (64, 5, 8, 4, 172, 512, 512), **_STORIES),
        _config("stories15M", (288, 6, 6, 6, 768, 32000, 256), **_STORIES),
        _config("stories42M", (512, 8, 8, 8, 1376, 32000, 1024), **_STORIES),
        _config("stories110M", (768, 12, 12, 12, 2048, 32000, 1024), **_STORIES),
        _config("tinyllama-1.1b", (2048, 22, 32, 4, 5632, 32000, 2048), **_HF),
        _config(
            "smollm2-135m",
            (576, 30, 9, 3, 1536, 49152, 8192),
            **_HF,
            rope_theta=100000.0,
            tie_embeddings=True,
        ),
        _config("llama-2-7b", (4096, 32, 32, 32, 11008, 32000, 4096), **_HF),
        _config("llama-2-13b", (5120, 40, 40, 40, 13824, 32000, 4096), **_HF),
        _config("llama-2-70b", (8192, 80, 64, 8, 28672, 32000, 4096), **_HF),
        _config("llama-3-8b", (4096, 32, 32, 8, 14336, 128256, 8192), **_LLAMA3),
        _config("llama-3-70b", (8192, 80, 64, 8, 28672, 128256, 8192), **_LLAMA3),
        _config(
            "llama-3.1-8b",
            (4096, 32, 32, 8, 14336, 128256, 131072),
            **_LLAMA3,
            rope_scaling=_LLAMA31_SCALING,
        ),
        _config(
            "llama-3.1-70b",
            (8192, 80, 64, 8, 28672, 128256, 131072),
            **_LLAMA3,
            rope_scaling=_LLAMA31_SCALING,
        ),
        _config(
            "llama-3.2-1b",
            (2048, 16, 32, 8, 8192, 128256, 131072),
            **_LLAMA3,
            head_dim=64,
            rope_scaling=_LLAMA32_SCALING,
            tie_embeddings=True,
        ),
        _config(
            "llama-3.2-3b",
            (3072, 28, 24, 8, 8192, 128256, 131072),
            **_LLAMA3,
            head_dim=128,
            rope_scaling=_LLAMA32_SCALING,
            tie_embeddings=True,
        ),
    ]
}


def known_config(name: str) -> LlamaConfig:
    """The config of a known model by name (case-insensitive)."""
    for key, config in KNOWN_MODELS.items():
        if key.lower() == name.lower():
            return config
    raise ConfigError(f"unknown model name {name!r}; known: {', '.join(KNOWN_MODELS)}")
