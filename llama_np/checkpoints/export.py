"""Export any checkpoint llama_np loads as GGUF (llama.cpp) or a Hugging Face directory.

`convert(src, out)` is `llama-np convert`: the bridge for users who move on to llama.cpp
(Ollama, LM Studio) or transformers. Tensors are read from the source checkpoint as its loader
maps them (Meta names, (out, in), memory-mapped in their file dtype) and written one at a
time, so converting needs about one tensor of memory beyond what the OS caches, not a model.

What changes on the way:

* Names: Meta's (`layers.3.attention.wq.weight`) become GGUF's (`blk.3.attn_q.weight`) or
  HF's (`model.layers.3.self_attn.q_proj.weight`).
* RoPE pairing: GGUF stores q/k rows for interleaved pairs (x[2i], x[2i+1]), as Meta and
  llama2.c do; HF stores them for half-split pairs (x[i], x[i+HD/2]). A model in the other
  pairing has the rows of its wq and wk permuted within each head (hf.to_interleaved /
  hf.to_half_split), exactly as llama.cpp's and transformers' converters do.
* Types: GGUF F32, F16 or Q8_0; HF F32, F16 or BF16. Q8_0 stores each run of 32 weights of a
  row as one float16 scale d = max|w|/127 and 32 int8 q = round(w/d) (34 bytes for 32
  weights). As in llama.cpp's convert_hf_to_gguf.py, 1-D tensors (norms, RoPE factors) stay
  F32 and a matrix whose rows are not a multiple of 32 long falls back to F16.
* Llama 3.1 RoPE scaling: GGUF has no keys for it; llama.cpp's converter stores the divisor of
  each pair's frequency as the tensor `rope_freqs.weight`, and so do we.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..config import LlamaConfig, RopeScaling
from ..dtypes import bfloat16_from_float32, to_float32
from ..errors import ArgumentError, CheckpointError, ConfigError
from ..layers import rope_frequencies
from ..quants import QuantizedTensor, quantize_q8_0
from ..schema import tensor_specs
from ..tokenizers import SentencePieceTokenizer
from ..tokenizers.gguf import gguf_tokenizer_metadata
from ..tokenizers.hf_files import hf_tokenizer_files
from . import Checkpoint, checkpoint_tokenizer, read_checkpoint
from .gguf import END_TEXTS, GLOBAL_NAMES, LAYER_NAMES, ROPE_FREQS
from .gguf_writer import TENSOR_TYPES, TensorEntry, write_gguf
from .hf import hf_name, to_half_split, to_interleaved
from .safetensors import write_safetensors

FORMATS = ("gguf", "hf")
OUT_TYPES = {"gguf": ("f32", "f16", "q8_0"), "hf": ("f32", "f16", "bf16")}

# llama.cpp's llama_ftype: what general.file_type says most matrices are.
GGUF_FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7}
GGML_QUANT_VERSION = 2  # general.quantization_version of current llama.cpp files

# Meta's tensor names -> GGUF's: the GGUF loader's tables, inverted.
GGUF_LAYER_NAMES = {meta: name for name, meta in LAYER_NAMES.items()}
GGUF_GLOBAL_NAMES = {meta: name for name, meta in GLOBAL_NAMES.items()}

# Files of an HF directory copied as they are when the source has them.
HF_SIDE_FILES = (
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
)


def convert(
    src: str | Path,
    out: str | Path,
    to: str | None = None,
    out_type: str = "f32",
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write the checkpoint at `src` to `out` as GGUF or an HF directory; returns `out`.

    `to` is "gguf" or "hf"; by default `out` ending in .gguf means GGUF, anything else an HF
    directory. `out_type`: "f32", "f16" or "q8_0" for GGUF; "f32", "f16" or "bf16" for HF.
    An existing `out` is refused unless `force`, which replaces it (a file, an empty directory
    or a model directory; never the source or a directory holding it). The file or directory is
    written under a temporary name and renamed at the end: a failed conversion leaves nothing.
    """
    src, out = Path(src), Path(out)
    to = to or ("gguf" if out.suffix.lower() == ".gguf" else "hf")
    if to not in FORMATS:
        raise ArgumentError(f"unknown output format {to!r}: expected one of {', '.join(FORMATS)}")
    if out_type not in OUT_TYPES[to]:
        raise ArgumentError(
            f"--type {out_type!r} cannot be written to {to.upper()}: expected one of "
            f"{', '.join(OUT_TYPES[to])}"
        )
    _check_out(src, out, force)
    ckpt = read_checkpoint(src)
    tokenizer = checkpoint_tokenizer(ckpt)
    # This process's own name: two conversions to one OUT cannot write into each other's.
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
    _remove(partial)
    try:
        if to == "gguf":
            export_gguf(ckpt, tokenizer, partial, out_type, progress)
        else:
            export_hf(ckpt, tokenizer, partial, out_type, progress)
        if out.exists() or out.is_symlink():
            _remove(out)  # only reached with force (_check_out)
        os.replace(partial, out)
    finally:
        _remove(partial)
    return out


def _check_out(src: Path, out: Path, force: bool) -> None:
    if out.exists() and not (out.is_file() or out.is_dir()):  # /dev/null, a FIFO, a socket
        raise ArgumentError(
            f"{out} is not a regular file or a directory (a device or a pipe); a conversion "
            f"writes a file or a model directory: choose another output path"
        )
    if out.exists() or out.is_symlink():
        if not force:
            raise ArgumentError(
                f"{out} already exists; pass --force (force=True) to replace it, or choose "
                f"another output path"
            )
        source = src.resolve()
        target = out.resolve()
        if source == target or target in source.parents:
            raise ArgumentError(
                f"{out} holds the checkpoint being converted ({src}); --force would delete "
                f"it: choose another output path"
            )
        # --force replaces a file or an earlier export, never a directory of other things.
        if out.is_dir() and any(out.iterdir()) and not (out / "config.json").is_file():
            raise ArgumentError(
                f"{out} is a directory that is not a Hugging Face model directory (no "
                f"config.json); --force only replaces files and model directories: choose "
                f"another output path"
            )
    if not out.parent.is_dir():
        raise ArgumentError(f"{out}: the directory {out.parent} does not exist; create it first")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


# ---------------------------------------------------------------- tensors


def gguf_name(meta_name: str) -> str:
    """The GGUF name of a tensor named as in `schema.tensor_names`."""
    if meta_name in GGUF_GLOBAL_NAMES:
        return GGUF_GLOBAL_NAMES[meta_name]
    _, i, rest = meta_name.split(".", 2)  # "layers", "3", "attention.wq.weight"
    if rest not in GGUF_LAYER_NAMES:
        raise CheckpointError(f"tensor {meta_name} has no GGUF name: export does not support it")
    return f"blk.{i}.{GGUF_LAYER_NAMES[rest]}"


def export_tensor(config: LlamaConfig, name: str, tensor, interleaved: bool) -> np.ndarray:
    """One checkpoint tensor as float32, its q/k rows in the RoPE pairing asked for.

    `tensor` is a loader's array (float32, float16 or bfloat16, maybe memory-mapped), or a
    GGUF block-quantized tensor (quants.QuantizedTensor).
    """
    w = tensor.to_float32() if isinstance(tensor, QuantizedTensor) else to_float32(tensor)
    if interleaved != config.rope_interleaved:
        # q and k rows (and their biases) are rotated in pairs; v, o and the MLP are not.
        kind = name.split(".", 2)[-1].rsplit(".", 1)[0]  # "attention.wq"
        n_heads = {"attention.wq": config.n_heads, "attention.wk": config.n_kv_heads}.get(kind)
        if n_heads is not None:
            w = (to_interleaved if interleaved else to_half_split)(w, n_heads)
    return np.ascontiguousarray(w, dtype=np.float32)


def _as_float16(name: str, w: np.ndarray) -> np.ndarray:
    big = np.abs(w) > np.finfo(np.float16).max
    if big.any():
        raise CheckpointError(
            f"tensor {name} has {int(big.sum())} values beyond float16's range "
            f"(max |w| = {float(np.abs(w).max()):.4g} > 65504); convert with --type f32 or bf16"
        )
    return w.astype(np.float16)


def _file_order(ckpt: Checkpoint) -> list[str]:
    """The checkpoint's tensor names in the schema's order: embedding, block by block, head."""
    return [name for name in tensor_specs(ckpt.config) if name in ckpt.tensors]


# ---------------------------------------------------------------- GGUF


def gguf_tensor_type(shape: tuple[int, ...], out_type: str) -> str:
    """The ggml type a tensor is written as: F32 for 1-D tensors, else `out_type`, with F16 for
    Q8_0 matrices whose rows are not a multiple of 32 long (llama.cpp's converter does both)."""
    if len(shape) == 1 or out_type == "f32":
        return "F32"
    if out_type == "q8_0" and shape[-1] % 32 == 0:
        return "Q8_0"
    return "F16"


def _gguf_data(ckpt: Checkpoint, name: str, type_name: str) -> np.ndarray:
    w = export_tensor(ckpt.config, name, ckpt.tensors[name], interleaved=True)
    if type_name == "F32":
        return w
    if type_name == "F16":
        return _as_float16(name, w)
    return _quantize_q8_0(w)


def _quantize_q8_0(w: np.ndarray, rows_per_chunk: int = 256) -> np.ndarray:
    """quants.quantize_q8_0, `rows_per_chunk` rows at a time: its temporaries stay small
    next to a large embedding.   (N, K) float32 -> (N, K/32 * 34) uint8"""
    N, K = w.shape
    out = np.empty((N, K // 32 * 34), dtype=np.uint8)  # (N, blocks per row * 34)
    for start in range(0, N, rows_per_chunk):
        out[start : start + rows_per_chunk] = quantize_q8_0(w[start : start + rows_per_chunk])
    return out


def gguf_metadata(config: LlamaConfig, tokenizer, out_type: str) -> dict[str, object]:
    """The GGUF key/values of a llama model: general.*, llama.* and the tokenizer's keys."""
    c = config
    metadata: dict[str, object] = {
        "general.architecture": "llama",
        "general.name": c.name or "llama",
        "general.file_type": GGUF_FILE_TYPES[out_type],
        "general.quantization_version": GGML_QUANT_VERSION,
        "general.alignment": 32,
        "llama.vocab_size": c.vocab_size,
        "llama.context_length": c.max_seq_len,
        "llama.embedding_length": c.dim,
        "llama.block_count": c.n_layers,
        "llama.feed_forward_length": c.hidden_dim,
        "llama.rope.dimension_count": c.head_dim,
        "llama.attention.head_count": c.n_heads,
        "llama.attention.head_count_kv": c.n_kv_heads,
        "llama.attention.layer_norm_rms_epsilon": float(c.norm_eps),
        "llama.rope.freq_base": float(c.rope_theta),
    }
    if c.head_dim != c.dim // c.n_heads:  # llama.cpp assumes dim / heads unless told
        metadata["llama.attention.key_length"] = c.head_dim
        metadata["llama.attention.value_length"] = c.head_dim
    if c.rope_scaling is not None and c.rope_scaling.kind == "linear":
        metadata["llama.rope.scaling.type"] = "linear"
        metadata["llama.rope.scaling.factor"] = float(c.rope_scaling.factor)
    if tokenizer is not None:  # tokenizer.ggml.* and tokenizer.chat_template
        metadata.update(gguf_tokenizer_metadata(tokenizer))
        tokens = metadata["tokenizer.ggml.tokens"]
        metadata.update(_end_tokens(c, tokens, metadata.get("tokenizer.ggml.eos_token_id")))
    return metadata


def _end_tokens(config: LlamaConfig, tokens: list[str], eos: int | None) -> dict[str, int]:
    """The model's stop ids besides EOS as GGUF's two other end tokens, eot and eom (a
    llama2.c story ends with BOS as well as EOS), which llama.cpp and llama_np's reader stop
    on; stop tokens they know by their text (gguf.END_TEXTS: <|eot_id|>, <|im_end|>, ...)
    need no key."""
    others = [i for i in config.stop_ids if i != eos and tokens[i] not in END_TEXTS]
    if len(others) > 2:
        raise CheckpointError(
            f"the model stops on tokens {others} besides EOS, and GGUF names two more end "
            f"tokens (eot, eom): it cannot be written as GGUF"
        )
    keys = ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")[: len(others)]
    return dict(zip(keys, others, strict=True))


def rope_freq_divisors(config: LlamaConfig) -> np.ndarray:
    """Llama 3.1 scaling as llama.cpp stores it: each pair's frequency divisor.   (HD/2,)"""
    if config.rope_scaling.kind == "divisors":  # read from a GGUF file: write them back as-is
        return np.array(config.rope_scaling.divisors, dtype=np.float32)
    plain = rope_frequencies(config.head_dim, config.rope_theta)
    scaled = rope_frequencies(config.head_dim, config.rope_theta, config.rope_scaling)
    return (plain / scaled).astype(np.float32)


def export_gguf(
    ckpt: Checkpoint,
    tokenizer,
    path: Path,
    out_type: str = "f32",
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Write `ckpt` (and `tokenizer`, if not None) as a GGUF file for llama.cpp's `llama`
    architecture."""
    config = ckpt.config
    entries = []
    if config.rope_scaling is not None and config.rope_scaling.kind in ("llama3", "divisors"):
        divisors = rope_freq_divisors(config)
        entries.append(
            TensorEntry(ROPE_FREQS, divisors.shape, TENSOR_TYPES["F32"], lambda: divisors)
        )
    for name in _file_order(ckpt):
        shape = tuple(ckpt.tensors[name].shape)
        type_name = gguf_tensor_type(shape, out_type)
        make = functools.partial(_gguf_data, ckpt, name, type_name)
        entries.append(TensorEntry(gguf_name(name), shape, TENSOR_TYPES[type_name], make))
    write_gguf(path, gguf_metadata(config, tokenizer, out_type), entries, progress)


# ---------------------------------------------------------------- Hugging Face

HF_DTYPES = {"f32": ("F32", "float32"), "f16": ("F16", "float16"), "bf16": ("BF16", "bfloat16")}


def hf_config(config: LlamaConfig, torch_dtype: str, tensors=()) -> dict:
    """config.json of a LlamaForCausalLM with this config (the Hub's spelling); `tensors`
    names the checkpoint's tensors (attention_bias says whether q/k/v/o biases are among them).
    """
    c = config
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": c.dim,
        "intermediate_size": c.hidden_dim,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads,
        "head_dim": c.head_dim,
        "vocab_size": c.vocab_size,
        "max_position_embeddings": c.max_seq_len,
        "rms_norm_eps": c.norm_eps,
        "rope_theta": c.rope_theta,
        "hidden_act": "silu",
        "attention_bias": any(".bias" in name for name in tensors),
        "mlp_bias": False,
        "tie_word_embeddings": c.tie_embeddings,
        "bos_token_id": c.bos_id,
        "eos_token_id": c.stop_ids[0] if len(c.stop_ids) == 1 else list(c.stop_ids),
        "torch_dtype": torch_dtype,
    }
    scaling = c.rope_scaling
    if scaling is not None and scaling.kind == "divisors":  # a GGUF file's rope_freqs
        scaling = llama3_scaling_from_divisors(c)
    if scaling is not None and scaling.kind == "linear":
        cfg["rope_scaling"] = {"rope_type": "linear", "factor": scaling.factor}
    elif scaling is not None and scaling.kind == "llama3":
        cfg["rope_scaling"] = {
            "rope_type": "llama3",
            "factor": scaling.factor,
            "low_freq_factor": scaling.low_freq_factor,
            "high_freq_factor": scaling.high_freq_factor,
            "original_max_position_embeddings": scaling.original_max_position_embeddings,
        }
    elif scaling is not None:
        raise ConfigError(
            f"RoPE scaling {scaling.kind!r} has no config.json spelling in transformers; "
            f"export this model to GGUF instead"
        )
    return cfg


def llama3_scaling_from_divisors(config: LlamaConfig) -> RopeScaling | None:
    """The config.json scaling whose per-pair divisors are `config`'s (GGUF rope_freqs).

    Llama 3.1 divides frequency f by 1 (short wavelengths), by `factor` (long ones), and in
    between by 1 / ((1 - s)/factor + s) with s = orig·f/(2π(high - low)) - low/(high - low),
    a straight line in f, clipped to 0..1. So `factor` is the largest divisor, and a line
    through the blended pairs (or, with fewer than two, through the band edges) gives
    (high - low) and low for any orig: 8192, what Llama 3.1 and 3.2 use, gives back their own
    parameters. All divisors 1 is no scaling, all equal is linear scaling; other shapes
    cannot be said in config.json.
    """
    divisors = np.array(config.rope_scaling.divisors, dtype=np.float64)  # (HD/2,)
    freqs = rope_frequencies(config.head_dim, config.rope_theta)  # (HD/2,)
    factor = float(divisors.max())
    if np.allclose(divisors, 1.0, rtol=1e-6):
        return None
    if np.allclose(divisors, factor, rtol=1e-6):
        return RopeScaling("linear", factor=factor)
    s = (1 / divisors - 1 / factor) / (1 - 1 / factor)  # (HD/2,) 0: slowed, 1: kept
    blended = (s > 1e-4) & (s < 1 - 1e-4)
    if blended.sum() >= 2:
        slope, intercept = np.polyfit(freqs[blended], s[blended], 1)
    else:  # a line through the one blended pair (if any) and the edges of the other bands
        points = [(freqs[i], s[i]) for i in np.flatnonzero(blended)]
        if (s <= 1e-4).any():
            points.append((freqs[s <= 1e-4].max(), 0.0))
        if (s >= 1 - 1e-4).any():
            points.append((freqs[s >= 1 - 1e-4].min(), 1.0))
        (f1, s1), (f2, s2) = points[:2]
        slope = (s2 - s1) / (f2 - f1)
        intercept = s1 - slope * f1
    orig = 8192
    span = orig / (2 * np.pi * slope)  # high_freq_factor - low_freq_factor
    low = -intercept * span
    scaling = RopeScaling("llama3", factor, float(round(low, 4)), float(round(low + span, 4)), orig)
    recomputed = rope_frequencies(config.head_dim, config.rope_theta, scaling)
    if not (slope > 0 and np.allclose(recomputed, freqs / divisors, rtol=1e-4)):
        raise ConfigError(
            f"the RoPE frequency divisors (GGUF rope_freqs) {np.round(divisors, 4).tolist()} "
            f"are not a Llama 3.1-style scaling, which config.json cannot express otherwise: "
            f"export this model to GGUF instead"
        )
    return scaling


def _hf_data(ckpt: Checkpoint, name: str, out_type: str) -> np.ndarray:
    w = export_tensor(ckpt.config, name, ckpt.tensors[name], interleaved=False)
    if out_type == "f16":
        return _as_float16(name, w)
    if out_type == "bf16":
        return bfloat16_from_float32(w)
    return w


def export_hf(
    ckpt: Checkpoint,
    tokenizer,
    directory: Path,
    out_type: str = "f32",
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Write `ckpt` as an HF LlamaForCausalLM directory: config.json, model.safetensors,
    generation_config.json and tokenizer files.

    The HF files beside the checkpoint are copied (tokenizer.model, tokenizer.json,
    tokenizer_config.json with the chat template, ...). A `tokenizer` that has no such file —
    llama2.c's tokenizer.bin, a GGUF file's vocabulary, Llama 3's tiktoken tokenizer.model —
    is written as the files transformers reads (tokenizers/hf_files.py).
    """
    dtype, torch_dtype = HF_DTYPES[out_type]
    config_json = hf_config(ckpt.config, torch_dtype, ckpt.tensors)
    directory.mkdir()
    entries = [
        (hf_name(name), tuple(t.shape), dtype, functools.partial(_hf_data, ckpt, name, out_type))
        for name, t in ((n, ckpt.tensors[n]) for n in _file_order(ckpt))
    ]
    write_safetensors(directory / "model.safetensors", entries, progress=progress)
    (directory / "config.json").write_text(json.dumps(config_json, indent=2) + "\n")
    for name in HF_SIDE_FILES:
        if (ckpt.directory / name).is_file():
            shutil.copyfile(ckpt.directory / name, directory / name)
    if tokenizer is not None and not (
        (directory / "tokenizer.json").exists() or isinstance(tokenizer, SentencePieceTokenizer)
    ):
        for name, data in hf_tokenizer_files(gguf_tokenizer_metadata(tokenizer)).items():
            if not (directory / name).exists():  # a copied tokenizer_config.json says more
                (directory / name).write_bytes(data)
    if not (directory / "generation_config.json").exists():
        generation = {
            "bos_token_id": ckpt.config.bos_id,
            "eos_token_id": config_json["eos_token_id"],
        }
        (directory / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
