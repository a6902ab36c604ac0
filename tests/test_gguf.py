"""GGUF files: the reader, every tensor type, and logits against an independent path.

The fixtures are written here with the `gguf` package's GGUFWriter (llama.cpp's own Python
library). Quantized tensors are random blocks with valid float16 scales; the reference
weights are those blocks dequantized by `gguf.quants.dequantize`, written as an F32
Hugging Face checkpoint and loaded through the safetensors path.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import gguf
import numpy as np
import pytest
from checkpoint_writers import random_blocks, random_tensors, write_gguf, write_hf
from test_hf_checkpoints import greedy, prompt_logits

import llama_np
from llama_np import kernels, limits
from llama_np.checkpoints import read_config
from llama_np.checkpoints.gguf import read_gguf
from llama_np.checkpoints.safetensors import read_safetensors
from llama_np.config import LlamaConfig, RopeScaling
from llama_np.errors import CheckpointError, ConfigError, MemoryLimitError
from llama_np.layers import rope_frequencies
from llama_np.packed import PackedRows, Scratch, StackedRows
from llama_np.quants import QUANT_TYPES, dequantize_rows, quantize_q8_0

QT = gguf.GGMLQuantizationType
BLOCK_TYPES = [n for n in QUANT_TYPES if n not in ("F32", "F16", "BF16")]
# K-quants need rows that are multiples of 256 weights: D, H*HD and F are.
CONFIG = LlamaConfig(
    dim=256, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=512, vocab_size=96, max_seq_len=64
)
PROMPT = [1, 5, 17, 33, 60, 2, 91, 45]


@pytest.fixture(autouse=True)
def float_activations():
    """These tests compare a GGUF's weights exactly: they run the float kernels (numba, or
    NumPy without it), not the int8 kernels, which round activations to int8
    (tests/test_kernels.py)."""
    kernels.use("numba" if kernels.numba_available() else "numpy")
    yield
    kernels.use(None)


def reference_model(tmp_path: Path, config: LlamaConfig, held: dict, rope: dict | None = None):
    """The same weights through the safetensors path: an F32 Hugging Face directory."""
    directory = write_hf(tmp_path / "hf", config, held, "F32")
    if rope is not None:
        cfg = json.loads((directory / "config.json").read_text())
        cfg["rope_parameters"] = rope
        (directory / "config.json").write_text(json.dumps(cfg))
    return llama_np.load(directory)


def assert_same_logits(model, reference) -> None:
    logits, expected = prompt_logits(model, PROMPT), prompt_logits(reference, PROMPT)
    assert np.abs(logits - expected).max() <= 1e-4 * np.abs(expected).max()
    assert greedy(model, PROMPT, 8) == greedy(reference, PROMPT, 8)


@pytest.fixture(scope="module")
def tensors() -> dict[str, np.ndarray]:
    return random_tensors(CONFIG, seed=3, scale=0.1)


# ---------------------------------------------------------------- dequantizers


def test_table_agrees_with_ggml():
    for name, qtype in QUANT_TYPES.items():
        assert qtype.type_id == QT[name].value
        assert (qtype.block_weights, qtype.block_bytes) == gguf.GGML_QUANT_SIZES[QT[name]]


@pytest.mark.parametrize("type_name", BLOCK_TYPES)
def test_dequantize_matches_gguf(type_name):
    rng = np.random.default_rng(1)
    raw = random_blocks(type_name, (6, 512), rng)  # (rows, row_bytes)
    out = np.empty((6, 512), dtype=np.float32)
    expected = gguf.quants.dequantize(raw, QT[type_name])
    np.testing.assert_array_equal(dequantize_rows(type_name, raw, out), expected)
    # a range of rows alone, into a view (how PackedRows widens pieces)
    piece = np.empty((2, 512), dtype=np.float32)
    np.testing.assert_array_equal(dequantize_rows(type_name, raw[3:5], piece), expected[3:5])


@pytest.mark.parametrize("type_name", ["F32", "F16", "BF16"])
def test_float_types_match_gguf(type_name):
    w = np.random.default_rng(2).standard_normal((3, 64)).astype(np.float32)
    raw = gguf.quants.quantize(w, QT[type_name]).view(np.uint8).reshape(3, -1)
    out = np.empty((3, 64), dtype=np.float32)
    expected = gguf.quants.dequantize(raw, QT[type_name])
    np.testing.assert_array_equal(dequantize_rows(type_name, raw, out), expected)


def test_quantize_q8_0_matches_gguf():
    w = np.random.default_rng(4).standard_normal((8, 256)).astype(np.float32)
    w[0, :32] = 0  # an all-zero block
    w[1, :32] = np.arange(32) - 15.5  # ties at .5 after scaling
    np.testing.assert_array_equal(quantize_q8_0(w), gguf.quants.quantize(w, QT.Q8_0))


# ---------------------------------------------------------------- every type, end to end


@pytest.mark.parametrize("type_name", list(QUANT_TYPES))
def test_every_type_gives_the_reference_logits(tmp_path, tensors, type_name):
    path = tmp_path / "model.gguf"
    held = write_gguf(path, CONFIG, tensors, type_name)
    model = llama_np.load(path)
    assert_same_logits(model, reference_model(tmp_path, CONFIG, held))
    # kept as stored: the weights occupy what the file holds
    file_bytes = sum(t.nbytes for t in read_gguf(path)[1])
    assert model.weights_nbytes == file_bytes
    if type_name in BLOCK_TYPES:
        assert model.weights.layers[0].wqkv.packed.kind == type_name


def test_fp32_widens_everything_at_load(tmp_path, tensors):
    path = tmp_path / "model.gguf"
    write_gguf(path, CONFIG, tensors, "Q4_K")
    stored, widened = llama_np.load(path), llama_np.load(path, weights_dtype="fp32")
    wqkv = widened.weights.layers[0].wqkv  # float32: an array, or rows for compiled kernels
    assert isinstance(wqkv, np.ndarray) or wqkv.packed.kind == "fp32"
    assert widened.weights_nbytes > 5 * stored.weights_nbytes
    assert_same_logits(widened, stored)
    # int8 re-packs the dequantized weights
    int8 = llama_np.load(path, weights_dtype="int8")
    assert int8.weights.layers[0].wqkv.packed.kind == "int8"
    assert greedy(int8, PROMPT, 4) == greedy(stored, PROMPT, 4)


# What llama.cpp's Q4_K_M recipe mixes: v and down in Q6_K (in some layers), the rest Q4_K,
# the classifier Q6_K; plus a Q8_0/Q5_0 pair with 32-weight blocks beside 256-weight ones.
Q4_K_M = {
    "attention.wq.weight": "Q4_K",
    "attention.wk.weight": "Q4_K",
    "attention.wv.weight": "Q6_K",
    "attention.wo.weight": "Q4_K",
    "feed_forward.w1.weight": "Q8_0",
    "feed_forward.w2.weight": "Q6_K",
    "feed_forward.w3.weight": "Q5_0",
    "tok_embeddings.weight": "Q4_K",
    "output.weight": "Q6_K",
}


def mixed_types(tensors: dict) -> dict[str, str]:
    """Q4_K_M's type for each matrix (norms: F32)."""
    short = {n: n.split(".", 2)[-1] if n.startswith("layers") else n for n in tensors}
    return {n: Q4_K_M.get(short[n], "F32") for n in tensors}


@pytest.mark.parametrize("tied", [False, True])
def test_mixed_types_in_fused_matrices(tmp_path, tied):
    config = CONFIG.replace(tie_embeddings=tied)
    tensors = random_tensors(config, seed=5, scale=0.1)
    types = mixed_types(tensors)
    path = tmp_path / "model.gguf"
    held = write_gguf(path, config, tensors, types)
    model = llama_np.load(path)
    assert model.config.tie_embeddings is tied
    wqkv = model.weights.layers[0].wqkv.packed
    assert isinstance(wqkv, StackedRows)
    assert [(p.kind, p.shape[0]) for p in wqkv.parts] == [("Q4_K", 384), ("Q6_K", 128)]
    assert isinstance(model.weights.embedding, PackedRows)
    assert_same_logits(model, reference_model(tmp_path, config, held))


def test_stacked_rows_widen_across_part_boundaries():
    rng = np.random.default_rng(6)
    raws = [random_blocks("Q4_K", (5, 256), rng), random_blocks("Q8_0", (3, 256), rng)]
    scratch = Scratch()
    parts = [PackedRows("Q4_K", raws[0], None, scratch), PackedRows("Q8_0", raws[1], None, scratch)]
    stacked = StackedRows(parts)
    full = np.concatenate(
        [gguf.quants.dequantize(raws[0], QT.Q4_K), gguf.quants.dequantize(raws[1], QT.Q8_0)]
    )  # (8, 256)
    out = np.empty((4, 256), dtype=np.float32)
    np.testing.assert_array_equal(stacked.widen(3, 7, out), full[3:7])
    x = rng.standard_normal((2, 256)).astype(np.float32)
    np.testing.assert_allclose(x @ stacked.T, x @ full.T, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- RoPE scaling (rope_freqs)

LLAMA3_ROPE = dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original=16)


def llama_cpp_rope_divisors(head_dim: int, theta: float) -> np.ndarray:
    """The rope_freqs tensor as llama.cpp's convert_hf_to_gguf.py computes it for llama3."""
    factor, low, high, old_ctx = LLAMA3_ROPE.values()
    divisors = []
    for i in range(0, head_dim, 2):
        wavelength = 2 * math.pi * theta ** (i / head_dim)
        if wavelength < old_ctx / high:
            divisors.append(1.0)
        elif wavelength > old_ctx / low:
            divisors.append(factor)
        else:
            smooth = (old_ctx / wavelength - low) / (high - low)
            divisors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(divisors, dtype=np.float32)


def test_rope_divisors_equal_llama3_scaling():
    divisors = llama_cpp_rope_divisors(64, 10000.0)
    assert len(set(divisors.tolist())) > 3  # all three regimes occur
    factor, low, high, old_ctx = LLAMA3_ROPE.values()
    llama3 = RopeScaling("llama3", factor, low, high, old_ctx)
    from_divisors = RopeScaling("divisors", divisors=tuple(divisors.tolist()))
    np.testing.assert_allclose(
        rope_frequencies(64, 10000.0, from_divisors),
        rope_frequencies(64, 10000.0, llama3),
        rtol=1e-6,
    )


def test_rope_freqs_tensor_gives_llama3_logits(tmp_path, tensors):
    path = tmp_path / "model.gguf"
    divisors = llama_cpp_rope_divisors(CONFIG.head_dim, CONFIG.rope_theta)
    held = write_gguf(path, CONFIG, tensors, "Q8_0", rope_divisors=divisors)
    model = llama_np.load(path)
    assert model.config.rope_scaling.kind == "divisors"
    factor, low, high, old_ctx = LLAMA3_ROPE.values()
    rope = {
        "rope_type": "llama3",
        "rope_theta": CONFIG.rope_theta,
        "factor": factor,
        "low_freq_factor": low,
        "high_freq_factor": high,
        "original_max_position_embeddings": old_ctx,
    }
    assert_same_logits(model, reference_model(tmp_path, CONFIG, held, rope))


def test_rope_divisor_count_must_match_head_dim():
    with pytest.raises(ConfigError, match="one per pair"):
        CONFIG.replace(rope_scaling=RopeScaling("divisors", divisors=(1.0, 2.0)))


# ---------------------------------------------------------------- against transformers


def test_gguf_from_hf_fixture_matches_transformers(tmp_path):
    """An HF checkpoint converted as llama.cpp does (q/k rows back to interleaved pairs)."""
    fixture = Path(__file__).parent / "fixtures" / "hf" / "fp32"
    cfg = json.loads((fixture / "config.json").read_text())
    hf = read_safetensors(fixture / "model.safetensors")
    n_heads, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]

    def interleave(w: np.ndarray, heads: int) -> np.ndarray:  # convert_hf_to_gguf's permute
        return (
            w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape)
        )

    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    layer_names = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.down_proj": "ffn_down",
        "mlp.up_proj": "ffn_up",
    }
    writer = gguf.GGUFWriter(tmp_path / "fixture.gguf", "llama")
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(n_heads)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(cfg["head_dim"])
    writer.add_key_length(cfg["head_dim"])
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_rope_freq_base(cfg["rope_parameters"]["rope_theta"])
    for name, array in hf.items():
        array = np.array(array, dtype=np.float32)
        if name in names:
            writer.add_tensor(names[name], array)
            continue
        _, _, i, module = name.split(".", 3)
        module = module.removesuffix(".weight")
        if module == "self_attn.q_proj":
            array = interleave(array, n_heads)
        elif module == "self_attn.k_proj":
            array = interleave(array, n_kv)
        writer.add_tensor(f"blk.{i}.{layer_names[module]}.weight", array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    model = llama_np.load(tmp_path / "fixture.gguf")
    assert model.config.rope_interleaved
    reference = json.loads((fixture / "reference.json").read_text())
    expected = np.load(fixture / "logits.npy")
    logits = prompt_logits(model, reference["tokens"])
    assert np.abs(logits - expected).max() < 1e-3 * max(1.0, float(np.abs(expected).max()))
    assert greedy(model, reference["tokens"], len(reference["greedy"])) == reference["greedy"]


# ---------------------------------------------------------------- the reader


def test_metadata_of_every_value_type(tmp_path):
    path = tmp_path / "meta.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_uint8("t.u8", 200)
    writer.add_int8("t.i8", -100)
    writer.add_uint16("t.u16", 60000)
    writer.add_int16("t.i16", -30000)
    writer.add_uint32("t.u32", 4_000_000_000)
    writer.add_int32("t.i32", -2_000_000_000)
    writer.add_float32("t.f32", 0.5)
    writer.add_bool("t.bool", True)
    writer.add_string("t.str", "héllo")
    writer.add_uint64("t.u64", 2**63 + 1)
    writer.add_int64("t.i64", -(2**62))
    writer.add_float64("t.f64", 1e-300)
    writer.add_array("t.strs", ["a", "", "▁b"])
    writer.add_array("t.ints", [1, 2, 3])
    writer.add_array("t.floats", [0.25, -1.5])
    writer.add_array("t.nested", [[1, 2], [3]])
    writer.add_tensor("x", np.arange(64, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    metadata, infos = read_gguf(path)
    scalars = {
        "t.u8": 200,
        "t.i8": -100,
        "t.u16": 60000,
        "t.i16": -30000,
        "t.u32": 4_000_000_000,
        "t.i32": -2_000_000_000,
        "t.f32": 0.5,
        "t.bool": True,
        "t.str": "héllo",
        "t.u64": 2**63 + 1,
        "t.i64": -(2**62),
        "t.f64": 1e-300,
        "general.architecture": "llama",
    }
    for key, value in scalars.items():
        assert metadata[key] == value and type(metadata[key]) is type(value), key
    assert metadata["t.strs"] == ["a", "", "▁b"]
    np.testing.assert_array_equal(metadata["t.ints"], [1, 2, 3])
    np.testing.assert_array_equal(metadata["t.floats"], np.array([0.25, -1.5], np.float32))
    assert [list(a) for a in metadata["t.nested"]] == [[1, 2], [3]]
    assert [(t.name, t.shape, t.type_name, t.nbytes) for t in infos] == [("x", (64,), "F32", 256)]


def test_version_2_reads_like_3(tmp_path, tensors):
    path = tmp_path / "model.gguf"
    write_gguf(path, CONFIG, tensors, "Q8_0")
    data = bytearray(path.read_bytes())
    assert data[4:8] == (3).to_bytes(4, "little")
    data[4:8] = (2).to_bytes(4, "little")  # v2 and v3 differ only for big-endian files
    (tmp_path / "v2.gguf").write_bytes(bytes(data))
    v2 = llama_np.load(tmp_path / "v2.gguf")
    np.testing.assert_array_equal(
        prompt_logits(v2, PROMPT), prompt_logits(llama_np.load(path), PROMPT)
    )


@pytest.fixture(scope="module")
def small_gguf(tmp_path_factory) -> bytes:
    config = CONFIG.replace(n_layers=1)
    path = tmp_path_factory.mktemp("gguf") / "small.gguf"
    write_gguf(path, config, random_tensors(config, seed=7), "Q8_0")
    return path.read_bytes()


def _header_end(data: bytes) -> int:
    """Where general.alignment's u32 value sits is found by searching for its key."""
    return data.index(b"general.alignment")


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("truncated in the data", "truncated"),
        ("truncated in the header", "truncated"),
        ("big-endian", "big-endian"),
        ("version 1", "version 1 is not supported"),
        ("bad magic", "not the GGUF magic"),
        ("huge string length", "truncated or corrupt"),
        ("bad alignment", "general.alignment must be a power of two"),
        ("misaligned offset", "not a multiple of alignment"),
        ("unknown tensor type", "ggml type 99"),
        ("an i-quant", r"ggml type 20 \(IQ4_NL\)"),
    ],
)
def test_malformed_files_are_refused(tmp_path, small_gguf, case, expected):
    data = bytearray(small_gguf)
    n_tensors = int.from_bytes(data[8:16], "little")
    if case == "truncated in the data":
        data = data[: len(data) - 1000]
    elif case == "truncated in the header":
        data = data[:300]
    elif case == "big-endian":
        data[4:8] = (3).to_bytes(4, "big")
    elif case == "version 1":
        data[4:8] = (1).to_bytes(4, "little")
    elif case == "bad magic":
        data[0:4] = b"GGUX"
    elif case == "huge string length":
        data[24:32] = (2**62).to_bytes(8, "little")  # the first key's length
    else:
        # the last tensor info: ... u32 type, u64 offset; then padding to 32 and the data
        name = b"blk.0.ffn_up.weight"
        at = data.index(name) + len(name) + 4 + 2 * 8  # past n_dims and the two dims
        if case in ("unknown tensor type", "an i-quant"):
            data[at : at + 4] = (99 if case == "unknown tensor type" else 20).to_bytes(4, "little")
        elif case == "misaligned offset":
            offset = int.from_bytes(data[at + 4 : at + 12], "little")
            data[at + 4 : at + 12] = (offset + 4).to_bytes(8, "little")
        else:  # bad alignment: add general.alignment = 24 by rewriting the metadata count
            key = b"general.alignment"
            entry = len(key).to_bytes(8, "little") + key + (4).to_bytes(4, "little")
            entry += (24).to_bytes(4, "little")
            count = int.from_bytes(data[16:24], "little")
            data[16:24] = (count + 1).to_bytes(8, "little")
            data[24:24] = entry
    assert n_tensors == 12  # the fixture is what the edits above expect
    path = tmp_path / "bad.gguf"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=expected) as error:
        llama_np.load(path)
    assert str(path) in str(error.value)


def test_other_architectures_are_refused_by_name(tmp_path, tensors):
    write_gguf(tmp_path / "qwen.gguf", CONFIG, tensors, "F16", arch="qwen2")
    with pytest.raises(ConfigError, match="architecture 'qwen2' is not supported"):
        llama_np.load(tmp_path / "qwen.gguf")


def test_missing_and_extra_tensors_are_named(tmp_path, tensors):
    partial = {n: a for n, a in tensors.items() if not n.startswith("layers.1.ffn_norm")}
    write_gguf(tmp_path / "m.gguf", CONFIG, partial, "F16")
    with pytest.raises(CheckpointError, match=r"missing \['layers.1.ffn_norm.weight'\]"):
        llama_np.load(tmp_path / "m.gguf")


# ---------------------------------------------------------------- loading around it


def test_directory_holding_one_gguf_and_read_config(tmp_path, tensors):
    write_gguf(tmp_path / "model.gguf", CONFIG, tensors, "Q4_0")
    model = llama_np.load(tmp_path)
    # GGUF stores the epsilon as float32
    assert model.config == CONFIG.replace(name="test-llama", norm_eps=float(np.float32(1e-5)))
    assert read_config(tmp_path) == model.config
    assert model.tokenizer is None  # no tokenizer beside it, and no tokenizer.ggml.* keys


def test_memory_check_counts_stored_bytes(tmp_path, tensors, monkeypatch):
    path = tmp_path / "model.gguf"
    write_gguf(path, CONFIG, tensors, "Q4_K")
    stored = sum(t.nbytes for t in read_gguf(path)[1])
    needed = limits.model_bytes(CONFIG, stored_nbytes=stored)
    monkeypatch.setattr(limits, "available_memory", lambda: needed + 1000)
    llama_np.load(path)  # fits as stored
    with pytest.raises(MemoryLimitError, match="fp32"):
        llama_np.load(path, weights_dtype="fp32")


def test_info_shows_the_quantization_mix(tmp_path, capsys):
    from llama_np.cli import main

    config = CONFIG.replace(n_layers=1)
    tensors = random_tensors(config, seed=8)
    types = mixed_types(tensors)
    write_gguf(tmp_path / "model.gguf", config, tensors, types)
    assert main(["info", "-m", str(tmp_path / "model.gguf")]) == 0
    out = capsys.readouterr().out
    q6k = sum(
        QUANT_TYPES["Q6_K"].row_bytes(s[1]) * s[0]
        for n, s in [("v", (128, 256)), ("down", (256, 512)), ("output", (96, 256))]
    )
    assert f"Q6_K: 3 tensors, {q6k:,} bytes" in out
    assert "F32: 3 tensors" in out


def test_generate_from_a_gguf_with_its_tokenizer(tmp_path, capsys):
    """`llama-np generate -m model.gguf` with the default flags: the tokenizer comes from the
    file's metadata (here stories260K's tok512.bin, converted as llama.cpp does)."""
    from llama_np.cli import main
    from llama_np.tokenizers import load_tokenizer
    from llama_np.tokenizers.gguf import gguf_tokenizer_metadata

    tok_file = Path(llama_np.DEFAULT_CHECKPOINT) / "tok512.bin"
    meta = gguf_tokenizer_metadata(load_tokenizer(tok_file, 512))
    config = CONFIG.replace(vocab_size=512, n_layers=1)
    path = tmp_path / "model.gguf"
    write_gguf(path, config, random_tensors(config, seed=9), "Q4_K", metadata=meta)
    metadata, _ = read_gguf(path)
    assert metadata["tokenizer.ggml.tokens"] == meta["tokenizer.ggml.tokens"]
    np.testing.assert_array_equal(metadata["tokenizer.ggml.scores"], meta["tokenizer.ggml.scores"])
    model = llama_np.load(path)
    assert model.tokenizer is not None
    expected = llama_np.generate_text(model, "Once upon", 6, temperature=0)
    assert main(["generate", "-m", str(path), "-p", "Once upon", "-n", "6", "--temp", "0"]) == 0
    assert expected in capsys.readouterr().out
