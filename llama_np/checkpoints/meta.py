"""Meta's original Llama downloads: params.json + consolidated.00.pth (+ .01, ... when split).

Tensors already carry the names `Model.from_tensors` takes (tok_embeddings.weight,
layers.0.attention.wq.weight, ...), and RoPE rotates interleaved pairs (x[2i], x[2i+1]).
The .pth files are read by `pth.read_pth`, which never runs code from the file.

Larger models (Llama 2 13B/70B) are split for model parallelism: each shard holds a slice of
every matrix. Column-parallel layers (wq, wk, wv, w1, w3, output) are split along their output
rows, row-parallel ones (wo, w2) along their input columns, and norms are replicated. The
embedding is split along D in Llama 2 (ParallelEmbedding) and along V in Llama 3
(VocabParallelEmbedding), so its axis is found from its shape.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import LlamaConfig, RopeScaling
from ..errors import CheckpointError, ConfigError
from ..schema import split_of
from ..validate import META_PARAMS, read_json, validate
from .pth import read_pth


def load_meta(directory: Path) -> tuple[LlamaConfig, dict[str, np.ndarray]]:
    """Read a Meta download; -> (config, tensors by Meta name, in their file dtypes)."""
    shard_paths = sorted(directory.glob("consolidated.*.pth"))
    if not shard_paths:
        raise CheckpointError(f"{directory}: no consolidated.*.pth file next to params.json")
    params_path = directory / "params.json"
    params = validate(read_json(params_path, ConfigError), META_PARAMS, params_path, ConfigError)
    shards = [read_pth(p) for p in shard_paths]
    # Llama 2 ships its RoPE frequencies as a buffer; we compute our own.
    for shard in shards:
        shard.pop("rope.freqs", None)
    tensors = _merge_shards(directory, shards, params["dim"])
    embedding = tensors.get("tok_embeddings.weight")
    if embedding is None or embedding.ndim != 2:
        raise CheckpointError(f"{directory}: no 2-D tok_embeddings.weight in the checkpoint")
    config = config_from_params(params, embedding.shape[0], directory.name, params_path)
    return config, tensors


def config_from_params(
    p: dict, n_embeddings: int, name: str = "", source: Path | str = "params.json"
) -> LlamaConfig:
    """LlamaConfig from params.json's values, checked by validate.META_PARAMS. Llama 2 has
    vocab_size -1: it is the embedding's rows."""
    dim, n_heads = p["dim"], p["n_heads"]
    # The MLP width is not stored: Meta's formula rounds 2/3 of 4·dim, scaled by
    # ffn_dim_multiplier, up to a multiple of multiple_of.
    multiple_of = p["multiple_of"]
    hidden_dim = int(2 * 4 * dim / 3)
    if p["ffn_dim_multiplier"] is not None:
        hidden_dim = int(p["ffn_dim_multiplier"] * hidden_dim)
    hidden_dim = multiple_of * ((hidden_dim + multiple_of - 1) // multiple_of)
    vocab_size = p["vocab_size"] if p["vocab_size"] > 0 else n_embeddings
    try:
        scaling = None
        if p["use_scaled_rope"]:
            # Llama 3.1+: Meta's apply_scaling with its defaults, unless params.json says more.
            scaling = RopeScaling(
                "llama3",
                factor=p["rope_scaling_factor"],
                low_freq_factor=1.0,
                high_freq_factor=p["rope_high_freq_factor"],
                original_max_position_embeddings=8192,
            )
        is_llama3 = vocab_size == 128256  # Llama 3's tiktoken vocabulary
        context = 131072 if scaling else 8192 if is_llama3 else 4096
        return LlamaConfig(
            dim=dim,
            n_layers=p["n_layers"],
            n_heads=n_heads,
            n_kv_heads=p["n_kv_heads"] or n_heads,
            hidden_dim=hidden_dim,
            vocab_size=vocab_size,
            max_seq_len=p.get("max_seq_len", context),
            norm_eps=p["norm_eps"],
            rope_theta=p["rope_theta"],
            rope_scaling=scaling,
            rope_interleaved=True,
            # Llama 3: <|begin_of_text|>, and <|end_of_text|>, <|eom_id|>, <|eot_id|> end a turn.
            bos_id=128000 if is_llama3 else 1,
            stop_ids=(128001, 128008, 128009) if is_llama3 else (2,),
            name=name,
        )
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def _merge_shards(directory: Path, shards: list[dict], dim) -> dict[str, np.ndarray]:
    """Concatenate model-parallel slices back into whole tensors (one shard: as they are)."""
    if len(shards) == 1:
        return shards[0]
    names = list(shards[0])
    for i, shard in enumerate(shards[1:], 1):
        if list(shard) != names:
            raise CheckpointError(
                f"{directory}: consolidated.{i:02d}.pth holds other tensors than "
                f"consolidated.00.pth"
            )
    tensors = {}
    for name in names:
        parts = [shard[name] for shard in shards]
        split = split_of(name)  # schema.py: how each tensor is cut
        # Matrices are cut into (out, in) pieces; norms are whole vectors in every shard.
        rank = 2 if split or name == "tok_embeddings.weight" else 1
        ranks = [part.ndim for part in parts]
        if ranks != [rank] * len(parts):
            raise CheckpointError(
                f"{directory}: {name} has {ranks} dimensions in consolidated.00.pth .. "
                f"consolidated.{len(parts) - 1:02d}.pth; expected {rank} in every shard"
            )
        if split:
            axis = 0 if split == "out" else 1  # (out, in) matrices
        elif name == "tok_embeddings.weight":
            axis = 1 if parts[0].shape[1] * len(parts) == dim else 0
        else:  # norms: every shard has the whole vector
            tensors[name] = parts[0]
            continue
        try:
            tensors[name] = np.concatenate(parts, axis=axis)
        except ValueError as e:
            raise CheckpointError(f"{directory}: cannot join the shards of {name}: {e}") from None
    return tensors
