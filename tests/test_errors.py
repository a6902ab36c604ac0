"""Every bad input to the Python API raises one specific LlamaNpError whose message names the
file or argument and the problem (the CLI versions are in test_errors_cli.py)."""

from __future__ import annotations

import math
import struct
import zipfile

import numpy as np
import pytest
from bad_files import (
    FUZZ_CONFIG,
    TOKENIZER_512,
    llama2c_bytes,
    memory_limit,
    random_tensors,
    tokenizer_bytes,
)

import llama_np
from llama_np import (
    ArgumentError,
    CheckpointError,
    ConfigError,
    ContextLengthError,
    GenerationStats,
    LlamaConfig,
    MemoryLimitError,
    Model,
    NumericalError,
    TokenizerError,
    generate,
    generate_text,
    limits,
    load,
    load_tokenizer,
)

TENSORS = random_tensors(FUZZ_CONFIG)
VALID = {v: llama2c_bytes(FUZZ_CONFIG, TENSORS, v) for v in (0, 1, 2)}


def with_header_int(data: bytes, index: int, value: int) -> bytes:
    """`data` with int32 number `index` of its header (counted from byte 0) set to `value`."""
    return data[: 4 * index] + struct.pack("<i", value) + data[4 * index + 4 :]


def legacy_with_dims(**dims) -> bytes:
    """A legacy file whose header says `dims` (the body is FUZZ_CONFIG's)."""
    order = ["dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"]
    data = VALID[0]
    for name, value in dims.items():
        data = with_header_int(data, order.index(name), value)
    return data


def zip_bytes(tmp_path) -> bytes:
    path = tmp_path / "archive.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("data.pkl", b"x")
    return path.read_bytes()


def nan_in_wk(version: int) -> bytes:
    tensors = dict(TENSORS)
    tensors["layers.1.attention.wk.weight"] = TENSORS["layers.1.attention.wk.weight"].copy()
    tensors["layers.1.attention.wk.weight"][2, 3] = np.nan
    return llama2c_bytes(FUZZ_CONFIG, tensors, version)


# (id, file name, file bytes or a function of tmp_path, pieces the message must contain)
BAD_CHECKPOINTS = [
    ("txt", "model.txt", b"hello", ["model.txt", "unknown checkpoint format '.txt'"]),
    ("gguf-suffix", "model.gguf", b"GGUF\x03\0\0\0", ["GGUF", "too short"]),
    (
        "gguf-magic",
        "model.bin",
        b"GGUF\x03\0\0\0" + b"\xff" * 100,
        ["GGUF", "truncated or corrupt"],
    ),
    ("zip", "model.bin", zip_bytes, ["zip archive", "not a llama2.c"]),
    ("safetensors", "model.bin", struct.pack("<Q", 2) + b"{}", ["safetensors file"]),
    ("too-short", "model.bin", bytes(10), ["10 bytes is too short", "llama2.c header"]),
    ("truncated-legacy", "model.bin", VALID[0][:-100], ["implies a file of", "truncated"]),
    ("truncated-v1", "model.bin", VALID[1][:-4], ["truncated"]),
    ("truncated-v2", "model.bin", VALID[2][:-1], ["truncated"]),
    ("truncated-v1-header", "model.bin", VALID[1][:200], ["truncated llama2.c header"]),
    ("trailing-bytes", "model.bin", VALID[0] + bytes(12), ["12 unexpected bytes"]),
    ("dim-2**30", "model.bin", legacy_with_dims(dim=2**30), ["dim=1073741824", "corrupt"]),
    (
        "huge-everything",
        "model.bin",
        legacy_with_dims(dim=2**30, hidden_dim=2**31 - 1, n_layers=2**31 - 1, n_heads=2),
        ["corrupt"],
    ),
    ("negative-dim", "model.bin", legacy_with_dims(dim=-8), ["dim must be a positive"]),
    ("zero-layers", "model.bin", legacy_with_dims(n_layers=0), ["n_layers must be a positive"]),
    ("dim-heads", "model.bin", legacy_with_dims(n_heads=3), ["dim (8)", "divisible by n_heads"]),
    ("gqa", "model.bin", legacy_with_dims(n_kv_heads=3), ["multiple of n_kv_heads (3)"]),
    ("version-3", "model.bin", with_header_int(VALID[1], 1, 3), ["version 3 is not supported"]),
    ("group-size", "model.bin", VALID[2][:37] + struct.pack("<i", 3) + VALID[2][41:], ["group"]),
    ("nan-weight-v1", "model.bin", nan_in_wk(1), ["layers.1.attention.wk.weight", "1 NaN/Inf"]),
    ("nan-weight-v0", "model.bin", nan_in_wk(0), ["layers.1.attention.wk.weight", "corrupt"]),
]


@pytest.mark.parametrize(
    "name, content, expected", [c[1:] for c in BAD_CHECKPOINTS], ids=[c[0] for c in BAD_CHECKPOINTS]
)
def test_bad_checkpoint_files(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content(tmp_path) if callable(content) else content)
    with pytest.raises(CheckpointError) as e:
        load(path, tokenizer=TOKENIZER_512)
    for piece in expected:
        assert piece in str(e.value)
    assert name in str(e.value)  # which file, also for a bad tensor found while converting
    assert path.read_bytes() == (content(tmp_path) if callable(content) else content)


def test_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match="no such file or directory"):
        load(tmp_path / "nope.bin")


def test_directory_without_checkpoint(tmp_path):
    (tmp_path / "tokenizer.bin").write_bytes(TOKENIZER_512.read_bytes())
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(CheckpointError, match=r"checkpoint directory.*files: none"):
        load(tmp_path)


def test_directory_with_two_checkpoints(tmp_path):
    (tmp_path / "a.bin").write_bytes(VALID[0])
    (tmp_path / "b.bin").write_bytes(VALID[1])
    with pytest.raises(CheckpointError, match=r"files: a\.bin, b\.bin; pass the path of one"):
        load(tmp_path)


def test_valid_files_load_the_same_weights(tmp_path):
    """The checks above refuse nothing valid: all three versions load, to the same model."""
    logits = []
    for version, data in VALID.items():
        path = tmp_path / f"v{version}.bin"
        path.write_bytes(data)
        model = load(path, tokenizer=TOKENIZER_512)
        logits.append(model.prefill([1, 50, 60], model.new_cache()))
    np.testing.assert_array_equal(logits[0], logits[1])
    np.testing.assert_allclose(logits[2], logits[0], atol=0.1)  # Q8_0 rounding


# ---------------------------------------------------------------- memory


def test_model_too_large_for_memory(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(VALID[1])
    with memory_limit(10_000), pytest.raises(MemoryLimitError) as e:
        load(path, tokenizer=TOKENIZER_512)
    message = str(e.value)
    assert str(path) in message and "9.77 KiB of memory is available" in message
    assert f"needs {limits.format_bytes(limits.model_bytes(FUZZ_CONFIG))}" in message


def test_long_context_header_is_refused_before_allocating(tmp_path):
    """A versioned header's seq_len is not backed by file bytes: 2**31-1 positions of RoPE
    tables would be 100+ GB. Refused by the memory check, not by running out of memory."""
    path = tmp_path / "model.bin"
    path.write_bytes(with_header_int(VALID[1], 8, 2**31 - 1))
    with memory_limit(2**30), pytest.raises(MemoryLimitError, match="shorter context"):
        load(path, tokenizer=TOKENIZER_512)


def test_kv_cache_too_large_for_memory():
    model = llama_np.load()
    needed = model.config.kv_cache_bytes(512)
    with memory_limit(needed - 1), pytest.raises(MemoryLimitError) as e:
        model.new_cache(512, batch_size=2)
    assert "KV cache of 512 positions × 2 sequence(s)" in str(e.value)
    assert "fewer positions" in str(e.value) and "fewer batch rows" in str(e.value)
    with memory_limit(needed):
        assert model.new_cache(512).nbytes == needed
    with memory_limit(needed - 1), pytest.raises(MemoryLimitError):
        generate_text(model, "Hi", 511)  # generate's cache goes through the same check


def test_available_memory_reads_meminfo_or_falls_back(monkeypatch):
    from_meminfo = limits.available_memory()
    assert from_meminfo is not None and from_meminfo > 0

    def no_proc(*args, **kwargs):
        raise OSError("no /proc")

    monkeypatch.setattr("builtins.open", no_proc)
    fallback = limits.available_memory()
    assert fallback is not None and fallback > 0


# ---------------------------------------------------------------- tokenizers


def test_tokenizer_missing(tmp_path):
    with pytest.raises(TokenizerError, match="tokenizer file does not exist"):
        load_tokenizer(tmp_path / "tok.bin")


def test_tokenizer_directory_without_one(tmp_path):
    with pytest.raises(TokenizerError, match="no tokenizer file found"):
        load_tokenizer(tmp_path)


def test_tokenizer_unknown_format(tmp_path):
    path = tmp_path / "tokenizer.model"
    path.write_bytes(b"\x0a\x05hello")  # starts like a protobuf, but is not a SentencePiece model
    with pytest.raises(TokenizerError, match=r"tokenizer\.model: not a SentencePiece model"):
        load_tokenizer(path)
    path.write_bytes(b"plain text, not a tokenizer")
    with pytest.raises(TokenizerError, match=r"unknown tokenizer format"):
        load_tokenizer(path)
    (tmp_path / "vocab.txt").write_text("a 1")
    with pytest.raises(TokenizerError, match=r"unknown tokenizer format"):
        load_tokenizer(tmp_path / "vocab.txt")


@pytest.mark.parametrize("cut", [3, 4, 100, 3001, 6226])
def test_tokenizer_truncated(tmp_path, cut):
    path = tmp_path / "tok.bin"
    path.write_bytes(TOKENIZER_512.read_bytes()[:cut])
    with pytest.raises(TokenizerError) as e:
        load_tokenizer(path, vocab_size=512)
    assert str(path) in str(e.value)
    assert any(w in str(e.value) for w in ("too short", "truncated", "byte length", "too few"))


def test_tokenizer_garbage(tmp_path):
    path = tmp_path / "tok.bin"
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(TokenizerError, match=r"not a llama2\.c tokenizer\.bin"):
        load_tokenizer(path)


def test_tokenizer_with_too_few_tokens(tmp_path):
    path = tmp_path / "tok.bin"
    path.write_bytes(tokenizer_bytes([b"a"] * 100, [0.0] * 100))
    with pytest.raises(TokenizerError, match="100 tokens is too few"):
        load_tokenizer(path)


@pytest.mark.parametrize("n_tokens, found", [(300, "only 300"), (600, "more")])
def test_tokenizer_vocab_does_not_match_model(tmp_path, n_tokens, found):
    pieces = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{b:02X}>".encode() for b in range(256)]
    pieces += [f"p{i}".encode() for i in range(n_tokens - len(pieces))]
    tok = tmp_path / "tok.bin"
    tok.write_bytes(tokenizer_bytes(pieces, [0.0] * len(pieces)))
    with pytest.raises(TokenizerError) as e:
        load(llama_np.DEFAULT_CHECKPOINT, tokenizer=tok)
    assert "the model has 512 tokens" in str(e.value) and f"the file has {found}" in str(e.value)


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"dim": 10, "n_heads": 3, "n_kv_heads": 3}, r"dim \(10\) must be divisible by n_heads"),
        ({"dim": 12, "n_heads": 5, "n_kv_heads": 5}, r"dim \(12\) must be divisible by n_heads"),
        ({"n_heads": 4, "n_kv_heads": 3}, r"n_heads \(4\) must be a multiple of n_kv_heads"),
        ({"dim": 0}, "dim must be a positive integer, got 0"),
        ({"n_layers": -1}, "n_layers must be a positive integer, got -1"),
        ({"vocab_size": 0}, "vocab_size must be a positive integer"),
        ({"max_seq_len": 0}, "max_seq_len must be a positive integer"),
        ({"hidden_dim": 2.5}, "hidden_dim must be a positive integer, got 2.5"),
        ({"dim": 12, "n_heads": 4, "n_kv_heads": 4}, "head_dim must be a positive even number"),
        ({"norm_eps": math.nan}, "norm_eps must be > 0"),
        ({"rope_theta": -1.0}, "rope_theta must be > 0"),
    ],
)
def test_contradictory_config(changes, message):
    base = dict(dim=16, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=32, vocab_size=300)
    with pytest.raises(ConfigError, match=message):
        LlamaConfig(**{**base, **changes})


def test_explicit_head_dim_may_differ_from_dim_over_heads():
    config = LlamaConfig(
        dim=12, n_layers=1, n_heads=5, n_kv_heads=5, hidden_dim=8, vocab_size=300, head_dim=4
    )
    assert config.head_dim == 4


# ---------------------------------------------------------------- generation


@pytest.fixture(scope="module")
def stories():
    return llama_np.load()


def test_prompt_longer_than_context(stories):
    with pytest.raises(ContextLengthError, match=r"prompt is 513 tokens.*truncate_prompt=True"):
        generate(stories, [1] + [50] * 512, 5)


@pytest.mark.slow
def test_truncate_prompt_keeps_bos_and_the_end(stories):
    prompt = [1, *range(3, 503), *range(3, 103)]  # 601 tokens, context 512
    stats = GenerationStats()
    list(generate(stories, prompt, 20, stats=stats, truncate_prompt=True, temperature=0))
    assert stats.prompt_tokens == 512 - 20 and stats.prompt_tokens_dropped == 601 - 492
    # the kept prompt is BOS + the last 491 tokens: check by comparing greedy continuations
    reference = list(generate(stories, [1, *prompt[-491:]], 20, temperature=0))
    assert "".join(reference) == generate_text(
        stories, prompt, 20, truncate_prompt=True, temperature=0
    )


def test_truncate_prompt_leaves_at_most_half_the_context_for_new_tokens(stories):
    stats = GenerationStats()
    list(generate(stories, [1] + [50] * 600, 10_000, stats=stats, truncate_prompt=True))
    assert stats.prompt_tokens == 256
    assert stats.prompt_tokens + stats.generated_tokens <= 512


def test_max_new_tokens_past_context_stops_and_says_so(stories):
    stats = GenerationStats()
    prompt = [1] + [50] * 500
    n = 0
    for _ in generate(stories, prompt, 100, stats=stats, temperature=0, stop=()):
        n += 1
    # greedy on this prompt never produces an end token before the context is full
    assert stats.stop_reason == "context_full"
    assert stats.generated_tokens == 512 - 501


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": -0.1}, "temperature must be >= 0"),
        ({"temperature": math.nan}, "temperature must be >= 0"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
        ({"top_p": math.nan}, r"top_p must be in \(0, 1\]"),
        ({"top_k": -1}, "top_k must be an integer >= 0"),
        ({"top_k": 2.5}, "top_k must be an integer >= 0"),
        ({"min_p": -0.1}, r"min_p must be in \[0, 1\]"),
        ({"min_p": 1.1}, r"min_p must be in \[0, 1\]"),
        ({"repetition_penalty": 0.0}, "repetition_penalty must be > 0"),
        ({"repetition_penalty": -1.0}, "repetition_penalty must be > 0"),
        ({"max_new_tokens": -1}, "max_new_tokens must be an integer >= 0"),
        ({"max_new_tokens": 2.5}, "max_new_tokens must be an integer >= 0"),
        ({"stop": [""]}, "stop must be a string or a list of non-empty strings"),
        ({"prompt": []}, "the prompt has no tokens"),
        ({"prompt": [1, 512]}, r"token id 512 is outside the vocabulary 0\.\.511"),
        ({"prompt": [1, -3]}, r"token id -3 is outside the vocabulary"),
        ({"prompt": [1, 2.5]}, r"prompt must be text or a list of token ids, got \[1, 2\.5\]"),
    ],
)
def test_invalid_generation_arguments_fail_before_any_work(stories, monkeypatch, kwargs, message):
    def no_work(*args, **kwargs):
        raise AssertionError("the model ran before the arguments were checked")

    monkeypatch.setattr(stories, "prefill", no_work)
    monkeypatch.setattr(stories, "new_cache", no_work)
    kwargs = {"prompt": "Hi", **kwargs}
    with pytest.raises(ArgumentError, match=message):
        generate(stories, **kwargs)  # raised by the call itself, before iterating


@pytest.mark.parametrize("tokens", [[512], [-1], [1, 10**9]])
def test_model_refuses_token_ids_outside_vocab(stories, tokens):
    with pytest.raises(ArgumentError, match="outside the vocabulary"):
        stories.prefill(tokens, stories.new_cache(8))
    with pytest.raises(ArgumentError, match="outside the vocabulary"):
        stories.decode(tokens[-1], stories.new_cache(8))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_seq_len": 0}, r"max_seq_len must be in 1\.\.512"),
        ({"max_seq_len": 513}, r"max_seq_len must be in 1\.\.512"),
        ({"max_seq_len": 8, "batch_size": 0}, "batch_size must be a positive integer"),
    ],
)
def test_new_cache_arguments(stories, kwargs, message):
    with pytest.raises(ArgumentError, match=message):
        stories.new_cache(**kwargs)


def test_decode_past_the_cache(stories):
    cache = stories.new_cache(3)
    stories.prefill([1, 2, 3], cache)
    with pytest.raises(ContextLengthError, match="KV cache full: 3 positions used"):
        stories.decode(4, cache)


# ---------------------------------------------------------------- NaN / Inf


@pytest.fixture
def tiny_model():
    config = FUZZ_CONFIG.replace(max_seq_len=32)
    tok = load_tokenizer(TOKENIZER_512, 512)
    return Model.from_tensors(config, random_tensors(config), tok)


def test_nan_weight_names_the_layer_and_tensor(tiny_model):
    tiny_model.weights.layers[1].wo[3, 2] = np.nan  # e.g. corrupted after loading
    with pytest.raises(NumericalError) as e:
        generate_text(tiny_model, "Once upon a time", 5)
    message = str(e.value)
    assert "layer 1 (attention) produced NaN/Inf at position 0" in message
    assert "layers.1.attention.wo" in message and "corrupt" in message


def test_overflow_names_the_layer(tiny_model):
    # finite weights whose product overflows float32 (> 3.4e38)
    tiny_model.weights.layers[0].w_gate_up *= np.float32(1e20)
    tiny_model.weights.layers[0].w_down *= np.float32(1e20)
    with pytest.raises(NumericalError, match=r"layer 0 \(MLP\) produced NaN/Inf .* overflowed"):
        generate_text(tiny_model, "Once", 5)


def test_nan_in_one_embedding_row_is_found_at_its_position(tiny_model):
    tiny_model.weights.embedding[300] = np.inf
    with pytest.raises(NumericalError, match=r"embedding of token 300 \(position 2\)"):
        generate_text(tiny_model, [1, 40, 300, 41], 5)


def test_nan_during_decode_is_caught(tiny_model):
    """The prompt is clean; the token greedy decoding picks hits a corrupt embedding row."""
    w = tiny_model.weights
    w.embedding[:, 0] = np.abs(w.embedding[:, 0]) + 1  # every token: a positive feature 0 ...
    w.final_norm[:] = 0
    w.final_norm[0] = 1
    w.classifier[:, :] = 0
    w.classifier[0, 100] = 1  # ... that only token 100's logit reads: greedy picks 100
    w.embedding[100] = np.nan
    with pytest.raises(NumericalError, match=r"embedding of token 100 \(position 2\)"):
        generate_text(tiny_model, [1, 40], 5, temperature=0)
