"""Models with random weights of any shape, built in memory: for benchmarks and tests.

The shape decides the speed, not the values, so a random model of a known config (see
known_models.py) times like the real one. Weights are generated matrix by matrix directly in the
storage dtype, so an 8B-parameter shape in int8 or bf16 never needs its 32 GB of float32.
"""

from __future__ import annotations

import numpy as np

from .. import arguments
from ..config import LlamaConfig
from ..model import Model
from ..packed import PackedRows, Scratch, check_weights_dtype, int8_group_size, pack
from ..schema import layer_specs, tensor_names
from ..weights import LAYER_FIELDS, LayerWeights, Weights


def random_model(
    config: LlamaConfig, weights_dtype: str = "fp32", seed: int = 0, std: float = 0.02
) -> Model:
    """A Model of `config`'s shape with N(0, std²)-like weights and unit norm weights."""
    arguments.instance(config, "config", LlamaConfig)
    check_weights_dtype(weights_dtype)
    seed = arguments.integer(seed, "seed", 0)
    std = arguments.real(std, "std", 0, open_lo=True)
    rng = np.random.default_rng(seed)
    if weights_dtype == "fp32":  # through the loaders' path, so the layout is the real one
        tensors = {}
        for name, shape in tensor_names(config).items():
            if name.endswith("norm.weight"):
                tensors[name] = np.ones(shape, dtype=np.float32)
            else:
                tensors[name] = rng.standard_normal(shape, dtype=np.float32)
                tensors[name] *= np.float32(std)
        return Model.from_tensors(config, tensors)
    scratch = Scratch()

    def rows(n: int, k: int):
        """A random (n, k) matrix in the storage dtype."""
        if weights_dtype == "int8":
            # Uniform q in -127..127 with one scale: std of the values = std.
            q = rng.integers(-127, 128, size=(n, k), dtype=np.int8)  # (n, k)
            scale = np.float32(std * np.sqrt(3) / 127)
            scales = np.full((n, k // int8_group_size(k), 1), scale, dtype=np.float32)
            return PackedRows("int8", q, scales, scratch)
        w = rng.standard_normal((n, k), dtype=np.float32)  # (n, k)
        w *= np.float32(std)
        return pack(weights_dtype, w, scratch)

    # Each LayerWeights field from the schema's shapes of the tensors it stacks (model.py).
    specs = {s.name.split(".", 2)[2]: s for s in layer_specs(config, 0) if s.required}

    def field(names: tuple[str, ...]):
        shapes = [specs[n].shape for n in names]
        if len(shapes[0]) == 1:  # a norm
            return np.ones(shapes[0], dtype=np.float32)
        return rows(sum(shape[0] for shape in shapes), shapes[0][1]).T  # (in, sum of outs)

    layers = [
        LayerWeights(**{f: field(names) for f, names in LAYER_FIELDS.items() if names[0] in specs})
        for _ in range(config.n_layers)
    ]
    V, D = config.vocab_size, config.dim
    embedding = rows(V, D)  # (V, D)
    classifier = embedding.T if config.tie_embeddings else rows(V, D).T  # (D, V)
    final_norm = np.ones(D, dtype=np.float32)  # (D,)
    return Model(config, Weights(embedding, layers, final_norm, classifier))
