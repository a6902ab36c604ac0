"""The model's weights: what a Llama block holds, and how checkpoint tensors become it.

A checkpoint names its tensors as schema.py does, one matrix per projection, (out, in). The
model multiplies fewer, wider matrices: q, k and v stacked into one `wqkv`, gate and up into
one `w_gate_up` (LAYER_FIELDS says which tensors build which field). `build_weights` checks
every name and shape against the schema, converts (to float32, or kept compressed: packed.py)
and lays each matrix out in memory for the product that will run it; model.py only runs the
forward pass.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from . import kernels
from .config import LlamaConfig
from .dtypes import release_pages, to_float32
from .errors import CheckpointError
from .packed import (
    FP32_KERNEL_MIN,
    Matrix,
    PackedRows,
    PackedTransposed,
    Scratch,
    check_weights_dtype,
    pack,
)
from .schema import tensor_specs

# Loading converts checkpoint tensors this many rows at a time (16 float32 = one cache line of
# each row of a transposed target), in this many threads, one layer each.
CONVERT_ROWS = 16
RELEASE_ROWS = 64 * CONVERT_ROWS  # converted rows whose file pages are dropped at once
LOAD_THREADS = min(4, os.cpu_count() or 1)


@dataclass
class LayerWeights:
    """Weights of one transformer block. Matrices are (in, out), so that activations do x @ W;
    fp32 ones are laid out in memory for the product that runs them (fp32_matrix)."""

    attn_norm: np.ndarray  # (D,)
    wqkv: Matrix  # (D, (H + 2*KVH) * HD)  q, k and v projections side by side: one matmul
    wo: Matrix  # (H*HD, D)
    mlp_norm: np.ndarray  # (D,)
    w_gate_up: Matrix  # (D, 2F)  gate and up projections side by side: one matmul
    w_down: Matrix  # (F, D), in fp32 always a view of (D, F) rows: see build_weights
    bqkv: np.ndarray | None = None  # ((H + 2*KVH) * HD,) optional q/k/v biases (schema.py)
    bo: np.ndarray | None = None  # (D,) optional output-projection bias


# Each LayerWeights field and the checkpoint tensors (schema.py names after "layers.{i}.")
# it is built from: several tensors are stacked into one matrix, multiplied at once.
LAYER_FIELDS: dict[str, tuple[str, ...]] = {
    "attn_norm": ("attention_norm.weight",),
    "wqkv": ("attention.wq.weight", "attention.wk.weight", "attention.wv.weight"),
    "bqkv": ("attention.wq.bias", "attention.wk.bias", "attention.wv.bias"),
    "wo": ("attention.wo.weight",),
    "bo": ("attention.wo.bias",),
    "mlp_norm": ("ffn_norm.weight",),
    "w_gate_up": ("feed_forward.w1.weight", "feed_forward.w3.weight"),
    "w_down": ("feed_forward.w2.weight",),
}


def fp32_matrix(
    n_out: int,
    n_in: int,
    fill: Callable[[np.ndarray], None],
    scratch: Scratch,
    blas_rows: bool = False,
) -> Matrix:
    """A float32 weight of (out, in) checkpoint rows, as the model multiplies it: x @ W (in, out).

    `fill(target)` writes the checkpoint matrix into `target`, an (out, in) array laid out in
    memory for the product that will run it in decode. With compiled kernels active as the
    model loads, and at least packed.FP32_KERNEL_MIN weights: its (out, in) rows, kept as a
    PackedRows of kind "fp32", whose few-row products run one compiled dot product per row
    (faster than OpenBLAS's matrix-vector product at these sizes: decode stories15M 1.2-1.3x,
    stories110M 1.0-1.3x as the machine's load varies, TinyLlama ~1.05x); more rows go to BLAS.
    Otherwise a plain (in, out) array, the layout OpenBLAS's matrix-vector product streams
    fastest (measured from DRAM at D = 288: up to 2.7x faster than dot products along rows of
    length D; ~1.1-1.2x at D = 768-2048; the classifier at V=32000, D=768: 59 vs 35 GB/s), or,
    `blas_rows`, the (in, out) view of (out, in) rows (w_down: see build_weights).
    """
    # size first: a small model never imports numba (kernels.active's first call, ~0.3 s)
    if n_out * n_in >= FP32_KERNEL_MIN and kernels.active() != "numpy":
        rows = np.empty((n_out, n_in), dtype=np.float32)  # (out, in)
        fill(rows)
        return PackedRows("fp32", rows, None, scratch).T
    if blas_rows:
        rows = np.empty((n_out, n_in), dtype=np.float32)  # (out, in)
        fill(rows)
        return rows.T
    w = np.empty((n_in, n_out), dtype=np.float32)  # (in, out)
    fill(w.T)
    return w


@dataclass
class Weights:
    embedding: Matrix  # (V, D)
    layers: list[LayerWeights]
    final_norm: np.ndarray  # (D,)
    classifier: Matrix  # (D, V); `embedding` is its transposed view when tied

    def kinds(self) -> set[str]:
        """The packed kinds of the weight matrices kept for the kernel layer (packed.py: "Q4_K",
        "int8", "fp32" rows, ...); plain float32 arrays have none."""
        matrices = [self.classifier, *(m for lw in self.layers for m in vars(lw).values())]
        rows = [m.packed for m in matrices if isinstance(m, PackedTransposed)]
        return {part.kind for r in rows for part in getattr(r, "parts", [r])}

    def uses_compiled_kernels(self) -> bool:
        """Whether these weights are multiplied with the compiled kernels (kernels/):
        compressed ones, or fp32 ones kept as rows for them (fp32_matrix)."""
        matrices = [self.classifier, *(m for lw in self.layers for m in (lw.wqkv, lw.wo))]
        packed = any(not isinstance(m, np.ndarray) for m in matrices)
        return packed and kernels.active() != "numpy"

    def nbytes(self, tied: bool) -> int:
        """Bytes the weights occupy in memory (a `tied` embedding/classifier counted once)."""
        per_layer = (a for lw in self.layers for a in vars(lw).values() if a is not None)
        arrays = [self.embedding, self.final_norm, *per_layer]
        if not tied:
            arrays.append(self.classifier)
        return sum(a.nbytes for a in arrays)


def build_weights(
    config: LlamaConfig,
    tensors: Mapping[str, np.ndarray],
    weights_dtype: str = "fp32",
    progress: Callable[[int, int], None] | None = None,
) -> Weights:
    """The model's weights, built from checkpoint tensors named as in schema.py ((out, in) shapes).

    Tensors may be float32, float16 or bfloat16 (dtypes.BFLOAT16), e.g. memory-mapped from
    the file, or GGUF block matrices (quants.QuantizedTensor). Checks every name and shape,
    converts to float32, fuses q/k/v and gate/up. `weights_dtype` "bf16", "fp16" or "int8"
    keeps the matrices compressed instead, "stored" keeps each as the file stores it, and
    both widen them piece by piece as they are used (see packed.py); norms stay fp32.
    `progress(tensors_done, n_tensors)`, if given, is called after each tensor is converted.
    """
    check_weights_dtype(weights_dtype)
    if weights_dtype == "stored" and all(
        isinstance(t, np.ndarray) and t.dtype == np.float32 for t in tensors.values()
    ):
        weights_dtype = "fp32"  # stored as float32: the fastest layout
    specs = tensor_specs(config)
    missing = [n for n, spec in specs.items() if spec.required and n not in tensors]
    extra = [n for n in tensors if n not in specs]
    if missing or extra:
        raise CheckpointError(
            "checkpoint tensors do not match the config: "
            + (f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''} " if missing else "")
            + (f"unexpected {extra[:5]}{' ...' if len(extra) > 5 else ''}" if extra else "")
        )
    for name in tensors:
        if tuple(tensors[name].shape) != specs[name].shape:
            raise CheckpointError(
                f"tensor {name} has shape {tuple(tensors[name].shape)}, expected "
                f"{specs[name].shape} from the config"
            )

    done, lock = 0, threading.Lock()

    def report(n_tensors: int) -> None:
        nonlocal done
        with lock:  # layers are converted by several threads
            done += n_tensors
            if progress is not None:
                progress(done, len(tensors))

    def convert(name: str, out: np.ndarray) -> None:
        # tensors[name] -> float32 in `out` (its shape; a transposed view for (in, out)
        # storage), CONVERT_ROWS rows at a time: no float32 temporary of the whole tensor,
        # and the transposed writes fill whole cache lines (3x faster than widening the
        # tensor, then copying it transposed). Then its mapped file pages are dropped, so
        # the checkpoint is never in memory beside its converted copy.
        source, target = tensors[name], np.atleast_2d(out)
        source = source if source.ndim == 2 else np.atleast_2d(source)  # GGUF blocks: 2-D
        for start in range(0, source.shape[0], CONVERT_ROWS):
            block = to_float32(source[start : start + CONVERT_ROWS])  # (rows, in)
            # A corrupt weight otherwise surfaces only later, as NaN logits.
            if not np.isfinite(block).all():
                n_bad = np.count_nonzero(~np.isfinite(to_float32(tensors[name])))
                raise CheckpointError(
                    f"tensor {name} contains {n_bad} NaN/Inf values: the checkpoint is "
                    f"corrupt; re-download or re-export it"
                )
            target[start : start + CONVERT_ROWS] = block
            if start % RELEASE_ROWS == 0:  # now and then, not at the end: a big tensor
                release_pages(source[: start + CONVERT_ROWS])  # is a lot of pages
        release_pages(tensors[name])
        report(1)

    def f32(name: str) -> np.ndarray:
        array = np.empty(tensors[name].shape, dtype=np.float32)  # its own memory, never a
        convert(name, array)  # view of the file, which would keep the mapping resident
        return array

    scratch = Scratch()  # shared by every compressed matrix; unused for fp32

    def fused(*names: str, blas_rows: bool = False) -> Matrix:
        # Stack (out, in) matrices along `out` (q, k, v or gate, up: one matmul instead of
        # several). Compressed formats keep (out, in) rows, which they widen piece by piece.
        if weights_dtype != "fp32":
            packed = pack(weights_dtype, [tensors[n] for n in names], scratch)
            report(len(names))
            return packed.T
        rows = [tensors[n].shape[0] for n in names]

        def fill(stacked: np.ndarray) -> None:  # (out, in)
            for name, start, n in zip(names, np.cumsum([0, *rows]), rows, strict=False):
                convert(name, stacked[start : start + n])

        return fp32_matrix(sum(rows), tensors[names[0]].shape[1], fill, scratch, blas_rows)

    def bias(*names: str) -> np.ndarray | None:
        # Optional in the schema: a checkpoint has all of a group's biases or none.
        present = [n for n in names if n in tensors]
        if not present:
            return None
        if len(present) < len(names):
            raise CheckpointError(
                f"checkpoint has {', '.join(present)} but not "
                f"{', '.join(n for n in names if n not in tensors)}: biases come together"
            )
        return np.concatenate([f32(n) for n in names])  # (sum of outs,)

    def layer(i: int) -> LayerWeights:
        fields = {}
        for field, names in LAYER_FIELDS.items():
            names = tuple(f"layers.{i}.{n}" for n in names)
            role = specs[names[0]].role
            if role == "norm":
                fields[field] = f32(names[0])
            elif role == "bias":
                fields[field] = bias(*names)
            elif field == "w_down":
                # w_down, whose input (F) is wider than its output (D), is kept as (D, F) rows
                # for BLAS too: OpenBLAS's matrix-vector product runs faster through them
                # (measured: stories110M decode 61 -> 72 tok/s, 15M +3%, TinyLlama unchanged;
                # no such gain for wo, and a loss for wqkv/w_gate_up).
                fields[field] = fused(*names, blas_rows=True)
            else:
                fields[field] = fused(*names)
        return LayerWeights(**fields)

    # Layers convert side by side: NumPy releases the GIL while it widens and copies.
    with ThreadPoolExecutor(LOAD_THREADS, thread_name_prefix="llama_np-load") as pool:
        layers = list(pool.map(layer, range(config.n_layers)))
    if weights_dtype == "fp32":
        # The classifier is the largest matrix decode reads. A tied embedding is looked up
        # as its rows (V, D): with the BLAS layout a strided gather of D values per token,
        # microseconds.
        table = "tok_embeddings.weight" if config.tie_embeddings else "output.weight"
        classifier = fused(table)  # (D, V)
        if config.tie_embeddings:  # (V, D) rows: a PackedRows, or the array's transposed view
            embedding = (
                classifier.packed if isinstance(classifier, PackedTransposed) else classifier.T
            )
        else:
            embedding = f32("tok_embeddings.weight")  # (V, D)
    else:
        embedding = pack(weights_dtype, tensors["tok_embeddings.weight"], scratch)
        report(1)
        classifier = embedding.T if config.tie_embeddings else fused("output.weight")
    return Weights(embedding, layers, f32("norm.weight"), classifier)
