"""llama.cpp as a same-run peer: GGUF files of the benchmark shapes, timed by its llama-bench.

llama.cpp is not a dependency: point `run.py --llama-cpp DIR` (or $LLAMA_CPP_BIN) at a
directory holding its built `llama-bench`, `llama-batched-bench` and `llama-quantize`, e.g. a
checkout built with

    cmake -B build -DGGML_NATIVE=ON -DLLAMA_CURL=OFF && cmake --build build -j2 \\
        --target llama-bench llama-batched-bench llama-quantize    # -> build/bin

The F32 GGUF of each shape is written here from random weights (the `gguf` package's writer,
with a placeholder vocabulary: llama-bench feeds random token ids), and llama-quantize makes
the Q8_0 and Q4_K_M files from it. Files are kept in a cache directory between runs.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path

from checkpoint_files import random_tensors

from llama_np.checkpoints.export import gguf_name  # the one Meta -> GGUF name table
from llama_np.config import LlamaConfig

QUANTS = ("F32", "Q8_0", "Q4_K_M")


def write_gguf_f32(config: LlamaConfig, path: Path, seed: int = 0) -> Path:
    """An F32 GGUF of random weights (the gguf package, an optional benchmark dependency)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(config.name or path.stem)
    writer.add_context_length(config.max_seq_len)
    writer.add_embedding_length(config.dim)
    writer.add_feed_forward_length(config.hidden_dim)
    writer.add_block_count(config.n_layers)
    writer.add_head_count(config.n_heads)
    writer.add_head_count_kv(config.n_kv_heads)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_layer_norm_rms_eps(config.norm_eps)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    # A placeholder SentencePiece-style vocabulary: control tokens, 256 bytes, then words.
    V = config.vocab_size
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"w{i}" for i in range(V - len(tokens))]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL] * (V - 259)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * V)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    for name, array in random_tensors(config, seed):
        writer.add_tensor(gguf_name(name), array)  # (out, in); gguf stores ggml's reverse
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def gguf_f32(config: LlamaConfig, name: str, cache: Path) -> Path:
    """The F32 GGUF of random weights of shape `name`, written on first use."""
    cache.mkdir(parents=True, exist_ok=True)
    f32 = cache / f"{name}-F32.gguf"
    if not f32.exists():
        write_gguf_f32(config, f32.with_suffix(".part"))
        f32.with_suffix(".part").rename(f32)
    return f32


def gguf_files(config: LlamaConfig, name: str, bin_dir: Path, cache: Path) -> dict[str, Path]:
    """{quant: path} for QUANTS, made on first use (llama-quantize for Q8_0 and Q4_K_M)."""
    f32 = gguf_f32(config, name, cache)
    files = {"F32": f32}
    for quant in QUANTS[1:]:
        path = cache / f"{name}-{quant}.gguf"
        if not path.exists():
            cmd = [str(bin_dir / "llama-quantize"), str(f32), str(path), quant, "2"]
            subprocess.run(cmd, check=True, capture_output=True)
        files[quant] = path
    return files


def bench(bin_dir: Path, model: Path, n_prompt: int, repeats: int) -> dict:
    """llama-bench on 2 threads: prefill tok/s of each repetition after its warm-up run, its
    peak RSS, and the first prefill of a fresh process (a second run: one repetition, no
    warm-up)."""
    cmd = _bench_command(bin_dir, model)
    out, peak = _measured([*cmd, "-p", str(n_prompt), "-n", "0", "-r", str(repeats)])
    rates = [n_prompt / (ns / 1e9) for ns in json.loads(out)[0]["samples_ns"]]
    result: dict = {"peak_rss": peak, "prefill_rates": rates}
    out, _ = _measured([*cmd, "-p", str(n_prompt), "-n", "0", "-r", "1", "--no-warmup"])
    result["fresh_prefill_seconds"] = json.loads(out)[0]["samples_ns"][0] / 1e9
    return result


def decode(bin_dir: Path, model: Path, n_gen: int) -> float:
    """One llama-bench decode run of n_gen tokens on 2 threads, after its warm-up: tok/s."""
    out, _ = _measured([*_bench_command(bin_dir, model), "-p", "0", "-n", str(n_gen), "-r", "1"])
    return n_gen / (json.loads(out)[0]["samples_ns"][0] / 1e9)


def prefill(bin_dir: Path, model: Path, n_prompt: int) -> float:
    """One llama-bench prefill of n_prompt tokens on 2 threads, after its warm-up: tok/s."""
    cmd = [*_bench_command(bin_dir, model), "-p", str(n_prompt), "-n", "0", "-r", "1"]
    out, _ = _measured(cmd)
    return n_prompt / (json.loads(out)[0]["samples_ns"][0] / 1e9)


def batched(bin_dir: Path, model: Path, n_prompt: int, n_gen: int, batch: int) -> float:
    """llama-batched-bench on 2 threads: `batch` sequences of a shared n_prompt-token prompt
    (-pps), then n_gen tokens each, all sequences in one batch per step; -> the generation's
    tokens/s, all sequences together (S_TG)."""
    cmd = [str(bin_dir / "llama-batched-bench"), "-m", str(model), "-t", "2", "-pps"]
    cmd += ["-c", str(n_prompt + batch * (n_gen + 1)), "-npp", str(n_prompt)]
    cmd += ["-ntg", str(n_gen), "-npl", str(batch), "--output-format", "jsonl"]
    out, _ = _measured(cmd)
    (line,) = [x for x in out.splitlines() if x.startswith("{")]
    return float(json.loads(line)["speed_tg"])


def _bench_command(bin_dir: Path, model: Path) -> list[str]:
    """llama-bench on one GGUF file, 2 threads, JSON output (the tests and -p/-n follow)."""
    return [str(bin_dir / "llama-bench"), "-m", str(model), "-t", "2", "-o", "json"]


def _measured(cmd: list[str]) -> tuple[str, int]:
    """Run a command; -> (stdout, its peak RSS in bytes).

    The peak is the child's VmHWM, read from /proc while it runs: wait4's ru_maxrss would
    report this Python process's size instead, which a forked child inherits through exec.
    """
    with tempfile.TemporaryFile("w+") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.DEVNULL, text=True)
        status, peak = Path(f"/proc/{p.pid}/status"), 0
        while p.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]) * 1024)
            except (FileNotFoundError, ProcessLookupError):  # it has just exited
                break
            time.sleep(0.02)
        if p.wait():
            raise RuntimeError(f"{' '.join(cmd)} exited with {p.returncode}")
        out.seek(0)
        return out.read(), peak
