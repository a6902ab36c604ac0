"""How much accuracy compressed weights (bf16, fp16, int8) and an fp16 KV cache cost.

    python benchmarks/accuracy.py            # writes benchmarks/results/accuracy.{json,md}

For each model, the fp32 model generates a greedy sequence; then each variant reads the same
sequence (teacher forcing) and is compared position by position with fp32: the largest
logit difference, the logit difference relative to the spread (std) of fp32's logits, and
how often its most likely next token is fp32's. A free-running greedy generation also reports
how many tokens match fp32's before the first difference.

The "int8 activations" variant also rounds every matrix product's input rows to int8 per group
of 32 (one float32 scale each), as llama.cpp does to run Q8_0 products as integer dot products:
it measures what that rounding costs in accuracy.

The rows named after a kernel layer measure the rounding the int8 kernels really do in decode
(llama_np/kernels/int8.py: this project's int8 and GGUF Q8_0 weights with activations rounded
to int8 per 32, Q4_K, Q5_K and Q6_K blocks per 256): the fp32 model is stored as int8, as Q8_0
and as Q4_K_M blocks (benchmarks/kquants.py) and decodes the same sequence token by token with
numba's float kernels and with the int8 kernels. They need numba, a CPU with AVX2 or AVX-512
VNNI and the `gguf` package (test extra), and models whose rows are whole 256s (stories110M
here); they are skipped otherwise. Every other row runs with float activations (numba's
kernels, or NumPy's without numba).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "tests", ROOT / "benchmarks"):  # llama_np, the tests' GGUF writer
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from llama_np import kernels, load  # noqa: E402
from llama_np.model import Model  # noqa: E402
from llama_np.packed import PackedTransposed, int8_group_size  # noqa: E402
from llama_np.quants import quantize_q8_0  # noqa: E402
from llama_np.tools.known_models import known_config  # noqa: E402
from llama_np.tools.random_model import random_model  # noqa: E402

# (weights, KV cache, activations rounded to int8 before each product)
VARIANTS = [
    ("bf16", np.float32, False),
    ("fp16", np.float32, False),
    ("int8", np.float32, False),
    ("int8", np.float32, True),
    ("fp32", np.float16, False),
]


class Int8Activations:
    """A weight matrix whose input rows are rounded to int8 per group (scale = max|x| / 127)
    before the product: the same numbers an integer Q8_0 x Q8_0 dot product multiplies."""

    __array_ufunc__ = None  # `x @ matrix` calls __rmatmul__

    def __init__(self, w) -> None:
        self.w, self.shape = w, w.shape

    def __rmatmul__(self, x: np.ndarray) -> np.ndarray:
        K = x.shape[-1]
        groups = x.reshape(*x.shape[:-1], K // int8_group_size(K), -1)  # (..., K/G, G)
        scale = np.abs(groups).max(axis=-1, keepdims=True) / np.float32(127)  # (..., K/G, 1)
        q = np.rint(groups / np.where(scale > 0, scale, np.float32(1)))
        return (q * scale).reshape(x.shape).astype(np.float32) @ self.w


def int8_activations(model: Model) -> Model:
    for lw in model.weights.layers:
        for field in ("wqkv", "wo", "w_gate_up", "w_down"):
            setattr(lw, field, Int8Activations(getattr(lw, field)))
    model.weights.classifier = Int8Activations(model.weights.classifier)
    return model


def rows_of(w) -> np.ndarray:
    """An fp32 weight (in, out), a plain array or PackedRows of kind "fp32", as its (out, in)
    checkpoint rows."""
    return w.packed.data if isinstance(w, PackedTransposed) else w.T


def tensors_of(model: Model) -> dict[str, np.ndarray]:
    """The fp32 model's weights as checkpoint tensors (Meta names, (out, in)), to recompress."""
    c, w = model.config, model.weights
    q, kv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    t = {"tok_embeddings.weight": rows_of(w.classifier) if c.tie_embeddings else w.embedding}
    t["norm.weight"] = w.final_norm
    if not c.tie_embeddings:
        t["output.weight"] = rows_of(w.classifier)
    for i, lw in enumerate(w.layers):
        p = f"layers.{i}."
        wq, wk, wv = np.split(rows_of(lw.wqkv), [q, q + kv])
        w1, w3 = np.split(rows_of(lw.w_gate_up), 2)
        t |= {p + "attention_norm.weight": lw.attn_norm, p + "ffn_norm.weight": lw.mlp_norm}
        t |= {p + "attention.wq.weight": wq, p + "attention.wk.weight": wk}
        t |= {p + "attention.wv.weight": wv, p + "attention.wo.weight": rows_of(lw.wo)}
        t |= {p + "feed_forward.w1.weight": w1, p + "feed_forward.w3.weight": w3}
        t[p + "feed_forward.w2.weight"] = rows_of(lw.w_down)
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
    # float activations, even where the default kernels (int8) would round them
    kernels.use("numba" if kernels.numba_available() else "numpy")
    try:
        rows = [variant(ref, tensors, prompt, sequence, a, *v) for v in VARIANTS]
    finally:
        kernels.use(None)
    return rows


def variant(ref, tensors, prompt, sequence, a, weights_dtype, kv_dtype, int8_x) -> dict:
    """One VARIANTS row: teacher-forced logits against a (T, V), and a free greedy run."""
    model = Model.from_tensors(ref.config, tensors, weights_dtype=weights_dtype)
    if int8_x:
        model = int8_activations(model)
    b = model.prefill(sequence, model.new_cache(len(sequence), dtype=kv_dtype), True)
    free = greedy(model, prompt, len(sequence) - len(prompt), kv_dtype)
    return {
        "weights": weights_dtype,
        "kv_cache": np.dtype(kv_dtype).name,
        "activations": "int8" if int8_x else "float32",
        **errors(a, b, free, sequence[len(prompt) :]),
    }


def errors(a: np.ndarray, b: np.ndarray, free: list[int], reference: list[int]) -> dict:
    """Logits b (T, V) against reference logits a; free-running tokens against reference's."""
    diverged = np.flatnonzero(np.array(free) != np.array(reference))
    return {
        "max_logit_error": float(np.abs(a - b).max()),
        "relative_to_logit_std": float(np.abs(a - b).max() / a.std()),
        "argmax_agreement": float(np.mean(a.argmax(-1) == b.argmax(-1))),
        "greedy_tokens_identical": int(diverged[0]) if diverged.size else len(reference),
        "greedy_tokens": len(reference),
    }


def decode_logits(model: Model, sequence: list[int]) -> np.ndarray:
    """(T - 1, V) the logits after each token of `sequence` but the last, one decode step at a
    time (teacher forcing where the compiled kernels run: prefill multiplies with BLAS)."""
    cache = model.new_cache(len(sequence))
    return np.stack([model.decode(t, cache) for t in sequence[:-1]])


def block_rows(ref: Model, prompt: list[int], n: int) -> list[dict]:
    """The fp32 model stored as int8 and as GGUF Q8_0 and Q4_K_M blocks (round to nearest:
    kquants.py), decoded with numba's float kernels and with the int8 kernels (activations
    rounded to int8 per 32 for int8 and Q8_0, per 256 for K-quants), each against fp32. []
    without the int8 kernels, `gguf`, or rows of whole 256s."""
    try:
        from checkpoint_writers import write_gguf
        from gguf_types import types_for
        from kquants import quantize_q4_k, quantize_q6_k
    except ImportError:
        return []
    if not kernels.int8_available() or ref.config.dim % 256 or ref.config.hidden_dim % 256:
        return []
    quantize = {"Q8_0": quantize_q8_0, "Q4_K": quantize_q4_k, "Q6_K": quantize_q6_k}
    sequence = prompt + greedy(ref, prompt, n)
    a = decode_logits(ref, sequence)
    tensors = tensors_of(ref)
    models = {"int8": Model.from_tensors(ref.config, tensors, weights_dtype="int8")}
    for kind in ("Q8_0", "Q4_K_M"):
        types = types_for(kind, tensors)
        blocks = {k: quantize[types[k]](v) for k, v in tensors.items() if v.ndim == 2}
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.gguf"
            write_gguf(path, ref.config, tensors, types, blocks=blocks)
            models[kind] = load(path)
    rows = []
    try:
        for kind, model in models.items():
            for name, activations in (("numba", "float32"), ("int8", "int8")):
                kernels.use(name)
                b = decode_logits(model, sequence)
                free = greedy(model, prompt, n)
                rows.append(
                    {
                        "weights": kind,
                        "kv_cache": "float32",
                        "activations": f"{activations} ({name} kernels)",
                        **errors(a, b, free, sequence[len(prompt) :]),
                    }
                )
    finally:
        kernels.use(None)
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
        results[name] = compare(model, prompt, n) + block_rows(model, prompt, n)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "accuracy.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        f"`python benchmarks/accuracy.py` — each variant against fp32 weights and fp32 KV cache, "
        f"teacher-forced on fp32's greedy sequence ({args.tokens} tokens, fewer if the context "
        "is shorter); stories260K is the real checkpoint, the others random weights (std 0.02).",
        "",
        "| model | weights | KV cache | activations | max logit error | ÷ logit std | "
        "argmax agreement | free greedy: identical tokens |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in results.items():
        for r in rows:
            lines.append(
                f"| {name} | {r['weights']} | {r['kv_cache']} | {r['activations']} | "
                f"{r['max_logit_error']:.4f} | "
                f"{r['relative_to_logit_std']:.4f} | {100 * r['argmax_agreement']:.1f}% | "
                f"{r['greedy_tokens_identical']} / {r['greedy_tokens']} |"
            )
    markdown = "\n".join(lines) + "\n"
    (out / "accuracy.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
