"""The memory and roofline calculator against values computed by hand from published configs."""

import json
import re
from pathlib import Path

import pytest

import llama_np
from llama_np.cli import main
from llama_np.errors import ArgumentError, CheckpointError, ConfigError
from llama_np.tools import machine
from llama_np.tools.hardware import PRESETS, custom_hardware, get_hardware
from llama_np.tools.known_models import known_config
from llama_np.tools.machine import MachinePeaks
from llama_np.tools.memory import estimate, load_config, memory_report, weight_bytes

GIB = 2**30


def test_worked_example_llama31_8b_at_128k():
    r = memory_report(known_config("llama-3.1-8b"), context=128000, kv_dtype="bf16")
    assert r.kv_values == 2 * 32 * 128000 * 8 * 128 == 8_388_608_000
    assert r.kv_bytes == 16_777_216_000
    assert r.kv_bytes / GIB == 15.625
    assert r.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2 == 131_072
    assert r.n_params == 8_030_261_248  # Meta's published count
    norms = 65 * 4096  # (2L + 1) x D, kept in float32 by llama_np
    assert r.weight_bytes == 2 * (8_030_261_248 - norms) + 4 * norms
    assert r.total_bytes == r.weight_bytes + 16_777_216_000
    # multi-head attention would keep 32 K/V heads instead of 8: 4x the cache
    assert r.mha_kv_bytes == 4 * 16_777_216_000
    assert r.gqa_saved_bytes == 3 * 16_777_216_000


@pytest.mark.parametrize(
    "name, context, n_params, kv_per_token_fp16, mha_factor",
    [
        # Llama 2 7B: multi-head, 32 K/V heads of 128
        ("llama-2-7b", 4096, 6_738_415_616, 2 * 32 * 32 * 128 * 2, 1),
        # Llama 2 70B: 80 layers, 8 K/V heads for 64 query heads
        ("llama-2-70b", 4096, 68_976_648_192, 2 * 80 * 8 * 128 * 2, 8),
        # TinyLlama 1.1B: 22 layers, 4 K/V heads of 64 for 32 query heads
        ("tinyllama-1.1b", 2048, 1_100_048_384, 2 * 22 * 4 * 64 * 2, 8),
        # stories260K: 5 layers, 4 K/V heads of 8 for 8 query heads, tied embeddings
        ("stories260K", 512, 260_032, 2 * 5 * 4 * 8 * 2, 2),
    ],
)
def test_models_mha_and_gqa(name, context, n_params, kv_per_token_fp16, mha_factor):
    r = memory_report(known_config(name), context=context, kv_dtype="fp16")
    assert r.n_params == n_params
    assert r.kv_bytes_per_token == kv_per_token_fp16
    assert r.kv_bytes == kv_per_token_fp16 * context
    assert r.mha_kv_bytes == mha_factor * r.kv_bytes
    assert r.gqa_saved_bytes == (mha_factor - 1) * r.kv_bytes
    r32 = memory_report(known_config(name), context=context, batch=3, kv_dtype="fp32")
    assert r32.kv_bytes == 2 * kv_per_token_fp16 * context * 3


def test_llama2_7b_mha_vs_70b_gqa():
    # 70B has 10x the parameters of 7B but a smaller KV cache per token (8 K/V heads not 32)
    small = memory_report(known_config("llama-2-7b"), 4096)
    big = memory_report(known_config("llama-2-70b"), 4096)
    assert small.kv_bytes == 2 * GIB  # 524,288 bytes x 4096
    assert big.kv_bytes == 1_342_177_280  # 327,680 bytes x 4096 = 1.25 GiB
    assert small.gqa_saved_bytes == 0


@pytest.mark.parametrize(
    "name, dtype, expected",
    [
        ("stories260K", "fp32", 4 * 260_032),
        ("stories260K", "bf16", 2 * 260_032 + 2 * 11 * 64),  # norms in float32
        ("stories260K", "fp16", 2 * 260_032 + 2 * 11 * 64),
        ("tinyllama-1.1b", "fp32", 4 * 1_100_048_384),
        ("tinyllama-1.1b", "bf16", 2 * 1_100_048_384 + 2 * 92_160),
        # int8: 32 int8 weights + one float32 scale = 36 bytes per 32; norms ((2L+1) x D =
        # 92,160 of them) in float32
        ("tinyllama-1.1b", "int8", (1_100_048_384 - 92_160) * 36 // 32 + 92_160 * 4),
        ("llama-3.1-8b", "fp16", 2 * (8_030_261_248 - 65 * 4096) + 4 * 65 * 4096),
        ("llama-3.1-8b", "int8", (8_030_261_248 - 65 * 4096) * 36 // 32 + 65 * 4096 * 4),
    ],
)
def test_weight_bytes_per_dtype(name, dtype, expected):
    assert weight_bytes(known_config(name), dtype) == expected


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16", "int8"])
def test_memory_calculator_agrees_with_the_engine_to_the_byte(dtype, capsys):
    """`llama-np memory stories260K --dtype X` and a loaded model's weights_nbytes agree
    (stories260K's hidden dim 172 is not a multiple of 32: int8 groups of 43 there)."""
    model = llama_np.load(weights_dtype=dtype)
    assert weight_bytes(known_config("stories260K"), dtype) == model.weights_nbytes
    assert main(["memory", "stories260K", "--dtype", dtype, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["weight_bytes"] == model.weights_nbytes


def test_bad_dtypes_and_sizes():
    config = known_config("stories260K")
    with pytest.raises(ArgumentError, match="--dtype"):
        weight_bytes(config, "int4")
    with pytest.raises(ArgumentError, match="--kv-dtype"):
        memory_report(config, kv_dtype="int8")
    with pytest.raises(ArgumentError, match="--context"):
        memory_report(config, context=0)


def test_h100_decode_memory_bound_long_prefill_compute_bound():
    config = known_config("llama-3.1-8b")
    h100 = get_hardware("H100")
    est = estimate(config, h100, context=8192, prompt_tokens=4096)
    assert est.decode.bound == "memory"
    assert est.prefill.bound == "compute"
    # decode at position 8191 reads the bf16 matmul weights, the classifier, one embedding
    # row and 8192 positions of KV cache: 2 bytes each
    matmul = 32 * (4096 * (32 + 16) * 128 + 32 * 128 * 4096 + 3 * 4096 * 14336)
    decode_bytes = 2 * (matmul + 4096 * 128256 + 4096) + 8192 * 131072
    assert est.decode.bytes == decode_bytes
    assert est.decode.seconds == pytest.approx(decode_bytes / 3.35e12)
    assert est.prefill.seconds == pytest.approx(est.prefill.flops / 989e12)
    assert est.fits
    # a 16-token prompt does too little work per weight byte (16 FLOPs/2 bytes < ridge 295)
    assert estimate(config, h100, 8192, prompt_tokens=16).prefill.bound == "memory"


def test_batch_shares_weight_reads_not_kv():
    # stories260K, fp32, decode at position 511 of 4 sequences: the matmul weights
    # (5 x (64 x (8 + 8) x 8 + 8 x 8 x 64 + 3 x 64 x 172) = 226,560) and the tied classifier
    # (64 x 512 = 32,768) are read once; each sequence reads its embedding row (64) and its
    # 512 positions of K/V (2 x 5 x 4 x 8 = 320 values each).
    config = known_config("stories260K")
    est = estimate(config, get_hardware("h100"), 512, batch=4, dtype="fp32", kv_dtype="fp32")
    assert est.decode.bytes == 4 * (226_560 + 32_768) + 4 * 4 * (64 + 512 * 320)
    # FLOPs: 2 per weight and per token, attention over 512 positions, classifier; x 4
    one = 2 * 226_560 + 5 * 2 * 2 * 8 * 8 * 512 + 2 * 32_768
    assert est.decode.flops == 4 * one
    assert est.decode.tokens == 4


def test_fits_in_device_memory():
    """Against the bytes the card offers (nvidia-smi's 81,559 MiB), not '80 GB' read as 80e9:
    16.06 GB of weights + 4 × 16.78 GB of 128k-token caches = 83.17 GB fits in 85.52 GB."""
    config = known_config("llama-3.1-8b")
    h100 = get_hardware("h100")
    four = estimate(config, h100, 128000, batch=4)
    assert four.fits and four.spare_bytes == 81559 * 2**20 - 83_169_918_976 == 2_350_891_008
    assert four.max_sequences == 4  # (85,520,809,984 - 16,061,054,976) // 16,777,216,000
    five = estimate(config, h100, 128000, batch=5)
    assert not five.fits and five.spare_bytes < 0 and five.max_sequences == 4
    assert not estimate(config, get_hardware("tpu-v5e"), 128000).fits
    unknown = estimate(config, custom_hardware(1e12, 1e11), 128000)
    assert unknown.fits is None and unknown.max_sequences is None


def test_presets_have_published_figures():
    assert PRESETS["h100"].flops == 989e12 and PRESETS["h100"].bandwidth == 3.35e12
    assert PRESETS["tpu-v5e"].memory_bytes == 16 * 2**30 and PRESETS["tpu-v5e"].bandwidth == 819e9
    # capacities are exact bytes (what nvidia-smi shows), each with where it comes from
    assert PRESETS["h100"].memory_bytes == 85_520_809_984
    assert PRESETS["a100-80gb"].memory_bytes == 81920 * 2**20
    assert PRESETS["rtx-4090"].memory_bytes == 24564 * 2**20
    assert all(isinstance(h.memory_bytes, int) and h.memory_source for h in PRESETS.values())
    with pytest.raises(ArgumentError, match="unknown hardware"):
        get_hardware("cray-1")


def test_load_config_from_name_and_checkpoint_header(tmp_path):
    from llama_np import DEFAULT_CHECKPOINT

    assert load_config("LLAMA-3.1-8B").n_layers == 32
    from_file = load_config(str(DEFAULT_CHECKPOINT / "stories260K.bin"))
    assert (from_file.dim, from_file.n_kv_heads, from_file.vocab_size) == (64, 4, 512)
    assert load_config(str(DEFAULT_CHECKPOINT)).n_layers == 5
    with pytest.raises(ConfigError, match="known model name"):
        load_config("llama-9-9b")
    hf_dir = Path(__file__).parent / "fixtures" / "hf" / "head_dim"
    config = load_config(str(hf_dir))  # config.json only: no weights are read
    assert (config.dim, config.head_dim, config.rope_interleaved) == (64, 32, False)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="hidden_size"):
        load_config(str(tmp_path))
    (tmp_path / "config.json").unlink()
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(CheckpointError, match=r"too short for a GGUF file"):
        load_config(str(tmp_path / "model.gguf"))
    (tmp_path / "model.txt").write_bytes(b"hello")
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        load_config(str(tmp_path / "model.txt"))


def test_cli_json_worked_example(capsys):
    assert main(["memory", "llama-3.1-8b", "--context", "128000", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kv_bytes"] == 16777216000
    assert out["kv_values"] == 8388608000
    assert out["kv_dtype"] == "bf16"  # the default: 2-byte entries
    assert "prefill" not in out


def test_cli_json_with_hardware(capsys, monkeypatch):
    monkeypatch.setattr(
        machine,
        "peaks",
        lambda remeasure=False, threads=None: MachinePeaks(100e9, 10e9, "test machine"),
    )
    assert main(["memory", "stories15M", "--hardware", "this-machine", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["hardware"]["flops"] == 100e9
    assert out["decode"]["bound"] == "memory"
    assert out["fits_in_device_memory"] in (True, None)
    argv = ["memory", "stories15M", "--flops", "1e12", "--bandwidth", "1e11", "--json"]
    assert main([*argv, "--device-memory", "1e6"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["hardware"]["name"] == "custom"
    assert out["fits_in_device_memory"] is False  # 30 MB of weights in 1 MB


def test_a_batch_prints_the_step_each_user_waits_and_the_batch_s_rate(capsys):
    """--batch 4: prefill is 4 prompts of 128,000 tokens (not 'prefill 512,000 tokens'), and
    decode prints the time of a step, which is each user's time per token, beside the
    throughput of the whole batch."""
    config = known_config("llama-3.1-8b")
    est = estimate(config, get_hardware("h100"), 128000, batch=4)
    assert main(["memory", "llama-3.1-8b", "--context", "128000", "--batch", "4",
                 "--hardware", "h100"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "prefill 512,000 tokens" not in out
    prefill = re.search(r"prefill of 4 × 128,000 tokens +([\d.]+) s for the pass", out)
    assert float(prefill[1]) == pytest.approx(est.prefill.seconds, rel=1e-3)
    decode = re.search(
        r"decode at position 127,999 +([\d.]+) ms per step, a token for each of 4 sequences "
        r"\(([\d,]+) tokens/s across the batch\)",
        out,
    )
    assert float(decode[1]) == pytest.approx(1e3 * est.decode.seconds, rel=1e-3)  # 24.51 ms
    assert int(decode[2].replace(",", "")) == round(4 / est.decode.seconds)
    assert "weights + KV cache fit in memory                  yes: 2,350,891,008 bytes" in out
    assert re.search(r"sequences of 128,000 tokens that fit +4 beside the weights", out)


def test_this_machine_defaults_to_what_the_engine_runs(capsys, monkeypatch):
    """llama_np runs float32 on the CPU: a this-machine roofline of bf16 weights would be of
    an engine that is not there."""
    monkeypatch.setattr(
        machine, "peaks", lambda remeasure=False, threads=None: MachinePeaks(100e9, 10e9, "t")
    )
    assert main(["memory", "stories15M", "--hardware", "this-machine", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["dtype"], out["kv_dtype"]) == ("fp32", "fp32")
    assert main(["memory", "stories15M", "--hardware", "this-machine"]) == 0
    assert "weights fp32, KV cache fp32 (the defaults for this-machine" in capsys.readouterr().out
    assert main(["memory", "stories15M", "--hardware", "h100", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["dtype"], out["kv_dtype"]) == ("bf16", "bf16")  # as GPUs serve it
    assert main(["memory", "stories15M", "--hardware", "this-machine", "--dtype", "int8",
                 "--json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["kv_dtype"] == "fp32"


def test_cli_table_and_errors(capsys):
    assert main(["memory", "llama-3.1-8b", "--context", "128000", "--hardware", "h100"]) == 0
    out = capsys.readouterr().out
    assert "8,388,608,000 values = 16,777,216,000 bytes (15.625 GiB)" in out
    assert "compute-bound" in out and "memory-bound" in out
    assert main(["memory", "llama-3.1-8b", "--flops", "1e12"]) == 1
    assert "--flops and --bandwidth go together" in capsys.readouterr().err


# ---------------------------------------------------------------- critical batch, GQA, attention


@pytest.mark.parametrize("name", ["llama-3-8b", "tinyllama-1.1b", "llama-2-7b", "stories110M"])
@pytest.mark.parametrize("hw", ["h100", "laptop-m2", "tpu-v5e"])
@pytest.mark.parametrize("position", [0, 1000])
def test_critical_batch_is_the_first_compute_bound_batch(name, hw, position):
    """Against a brute-force search: the smallest B whose decode step's FLOPs/bytes reaches
    the ridge (bytes of B sequences from forward_bytes, FLOPs from forward_flops)."""
    from llama_np.tools.costs import forward_bytes, forward_flops
    from llama_np.tools.hardware import get_hardware
    from llama_np.tools.memory import critical_batch

    config, device = known_config(name), get_hardware(hw)

    def compute_bound(b: int) -> bool:
        f = forward_flops(config, 1, position, 1, b)
        return f / forward_bytes(config, 1, position, 2, 2, b) >= device.ridge

    found = critical_batch(config, device, position).batch
    if found is None:
        assert not compute_bound(100_000)
    else:
        assert compute_bound(found) and not compute_bound(found - 1)


def test_memory_prints_the_critical_batch_and_gqa_intensity(capsys):
    assert main(["memory", "llama-3-8b", "--hardware", "h100"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"critical batch at position 0 +\d+ sequences", out)
    assert re.search(r"critical batch at position 8,191 +none: ", out)
    # 32 query heads over 8 KV heads: each bf16 K/V value serves 4 heads, 2 FLOPs each
    assert "2 FLOPs × 4 query heads per K/V value ÷ 2 bytes = 4 FLOP/byte" in out
    assert "dtypes" in out and "the defaults" in out


def test_attention_share_grows_with_context():
    from llama_np.tools.costs import attention_flops, attention_share

    cfg = known_config("llama-3-8b")
    # by hand: 32 layers × 2 matmuls × 2 FLOPs × 32 heads × 128 × (1+2+...+T)
    assert attention_flops(cfg, 4) == 32 * 2 * 2 * 32 * 128 * 10
    shares = [attention_share(cfg, t) for t in (1024, 8192, 131072)]
    assert shares == sorted(shares) and shares[-1] > 0.7 > shares[1]
