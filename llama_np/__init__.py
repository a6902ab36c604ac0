"""llama_np: a Llama transformer inference engine in Python and NumPy.

import llama_np
model = llama_np.load()                      # the bundled stories260K, or a path
for piece in llama_np.generate(model, "Once upon a time", max_new_tokens=50):
    print(piece, end="", flush=True)
"""

from .checkpoints import DEFAULT_CHECKPOINT, load
from .config import LlamaConfig, RopeScaling
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
from .generate import (
    GenerationStats,
    TextStream,
    generate,
    generate_batch,
    generate_batch_stream,
    generate_text,
)
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
