"""How much accuracy compressed weights (bf16, fp16, int8) and an fp16 KV cache cost.

    python benchmarks/accuracy.py            # writes benchmarks/results/accuracy.{json,md}

For each model, the fp32 model generates a greedy sequence; then each variant reads the same
sequence (teacher forcing) and is compared position by position with fp32: the largest
logit difference, the logit difference relative to the spread (std) of fp32's logits, and
how often its most likely next token is fp32's. A free-running greedy generation also reports
how many tokens match fp32's before the first difference.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from llama_np import load  # noqa: E402
from llama_np.model import Model  # noqa: E402
from llama_np.tools.known_models import known_config  # noqa: E402
from llama_np.tools.random_model import random_model  # noqa: E402

VARIANTS = [("bf16", np.float32), ("fp16", np.float32), ("int8", np.float32), ("fp32", np.float16)]


def tensors_of(model: Model) -> dict[str, np.ndarray]:
    """The fp32 model's weights as checkpoint tensors (Meta names, (out, in)), to recompress."""
    c, w = model.config, model.weights
    q, kv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    t = {"tok_embeddings.weight": w.embedding, "norm.weight": w.final_norm}
    if not c.tie_embeddings:
        t["output.weight"] = w.classifier.T
    for i, lw in enumerate(w.layers):
        p = f"layers.{i}."
        wq, wk, wv = np.split(lw.wqkv.T, [q, q + kv])
        w1, w3 = np.split(lw.w_gate_up.T, 2)
        t |= {p + "attention_norm.weight": lw.attn_norm, p + "ffn_norm.weight": lw.mlp_norm}
        t |= {p + "attention.wq.weight": wq, p + "attention.wk.weight": wk}
        t |= {p + "attention.wv.weight": wv, p + "attention.wo.weight": lw.wo.T}
        t |= {p + "feed_forward.w1.weight": w1, p + "feed_forward.w3.weight": w3}
        t[p + "feed_forward.w2.weight"] = lw.w_down.T
    return t


def greedy(model: Model, prompt: list[int], n: int, kv_dtype=np.float32) -> list[int]:
    cache = model.new_cache(len(prompt) + n, dtype=kv_dtype)
    logits, out = model.prefill(prompt, cache), []
    for _ in range(n):
        out.append(int(logits.argmax()))
        logits = model.decode(out[-1], cache)
    return out


def compare(ref: Model, prompt: list[int], n: int) -> list[dict]:
    sequence = prompt + greedy(ref, prompt, n)
    a = ref.prefill(sequence, ref.new_cache(len(sequence)), all_logits=True)  # (T, V)
    tensors = tensors_of(ref)
    rows = []
    for weights_dtype, kv_dtype in VARIANTS:
        model = Model.from_tensors(ref.config, tensors, weights_dtype=weights_dtype)
        b = model.prefill(sequence, model.new_cache(len(sequence), dtype=kv_dtype), True)
        free = greedy(model, prompt, n, kv_dtype)
        diverged = np.flatnonzero(np.array(free) != np.array(sequence[len(prompt) :]))
        same = int(diverged[0]) if diverged.size else n
        rows.append(
            {
                "weights": weights_dtype,
                "kv_cache": np.dtype(kv_dtype).name,
                "max_logit_error": float(np.abs(a - b).max()),
                "relative_to_logit_std": float(np.abs(a - b).max() / a.std()),
                "argmax_agreement": float(np.mean(a.argmax(-1) == b.argmax(-1))),
                "greedy_tokens_identical": same,
                "greedy_tokens": n,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="stories260K,stories15M,stories110M")
    parser.add_argument("--tokens", type=int, default=200, help="greedy tokens compared")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    results = {}
    for name in args.models.split(","):
        print(f"{name} ...", file=sys.stderr)
        if name == "stories260K":  # the real checkpoint, from BOS
            model, prompt = load(), [1]
        else:  # random weights: a random 16-token prompt
            model = random_model(known_config(name), seed=0)
            prompt = np.random.default_rng(1).integers(3, model.config.vocab_size, 16).tolist()
        n = min(args.tokens, model.config.max_seq_len - len(prompt))
        results[name] = compare(model, prompt, n)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "accuracy.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        f"`python benchmarks/accuracy.py` — each variant against fp32 weights and fp32 KV cache, "
        f"teacher-forced on fp32's greedy sequence ({args.tokens} tokens, fewer if the context "
        "is shorter); stories260K is the real checkpoint, the others random weights (std 0.02).",
        "",
        "| model | weights | KV cache | max logit error | ÷ logit std | argmax agreement | "
        "free greedy: identical tokens |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rows in results.items():
        for r in rows:
            lines.append(
                f"| {name} | {r['weights']} | {r['kv_cache']} | {r['max_logit_error']:.4f} | "
                f"{r['relative_to_logit_std']:.4f} | {100 * r['argmax_agreement']:.1f}% | "
                f"{r['greedy_tokens_identical']} / {r['greedy_tokens']} |"
            )
    markdown = "\n".join(lines) + "\n"
    (out / "accuracy.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
