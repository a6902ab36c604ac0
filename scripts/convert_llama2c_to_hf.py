"""Convert a llama2.c `.bin` checkpoint into a Hugging Face model directory.

    python scripts/convert_llama2c_to_hf.py weights/stories260K/stories260K.bin /tmp/stories260K-hf

writes config.json, model.safetensors (float32) and a copy of the
tokenizer found next to the .bin. Loading both with `llama_np.load` must give the same logits:
tests/test_convert.py checks that on the bundled stories260K.

llama2.c (like Meta) rotates interleaved pairs (x[2i], x[2i+1]) with RoPE; Hugging Face rotates
(x[i], x[i + HD/2]). Permuting the rows of wq and wk within each head — pair members 2i, 2i+1
moved to rows i and i + HD/2 — makes the half-split rotation compute the same attention scores,
since q·k only sums over rows and both q and k are permuted alike. This is the permutation of
transformers' convert_llama_weights_to_hf.py.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

# Run from a checkout without installing: make the repository's llama_np importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llama_np.checkpoints.hf import hf_name
from llama_np.checkpoints.llama2c import load_llama2c
from llama_np.tokenizers import find_tokenizer


def permute_for_half_split(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder each head's rows from interleaved pairs to half-split.   (n_heads*HD, D)"""
    rows, D = w.shape
    HD = rows // n_heads
    # (n_heads, HD/2 pairs, 2 members, D) -> (n_heads, 2 members, HD/2 pairs, D)
    return w.reshape(n_heads, HD // 2, 2, D).transpose(0, 2, 1, 3).reshape(rows, D)


def convert(src: str | Path, dst: str | Path) -> Path:
    """Write the HF directory `dst` for the llama2.c checkpoint `src`; returns `dst`."""
    src, dst = Path(src), Path(dst)
    config, tensors = load_llama2c(src)
    dst.mkdir(parents=True, exist_ok=True)
    hf_tensors = {}
    for name, array in tensors.items():
        array = np.ascontiguousarray(array, dtype=np.float32)
        if name.endswith("attention.wq.weight"):
            array = permute_for_half_split(array, config.n_heads)
        elif name.endswith("attention.wk.weight"):
            array = permute_for_half_split(array, config.n_kv_heads)
        hf_tensors[hf_name(name)] = array
    save_file(hf_tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
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
        "hidden_act": "silu",
        "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": config.bos_id,
        # llama2.c story models end a story with BOS, so it stops generation too.
        "eos_token_id": list(config.stop_ids),
        "torch_dtype": "float32",
    }
    (dst / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    tokenizer = find_tokenizer(src.parent, exclude=src)
    if tokenizer is not None:
        shutil.copyfile(tokenizer, dst / tokenizer.name)
    return dst


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="llama2.c checkpoint (.bin)")
    parser.add_argument("dst", type=Path, help="output directory")
    args = parser.parse_args(argv)
    print(f"wrote {convert(args.src, args.dst)}")


if __name__ == "__main__":
    main()
