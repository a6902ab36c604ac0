"""Smoke test of benchmarks/run.py on stories260K: the harness runs and writes its report.

Checks structure and that every figure is a positive number, never speed.
"""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from llama_np import kernels
from llama_np.tools import machine

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def small_peaks(monkeypatch):
    """The harness measures the machine's peaks first: a 2048³ sgemm and a 512 MiB sgemv,
    seconds of every core. The same code on small arrays gives figures just as usable here,
    where only their presence is checked."""
    sgemm, sgemv = machine._sgemm_flops, machine._sgemv_bandwidth
    monkeypatch.setattr(machine, "_sgemm_flops", lambda repeats: sgemm(repeats, n=256))
    monkeypatch.setattr(machine, "_sgemv_bandwidth", lambda repeats: sgemv(repeats, 4096, 512))


def load_harness():
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "benchmarks" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_harness_writes_json_and_markdown(tmp_path):
    harness = load_harness()
    args = ["--models", "stories260K", "--quick", "--repeats", "1", "--no-hf"]
    args += ["--batch-model", "stories260K", "--batch-sizes", "1,2", "--prompt-lengths", "16,32"]
    args += ["--load-models", "stories260K", "--ttft-model", "stories260K"]
    args += ["--kernel-model", "stories260K", "--ttft-files", "stories260K:F32"]
    assert harness.main([*args, "--files", str(tmp_path), "--out", str(tmp_path)]) == 0

    results = json.loads((tmp_path / "latest.json").read_text())
    assert results["machine"]["sgemm_gflops"] > 0 and results["machine"]["bandwidth_gbs"] > 0
    (entry,) = results["models"]
    assert entry["model"] == "stories260K"
    figures = [entry["decode"], *entry["prefill"].values()]
    assert sorted(entry["prefill"]) == ["16", "32"]
    for s in figures:
        assert 0 < s["min"] <= s["median"] <= s["max"]
        assert s["bound"] > 0 and s["fraction"] > 0
    assert [b["batch"] for b in results["batch"]] == [1, 2]
    assert all(b["median"] > 0 for b in results["batch"])
    rows = {(k["weights_dtype"], k["kernels"]): k for k in results["kernel_layer"]}
    assert ("fp32", "numpy") in rows and ("int8", "numpy") in rows and len(rows) >= 4
    if kernels.numba_available():  # fp32 once per layout; int8 kernels only where they differ
        assert ("fp32", "numba") in rows and ("bf16", "numba") in rows
        assert ("int8", "int8") in rows or not kernels.int8_available()
        assert ("fp32", "int8") not in rows and ("bf16", "int8") not in rows
    assert all(k["median"] > 0 and k["vs_fp32"] > 0 for k in rows.values())
    assert all(k["vs_fp32"] == 1 for (dtype, _), k in rows.items() if dtype == "fp32")

    (load,) = results["load"]
    for run in load["runs"]:  # fp32 and int8, each loaded from the bf16 file it wrote
        assert run["load_seconds"] > 0 and run["weights_bytes"] > 0
        assert run["peak_rss"] >= run["load_peak_rss"] > run["interpreter_rss"] > 0
    assert [run["weights_dtype"] for run in load["runs"]] == ["fp32", "int8"]
    ttft = results["ttft"]
    assert ttft["context"] == 512 and ttft["fresh"]["min"] > 0 and ttft["warm"]["min"] > 0
    assert ttft["processes"] == 1 and ttft["ratio"] > 0  # --repeats 1: one process
    (from_file,) = results["ttft_files"]  # the same probe on a GGUF file it wrote
    assert (from_file["model"], from_file["quant"], from_file["context"]) == (
        "stories260K",
        "F32",
        512,
    )
    assert from_file["fresh"]["min"] > 0 and from_file["warm"]["min"] > 0

    markdown = (tmp_path / "latest.md").read_text()
    assert "| stories260K → int8 |" in markdown
    assert "| first prefill of a fresh process |" in markdown
    assert "| stories260K F32 (256 tokens, 512 positions, 1 process) |" in markdown
    assert "| stories260K | decode |" in markdown
    assert "| stories260K | prefill 32 |" in markdown
    assert "| batch 2 |" in markdown


FAKE_LLAMA_BENCH = """#!{python}
# Stands in for llama.cpp's llama-bench: its JSON output, one test, made-up timings.
import json, sys
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
n_prompt, n_gen, reps = int(args["-p"]), int(args["-n"]), int(args.get("-r", 5))
samples = [2e6 * (n_prompt + n_gen)] * reps
print(json.dumps([{{"n_prompt": n_prompt, "n_gen": n_gen, "samples_ns": samples}}]))
"""
FAKE_LLAMA_QUANTIZE = """#!{python}
# Stands in for llama-quantize: copies the F32 file (the harness only needs a GGUF to time).
import shutil, sys
shutil.copyfile(sys.argv[1], sys.argv[2])
"""


@pytest.mark.slow
def test_harness_times_llama_cpp_and_llama_np_on_the_same_gguf(tmp_path):
    """The llama.cpp section with stand-in binaries: interleaved rounds, a per-round ratio."""
    pytest.importorskip("gguf")
    import sys

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("llama-bench", FAKE_LLAMA_BENCH), ("llama-quantize", FAKE_LLAMA_QUANTIZE)):
        (bin_dir / name).write_text(text.format(python=sys.executable))
        (bin_dir / name).chmod(0o755)
    harness = load_harness()
    args = ["--models", "", "--batch-model", "", "--no-memory", "--ttft-model", ""]
    args += ["--kernel-model", "", "--big", "", "--no-hf", "--quick", "--repeats", "2"]
    args += ["--llama-cpp", str(bin_dir), "--llama-cpp-models", "stories260K"]
    # prefill of the same files in both engines; batched decode and contention (a real
    # llama-batched-bench, a busy core) are left out: TinyLlama's files alone are 13 GB
    args += ["--prefill-models", "stories260K", "--batched-models", "", "--contention", ""]
    assert harness.main([*args, "--files", str(tmp_path), "--out", str(tmp_path)]) == 0

    results = json.loads((tmp_path / "latest.json").read_text())
    prefill = results["llama_cpp_prefill"]
    assert [(e["quant"], e["n_prompt"]) for e in prefill] == [
        ("F32", 256), ("Q8_0", 256), ("Q4_K_M", 256)
    ]  # fmt: skip
    for e in prefill:
        assert e["llama_cpp"]["median"] == pytest.approx(256 / (2e-3 * 256))  # as faked
        assert e["llama_np"]["min"] > 0 and e["ratio"] > 0 and e["vs_fp32"] > 0
    assert prefill[0]["vs_fp32"] == 1
    entries = results["llama_cpp"]
    assert [e["quant"] for e in entries] == ["F32", "Q8_0", "Q4_K_M"]
    for e in entries:
        assert e["decode"]["median"] == pytest.approx(500.0)  # 2 ms per token, as faked
        assert e["prefill"]["median"] == pytest.approx(500.0)
        assert e["llama_np_decode"]["min"] > 0 and e["ratio"] > 0
    markdown = (tmp_path / "latest.md").read_text()
    assert "| stories260K Q4_K_M | 500.0 |" in markdown


@pytest.mark.parametrize(("kind", "worst"), [("Q4_K", 0.5 / 15), ("Q6_K", 0.5 / 31)])
def test_kquant_quantizers_round_trip_through_gguf(kind, worst):
    """benchmarks/kquants.py (accuracy.py's Q4_K_M files): gguf's dequantizer gives back each
    weight within about half a quantization step of its block's range."""
    import gguf
    from gguf.quants import dequantize

    spec = importlib.util.spec_from_file_location("kquants", ROOT / "benchmarks" / "kquants.py")
    kquants = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kquants)
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((6, 512)) * 0.02).astype(np.float32)
    w[0, :256] = 0  # a block of zeros
    w[1, 7] = 0.5  # an outlier
    raw = {"Q4_K": kquants.quantize_q4_k, "Q6_K": kquants.quantize_q6_k}[kind](w)
    back = dequantize(raw, gguf.GGMLQuantizationType[kind]).reshape(w.shape)
    assert np.all(back[0, :256] == 0)
    blocks = np.abs(w).reshape(6, 2, 256).max(axis=2, keepdims=True)  # (6, 2, 1) per block
    # the step: the range / levels, plus the 6- or 8-bit rounding of the scales themselves
    error = np.abs(back - w).reshape(6, 2, 256)
    assert np.all(error <= 2 * blocks * (worst * 1.6) + 1e-6)
    assert np.sqrt(np.mean((back - w) ** 2)) < 0.1 * np.sqrt(np.mean(w**2))
