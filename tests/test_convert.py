"""`llama-np convert`: GGUF and Hugging Face export, checked with other people's readers.

References: the `gguf` package (llama.cpp's gguf-py) reads the GGUF files, its constants name
the keys and tensors llama.cpp expects and its quantizer makes the Q8_0 blocks we must match;
the `safetensors` package reads the HF files; transformers' logits of the committed fixtures
and the published stories260K story check the converted models end to end.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import gguf
import numpy as np
import pytest
from checkpoint_writers import random_tensors, write_hf
from safetensors.numpy import load_file

import llama_np
from llama_np.checkpoints import DEFAULT_CHECKPOINT, read_checkpoint
from llama_np.checkpoints.export import _quantize_q8_0, convert, gguf_name, rope_freq_divisors
from llama_np.checkpoints.gguf_writer import write_gguf
from llama_np.checkpoints.hf import hf_name
from llama_np.cli import main
from llama_np.config import LlamaConfig
from llama_np.errors import ArgumentError
from llama_np.model import Model
from llama_np.tokenizers.gguf import gguf_tokenizer_metadata
from llama_np.tokenizers.hf_files import hf_tokenizer_files
from llama_np.tokenizers.sentencepiece_writer import sentencepiece_model_bytes
from llama_np.tools.known_models import KNOWN_MODELS

FIXTURES = Path(__file__).parent / "fixtures" / "hf"
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "convert_llama2c_to_hf.py"
PROMPT = "Once upon a time, there was a little dog"


def prompt_logits(model: llama_np.Model, tokens: list[int]) -> np.ndarray:
    return model.prefill(tokens, model.new_cache(len(tokens)), all_logits=True)  # (T, V)


def fixture_tokens(case: str) -> list[int]:
    return json.loads((FIXTURES / case / "reference.json").read_text())["tokens"]


def llama_cpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py's `permute`: HF half-split q/k rows -> GGUF's interleaved rows."""
    return (
        w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def gguf_tensors(reader: gguf.GGUFReader) -> dict[str, gguf.ReaderTensor]:
    return {t.name: t for t in reader.tensors}


# ---------------------------------------------------------------- Hugging Face export


@pytest.fixture(scope="module")
def stories_hf(tmp_path_factory) -> Path:
    """stories260K (llama2.c, interleaved RoPE) exported by the script, as the docs show."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("convert_llama2c_to_hf", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path_factory.mktemp("stories") / "stories260K-hf"
    script.main([str(DEFAULT_CHECKPOINT / "stories260K.bin"), str(out)])
    return out


def test_exported_hf_directory_has_the_files_transformers_reads(stories_hf):
    assert {p.name for p in stories_hf.iterdir()} == {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.model",  # llama2.c's tok512.bin as SentencePiece: transformers reads it
        "tokenizer_config.json",
    }
    config = json.loads((stories_hf / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert config["tie_word_embeddings"] is True and config["eos_token_id"] == [2, 1]
    # The safetensors package (an independent reader) sees every tensor under its HF name.
    stored = load_file(stories_hf / "model.safetensors")
    ckpt = read_checkpoint(DEFAULT_CHECKPOINT)
    assert set(stored) == {hf_name(n) for n in ckpt.tensors}
    norm = ckpt.tensors["layers.2.ffn_norm.weight"]
    assert np.array_equal(stored["model.layers.2.post_attention_layernorm.weight"], norm)


def test_llama2c_and_exported_hf_give_the_same_logits_and_text(stories_hf, stories260k):
    hf = llama_np.load(stories_hf)
    assert hf.config.rope_interleaved is False and stories260k.config.rope_interleaved
    tokens = stories260k.tokenizer.encode(PROMPT)
    logits = [prompt_logits(m, tokens) for m in (stories260k, hf)]
    # Half-split and interleaved rotation sum in another order: equal to rounding.
    assert np.abs(logits[0] - logits[1]).max() < 1e-4
    texts = [
        llama_np.generate_text(m, "Once upon a time", 40, temperature=0) for m in (stories260k, hf)
    ]
    assert texts[0] == texts[1] and len(texts[0]) > 40


def test_exported_gguf_keeps_every_end_token(tmp_path, stories260k):
    """A llama2.c story ends with BOS as well as EOS: GGUF's eot_token_id carries the second,
    so the exported file stops where the original does (it ran on past the story's end)."""
    path = convert(DEFAULT_CHECKPOINT, tmp_path / "stories.gguf")
    assert gguf.GGUFReader(path).fields["tokenizer.ggml.eot_token_id"].contents() == 1
    exported = llama_np.load(path)
    assert exported.config.stop_ids == stories260k.config.stop_ids == (2, 1)
    stats = [llama_np.GenerationStats() for _ in range(2)]
    texts = [
        llama_np.generate_text(m, "The cat", 500, temperature=0, stats=s)
        for m, s in zip((stories260k, exported), stats, strict=True)
    ]
    assert texts[0] == texts[1] and stats[1].stop_reason == "end_token"


def test_without_the_rope_permutation_the_logits_differ(tmp_path, stories260k, monkeypatch):
    # The check above can fail: skipping the permutation changes the model's output.
    from llama_np.checkpoints import export

    monkeypatch.setattr(export, "to_half_split", lambda w, n_heads: w)
    out = convert(DEFAULT_CHECKPOINT, tmp_path / "raw", to="hf")
    tokens = stories260k.tokenizer.encode("Once upon a time")
    diff = prompt_logits(stories260k, tokens) - prompt_logits(llama_np.load(out), tokens)
    assert np.abs(diff).max() > 0.1


@pytest.mark.parametrize("case", ["bf16", "tied", "llama3_hub_config", "head_dim"])
def test_hf_to_hf_round_trip_is_exact(tmp_path, case):
    out = convert(FIXTURES / case, tmp_path / "out")
    original, exported = llama_np.load(FIXTURES / case), llama_np.load(out)
    assert exported.config == original.config.replace(name="out")
    tokens = fixture_tokens(case)
    assert np.array_equal(prompt_logits(original, tokens), prompt_logits(exported, tokens))


def test_meta_download_exports_to_hf_matching_transformers(tmp_path):
    # Meta's .pth (interleaved RoPE, bf16, Llama 3.1 scaling) -> HF half-split rows, llama3
    # rope_scaling in config.json; transformers' logits are the reference.
    out = convert(FIXTURES / "meta", tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["rope_scaling"]["rope_type"] == "llama3"
    model = llama_np.load(out)
    assert model.config.rope_scaling == llama_np.load(FIXTURES / "meta").config.rope_scaling
    expected = np.load(FIXTURES / "meta" / "logits.npy")
    logits = prompt_logits(model, fixture_tokens("meta"))
    assert np.abs(logits - expected).max() < 1e-3 * max(1.0, np.abs(expected).max())


@pytest.mark.parametrize(("out_type", "tolerance"), [("f16", 1e-3), ("bf16", 1e-2)])
def test_hf_half_precision_export_is_close(tmp_path, out_type, tolerance):
    out = convert(FIXTURES / "fp32", tmp_path / "out", out_type=out_type)
    stored = json.loads((out / "config.json").read_text())["torch_dtype"]
    assert stored == {"f16": "float16", "bf16": "bfloat16"}[out_type]
    tokens = fixture_tokens("fp32")
    expected = np.load(FIXTURES / "fp32" / "logits.npy")  # transformers' float32 logits
    logits = prompt_logits(llama_np.load(out), tokens)
    assert 0 < np.abs(logits - expected).max() < tolerance * max(1.0, np.abs(expected).max())


# ---------------------------------------------------------------- GGUF


@pytest.fixture(scope="module")
def fp32_gguf(tmp_path_factory) -> Path:
    """The fp32 HF fixture (half-split RoPE, untied) as GGUF F32."""
    return convert(FIXTURES / "fp32", tmp_path_factory.mktemp("gguf") / "fp32.gguf")


def test_gguf_metadata_is_what_llama_cpp_reads(fp32_gguf):
    reader = gguf.GGUFReader(fp32_gguf)
    config = llama_np.load(FIXTURES / "fp32").config
    K, T = gguf.Keys, gguf.GGUFValueType
    arch = "llama"
    expected = {
        K.General.ARCHITECTURE: (T.STRING, "llama"),
        K.General.NAME: (T.STRING, "fp32"),
        K.General.FILE_TYPE: (T.UINT32, gguf.LlamaFileType.ALL_F32),
        K.General.QUANTIZATION_VERSION: (T.UINT32, gguf.GGML_QUANT_VERSION),
        K.General.ALIGNMENT: (T.UINT32, gguf.GGUF_DEFAULT_ALIGNMENT),
        K.LLM.VOCAB_SIZE.format(arch=arch): (T.UINT32, config.vocab_size),
        K.LLM.CONTEXT_LENGTH.format(arch=arch): (T.UINT32, config.max_seq_len),
        K.LLM.EMBEDDING_LENGTH.format(arch=arch): (T.UINT32, config.dim),
        K.LLM.BLOCK_COUNT.format(arch=arch): (T.UINT32, config.n_layers),
        K.LLM.FEED_FORWARD_LENGTH.format(arch=arch): (T.UINT32, config.hidden_dim),
        K.Rope.DIMENSION_COUNT.format(arch=arch): (T.UINT32, config.head_dim),
        K.Attention.HEAD_COUNT.format(arch=arch): (T.UINT32, config.n_heads),
        K.Attention.HEAD_COUNT_KV.format(arch=arch): (T.UINT32, config.n_kv_heads),
        K.Attention.LAYERNORM_RMS_EPS.format(arch=arch): (T.FLOAT32, np.float32(config.norm_eps)),
        K.Rope.FREQ_BASE.format(arch=arch): (T.FLOAT32, np.float32(config.rope_theta)),
    }
    found = {
        k: (f.types[0], f.contents()) for k, f in reader.fields.items() if not k.startswith("GGUF.")
    }
    assert found == expected
    assert reader.fields["GGUF.version"].contents() == 3


def test_gguf_tensors_have_llama_cpp_names_shapes_and_interleaved_q_k(fp32_gguf):
    reader = gguf.GGUFReader(fp32_gguf)
    ckpt = read_checkpoint(FIXTURES / "fp32")
    config = ckpt.config
    # Every name is one of gguf-py's tensor names for the llama architecture.
    known = {
        gguf.TENSOR_NAMES[t].format(bid=i) + ".weight"
        for t in gguf.MODEL_TENSORS[gguf.MODEL_ARCH.LLAMA]
        for i in range(config.n_layers)
    }
    tensors = gguf_tensors(reader)
    assert set(tensors) <= known and len(tensors) == len(ckpt.tensors)
    for name, source in ckpt.tensors.items():
        t = tensors[gguf_name(name)]
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        assert tuple(int(d) for d in t.shape) == tuple(reversed(source.shape))  # ggml order
        expected = np.asarray(source, dtype=np.float32)
        if name.endswith("wq.weight"):
            expected = llama_cpp_permute(expected, config.n_heads)
        elif name.endswith("wk.weight"):
            expected = llama_cpp_permute(expected, config.n_kv_heads)
        assert np.array_equal(t.data, expected), name
    assert reader.data_offset % 32 == 0
    assert all(int(t.data_offset) % 32 == 0 for t in reader.tensors)


def test_gguf_f16_and_q8_0_types_and_values(tmp_path):
    f16 = gguf_tensors(
        gguf.GGUFReader(convert(FIXTURES / "fp32", tmp_path / "f16.gguf", out_type="f16"))
    )
    q8 = gguf_tensors(
        gguf.GGUFReader(convert(FIXTURES / "fp32", tmp_path / "q8.gguf", out_type="q8_0"))
    )
    f32 = gguf_tensors(gguf.GGUFReader(convert(FIXTURES / "fp32", tmp_path / "f32.gguf")))
    F32, F16, Q8_0 = (gguf.GGMLQuantizationType[n] for n in ("F32", "F16", "Q8_0"))
    for name, t in f32.items():
        w = np.asarray(t.data)  # (out, in) float32
        if w.ndim == 1:  # norms stay float32 in every file
            assert f16[name].tensor_type == q8[name].tensor_type == F32
            assert np.array_equal(f16[name].data, w) and np.array_equal(q8[name].data, w)
            continue
        assert f16[name].tensor_type == F16
        assert np.array_equal(f16[name].data, w.astype(np.float16))
        assert q8[name].tensor_type == Q8_0  # every row of the fixture is a multiple of 32
        # Our blocks, byte for byte, are gguf-py's quantization of the same weights ...
        assert np.array_equal(q8[name].data, gguf.quants.quantize(w, Q8_0)), name
        # ... and decode to within half a quantization step of each weight, plus what storing
        # the step d as float16 costs: |q| <= 127 times d's rounding error (<= 2^-11 d).
        back = gguf.quants.dequantize(q8[name].data, Q8_0)
        step = np.abs(w.reshape(-1, 32)).max(axis=1, keepdims=True) / 127
        assert (np.abs(back - w).reshape(-1, 32) <= step * (0.5 + 127 * 2**-11)).all()


def test_q8_0_quantizer_in_row_chunks_equals_gguf_py():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((50, 96), dtype=np.float32) * np.float32(0.1)
    w[3, :32] = 0.0  # an all-zero block: d = 0, q = 0
    w[7, 5] = 40.0  # an outlier sets its block's scale
    expected = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0)
    for chunk in (1, 7, 256):
        assert np.array_equal(_quantize_q8_0(w, rows_per_chunk=chunk), expected)


def test_q8_0_falls_back_to_f16_where_rows_are_not_blocks_of_32(tmp_path):
    # stories260K's MLP width is 172: w2 (down) has rows of 172, not a multiple of 32.
    out = convert(DEFAULT_CHECKPOINT, tmp_path / "q8.gguf", out_type="q8_0")
    reader = gguf.GGUFReader(out)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.ffn_down.weight"] == "F16"
    assert types["blk.0.ffn_up.weight"] == types["token_embd.weight"] == "Q8_0"
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q8_0


def llama_cpp_rope_factors(config) -> list[float]:
    """convert_hf_to_gguf.py's Llama 3.1 rope_freqs factors, written out independently."""
    s = config.rope_scaling
    factors = []
    for i in range(0, config.head_dim, 2):
        freq = 1.0 / config.rope_theta ** (i / config.head_dim)
        wavelen = 2 * math.pi / freq
        if wavelen < s.original_max_position_embeddings / s.high_freq_factor:
            factors.append(1.0)
        elif wavelen > s.original_max_position_embeddings / s.low_freq_factor:
            factors.append(s.factor)
        else:
            smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
                s.high_freq_factor - s.low_freq_factor
            )
            factors.append(1 / ((1 - smooth) / s.factor + smooth))
    return factors


def test_llama3_scaling_becomes_llama_cpp_rope_freqs(tmp_path):
    out = convert(FIXTURES / "llama3_hub_config", tmp_path / "m.gguf")
    rope_freqs = gguf_tensors(gguf.GGUFReader(out))["rope_freqs.weight"]
    config = llama_np.load(FIXTURES / "llama3_hub_config").config
    assert rope_freqs.tensor_type == gguf.GGMLQuantizationType.F32
    assert np.allclose(rope_freqs.data, llama_cpp_rope_factors(config), rtol=1e-6)
    # Llama 3.1 8B's real scaling has all three bands: kept, blended and slowed by `factor`.
    llama31 = KNOWN_MODELS["llama-3.1-8b"]
    factors = llama_cpp_rope_factors(llama31)
    assert np.allclose(rope_freq_divisors(llama31), factors, rtol=1e-6)
    assert factors[0] == 1.0 and factors[-1] == 8.0 and any(1 < f < 8 for f in factors)


def test_linear_scaling_is_written_as_llama_cpp_keys(tmp_path):
    reader = gguf.GGUFReader(convert(FIXTURES / "linear_scaling_hub_config", tmp_path / "m.gguf"))
    assert reader.fields["llama.rope.scaling.type"].contents() == "linear"
    assert reader.fields["llama.rope.scaling.factor"].contents() == 4.0


def test_head_dim_other_than_dim_over_heads_is_written(tmp_path):
    reader = gguf.GGUFReader(convert(FIXTURES / "head_dim", tmp_path / "m.gguf"))
    assert reader.fields["llama.attention.key_length"].contents() == 32
    assert reader.fields["llama.attention.value_length"].contents() == 32
    assert reader.fields["llama.rope.dimension_count"].contents() == 32


# ---------------------------------------------------------------- the command


def test_cli_convert_writes_gguf_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "stories.gguf"
    assert main(["convert", str(DEFAULT_CHECKPOINT), str(out), "--type", "f16"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert gguf.GGUFReader(out).fields["general.file_type"].contents() == 1
    assert main(["convert", str(DEFAULT_CHECKPOINT), str(out)]) == 1
    assert "already exists; pass --force" in capsys.readouterr().err
    assert main(["convert", str(DEFAULT_CHECKPOINT), str(out), "--force"]) == 0
    assert gguf.GGUFReader(out).fields["general.file_type"].contents() == 0
    assert [p.name for p in tmp_path.iterdir()] == ["stories.gguf"]  # no partial files left


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["x.gguf", "--type", "q4_0"], "--type 'q4_0' cannot be written to GGUF"),
        (["x", "--type", "q8_0"], "--type 'q8_0' cannot be written to HF"),
        (["x", "--to", "onnx"], "unknown output format 'onnx'"),
        (["missing/x.gguf"], "does not exist; create it first"),
    ],
)
def test_cli_convert_errors_name_the_argument(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(["convert", str(DEFAULT_CHECKPOINT), *args]) == 1
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_force_never_deletes_the_source(tmp_path):
    source = convert(FIXTURES / "tied", tmp_path / "model")
    with pytest.raises(ArgumentError, match="holds the checkpoint being converted"):
        convert(source, tmp_path, force=True)
    with pytest.raises(ArgumentError, match="holds the checkpoint being converted"):
        convert(source, source, force=True)
    assert llama_np.load(source).config.tie_embeddings
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(ArgumentError, match="not a Hugging Face model directory"):
        convert(source, tmp_path / "notes", force=True)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def test_cli_convert_help_names_formats_and_types(capsys):
    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    text = capsys.readouterr().out
    assert "GGUF" in text and "q8_0" in text and "--force" in text


# ---------------------------------------------------------------- the GGUF writer alone


def test_gguf_writer_value_types_read_back_with_gguf_py(tmp_path):
    T = gguf.GGUFValueType
    metadata = {
        "a.u32": 7,
        "a.i32": -7,
        "a.f32": 0.5,
        "a.bool": True,
        "a.str": "héllo",
        "a.strings": ["<s>", "▁the", ""],
        "a.ints": [1, -2, 3],
        "a.floats": [0.0, -1.5],
        "a.u8": np.uint8(200),
        "a.i64": np.int64(-(2**40)),
        "a.f64": np.float64(1e-300),
        "a.u16s": np.array([1, 65535], dtype=np.uint16),
        "a.bools": np.array([True, False]),
    }
    path = tmp_path / "values.gguf"
    write_gguf(path, metadata, [])
    fields = gguf.GGUFReader(path).fields
    expected_types = {
        "a.u32": [T.UINT32],
        "a.i32": [T.INT32],
        "a.f32": [T.FLOAT32],
        "a.bool": [T.BOOL],
        "a.str": [T.STRING],
        "a.strings": [T.ARRAY, T.STRING],
        "a.ints": [T.ARRAY, T.INT32],
        "a.floats": [T.ARRAY, T.FLOAT32],
        "a.u8": [T.UINT8],
        "a.i64": [T.INT64],
        "a.f64": [T.FLOAT64],
        "a.u16s": [T.ARRAY, T.UINT16],
        "a.bools": [T.ARRAY, T.BOOL],
    }
    assert {k: fields[k].types for k in metadata} == expected_types
    for key, value in metadata.items():
        found = fields[key].contents()
        assert np.array_equal(np.asarray(found), np.asarray(value)), key


def test_gguf_writer_refuses_values_it_cannot_type(tmp_path):
    with pytest.raises(ArgumentError, match="GGUF arrays hold one type"):
        write_gguf(tmp_path / "x.gguf", {"k": [1, "a"]}, [])
    with pytest.raises(ArgumentError, match="no GGUF type"):
        write_gguf(tmp_path / "y.gguf", {"k": {"a": 1}}, [])


# ---------------------------------------------------------------- tokenizer files for HF

TOKENIZER_TEXTS = [
    "Hello world",
    "  leading spaces and\ttabs\n\nnewlines   ",
    "héllo wörld ñ 日本語 🤖",  # not U+2581: SentencePiece reads it as its space symbol
    "12345 3.14159 1,000,000",
    "def f(x):\n    return x**2  # comment",
    "<s> not special </s> <unk>",
    "",
    " ",
    "a" * 50,
]


def test_sentencepiece_model_written_from_pieces_encodes_as_the_original():
    # Llama 2's tokenizer.model, taken apart into pieces/scores/types and written back: the
    # sentencepiece library (the reference) must encode every text the same way.
    import sentencepiece

    path = Path(__file__).parent / "data" / "tokenizers" / "llama2" / "tokenizer.model"
    sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
    kinds = {
        sp.is_unknown: 2,
        sp.is_control: 3,
        sp.is_unused: 5,
        sp.is_byte: 6,
    }
    types = [next((t for test, t in kinds.items() if test(i)), 1) for i in range(sp.vocab_size())]
    data = sentencepiece_model_bytes(
        [sp.id_to_piece(i) for i in range(sp.vocab_size())],
        [sp.get_score(i) for i in range(sp.vocab_size())],
        types,
        unk_id=sp.unk_id(),
        bos_id=sp.bos_id(),
        eos_id=sp.eos_id(),
        pad_id=sp.pad_id(),
    )
    written = sentencepiece.SentencePieceProcessor(model_proto=data)
    assert written.vocab_size() == sp.vocab_size() == 32000
    assert (written.bos_id(), written.eos_id(), written.unk_id()) == (1, 2, 0)
    for text in TOKENIZER_TEXTS:
        assert written.encode(text) == sp.encode(text), text
    assert [written.is_byte(i) for i in range(300)] == [sp.is_byte(i) for i in range(300)]


def test_attention_biases_get_gguf_names_and_the_q_k_permutation(tmp_path):
    config = LlamaConfig(dim=64, n_layers=1, n_heads=4, n_kv_heads=2, hidden_dim=96, vocab_size=128)
    tensors = random_tensors(config)
    rng = np.random.default_rng(1)
    for name, rows in (("wq", 64), ("wk", 32), ("wv", 32), ("wo", 64)):
        tensors[f"layers.0.attention.{name}.bias"] = rng.standard_normal(rows, dtype=np.float32)
    source = write_hf(tmp_path / "hf", config, tensors)  # q/k weights and biases half-split
    stored = load_file(source / "model.safetensors")
    found = gguf_tensors(gguf.GGUFReader(convert(source, tmp_path / "m.gguf")))
    q_bias = stored["model.layers.0.self_attn.q_proj.bias"]
    assert np.array_equal(found["blk.0.attn_q.bias"].data, llama_cpp_permute(q_bias, 4))
    k_bias = stored["model.layers.0.self_attn.k_proj.bias"]
    assert np.array_equal(found["blk.0.attn_k.bias"].data, llama_cpp_permute(k_bias, 2))
    assert np.array_equal(
        found["blk.0.attn_output.bias"].data, tensors["layers.0.attention.wo.bias"]
    )
    assert json.loads((convert(source, tmp_path / "out") / "config.json").read_text())[
        "attention_bias"
    ]


def test_stories260k_hf_export_tokenizer_encodes_as_tok512_bin(stories_hf, stories260k):
    exported = llama_np.load_tokenizer(stories_hf)
    assert type(exported).__name__ == "SentencePieceTokenizer"  # read by sentencepiece itself
    for text in TOKENIZER_TEXTS:
        assert exported.encode(text) == stories260k.tokenizer.encode(text), text
    config = json.loads((stories_hf / "tokenizer_config.json").read_text())
    assert (config["bos_token"], config["eos_token"], config["add_bos_token"]) == (
        "<s>",
        "</s>",
        True,
    )


DATA = Path(__file__).parent / "data" / "tokenizers"


@pytest.mark.parametrize(
    "source",
    [
        "llama2/tokenizer.model",
        "llama3/tokenizer.model",
        "hf_smollm/tokenizer.json",
        "hf_gpt2/tokenizer.json",
    ],
)
def test_hf_tokenizer_files_from_gguf_metadata_encode_as_the_original(tmp_path, source):
    original = llama_np.load_tokenizer(DATA / source)
    files = hf_tokenizer_files(gguf_tokenizer_metadata(original))
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    written = llama_np.load_tokenizer(tmp_path)
    texts = [*TOKENIZER_TEXTS, "<|begin_of_text|>Hi<|eot_id|>", "I'm   don't 2024\n\n\tx"]
    for text in texts:
        assert written.encode(text) == original.encode(text), text
    assert (written.bos_id, written.eos_id) == (original.bos_id, original.eos_id)


def test_chat_template_goes_into_gguf_and_hf_exports(tmp_path, stories_hf):
    import shutil

    source = Path(shutil.copytree(stories_hf, tmp_path / "chatty"))
    template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{{ eos_token }}{% endfor %}"
    config = json.loads((source / "tokenizer_config.json").read_text())
    (source / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
    fields = gguf.GGUFReader(convert(source, tmp_path / "chatty.gguf")).fields
    assert fields[gguf.Keys.Tokenizer.CHAT_TEMPLATE].contents() == template
    hf = convert(source, tmp_path / "chatty-hf")
    assert llama_np.load_tokenizer(hf).chat_template == template


@pytest.mark.parametrize("name", ["llama-3.1-8b", "llama-3.2-1b", "llama3_hub_config"])
def test_gguf_rope_divisors_become_an_equivalent_config_json_scaling(name):
    # GGUF keeps Llama 3.1 scaling only as rope_freqs divisors; an HF export must say it as
    # rope_scaling. The recovered scaling must give the same frequencies as the original.
    from types import SimpleNamespace

    from llama_np.checkpoints.export import llama3_scaling_from_divisors
    from llama_np.checkpoints.hf import read_hf_config
    from llama_np.layers import rope_frequencies

    config = KNOWN_MODELS.get(name) or read_hf_config(FIXTURES / name)
    divisors = tuple(float(d) for d in rope_freq_divisors(config))
    from_gguf = SimpleNamespace(  # what the GGUF loader's config holds
        head_dim=config.head_dim,
        rope_theta=config.rope_theta,
        rope_scaling=SimpleNamespace(kind="divisors", divisors=divisors),
    )
    scaling = llama3_scaling_from_divisors(from_gguf)
    assert scaling.kind == "llama3" and scaling.factor == config.rope_scaling.factor
    expected = rope_frequencies(config.head_dim, config.rope_theta, config.rope_scaling)
    found = rope_frequencies(config.head_dim, config.rope_theta, scaling)
    assert np.allclose(found, expected, rtol=1e-5)
    if name in KNOWN_MODELS:  # Meta's own parameters come back
        assert scaling == config.rope_scaling


# ---------------------------------------------------------------- round trips via the GGUF loader


@pytest.fixture(scope="module")
def gguf_loader() -> None:
    """These tests run where llama_np loads GGUF (the gguf branch's loader)."""
    pytest.importorskip("llama_np.checkpoints.gguf", reason="the GGUF loader is not on this branch")


@pytest.fixture(scope="module")
def stories_gguf(tmp_path_factory, gguf_loader) -> Path:
    return convert(DEFAULT_CHECKPOINT, tmp_path_factory.mktemp("stories") / "stories260K.gguf")


def test_stories260k_gguf_f32_round_trip_is_exact(stories_gguf, stories260k):
    model = llama_np.load(stories_gguf, weights_dtype="fp32")
    assert model.config.rope_interleaved and model.config.tie_embeddings
    tokens = stories260k.tokenizer.encode(PROMPT)
    assert model.tokenizer.encode(PROMPT) == tokens  # the tokenizer from the GGUF metadata
    assert np.array_equal(prompt_logits(model, tokens), prompt_logits(stories260k, tokens))


def test_converted_stories260k_gguf_generates_the_published_story(stories_gguf):
    from test_stories260k import REFERENCE

    text = llama_np.generate_text(llama_np.load(stories_gguf), "", 200, temperature=0)
    assert text.startswith(REFERENCE)


@pytest.mark.parametrize("case", ["fp32", "tied", "head_dim", "llama3_hub_config", "meta"])
def test_gguf_of_a_fixture_matches_transformers(tmp_path, gguf_loader, case):
    model = llama_np.load(convert(FIXTURES / case, tmp_path / "m.gguf"))
    assert model.config.rope_interleaved  # GGUF's pairing: HF q/k rows were permuted
    expected = np.load(FIXTURES / case / "logits.npy")
    logits = prompt_logits(model, fixture_tokens(case))
    assert np.abs(logits - expected).max() < 1e-3 * max(1.0, np.abs(expected).max())


@pytest.mark.parametrize(("out_type", "tolerance"), [("f16", 2e-3), ("q8_0", 2e-2)])
def test_gguf_f16_and_q8_0_load_close_to_f32(
    tmp_path, stories_gguf, stories260k, out_type, tolerance
):
    model = llama_np.load(convert(DEFAULT_CHECKPOINT, tmp_path / "m.gguf", out_type=out_type))
    tokens = stories260k.tokenizer.encode(PROMPT)
    expected = prompt_logits(stories260k, tokens)
    logits = prompt_logits(model, tokens)
    assert 0 < np.abs(logits - expected).max() < tolerance * np.abs(expected).max()
    assert (logits.argmax(-1) == expected.argmax(-1)).all()


def test_gguf_exports_again_to_gguf_and_hf(tmp_path, stories_gguf, stories260k):
    tokens = stories260k.tokenizer.encode(PROMPT)
    expected = prompt_logits(stories260k, tokens)
    again = llama_np.load(convert(stories_gguf, tmp_path / "again.gguf"), weights_dtype="fp32")
    assert np.array_equal(prompt_logits(again, tokens), expected)
    hf = llama_np.load(convert(stories_gguf, tmp_path / "hf"))
    assert hf.tokenizer.encode(PROMPT) == tokens  # tokenizer.model made from the metadata
    assert np.abs(prompt_logits(hf, tokens) - expected).max() < 1e-4


def test_llama3_gguf_exports_to_hf_with_rope_scaling(tmp_path, gguf_loader):
    gguf_file = convert(FIXTURES / "llama3_hub_config", tmp_path / "m.gguf")
    model = llama_np.load(convert(gguf_file, tmp_path / "hf"))
    assert model.config.rope_scaling.kind == "llama3"
    expected = np.load(FIXTURES / "llama3_hub_config" / "logits.npy")
    logits = prompt_logits(model, fixture_tokens("llama3_hub_config"))
    assert np.abs(logits - expected).max() < 1e-3 * max(1.0, np.abs(expected).max())


def test_a_model_with_attention_biases_survives_both_exports(tmp_path):
    """q/k/v/o biases (schema.py's optional tensors) load from HF, and the GGUF and HF exports
    load back with the same logits (HF's config then says attention_bias: true)."""
    config = LlamaConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=96, vocab_size=128)
    tensors = random_tensors(config)
    rng = np.random.default_rng(2)
    for i in range(config.n_layers):
        for name, rows in (("wq", 64), ("wk", 32), ("wv", 32), ("wo", 64)):
            bias = 0.5 * rng.standard_normal(rows, dtype=np.float32)
            tensors[f"layers.{i}.attention.{name}.bias"] = bias
    source = write_hf(tmp_path / "hf", config, tensors)
    tokens = [1, 5, 9, 33, 7]
    want = llama_np.load(source).prefill(tokens, llama_np.load(source).new_cache(), True)
    without = Model.from_tensors(config, {n: t for n, t in tensors.items() if "bias" not in n})
    assert not np.allclose(want, without.prefill(tokens, without.new_cache(), True), atol=1e-3)
    for out in (tmp_path / "m.gguf", tmp_path / "out"):
        model = llama_np.load(convert(source, out))
        got = model.prefill(tokens, model.new_cache(), all_logits=True)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_end_tokens_known_by_their_text_need_no_key():
    """Hermes-style configs stop on 4 tokens: those llama.cpp (and llama_np's GGUF reader)
    know by their text (<|eot_id|>, <|im_end|>, ...) need no eot/eom key, so the model converts;
    only more unnamed end tokens than eot and eom hold are refused."""
    from llama_np.checkpoints.export import _end_tokens
    from llama_np.errors import CheckpointError

    tokens = ["<unk>", "<s>", "</s>", "<|im_end|>", "<|eot_id|>", "a", "b", "c"]
    config = LlamaConfig(dim=8, n_layers=1, n_heads=2, n_kv_heads=2, hidden_dim=8, vocab_size=8,
                         stop_ids=(2, 3, 4, 1, 5))  # fmt: skip
    assert _end_tokens(config, tokens, 2) == {
        "tokenizer.ggml.eot_token_id": 1, "tokenizer.ggml.eom_token_id": 5,
    }  # fmt: skip
    with pytest.raises(CheckpointError, match=r"tokens \[1, 5, 6\] besides EOS"):
        _end_tokens(config.replace(stop_ids=(2, 1, 5, 6)), tokens, 2)
