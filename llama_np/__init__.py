"""llama_np: a Llama transformer inference engine in Python and NumPy.

import llama_np
model = llama_np.load()                      # the bundled stories260K, or a path
for piece in llama_np.generate(model, "Once upon a time", max_new_tokens=50):
    print(piece, end="", flush=True)
"""

import os

# OpenBLAS's threads spin for 2^28 CPU cycles (~0.1 s) after each BLAS call before they sleep.
# On a 2-core machine that spinning takes the cores from whatever runs next: decode with the
# compiled kernels right after a BLAS prefill ran at ~115 instead of ~135 tok/s (stories110M
# int8). 2^20 cycles (~0.3 ms) still bridges the gaps between one token's BLAS calls (fp32
# decode and prefill measured the same). Read when NumPy loads OpenBLAS, so it only applies
# if llama_np is imported before numpy; a value the user set is kept.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")

from .checkpoints import DEFAULT_CHECKPOINT, load
from .config import LlamaConfig, RopeScaling
from .engine import Engine, generate_batch, generate_batch_stream
from .errors import (
    ArgumentError,
    CheckpointError,
    ConfigError,
    ContextLengthError,
    DownloadError,
    LlamaNpError,
    MemoryLimitError,
    NumericalError,
    TokenizerError,
)
from .generate import GenerationStats, TextStream, generate, generate_text
from .kv_cache import KVCache
from .model import Model
from .sampling import SamplingParams, sample
from .tokenizers import load_tokenizer

__all__ = [
    "DEFAULT_CHECKPOINT",
    "ArgumentError",
    "CheckpointError",
    "ConfigError",
    "ContextLengthError",
    "DownloadError",
    "Engine",
    "GenerationStats",
    "KVCache",
    "LlamaConfig",
    "LlamaNpError",
    "MemoryLimitError",
    "Model",
    "NumericalError",
    "RopeScaling",
    "SamplingParams",
    "TextStream",
    "TokenizerError",
    "generate",
    "generate_batch",
    "generate_batch_stream",
    "generate_text",
    "load",
    "load_tokenizer",
    "sample",
]
