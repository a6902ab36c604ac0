"""Bad input on the command line: one line `llama-np: error: ...` on stderr, exit code 1 (2 for
argparse usage errors), no traceback unless --debug; Ctrl-C stops generation with code 130."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from bad_files import TOKENIZER_512, llama2c_bytes

from llama_np import LlamaConfig
from llama_np.cli import main
from llama_np.schema import tensor_names

REPO = TOKENIZER_512.parents[2]


def endless_model(directory, max_seq_len: int):
    """A random llama2.c model that never samples an end token (ids 1 and 2), in `directory`.

    The blocks add nothing (wo, w2 = 0), every embedding has a large feature 0, and the
    classifier gives ids 1 and 2 a logit of about -100 from that feature.
    """
    config = LlamaConfig(
        dim=8, n_layers=1, n_heads=2, n_kv_heads=2, hidden_dim=16, vocab_size=512,
        max_seq_len=max_seq_len,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    tensors = {n: np.zeros(s, np.float32) for n, s in tensor_names(config).items()}
    tensors["tok_embeddings.weight"] = rng.standard_normal((512, 8), dtype=np.float32) * 0.1
    tensors["tok_embeddings.weight"][:, 0] = 1.0
    tensors["output.weight"] = rng.standard_normal((512, 8), dtype=np.float32)
    tensors["output.weight"][[1, 2]] = [-40.0, 0, 0, 0, 0, 0, 0, 0]
    for name in tensors:
        if name.endswith("norm.weight"):
            tensors[name][:] = 1.0
    directory.mkdir(exist_ok=True)
    (directory / "model.bin").write_bytes(llama2c_bytes(config, tensors, version=0))
    (directory / "tok512.bin").write_bytes(TOKENIZER_512.read_bytes())
    return directory


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(code: int, err: str, *pieces: str) -> None:
    assert code == 1
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llama-np: error: "), err
    for piece in pieces:
        assert piece in lines[0], (piece, lines[0])


def test_missing_model(capsys, tmp_path):
    for command in ("generate", "info"):
        code, _, err = run_cli(capsys, command, "-m", str(tmp_path / "nope.bin"))
        assert_one_error_line(code, err, "nope.bin", "no such file or directory")


@pytest.mark.parametrize(
    "name, content, pieces",
    [
        ("model.gguf", b"GGUF", ["GGUF", "too short"]),
        ("model.txt", b"hi", ["unknown checkpoint format '.txt'"]),
        ("model.bin", b"GGUF\x02\0\0\0" + b"\xff" * 40, ["GGUF", "truncated or corrupt"]),
        ("model.bin", bytes(5000), ["not a valid llama2.c checkpoint header", "dim must be"]),
        ("model.bin", b"\xff" * 5000, ["dim must be a positive integer"]),
    ],
    ids=["gguf-suffix", "txt", "gguf-magic", "zeros", "ones"],
)
def test_bad_model_file(capsys, tmp_path, name, content, pieces):
    (tmp_path / name).write_bytes(content)
    for command in ("generate", "info"):
        code, _, err = run_cli(capsys, command, "-m", str(tmp_path / name))
        assert_one_error_line(code, err, name, *pieces)


def test_truncated_model(capsys, tmp_path):
    data = (REPO / "weights" / "stories260K" / "stories260K.bin").read_bytes()
    (tmp_path / "model.bin").write_bytes(data[: len(data) // 2 + 3])
    code, _, err = run_cli(capsys, "info", "-m", str(tmp_path / "model.bin"))
    assert_one_error_line(code, err, "model.bin", "truncated", "re-download")


def test_directory_without_checkpoint(capsys, tmp_path):
    code, _, err = run_cli(capsys, "info", "-m", str(tmp_path))
    assert_one_error_line(code, err, str(tmp_path), "not a checkpoint directory")


def test_directory_with_several_checkpoints(capsys, tmp_path):
    for name in ("a.gguf", "b.gguf"):
        (tmp_path / name).write_bytes(b"GGUF")
    code, _, err = run_cli(capsys, "info", "-m", str(tmp_path))
    assert_one_error_line(code, err, "files: a.gguf, b.gguf", "the path of one of them")


def test_checkpoint_without_tokenizer(capsys, tmp_path):
    model = tmp_path / "model.bin"
    model.write_bytes((REPO / "weights" / "stories260K" / "stories260K.bin").read_bytes())
    for command in ("generate", "chat"):
        code, _, err = run_cli(capsys, command, "-m", str(model), "-n", "3")
        assert_one_error_line(code, err, "no tokenizer beside the checkpoint", str(tmp_path))


def test_broken_tokenizer(capsys, tmp_path):
    (tmp_path / "model.bin").write_bytes(
        (REPO / "weights" / "stories260K" / "stories260K.bin").read_bytes()
    )
    (tmp_path / "tok512.bin").write_bytes(TOKENIZER_512.read_bytes()[:3000])
    code, _, err = run_cli(capsys, "generate", "-m", str(tmp_path), "-n", "3")
    assert_one_error_line(code, err, "tok512.bin")


@pytest.mark.parametrize(
    "args, pieces",
    [
        (["--temp", "-1"], ["temperature must be >= 0", "-1.0"]),
        (["--temp", "nan"], ["temperature must be >= 0", "nan"]),
        (["--top-p", "0"], ["top_p must be in (0, 1]", "0.0"]),
        (["--top-p", "1.5"], ["top_p must be in (0, 1]", "1.5"]),
        (["--top-k", "-1"], ["top_k must be an integer >= 0", "-1"]),
        (["--min-p", "2"], ["min_p must be in [0, 1]", "2.0"]),
        (["--repeat-penalty", "0"], ["repetition_penalty must be > 0"]),
        (["-n", "-5"], ["-n/--n-predict must be >= 0", "-5"]),
    ],
)
def test_invalid_sampling_values_are_refused_before_loading(capsys, tmp_path, args, pieces):
    # The model path does not exist: the argument error proves nothing was loaded first.
    code, _, err = run_cli(capsys, "generate", "-m", str(tmp_path / "nope.bin"), *args)
    assert_one_error_line(code, err, *pieces)


def test_prompt_longer_than_context(capsys):
    code, _, err = run_cli(capsys, "generate", "-p", "the cat sat " * 300, "-n", "5")
    assert_one_error_line(code, err, "prompt is", "context of 512", "--truncate-prompt")


def test_truncate_prompt_flag(capsys):
    code, _, err = run_cli(
        capsys, "generate", "-p", "the cat sat " * 300, "-n", "5", "--truncate-prompt", "-s", "1"
    )
    assert code == 0 and "Traceback" not in err
    assert "llama-np: prompt truncated: dropped its first" in err
    assert "llama-np: prefill    507 tokens" in err  # 512 - 5 new


def test_context_full_is_reported(capsys, tmp_path):
    model = endless_model(tmp_path / "m", max_seq_len=16)
    code, _, err = run_cli(capsys, "generate", "-m", str(model), "-p", "Hi", "-n", "100")
    assert code == 0
    assert "stopped: context_full" in err
    assert "llama-np: stopped: context full (16 tokens: 3 prompt + 13 generated)" in err


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", "--top-k", "many"])
    assert e.value.code == 2
    assert "invalid int value: 'many'" in capsys.readouterr().err


def _cli(*argv: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "llama_np", *argv],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_debug_shows_the_traceback(tmp_path):
    missing = str(tmp_path / "nope.bin")
    plain = _cli("info", "-m", missing)
    _, err = plain.communicate(timeout=60)
    assert plain.returncode == 1 and "Traceback" not in err
    assert err.strip().splitlines() == [
        f"llama-np: error: {missing}: no such file or directory; pass a checkpoint file or a "
        f"directory holding one"
    ]
    debug = _cli("--debug", "info", "-m", missing)
    _, err = debug.communicate(timeout=60)
    assert debug.returncode == 1
    assert "Traceback" in err and "CheckpointError" in err


def test_ctrl_c_stops_generation_cleanly(tmp_path):
    model = endless_model(tmp_path / "m", max_seq_len=60_000)
    proc = _cli(
        "generate", "-m", str(model), "-p", "Hi", "-n", "100000", "--temp", "1", "--top-k", "0",
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        first = proc.stdout.read(10)  # output has started: we are in the decode loop
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert first.startswith("Hi")
    assert proc.returncode == 130
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "llama-np: prefill      3 tokens" in err  # BOS, " H", "i"
    assert "llama-np: decode" in err and "stopped: interrupted" in err
    decoded = int(err.split("llama-np: decode")[1].split("tokens")[0])
    assert 0 < decoded < 50_000  # stopped early, and the timing lines count what was done


# Sends itself SIGINT from inside LLVM's callback into Python while numba compiles a function:
# ctypes drops an exception raised there, so Python's own handler loses that Ctrl-C.
CTRL_C_IN_A_COMPILE = """
import os, signal, sys, time
import numba
from numba.core.codegen import JITCodeLibrary
from llama_np.cli.main import ctrl_c
if sys.argv[1] == "ours":
    signal.signal(signal.SIGINT, ctrl_c)
hook = JITCodeLibrary._object_compiled_hook.__func__
def interrupted_hook(cls, ll_module, buf):
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.1)  # the handler runs here, inside the callback
    return hook(cls, ll_module, buf)
JITCodeLibrary._object_compiled_hook = classmethod(interrupted_hook)
try:
    numba.njit(lambda x: x + 1)(1)
    time.sleep(2)
    print("lost")
except KeyboardInterrupt:
    print("interrupted")
"""


@pytest.mark.parametrize("handler, outcome", [("ours", "interrupted"), ("python's", "lost")])
def test_ctrl_c_during_a_kernel_compile_is_not_lost(handler, outcome):
    pytest.importorskip("numba")
    result = subprocess.run(
        [sys.executable, "-c", CTRL_C_IN_A_COMPILE, handler],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert result.stdout.strip() == outcome, result.stderr  # "python's": the loss is real


def test_an_unknown_argument_is_refused_by_its_command(capsys):
    """With the command's usage line (it was the top level's, which lists no options)."""
    with pytest.raises(SystemExit) as caught:
        main(["info", "--bogus"])
    err = capsys.readouterr().err
    assert caught.value.code == 2
    assert err.startswith("usage: llama-np info ")
    assert "llama-np info: error: unrecognized arguments: --bogus" in err


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full on this system")
def test_a_full_disk_on_stdout_is_one_error_line():
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [sys.executable, "-m", "llama_np", "info"], stdout=full, stderr=subprocess.PIPE,
            text=True, timeout=120, cwd=REPO,
        )  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert (
        proc.stderr.strip() == "llama-np: error: cannot write the output: No space left on device"
    )
