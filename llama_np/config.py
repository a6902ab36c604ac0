"""Model configuration: one frozen dataclass, built from a checkpoint's header or config file.

Shape legend used in comments throughout llama_np:
    B   batch (sequences)          T   tokens in this call
    D   model dim                  S   positions attended to (cache length after the write)
    H   query heads                KVH key/value heads        G = H // KVH (queries per KV head)
    HD  head dim                   F   MLP hidden dim         V vocab size
    L   layers
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class RopeScaling:
    """How RoPE frequencies are rescaled to stretch a model's context.

    kind "linear" divides every frequency by `factor`; kind "llama3" (Llama 3.1+) leaves high
    frequencies alone, divides low ones by `factor`, and blends in between; kind "divisors"
    divides the frequency of pair i by `divisors[i]` (how GGUF files store Llama 3.1's
    scaling: llama.cpp's converter computes the llama3 divisors once, the rope_freqs tensor).
    """

    kind: str  # "linear" | "llama3" | "divisors"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192
    divisors: tuple[float, ...] = ()  # (HD/2,) for kind "divisors"

    def __post_init__(self) -> None:
        if self.kind not in ("linear", "llama3", "divisors"):
            raise ConfigError(
                f"unsupported RoPE scaling type {self.kind!r}: expected 'linear', 'llama3' or "
                f"'divisors'"
            )
        if not self.factor > 0:
            raise ConfigError(f"RoPE scaling factor must be > 0, got {self.factor}")
        if self.kind == "divisors" and not (
            self.divisors and all(0 < d < float("inf") for d in self.divisors)
        ):
            raise ConfigError(
                f"RoPE frequency divisors must be finite and > 0, one per pair, got "
                f"{self.divisors[:8]!r}"
            )


@dataclass(frozen=True)
class LlamaConfig:
    """Hyperparameters of a Llama model. `head_dim` defaults to dim // n_heads."""

    dim: int  # D, width of the residual stream
    n_layers: int  # L
    n_heads: int  # H, query heads
    n_kv_heads: int  # KVH, key/value heads (== n_heads: multi-head; fewer: grouped-query)
    hidden_dim: int  # F, width of the SwiGLU MLP
    vocab_size: int  # V
    head_dim: int = 0  # HD; 0 means dim // n_heads
    max_seq_len: int = 2048  # context length the model was trained for
    norm_eps: float = 1e-5  # RMSNorm epsilon
    rope_theta: float = 10000.0  # RoPE base
    rope_scaling: RopeScaling | None = None
    # RoPE pairing: True rotates (x[2i], x[2i+1]) as Meta and llama2.c do; False rotates
    # (x[i], x[i + HD/2]) as Hugging Face checkpoints do (their q/k weights are permuted to match).
    rope_interleaved: bool = True
    tie_embeddings: bool = False  # classifier shares the embedding matrix
    bos_id: int = 1
    # Token ids that end generation. llama2.c story models end a story with BOS, so their
    # loader lists BOS here too.
    stop_ids: tuple[int, ...] = (2,)
    name: str = ""

    def __post_init__(self) -> None:
        for field in (
            "dim",
            "n_layers",
            "n_heads",
            "n_kv_heads",
            "hidden_dim",
            "vocab_size",
            "max_seq_len",
        ):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"config {field} must be a positive integer, got {value!r}")
        if self.head_dim == 0:
            if self.dim % self.n_heads:
                raise ConfigError(
                    f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads}) when "
                    f"head_dim is not given; fix the config or set head_dim explicitly"
                )
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})"
            )
        if self.head_dim <= 0 or self.head_dim % 2:
            raise ConfigError(
                f"head_dim must be a positive even number (RoPE rotates pairs), got "
                f"{self.head_dim} (dim {self.dim} / n_heads {self.n_heads})"
            )
        if not self.norm_eps > 0:
            raise ConfigError(f"norm_eps must be > 0, got {self.norm_eps}")
        if not self.rope_theta > 0:
            raise ConfigError(f"rope_theta must be > 0, got {self.rope_theta}")
        scaling = self.rope_scaling
        if scaling is not None and scaling.kind == "divisors":
            if len(scaling.divisors) != self.head_dim // 2:
                raise ConfigError(
                    f"RoPE frequency divisors: got {len(scaling.divisors)}, expected one per "
                    f"pair of the head dim: {self.head_dim // 2}"
                )

    def replace(self, **changes) -> LlamaConfig:
        """A copy with some fields changed (e.g. a shorter max_seq_len)."""
        return dataclasses.replace(self, **changes)

    def kv_cache_bytes(self, n_tokens: int, batch_size: int = 1, bytes_per_value: int = 4) -> int:
        """Bytes of K and V for `n_tokens` positions: 2 × L × tokens × KVH × HD × bytes × B."""
        per_token = 2 * self.n_layers * self.n_kv_heads * self.head_dim * bytes_per_value
        return per_token * n_tokens * batch_size
