"""How much work a forward pass is: FLOPs and bytes, from the config alone.

These formulas are what the roofline compares against: prefill's time is bounded below by
FLOPs ÷ matmul FLOP/s, decode's by bytes read ÷ memory bandwidth.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from ..config import LlamaConfig
from ..schema import matmul_params

__all__ = [
    "decode_bytes",
    "forward_bytes",
    "forward_flops",
    "matmul_params",
    "step_bytes",
    "step_flops",
]


def forward_flops(
    config: LlamaConfig, n_tokens: int, start: int = 0, n_logits: int = 1, batch_size: int = 1
) -> int:
    """FLOPs to run `n_tokens` tokens at positions start.. (prefill; decode is n_tokens=1).

    2 per multiply-add: the weight matmuls, attention (q·k over each token's visible
    positions, and probs·v), and the classifier for `n_logits` positions. Norms, RoPE and
    softmax are O(D) per token and left out. `batch_size` sequences each do all of it.
    """
    weights = 2 * n_tokens * matmul_params(config)
    classifier = 2 * n_logits * config.dim * config.vocab_size
    return batch_size * (weights + attention_flops(config, n_tokens, start) + classifier)


def attention_flops(config: LlamaConfig, n_tokens: int, start: int = 0) -> int:
    """FLOPs of attention proper (q·k and probs·v, no weights) for `n_tokens` new tokens at
    positions start..: each query meets every position it may see, in every head and layer.

    It grows with the square of the prompt, the weight matmuls only linearly: at long
    context attention is most of prefill's arithmetic (`attention_share`).
    """
    T = n_tokens
    visible = T * start + T * (T + 1) // 2  # sum over new tokens of positions each one sees
    return config.n_layers * 2 * 2 * config.n_heads * config.head_dim * visible


def attention_share(config: LlamaConfig, n_tokens: int, start: int = 0) -> float:
    """Fraction of a forward pass's FLOPs spent in attention proper (logits of one position)."""
    return attention_flops(config, n_tokens, start) / forward_flops(config, n_tokens, start)


def kv_intensity(config: LlamaConfig, kv_bytes: float = 4) -> float:
    """FLOPs per byte of K/V read by decode's attention: 2·G / bytes per value.

    Each cached K (or V) element, read once, is multiplied-and-added (2 FLOPs) by each of
    the G = H/KVH query heads that share its KV head. Multi-head attention (G = 1) in fp32 is
    0.5 FLOP/byte; Llama 3 8B's G = 4 in bf16 is 4.
    """
    return 2 * (config.n_heads // config.n_kv_heads) / kv_bytes


def forward_bytes(
    config: LlamaConfig,
    n_tokens: int,
    start: int = 0,
    weight_bytes: float = 4,
    kv_bytes: float = 4,
    batch_size: int = 1,
) -> int:
    """Bytes a forward pass of `n_tokens` tokens at positions start.. must read from memory.

    Every matmul weight and the classifier once, however many tokens share them (that reuse
    is why prefill is compute-bound), one embedding row per token, and K and V of the
    start + n_tokens cached positions of every layer, once. With `batch_size` sequences the
    weights are still read once, the embedding rows and KV cache once per sequence.
    `weight_bytes` may be fractional: Q8_0 int8 is 34 bytes per 32 weights = 1.0625.
    Norm weights (O(D) per layer) are left out.
    """
    weights = matmul_params(config) + config.dim * config.vocab_size
    embedding_rows = batch_size * n_tokens * config.dim
    kv = config.kv_cache_bytes(start + n_tokens, batch_size, bytes_per_value=1) * kv_bytes
    return int(weights * weight_bytes + embedding_rows * weight_bytes + kv)


def decode_bytes(
    config: LlamaConfig, position: int, weight_bytes: float = 4, kv_bytes: float = 4
) -> int:
    """Bytes one decode step at `position` must read: every matmul weight and the classifier
    once, one embedding row, and K and V of the position+1 cached positions of every layer."""
    return forward_bytes(config, 1, position, weight_bytes, kv_bytes)


# ---------------------------------------------------------------- a serving step

# A serving step (engine/) runs several sequences at once, each with its own number of new
# tokens at its own positions: rows = ((start, n_tokens), ...), one pair per sequence. The
# weights are read once for all of them; each sequence reads its own KV cache and gets the
# logits of its last new token. One sequence's step is forward_flops / forward_bytes.


@functools.lru_cache(maxsize=64)
def _weights(config: LlamaConfig) -> int:
    """Weights of the matmuls and the classifier (a simulator asks for every step: once)."""
    return matmul_params(config) + config.dim * config.vocab_size


def step_flops(config: LlamaConfig, rows: Sequence[tuple[int, int]]) -> int:
    """FLOPs of one serving step: the weight matmuls for every new token, each sequence's
    attention over the positions its tokens see, and one row of logits per sequence."""
    n_tokens = sum(n for _, n in rows)
    classifier = config.dim * config.vocab_size
    weights = 2 * n_tokens * (_weights(config) - classifier)
    attention = sum(attention_flops(config, n, start) for start, n in rows)
    return weights + attention + 2 * len(rows) * classifier


def step_bytes(
    config: LlamaConfig,
    rows: Sequence[tuple[int, int]],
    weight_bytes: float = 4,
    kv_bytes: float = 4,
) -> int:
    """Bytes one serving step must read: every weight and the classifier once, an embedding
    row per new token, and each sequence's K and V through its last new position."""
    weights = _weights(config)
    n_tokens = sum(n for _, n in rows)
    positions = sum(start + n for start, n in rows)
    kv = config.kv_cache_bytes(positions, 1, bytes_per_value=1) * kv_bytes
    return int(weights * weight_bytes + n_tokens * config.dim * weight_bytes + kv)
