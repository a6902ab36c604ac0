"""No float64 array may appear in the forward pass: one turns every matmul into a float64
conversion of the weights. A tracer inspects every local array of every llama_np frame, line
by line, while prefill and decode run."""

import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import llama_np
from llama_np.tools.known_models import known_config
from llama_np.tools.random_model import random_model

PACKAGE = str(Path(llama_np.__file__).parent)


def float64_locals(run) -> list[str]:
    """Names of float64 arrays seen in llama_np frames while `run()` executes."""
    found = []

    def tracer(frame, event, arg):
        if not frame.f_code.co_filename.startswith(PACKAGE):
            return None
        for name, value in frame.f_locals.items():
            if isinstance(value, np.ndarray) and value.dtype == np.float64:
                found.append(f"{frame.f_code.co_name}:{name}")
        if event == "return" and isinstance(arg, np.ndarray) and arg.dtype == np.float64:
            found.append(f"{frame.f_code.co_name}:<return>")
        return tracer

    sys.settrace(tracer)
    threading.settrace(tracer)  # compressed weights widen in worker threads
    try:
        run()
    finally:
        sys.settrace(None)
        threading.settrace(None)
    return found


def test_tracer_catches_a_float64_array(monkeypatch):
    model = llama_np.load()
    monkeypatch.setattr(model.weights, "final_norm", model.weights.final_norm.astype(np.float64))
    assert float64_locals(lambda: model.prefill([1, 2, 3], model.new_cache(8)))


@pytest.mark.parametrize("weights_dtype", ["fp32", "bf16", "int8"])
@pytest.mark.parametrize("kv_dtype", [np.float32, np.float16])
def test_forward_pass_has_no_float64(weights_dtype, kv_dtype):
    config = known_config("stories260K").replace(n_kv_heads=2)
    model = random_model(config, weights_dtype, seed=0)

    def run():
        cache = model.new_cache(16, dtype=kv_dtype)
        model.prefill([1, 5, 9, 3], cache, all_logits=True)
        model.decode(7, cache)
        batch = model.new_cache(16, batch_size=2, dtype=kv_dtype)
        model.prefill([1, 5], batch, seq=0)
        model.prefill([1, 5, 9], batch, seq=1)
        model.decode_batch([4, 6], batch)

    # rms_norm sums each row's squares in float64 (x² overflows float32 past ~1.8e19): one
    # number per row, never an activation or a weight.
    assert [name for name in float64_locals(run) if name != "rms_norm:ms"] == []
