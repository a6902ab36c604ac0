"""profile: per-step FLOPs and bytes against hand counts on a tiny config; the CLI's files."""

import importlib.util
import json

import numpy as np
import pytest

from llama_np.cli import main
from llama_np.config import LlamaConfig
from llama_np.errors import ArgumentError, ContextLengthError
from llama_np.model import Model, tensor_names
from llama_np.tools import machine
from llama_np.tools.machine import MachinePeaks
from llama_np.tools.profile import profile_generation

PEAKS = MachinePeaks(matmul_flops=50e9, memory_bandwidth=5e9, description="test")

# D=8, L=2, H=2, KVH=1 (HD=4), F=16, V=32, untied
TINY = LlamaConfig(dim=8, n_layers=2, n_heads=2, n_kv_heads=1, hidden_dim=16, vocab_size=32,
                   max_seq_len=16)  # fmt: skip


def tiny_model() -> Model:
    rng = np.random.default_rng(0)
    tensors = {
        name: rng.standard_normal(shape, dtype=np.float32)
        for name, shape in tensor_names(TINY).items()
    }
    return Model.from_tensors(TINY, tensors)


def test_flops_and_bytes_by_hand():
    # Per layer, matmul weights: q 8x8 + k 8x4 + v 8x4 + o 8x8 = 192, MLP 3 x 8 x 16 = 384;
    # 2 layers = 1152. Classifier 8 x 32 = 256.
    # FLOPs = 2 x tokens x 1152 + attention 2 layers x 2 (qk, pv) x 2 x H=2 x HD=4 x visible
    #         + classifier 2 x 256 (last position only)
    # prefill of 3 tokens: visible = 1 + 2 + 3 = 6; decode at position p: visible = p + 1
    p = profile_generation(tiny_model(), [1, 2, 3], n_decode=2, peaks=PEAKS)
    assert [s.phase for s in p.steps] == ["prefill", "decode", "decode"]
    assert [(s.start, s.tokens) for s in p.steps] == [(0, 3), (3, 1), (4, 1)]
    assert [s.flops for s in p.steps] == [
        2 * 3 * 1152 + 16 * 6 * 2 * 2 + 512,  # 7808
        2 * 1152 + 16 * 4 * 2 * 2 + 512,  # 3072
        2 * 1152 + 16 * 5 * 2 * 2 + 512,  # 3136
    ]
    # bytes: float32 matmul weights + classifier (1152 + 256) x 4 = 5632, one 32-byte
    # embedding row per token; KV: 2 (K,V) x 2 layers x 1 head x 4 x 4 bytes = 64 per position
    assert [s.weight_bytes for s in p.steps] == [5632 + 3 * 32, 5632 + 32, 5632 + 32]
    assert [s.kv_bytes for s in p.steps] == [3 * 64, 4 * 64, 5 * 64]
    assert p.steps[0].intensity == pytest.approx(7808 / (5728 + 192))
    decode = p.phase("decode")
    assert decode["tokens"] == 2
    assert decode["flops"] == 3072 + 3136
    assert decode["intensity"] == pytest.approx((3072 + 3136) / (2 * 5664 + 9 * 64))
    seconds = p.steps[1].seconds + p.steps[2].seconds
    assert decode["fraction_of_peak_bandwidth"] == pytest.approx(
        (2 * 5664 + 9 * 64) / seconds / 5e9
    )


def test_greedy_tokens_match_full_recompute():
    model = tiny_model()
    prompt = [1, 2, 3]
    p = profile_generation(model, prompt, n_decode=3, peaks=PEAKS)
    for i, token in enumerate(p.generated):
        context = prompt + p.generated[:i]
        logits = model.prefill(context, model.new_cache(len(context)))
        assert token == int(np.argmax(logits))


def test_rejects_too_long_and_zero_steps():
    model = tiny_model()
    with pytest.raises(ContextLengthError, match="context of 16"):
        profile_generation(model, list(range(10)), n_decode=7, peaks=PEAKS)
    with pytest.raises(ArgumentError, match="at least one token"):
        profile_generation(model, [], n_decode=1, peaks=PEAKS)
    with pytest.raises(ArgumentError, match="-n"):
        profile_generation(model, [1], n_decode=0, peaks=PEAKS)


def test_cli_writes_json_and_chart(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(machine, "peaks", lambda: PEAKS)
    out = tmp_path / "prof"
    assert main(["profile", "-p", "The quick brown fox", "-n", "5", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    data = json.loads((out / "profile.json").read_text())
    assert data["model"] == "stories260K"
    assert [ph["phase"] for ph in data["phases"]] == ["prefill", "decode"]
    assert len(data["steps"]) == 6 and len(data["generated_tokens"]) == 5
    assert data["peaks"]["matmul_flops"] == 50e9
    assert "prefill" in printed.out and "decode" in printed.out
    if importlib.util.find_spec("matplotlib"):
        assert (out / "profile.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert not (out / "profile.png").exists()
        assert ".[plot]" in printed.err


def test_cli_without_matplotlib_still_writes_json(tmp_path, capsys, monkeypatch):
    from llama_np.cli import perf as cli_perf

    def no_matplotlib(*args):
        raise ImportError("No module named 'matplotlib'")

    monkeypatch.setattr(machine, "peaks", lambda: PEAKS)
    monkeypatch.setattr(cli_perf, "plot_profile", no_matplotlib)
    assert main(["profile", "-n", "2", "--out", str(tmp_path)]) == 0
    assert "pip install -e '.[plot]'" in capsys.readouterr().err
    assert (tmp_path / "profile.json").exists() and not (tmp_path / "profile.png").exists()


@pytest.mark.parametrize("at_call", [2, 5])
def test_ctrl_c_keeps_the_profile_so_far(tmp_path, capsys, monkeypatch, at_call):
    """Ctrl-C during `profile` (decode call 2: only the warm-up decode and prefill done)
    writes the steps timed so far and exits 130."""
    from llama_np.cli import main
    from llama_np.model import Model
    from llama_np.tools import machine

    decode, calls = Model.decode, []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == at_call:
            raise KeyboardInterrupt
        return decode(self, *args, **kwargs)

    monkeypatch.setattr(Model, "decode", interrupted)
    monkeypatch.setattr(machine, "peaks", lambda: machine.MachinePeaks(1e11, 1e10, "stub"))
    assert main(["profile", "-n", "8", "--out", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    if at_call == 2:  # no decode step timed yet: nothing to report
        assert "interrupted before the first decode step" in err
        assert not (tmp_path / "profile.json").exists()
        return
    assert "interrupted; the profile holds the steps so far" in err
    steps = json.loads((tmp_path / "profile.json").read_text())["steps"]
    assert [s["phase"] for s in steps].count("decode") == at_call - 2
