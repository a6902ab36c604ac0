"""Convert a llama2.c `.bin` checkpoint into a Hugging Face model directory.

    python scripts/convert_llama2c_to_hf.py weights/stories260K/stories260K.bin /tmp/stories260K-hf

is `llama-np convert weights/stories260K/stories260K.bin /tmp/stories260K-hf --to hf` (kept for
the docs that name it): config.json, model.safetensors (float32, wq/wk rows permuted for
half-split RoPE by `llama_np.checkpoints.hf.to_half_split`), generation_config.json and a copy
of the tokenizer found next to the .bin. tests/test_convert.py checks that both load to the
same logits.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run from a checkout without installing: make the repository's llama_np importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llama_np.checkpoints.export import convert


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="llama2.c checkpoint (.bin)")
    parser.add_argument("dst", type=Path, help="output directory (must not exist)")
    args = parser.parse_args(argv)
    print(f"wrote {convert(args.src, args.dst, to='hf')}")


if __name__ == "__main__":
    main()
