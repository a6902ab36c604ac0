"""Hugging Face model directories: config.json + model.safetensors (or sharded safetensors).

This covers `LlamaForCausalLM` checkpoints: Llama 2, TinyLlama, Llama 3.x, SmolLM and the
like. config.json comes in two spellings:

    Hub (transformers 4):  "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", ...},
                           "torch_dtype": "bfloat16"
    transformers 5:        "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0,
                           ...}, "dtype": "bfloat16"

Absent keys get the defaults transformers' LlamaConfig applies. The dtype key is not needed:
each tensor's dtype is in the safetensors header.

RoPE pairing: Hugging Face's Llama rotates the pairs (x[i], x[i + HD/2]) ("half-split"), where
Meta and llama2.c rotate (x[2i], x[2i+1]) ("interleaved"). Meta's weights were converted to HF by
permuting the rows of wq and wk within each head so that the half-split rotation gives the same
result. We do not undo that permutation: the config says `rope_interleaved=False` and
`layers.apply_rope` rotates the half-split pairs, so the HF weights are used exactly as stored.
Exporting (export.py) applies it, or its inverse, where the target format uses the other
pairing: `to_half_split` for HF, `to_interleaved` for GGUF.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import LlamaConfig, RopeScaling
from ..errors import CheckpointError, ConfigError
from ..limits import check_model_fits
from ..schema import tensor_specs
from ..validate import (
    HF_CONFIG,
    HF_GENERATION_CONFIG,
    HF_ROPE_LINEAR,
    HF_ROPE_LLAMA3,
    read_json,
    validate,
)
from .pth import read_pth
from .safetensors import INDEX_FILE, read_safetensors_dir, read_shards

ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")

# Meta's tensor name (what Model.from_tensors takes) -> HF's, per layer and global.
LAYER_NAMES = {
    "attention_norm.weight": "input_layernorm.weight",
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "attention.wq.bias": "self_attn.q_proj.bias",  # optional: attention_bias checkpoints
    "attention.wk.bias": "self_attn.k_proj.bias",
    "attention.wv.bias": "self_attn.v_proj.bias",
    "attention.wo.bias": "self_attn.o_proj.bias",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
}
GLOBAL_NAMES = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def to_half_split(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder each head's rows from interleaved RoPE pairs to half-split.   (n_heads*HD, D)

    Pair members 2i, 2i+1 move to rows i and i + HD/2: half-split rotation of the result gives
    the same attention scores, since q.k only sums over rows and q and k are permuted alike.
    This is the permutation of transformers' convert_llama_weights_to_hf.py.
    """
    rows = w.shape[0]
    HD = rows // n_heads
    # (heads, HD/2 pairs, 2 members, D) -> (heads, 2 members, HD/2 pairs, D)
    return w.reshape(n_heads, HD // 2, 2, -1).transpose(0, 2, 1, 3).reshape(w.shape)


def to_interleaved(w: np.ndarray, n_heads: int) -> np.ndarray:
    """The inverse of `to_half_split`: HF's rows back to interleaved pairs (Meta, GGUF).

    llama.cpp's convert_hf_to_gguf.py applies this (its `permute`) to HF q/k weights.
    """
    rows = w.shape[0]
    HD = rows // n_heads
    # (heads, 2 members, HD/2 pairs, D) -> (heads, HD/2 pairs, 2 members, D)
    return w.reshape(n_heads, 2, HD // 2, -1).transpose(0, 2, 1, 3).reshape(w.shape)


def hf_name(meta_name: str) -> str:
    """The Hugging Face name of a tensor named as in schema.py."""
    if meta_name in GLOBAL_NAMES:
        return GLOBAL_NAMES[meta_name]
    _, i, rest = meta_name.split(".", 2)  # "layers", "3", "attention.wq.weight"
    return f"model.layers.{i}.{LAYER_NAMES[rest]}"


def read_hf_config(directory: Path) -> LlamaConfig:
    """The LlamaConfig of an HF model directory (config.json and generation_config.json)."""
    return config_from_hf(
        read_json(directory / "config.json", ConfigError),
        read_json(directory / "generation_config.json", ConfigError, missing_ok=True),
        name=directory.name,
        source=directory / "config.json",
    )


# Older uploads (Vicuna, OpenLLaMA, many Llama 2 fine-tunes of 2023) hold only PyTorch's
# files: torch.save zips, read by pth.read_pth without running their pickles.
PYTORCH_FILE, PYTORCH_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"


def read_hf_weights(directory: Path) -> dict[str, np.ndarray]:
    """A model directory's tensors: safetensors (one file, or shards and their index), else
    PyTorch's pytorch_model.bin (one file, or shards and pytorch_model.bin.index.json)."""
    if (directory / INDEX_FILE).exists() or any(directory.glob("*.safetensors")):
        return read_safetensors_dir(directory)
    if (directory / PYTORCH_INDEX).exists():
        return read_shards(directory, PYTORCH_INDEX, read_pth)
    if (directory / PYTORCH_FILE).is_file():
        return read_pth(directory / PYTORCH_FILE)
    raise CheckpointError(
        f"{directory}: no weights: expected model.safetensors, {INDEX_FILE} and its shards, "
        f"{PYTORCH_FILE}, or {PYTORCH_INDEX} and its shards"
    )


def load_hf(directory: Path) -> tuple[LlamaConfig, dict[str, np.ndarray]]:
    """Read an HF model directory; -> (config, tensors by Meta name, in their file dtypes)."""
    config = read_hf_config(directory)
    # From the config alone, before listing L × 9 tensor names or reading any header: a
    # config.json claiming 10**9 layers is refused here even as int8, the most compact form
    # (load() checks again with the dtype actually asked for).
    check_model_fits(config, str(directory / "config.json"), "int8")
    stored = read_hf_weights(directory)
    # Checkpoints saved by older transformers carry RoPE tables as buffers; we compute our own.
    stored = {n: a for n, a in stored.items() if not n.endswith("rotary_emb.inv_freq")}
    if config.tie_embeddings:
        stored.pop("lm_head.weight", None)  # some tied checkpoints store the copy anyway

    expected = {hf_name(n): spec for n, spec in tensor_specs(config).items()}
    missing = [n for n, spec in expected.items() if spec.required and n not in stored]
    extra = [n for n in stored if n not in expected]
    if missing or extra:
        raise CheckpointError(
            f"{directory}: tensors do not match config.json: "
            + (f"missing {_few(missing)} " if missing else "")
            + (f"unexpected {_few(extra)}" if extra else "")
        )
    tensors = {}
    for name, array in stored.items():
        spec = expected[name]
        if array.shape != spec.shape:
            raise CheckpointError(
                f"{directory}: tensor {name} has shape {array.shape}, but config.json "
                f"implies {spec.shape}"
            )
        tensors[spec.name] = array
    return config, tensors


def config_from_hf(
    cfg: object,
    generation_config: object = None,
    name: str = "",
    source: Path | str = "config.json",
) -> LlamaConfig:
    """LlamaConfig from the parsed JSON of config.json (and generation_config.json, for stop
    ids): checked against validate.HF_CONFIG, then built."""
    cfg = validate(cfg, HF_CONFIG, source, ConfigError)
    generation_source = Path(source).with_name("generation_config.json")
    generation = validate(
        generation_config or {}, HF_GENERATION_CONFIG, generation_source, ConfigError
    )
    architectures = cfg["architectures"] or ["LlamaForCausalLM"]
    if not any(a in ARCHITECTURES for a in architectures):
        raise ConfigError(
            f"{source}: architecture {architectures} is not supported; llama_np runs "
            f"{' and '.join(ARCHITECTURES)}"
        )
    context = cfg["max_position_embeddings"]
    # Mistral is Llama with sliding-window attention (transformers' MistralConfig: a 4096
    # window when the key is absent; v0.2+ set null). Up to the window, a window masks
    # nothing: the model runs with a context of the window, exact (Mistral-7B-v0.1: 4096 of
    # 32768 positions). LlamaConfig ignores the key, and so does this for Llama.
    if "MistralForCausalLM" in architectures:
        window = cfg.get("sliding_window", 4096)
        context = min(context, window) if window else context
    if cfg["hidden_act"] != "silu":
        raise ConfigError(f"{source}: hidden_act {cfg['hidden_act']!r} is not supported (silu)")
    # attention_bias: the q/k/v/o biases are optional tensors of the schema, read when present
    if cfg["mlp_bias"]:
        raise ConfigError(
            f"{source}: mlp_bias=true is not supported (llama_np's MLP has no biases)"
        )

    # transformers 5 keeps theta and scaling together in rope_parameters; the Hub's configs
    # have a top-level rope_theta and an optional rope_scaling.
    rope = cfg["rope_parameters"]
    if rope is None:
        rope = {"rope_theta": cfg["rope_theta"], **(cfg["rope_scaling"] or {})}
    stop_ids: list[int] = []
    for ids in (cfg["eos_token_id"], generation["eos_token_id"]):
        for i in ids if isinstance(ids, list) else [ids]:
            if i is not None and i not in stop_ids:
                stop_ids.append(i)
    n_heads = cfg["num_attention_heads"]
    scaling = _rope_scaling(rope, source)
    if rope.get("rope_type", rope.get("type")) == "dynamic":
        # dynamic NTK changes RoPE only past the original context: up to it, default RoPE
        context = min(context, rope.get("original_max_position_embeddings") or context)
    try:
        return LlamaConfig(
            dim=cfg["hidden_size"],
            n_layers=cfg["num_hidden_layers"],
            n_heads=n_heads,
            n_kv_heads=cfg["num_key_value_heads"] or n_heads,
            hidden_dim=cfg["intermediate_size"],
            vocab_size=cfg["vocab_size"],
            head_dim=cfg["head_dim"] or 0,  # 0: dim // n_heads
            max_seq_len=context,
            norm_eps=cfg["rms_norm_eps"],
            rope_theta=rope.get("rope_theta", 10000.0),
            rope_scaling=scaling,
            rope_interleaved=False,  # half-split pairs, see the module docstring
            tie_embeddings=cfg["tie_word_embeddings"],
            bos_id=1 if cfg["bos_token_id"] is None else cfg["bos_token_id"],
            stop_ids=tuple(stop_ids),
            name=name,
        )
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def _rope_scaling(rope: dict, source: Path | str) -> RopeScaling | None:
    """The RopeScaling of a validated HF_ROPE dict; the keys its kind needs are required."""
    kind = rope.get("rope_type", rope.get("type", "default"))
    where = f"{source}: rope_scaling"
    if kind in ("default", "dynamic"):  # (dynamic: see config_from_hf)
        return None
    if kind == "linear":
        return RopeScaling("linear", **validate(rope, HF_ROPE_LINEAR, where, ConfigError))
    if kind == "llama3":
        return RopeScaling("llama3", **validate(rope, HF_ROPE_LLAMA3, where, ConfigError))
    raise ConfigError(
        f"{source}: RoPE scaling type {kind!r} is not supported (supported: default, linear, "
        f"llama3, dynamic)"
    )


def _few(names: list[str]) -> str:
    return f"{names[:5]}{' ...' if len(names) > 5 else ''}"
