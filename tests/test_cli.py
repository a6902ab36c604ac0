"""The command line, end to end on the bundled model."""

import subprocess
import sys

from test_stories260k import REFERENCE

from llama_np.cli import main


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "llama_np", *args], capture_output=True, text=True, timeout=120
    )


def test_generate_greedy_prints_the_published_story_and_timings():
    result = run("generate", "-n", "60", "--temperature", "0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(REFERENCE[:150])
    assert "prefill" in result.stderr and "decode" in result.stderr
    assert "1 tokens" in result.stderr  # prefill: BOS only
    assert "59 tokens" in result.stderr  # decode: 60 generated, the last needs no forward pass


def test_generate_with_prompt_and_seed_is_reproducible(capsys):
    args = ["generate", "-p", "Once upon a time", "-n", "20", "-s", "3", "--top-k", "10"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == first
    assert first.startswith("Once upon a time")


def test_info_prints_sizes(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "260,032" in out  # parameters of stories260K
    assert "1,280 bytes" in out  # KV cache per token: 2 × 5 layers × 4 heads × 8 × 4 bytes
    assert "655,360 bytes" in out  # × 512 positions


def test_bad_input_is_one_line_and_exit_1():
    result = run("generate", "-m", "/nonexistent/model.bin")
    assert result.returncode == 1
    assert result.stderr.strip().startswith("llama-np: error:")
    assert "no such file" in result.stderr and "Traceback" not in result.stderr
    result = run("generate", "--temperature", "-1")
    assert result.returncode == 1 and "temperature must be >= 0" in result.stderr
