"""The tensors of a Llama, declared once: name, shape from the config, role, required or not.

Every loader maps its file's names onto these (Meta's names, (out, in) shapes), and
`Model.from_tensors` takes exactly them. Random models, the parameter, FLOP and byte counters,
the memory check and the NaN locator read this table too, so a variant of the architecture is
a few rows here, the lines of `Model.block` that use them, and the loaders' name maps.

Optional tensors (`required=False`), as llama.cpp's TENSOR_NOT_REQUIRED: a checkpoint may
carry them or not. The q/k/v/o biases of checkpoints saved with `attention_bias: true` are
such; a model without them simply adds nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .config import LlamaConfig
from .packed import matrix_nbytes


@dataclass(frozen=True)
class TensorSpec:
    name: str  # Meta's name, e.g. "layers.3.attention.wq.weight"
    shape: tuple[int, ...]  # (out, in) for matrices, (n,) for norms and biases
    role: str  # "embedding" | "matrix" | "norm" | "bias"
    sublayer: str = ""  # "attn" | "mlp" for tensors of a block, "" for the others
    # Meta's model-parallel shards cut this tensor along "out" (column-parallel) or "in"
    # (row-parallel); "" = every shard holds the whole tensor.
    split: str = ""
    required: bool = True

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


_Shape = Callable[[LlamaConfig], tuple[int, ...]]


def _q(c: LlamaConfig) -> int:
    return c.n_heads * c.head_dim


def _kv(c: LlamaConfig) -> int:
    return c.n_kv_heads * c.head_dim


# One block's tensors: (name after "layers.{i}.", shape, role, sublayer, split, required).
# Order is the order of use in Model.block.
LAYER_TENSORS: tuple[tuple[str, _Shape, str, str, str, bool], ...] = (
    ("attention_norm.weight", lambda c: (c.dim,), "norm", "attn", "", True),
    ("attention.wq.weight", lambda c: (_q(c), c.dim), "matrix", "attn", "out", True),
    ("attention.wk.weight", lambda c: (_kv(c), c.dim), "matrix", "attn", "out", True),
    ("attention.wv.weight", lambda c: (_kv(c), c.dim), "matrix", "attn", "out", True),
    ("attention.wq.bias", lambda c: (_q(c),), "bias", "attn", "out", False),
    ("attention.wk.bias", lambda c: (_kv(c),), "bias", "attn", "out", False),
    ("attention.wv.bias", lambda c: (_kv(c),), "bias", "attn", "out", False),
    ("attention.wo.weight", lambda c: (c.dim, _q(c)), "matrix", "attn", "in", True),
    ("attention.wo.bias", lambda c: (c.dim,), "bias", "attn", "", False),
    ("ffn_norm.weight", lambda c: (c.dim,), "norm", "mlp", "", True),
    ("feed_forward.w1.weight", lambda c: (c.hidden_dim, c.dim), "matrix", "mlp", "out", True),
    ("feed_forward.w2.weight", lambda c: (c.dim, c.hidden_dim), "matrix", "mlp", "in", True),
    ("feed_forward.w3.weight", lambda c: (c.hidden_dim, c.dim), "matrix", "mlp", "out", True),
)  # w1 = gate, w2 = down, w3 = up


def layer_specs(config: LlamaConfig, i: int) -> list[TensorSpec]:
    """The tensors of block i."""
    return [
        TensorSpec(f"layers.{i}.{name}", shape(config), role, sublayer, split, required)
        for name, shape, role, sublayer, split, required in LAYER_TENSORS
    ]


def tensor_specs(config: LlamaConfig, optional: bool = True) -> dict[str, TensorSpec]:
    """Every tensor of a model of this config, by name, in llama2.c/Meta file order.

    `optional=False` leaves out the tensors a checkpoint may omit.
    """
    first, last = end_specs(config)
    specs = [first]
    for i in range(config.n_layers):
        specs += layer_specs(config, i)
    specs += last
    return {s.name: s for s in specs if optional or s.required}


def end_specs(config: LlamaConfig) -> tuple[TensorSpec, list[TensorSpec]]:
    """The tensors outside the blocks: the embedding, and after the blocks the final norm and
    (unless tied to the embedding) the classifier."""
    D, V = config.dim, config.vocab_size
    # Meta's shards split the embedding along D (Llama 2) or V (Llama 3): meta.py decides.
    embedding = TensorSpec("tok_embeddings.weight", (V, D), "embedding")
    last = [TensorSpec("norm.weight", (D,), "norm")]
    if not config.tie_embeddings:
        last.append(TensorSpec("output.weight", (V, D), "matrix", split="out"))
    return embedding, last


def split_of(name: str) -> str:
    """How Meta's model-parallel shards cut tensor `name`: "out", "in", or "" (not split;
    the embedding's axis depends on the Llama version, see checkpoints/meta.py)."""
    if name == "output.weight":
        return "out"
    if not name.startswith("layers."):
        return ""
    suffix = name.split(".", 2)[2]
    return next((split for n, _, _, _, split, _ in LAYER_TENSORS if n == suffix), "")


def tensor_names(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of the tensors every checkpoint of this config must have."""
    return {name: s.shape for name, s in tensor_specs(config, optional=False).items()}


def n_params(config: LlamaConfig) -> int:
    """Parameters of the required tensors (a tied embedding/classifier counted once).

    Counts one block and multiplies, so it costs nothing however many layers a config claims.
    """
    first, last = end_specs(config)
    per_layer = sum(s.size for s in layer_specs(config, 0) if s.required)
    return config.n_layers * per_layer + sum(s.size for s in [first, *last])


def matmul_params(config: LlamaConfig) -> int:
    """Weights multiplied per token in the blocks (q, k, v, o, gate, up, down), all layers."""
    return config.n_layers * sum(s.size for s in layer_specs(config, 0) if s.role == "matrix")


def weights_nbytes(config: LlamaConfig, weights_dtype: str = "fp32") -> int:
    """Bytes the required weights take in memory when matrices are stored as `weights_dtype`.

    Matrices and the embedding as packed.matrix_nbytes counts them, norms in float32: exactly
    what Model.from_tensors allocates (its `weights_nbytes`), so the memory check before
    loading and `llama-np memory` agree with the engine to the byte.
    """

    def nbytes(spec: TensorSpec) -> int:
        if spec.role in ("matrix", "embedding"):
            return matrix_nbytes(weights_dtype, *spec.shape)
        return 4 * spec.size  # norms (and biases) stay float32

    first, last = end_specs(config)
    per_layer = sum(nbytes(s) for s in layer_specs(config, 0) if s.required)
    return config.n_layers * per_layer + sum(nbytes(s) for s in [first, *last])
