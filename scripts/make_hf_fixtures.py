"""Build the reference fixtures in tests/fixtures/hf/ with transformers and PyTorch.

Each case is a tiny random-weight LlamaForCausalLM saved in one real checkpoint layout, with
what the reference implementation computes for it:

    tests/fixtures/hf/<case>/    the checkpoint (config.json + safetensors, or Meta's
                                 params.json + consolidated.00.pth)
    tests/fixtures/hf/<case>/reference.json   {"tokens": prompt ids, "greedy": 8 greedy ids}
    tests/fixtures/hf/<case>/logits.npy       (T, V) float32 logits of every prompt position

tests/test_hf_checkpoints.py (default test run, no torch) loads each case with
`llama_np.load` and compares. To regenerate (needs torch and transformers, which are NOT
dependencies of llama_np or of its tests):

    pip install torch transformers
    python scripts/make_hf_fixtures.py            # rewrites tests/fixtures/hf/

Made with torch 2.13.0 and transformers 5.24.0. The reference runs in float32: bf16 and fp16
checkpoints are loaded with dtype=torch.float32, i.e. their stored values widened, which is
what llama_np computes with.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "hf"
PROMPT_LEN, GREEDY_LEN = 8, 8
BASE = dict(  # hidden 64, 2 layers, 4 heads, 2 KV heads, vocab 256
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=256,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
    initializer_range=0.1,  # larger than the default 0.02, so logits are not all near 0
    bos_token_id=1,
    eos_token_id=2,
)
LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,  # small, so the scaling changes angles within T
    "rope_theta": 10000.0,
}

# case name -> (LlamaConfig overrides, checkpoint dtype, layout): layout "hf" is as
# transformers 5 saves it, "hub" has config.json rewritten in the Hub's spelling,
# "hub_no_theta" also drops rope_theta (older configs omit the default 10000).
CASES = {
    "fp32": ({}, torch.float32, "hf"),
    "fp16": ({}, torch.float16, "hf"),
    "bf16": ({}, torch.bfloat16, "hf"),
    "sharded": ({}, torch.bfloat16, "sharded"),
    "tied": ({"tie_word_embeddings": True}, torch.bfloat16, "hf"),
    "llama3_scaling": ({"rope_parameters": LLAMA3}, torch.bfloat16, "hf"),
    "llama3_hub_config": (
        {"rope_parameters": {**LLAMA3, "rope_theta": 500000.0}},
        torch.bfloat16,
        "hub",
    ),
    "linear_scaling_hub_config": (
        {"rope_parameters": {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}},
        torch.float16,
        "hub",
    ),
    "head_dim": ({"head_dim": 32}, torch.float32, "hf"),
    "no_rope_theta_hub_config": ({}, torch.float16, "hub_no_theta"),
    "meta": (
        {"rope_parameters": {**LLAMA3, "original_max_position_embeddings": 8192}},
        torch.bfloat16,
        "meta",
    ),
}


def random_model(overrides: dict, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{**BASE, **overrides})).eval()
    with torch.no_grad():  # norms default to all ones: randomize them so mix-ups show
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
    return model


def hub_spelling(config_path: Path, keep_theta: bool = True) -> None:
    """Rewrite a transformers 5 config.json in the Hub's (transformers 4) spelling."""
    cfg = json.loads(config_path.read_text())
    rope = cfg.pop("rope_parameters")
    theta = rope.pop("rope_theta")
    if keep_theta:
        cfg["rope_theta"] = theta
    if rope["rope_type"] != "default":
        rope["type"] = rope.pop("rope_type")  # the older key, as in Llama 2-era configs
        cfg["rope_scaling"] = rope
    cfg["torch_dtype"] = cfg.pop("dtype")
    config_path.write_text(json.dumps(cfg, indent=2) + "\n")


def unpermute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF's half-split row order back to Meta's interleaved pairs (inverse of HF's permute)."""
    rows, dim = w.shape
    return w.reshape(n_heads, 2, rows // n_heads // 2, dim).transpose(1, 2).reshape(rows, dim)


def save_meta(model: LlamaForCausalLM, directory: Path, dtype: torch.dtype) -> None:
    """Meta's layout: params.json + consolidated.00.pth with Meta's names and RoPE order."""
    c = model.config
    names = {
        "input_layernorm": "attention_norm",
        "self_attn.q_proj": "attention.wq",
        "self_attn.k_proj": "attention.wk",
        "self_attn.v_proj": "attention.wv",
        "self_attn.o_proj": "attention.wo",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "feed_forward.w1",
        "mlp.down_proj": "feed_forward.w2",
        "mlp.up_proj": "feed_forward.w3",
    }
    hf = model.state_dict()
    sd = {
        "tok_embeddings.weight": hf["model.embed_tokens.weight"],
        "norm.weight": hf["model.norm.weight"],
        "output.weight": hf["lm_head.weight"],
    }
    for i in range(c.num_hidden_layers):
        for hf_part, meta_part in names.items():
            w = hf[f"model.layers.{i}.{hf_part}.weight"]
            if meta_part == "attention.wq":
                w = unpermute(w, c.num_attention_heads)
            elif meta_part == "attention.wk":
                w = unpermute(w, c.num_key_value_heads)
            sd[f"layers.{i}.{meta_part}.weight"] = w
    sd = {k: v.to(dtype).clone().contiguous() for k, v in sd.items()}
    directory.mkdir(parents=True)
    torch.save(sd, directory / "consolidated.00.pth")
    # hidden_dim = multiple_of ⌈ffn_dim_multiplier · int(8·dim/3) / multiple_of⌉ = 96
    params = {
        "dim": c.hidden_size,
        "n_layers": c.num_hidden_layers,
        "n_heads": c.num_attention_heads,
        "n_kv_heads": c.num_key_value_heads,
        "vocab_size": c.vocab_size,
        "multiple_of": 32,
        "ffn_dim_multiplier": 0.5,
        "norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_parameters["rope_theta"],
        "use_scaled_rope": True,
    }
    (directory / "params.json").write_text(json.dumps(params, indent=2) + "\n")


def reference(model: LlamaForCausalLM, tokens: list[int]) -> tuple[np.ndarray, list[int], float]:
    """-> (prompt logits (T, V), greedy continuation, smallest top-1/top-2 margin seen)."""
    ids = list(tokens)
    margin = float("inf")
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].numpy()
        for _ in range(GREEDY_LEN):  # full recompute each step: the plainest reference
            last = model(torch.tensor([ids])).logits[0, -1]
            top2 = torch.topk(last, 2).values
            margin = min(margin, float(top2[0] - top2[1]))
            ids.append(int(last.argmax()))
    return logits.astype(np.float32), ids[len(tokens) :], margin


def make_case(name: str, overrides: dict, dtype: torch.dtype, layout: str) -> None:
    directory = OUT / name
    for seed in range(100):  # the first seed whose greedy choices are not near-ties
        model = random_model(overrides, seed)
        with torch.no_grad():  # round to the values the checkpoint will hold (not with
            for p in model.parameters():  # model.to(dtype): it would round RoPE buffers too)
                p.copy_(p.to(dtype))
        rng = np.random.default_rng(seed)
        tokens = [int(t) for t in rng.integers(3, BASE["vocab_size"], PROMPT_LEN)]
        logits, greedy, margin = reference(model, tokens)
        if margin > 1e-2:
            break
    shutil.rmtree(directory, ignore_errors=True)
    if layout == "meta":
        save_meta(model, directory, dtype)
    else:
        copy.deepcopy(model).to(dtype).save_pretrained(
            directory, max_shard_size="100KB" if layout == "sharded" else "1GB"
        )
        if layout.startswith("hub"):
            hub_spelling(directory / "config.json", keep_theta=layout == "hub")
    # The reference must come from the saved files: reload them (except Meta's, which
    # transformers does not read) and check that they give the logits just computed.
    if layout != "meta":
        reloaded = LlamaForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
        assert np.allclose(reference(reloaded, tokens)[0], logits, atol=1e-5), name
    np.save(directory / "logits.npy", logits)
    (directory / "reference.json").write_text(
        json.dumps({"seed": seed, "tokens": tokens, "greedy": greedy}) + "\n"
    )
    size = sum(p.stat().st_size for p in directory.iterdir())
    print(
        f"{name:28s} seed {seed}  margin {margin:.3f}  max|logit| "
        f"{np.abs(logits).max():.2f}  {size / 1024:.0f} KiB"
    )


def main() -> None:
    for name, (overrides, dtype, layout) in CASES.items():
        make_case(name, overrides, dtype, layout)


if __name__ == "__main__":
    main()
