"""GGUF tensor types: weight memory and decode/prefill speed, kept as stored vs widened to fp32.

For a known model shape (random weights: random blocks with sane scales, written with the
`gguf` package's writer as the tests do), each tensor type in turn:

    python benchmarks/gguf_types.py                       # stories110M shape
    python benchmarks/gguf_types.py --model stories15M --types Q8_0 Q4_K --steps 16

Needs the test extra (`pip install -e '.[test]'`: gguf). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "tests"):  # this checkout's llama_np, and the tests' GGUF writer
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from checkpoint_writers import write_gguf  # noqa: E402
from util import random_tensors  # noqa: E402

from llama_np import load  # noqa: E402
from llama_np.quants import QUANT_TYPES  # noqa: E402
from llama_np.schema import n_params  # noqa: E402
from llama_np.tools.known_models import known_config  # noqa: E402

# llama.cpp's Q4_K_M recipe, roughly: v and down (and the classifier) one step up, in Q6_K.
Q4_K_M = {"attention.wv.weight": "Q6_K", "feed_forward.w2.weight": "Q6_K", "output.weight": "Q6_K"}


def types_for(kind: str, tensors: dict) -> dict[str, str]:
    """The type of each matrix. As llama.cpp does, a matrix whose rows are not a multiple of
    the type's block (K-quants: 256) falls back to Q8_0 (e.g. stories15M's dim 288)."""
    types = {}
    for name, array in tensors.items():
        short = name.split(".", 2)[-1] if name.startswith("layers") else name
        wanted = Q4_K_M.get(short, "Q4_K") if kind == "Q4_K_M" else kind
        fits = array.ndim == 2 and array.shape[1] % QUANT_TYPES[wanted].block_weights == 0
        types[name] = wanted if fits else "Q8_0"
    return types


def measure(model, steps: int, prompt_len: int) -> tuple[float, float]:
    """(decode tok/s median over `steps`, prefill tok/s of `prompt_len` tokens)."""
    tokens = list(range(3, 3 + prompt_len))
    cache = model.new_cache(prompt_len + steps + 1)
    start = time.perf_counter()
    logits = model.prefill(tokens, cache)
    prefill = prompt_len / (time.perf_counter() - start)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        logits = model.decode(int(np.argmax(logits)), cache)
        times.append(time.perf_counter() - start)
    return 1.0 / float(np.median(times)), prefill


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="stories110M", help="a known model name")
    parser.add_argument(
        "--types", nargs="+", default=["F16", "Q8_0", "Q4_0", "Q4_K", "Q6_K", "Q4_K_M"]
    )
    parser.add_argument("--steps", type=int, default=32, help="decode steps timed")
    parser.add_argument("--prompt", type=int, default=64, help="prefill tokens timed")
    args = parser.parse_args()
    config = known_config(args.model).replace(max_seq_len=256)
    tensors = random_tensors(config, scale=0.02)
    print(
        f"{args.model}: {n_params(config):,} parameters, {args.steps} decode steps after a "
        f"{args.prompt}-token prefill"
    )
    print(
        "| type | file | weights in memory (stored) | decode tok/s stored | "
        "prefill tok/s stored | decode tok/s fp32 | prefill tok/s fp32 |"
    )
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.types:
            path = Path(tmp) / f"{kind}.gguf"
            write_gguf(path, config, tensors, types_for(kind, tensors))
            stored = load(path)
            decode_s, prefill_s = measure(stored, args.steps, args.prompt)
            nbytes = stored.weights_nbytes
            del stored
            decode_f, prefill_f = measure(load(path, weights_dtype="fp32"), args.steps, args.prompt)
            print(
                f"| {kind} | {path.stat().st_size / 2**20:.1f} MiB | {nbytes / 2**20:.1f} MiB "
                f"| {decode_s:.1f} | {prefill_s:.0f} | {decode_f:.1f} | {prefill_f:.0f} |",
                flush=True,
            )
            path.unlink()


if __name__ == "__main__":
    main()
