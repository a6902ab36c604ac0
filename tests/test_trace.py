"""`llama-np trace`: the arrays it writes, its pictures, and its life without matplotlib."""

import sys

import numpy as np
import pytest
from util import closed_after_first_line

import llama_np
from llama_np.cli import main
from llama_np.errors import ArgumentError
from llama_np.tools.trace import parse_indices, token_labels, trace_attention

PROMPT = "Once upon a time"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("all", [0, 1, 2, 3, 4]),
        (None, [0, 1, 2, 3, 4]),
        ("0,2", [0, 2]),
        ("1-3", [1, 2, 3]),
        ("4,0-1", [0, 1, 4]),
    ],
)
def test_parse_indices(text, expected):
    assert parse_indices(text, 5, "--layers") == expected


@pytest.mark.parametrize("text", ["5", "x", "1-", "-1", "2-9", ""])
def test_parse_indices_rejects(text):
    with pytest.raises(ArgumentError, match="--heads"):
        parse_indices(text, 5, "--heads")


def test_trace_gives_every_generated_token_a_row():
    model = llama_np.load()
    trace = trace_attention(model, PROMPT, 6)
    text = llama_np.generate_text(model, PROMPT, 6, temperature=0)
    n_prompt = len(model.tokenizer.encode(PROMPT))
    assert trace.n_prompt == n_prompt and len(trace.tokens) == n_prompt + 6
    assert "".join(trace.pieces[n_prompt:]) == text
    assert trace.probs.shape == (5, 8, n_prompt + 6, n_prompt + 6)
    assert token_labels(trace)[:3] == ["<s> 0", "·Once 1", "·upon 2"]


def test_trace_cli_writes_npz_and_pngs(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "trace"
    argv = ["trace", "-p", PROMPT, "-n", "4", "--layers", "0,3", "--heads", "1-2"]
    assert main([*argv, "--out", str(out)]) == 0
    with np.load(out / "attention.npz") as z:
        N = int(z["n_prompt"]) + 4
        assert z["probs"].shape == (2, 2, N, N)
        assert list(z["layers"]) == [0, 3] and list(z["heads"]) == [1, 2]
        assert len(z["tokens"]) == len(z["pieces"]) == N
        # the saved heads are heads 1 and 2 of the full recording
        full = trace_attention(llama_np.load(), PROMPT, 4, layers=[0, 3]).probs
        assert np.array_equal(z["probs"], full[:, [1, 2]])
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["layer0.png", "layer3.png"]  # one overview per layer, its heads in a grid
    assert all((out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_trace_cli_per_head_files_on_request(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    argv = ["trace", "-p", PROMPT, "-n", "2", "--layers", "1", "--heads", "0,3", "--per-head"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["layer1_head0.png", "layer1_head3.png"]


def test_trace_needs_somewhere_to_write(capsys):
    assert main(["trace", "-p", PROMPT]) == 1
    assert "--out DIR" in capsys.readouterr().err


def test_trace_cli_without_matplotlib_still_writes_arrays(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    assert main(["trace", "-p", PROMPT, "-n", "2", "--out", str(tmp_path)]) == 0
    assert "pip install -e '.[plot]'" in capsys.readouterr().err
    assert (tmp_path / "attention.npz").exists()
    assert not list(tmp_path.glob("*.png"))


def test_trace_cli_bad_layers(tmp_path, capsys):
    assert main(["trace", "-p", PROMPT, "--layers", "7", "--out", str(tmp_path)]) == 1
    assert "--layers '7': indices must be in 0..4" in capsys.readouterr().err


def test_ctrl_c_keeps_the_trace_so_far(tmp_path, capsys, monkeypatch):
    """Ctrl-C during `trace` saves the attention of the tokens that ran and exits 130."""
    from llama_np.model import Model

    decode, calls = Model.decode, []

    def interrupted_at_third(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return decode(self, *args, **kwargs)

    monkeypatch.setattr(Model, "decode", interrupted_at_third)
    assert main(["trace", "-p", PROMPT, "-n", "10", "--out", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    assert "interrupted; attention.npz holds the tokens so far" in err
    saved = np.load(tmp_path / "attention.npz")
    n = len(saved["tokens"])
    assert saved["probs"].shape[2] == n and n < int(saved["n_prompt"]) + 10
    assert not list(tmp_path.glob("*.png"))


def test_trace_says_which_tokens_were_prompt_and_which_generated(tmp_path, capsys):
    """The summary line counts the prompt apart from the generated tokens, text included."""
    model = llama_np.load()
    n_prompt = len(model.tokenizer.encode(PROMPT))
    generated = llama_np.generate_text(model, PROMPT, 5, temperature=0)
    assert main(["trace", "-p", PROMPT, "-n", "5", "--out", str(tmp_path)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == (
        f"prompt: {n_prompt} tokens (BOS included), ' {PROMPT}'; generated: 5 tokens, {generated!r}"
    )


def test_trace_writes_every_file_when_stdout_closes(tmp_path):
    pytest.importorskip("matplotlib")
    status, first, err = closed_after_first_line(
        ["trace", "-p", PROMPT, "-n", "3", "--layers", "0-2", "--out", str(tmp_path)]
    )
    assert status == 0, err
    assert first.startswith("prompt: ") and "Traceback" not in err
    assert (tmp_path / "attention.npz").exists()
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [f"layer{i}.png" for i in range(3)]
