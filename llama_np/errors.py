"""The exceptions llama_np raises for bad input.

Every error a user can cause (a broken file, a wrong argument, a prompt that does not fit)
is one of these, with a message that names the file or argument, what was expected, what was
found and, when there is one, the fix. Anything else escaping llama_np is a bug.

    LlamaNpError
    ├── CheckpointError      a weights file or directory is missing, truncated or malformed
    ├── ConfigError          a model config is missing keys, contradictory or unsupported
    ├── TokenizerError       a tokenizer file is malformed or does not fit the model
    ├── ContextLengthError   tokens do not fit in the model's context / the KV cache
    ├── ArgumentError        an invalid argument (sampling values, token ids, ...)
    ├── NumericalError       NaN or Inf appeared in the activations
    ├── MemoryLimitError     a model or KV cache would not fit in the available memory
    └── DownloadError        fetching a checkpoint failed (HTTP error, size mismatch, unsafe name)
"""


class LlamaNpError(Exception):
    """Base class of every error llama_np raises on bad input."""


class CheckpointError(LlamaNpError):
    """A checkpoint file or directory is missing, truncated or malformed."""


class ConfigError(LlamaNpError, ValueError):
    """A model configuration is missing keys, contradictory or unsupported."""


class TokenizerError(LlamaNpError):
    """A tokenizer file is malformed, of the wrong kind, or does not fit the model."""


class ContextLengthError(LlamaNpError, ValueError):
    """Tokens do not fit in the model's context window or the KV cache."""


class ArgumentError(LlamaNpError, ValueError):
    """An argument has an invalid value (e.g. a negative temperature)."""


class NumericalError(LlamaNpError, ArithmeticError):
    """NaN or Inf appeared in the activations."""


class MemoryLimitError(LlamaNpError, MemoryError):
    """A model or KV cache would not fit in the available memory."""


class DownloadError(LlamaNpError):
    """Fetching a checkpoint failed: a network or HTTP error, a size mismatch, or a file name
    that would land outside the target directory."""
