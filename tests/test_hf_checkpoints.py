"""Hugging Face and Meta checkpoints: logits against transformers, and the loaders' checks.

The fixtures in tests/fixtures/hf/ were made by scripts/make_hf_fixtures.py with transformers
and torch (see its docstring to regenerate them); these tests need neither.
"""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from checkpoint_writers import (
    PickleWriter,
    hf_config,
    random_tensors,
    safetensors_bytes,
    write_hf,
    write_llama2c,
    write_meta,
    write_pth,
)

import llama_np
from llama_np.checkpoints import _Progress
from llama_np.checkpoints.hf import config_from_hf
from llama_np.checkpoints.pth import read_pth
from llama_np.checkpoints.safetensors import read_safetensors, read_safetensors_dir
from llama_np.config import LlamaConfig, RopeScaling
from llama_np.dtypes import BFLOAT16
from llama_np.errors import CheckpointError, ConfigError
from llama_np.model import Model

FIXTURES = Path(__file__).parent / "fixtures" / "hf"
CASES = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())


def greedy(model: Model, tokens: list[int], n: int) -> list[int]:
    cache = model.new_cache(len(tokens) + n)
    logits = model.prefill(tokens, cache)
    out = []
    for _ in range(n):
        out.append(int(np.argmax(logits)))
        logits = model.decode(out[-1], cache)
    return out


def prompt_logits(model: Model, tokens: list[int]) -> np.ndarray:
    return model.prefill(tokens, model.new_cache(len(tokens)), all_logits=True)  # (T, V)


# ---------------------------------------------------------------- against transformers


def test_every_layout_has_a_fixture():
    expected = {"fp32", "fp16", "bf16", "sharded", "tied", "llama3_scaling", "head_dim", "meta"}
    expected |= {"llama3_hub_config", "linear_scaling_hub_config", "no_rope_theta_hub_config"}
    assert set(CASES) == expected


@pytest.mark.parametrize("case", CASES)
def test_logits_and_greedy_match_transformers(case):
    reference = json.loads((FIXTURES / case / "reference.json").read_text())
    expected = np.load(FIXTURES / case / "logits.npy")
    model = llama_np.load(FIXTURES / case)
    logits = prompt_logits(model, reference["tokens"])
    assert logits.dtype == np.float32
    tolerance = 1e-3 * max(1.0, float(np.abs(expected).max()))
    assert np.abs(logits - expected).max() < tolerance
    assert greedy(model, reference["tokens"], len(reference["greedy"])) == reference["greedy"]


@pytest.mark.parametrize(
    "case", ["llama3_scaling", "llama3_hub_config", "linear_scaling_hub_config"]
)
def test_rope_scaling_changes_these_fixtures_logits(case):
    # Otherwise the test above could not tell whether the scaling was applied.
    reference = json.loads((FIXTURES / case / "reference.json").read_text())
    expected = np.load(FIXTURES / case / "logits.npy")
    model = llama_np.load(FIXTURES / case)
    assert model.config.rope_scaling is not None
    unscaled = Model(model.config.replace(rope_scaling=None), model.weights)
    tolerance = 1e-3 * max(1.0, float(np.abs(expected).max()))
    assert np.abs(prompt_logits(unscaled, reference["tokens"]) - expected).max() > tolerance


def test_fixture_configs_are_read_as_written():
    cfg = {case: llama_np.load(FIXTURES / case).config for case in CASES}
    assert cfg["fp32"].rope_interleaved is False
    assert cfg["meta"].rope_interleaved is True
    # use_scaled_rope: Meta's fixed Llama 3.1 scaling (too slow-acting to show in 16 positions)
    assert cfg["meta"].rope_scaling == RopeScaling("llama3", 8.0, 1.0, 4.0, 8192)
    assert cfg["tied"].tie_embeddings and not cfg["fp32"].tie_embeddings
    assert cfg["head_dim"].head_dim == 32 and cfg["head_dim"].dim == 64
    assert cfg["no_rope_theta_hub_config"].rope_theta == 10000.0
    assert cfg["llama3_hub_config"].rope_theta == 500000.0
    assert cfg["llama3_hub_config"].rope_scaling.kind == "llama3"
    assert cfg["linear_scaling_hub_config"].rope_scaling.factor == 4.0
    assert cfg["fp32"].norm_eps == 1e-5 and cfg["fp32"].max_seq_len == 64


def test_weights_are_memory_mapped_in_their_file_dtype():
    tensors = read_safetensors(FIXTURES / "bf16" / "model.safetensors")
    embedding = tensors["model.embed_tokens.weight"]
    assert embedding.dtype == BFLOAT16 and embedding.shape == (256, 64)
    assert isinstance(embedding.base, np.memmap) and not embedding.flags.writeable


# ---------------------------------------------------------------- our writers, all loaders

SMALL = LlamaConfig(
    dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=96, vocab_size=64, max_seq_len=32
)
TOKENS = [1, 5, 9, 33, 2, 60, 7, 7, 12]


@pytest.fixture(scope="module")
def small_reference(tmp_path_factory):
    """Logits of SMALL with random weights, through the llama2.c loader."""
    tensors = random_tensors(SMALL)
    path = write_llama2c(tmp_path_factory.mktemp("l2c") / "model.bin", SMALL, tensors)
    return tensors, prompt_logits(llama_np.load(path), TOKENS)


@pytest.mark.parametrize(
    "layout",
    [
        "F32", "F16", "BF16", "BF16 sharded", "F32 hub spelling", "meta BF16", "meta F32",
        "BF16 pytorch", "F32 pytorch sharded",
    ],
)  # fmt: skip
def test_llama2c_hf_and_meta_loaders_agree(tmp_path, small_reference, layout):
    tensors, expected = small_reference
    if layout.startswith("meta"):
        write_meta(tmp_path, SMALL, tensors, dtype=layout.split()[1])
    else:
        spelling = "hub" if "hub" in layout else "transformers5"
        n_shards = 3 if "sharded" in layout else 1
        pytorch = "pytorch" in layout  # pytorch_model.bin: Vicuna, OpenLLaMA, ...
        write_hf(tmp_path, SMALL, tensors, layout.split()[0], n_shards, spelling, pytorch)
    model = llama_np.load(tmp_path)
    assert model.config.rope_interleaved == layout.startswith("meta")
    atol = 1e-2 if layout == "F16" else 1e-4  # F16 rounds the smallest weights
    np.testing.assert_allclose(prompt_logits(model, TOKENS), expected, atol=atol)


@pytest.mark.parametrize("embedding_axis", [1, 0])  # Llama 2 splits it along D, Llama 3 along V
def test_meta_shards_are_joined_along_each_tensors_split_axis(
    tmp_path, small_reference, embedding_axis
):
    tensors, expected = small_reference
    write_meta(tmp_path, SMALL, tensors)
    (tmp_path / "consolidated.00.pth").unlink()
    rows = ("wq", "wk", "wv", "w1", "w3", "output")
    for k in range(2):
        shard = {}
        for name, array in tensors.items():
            if name.endswith("norm.weight"):
                shard[name] = array  # replicated
            elif name == "tok_embeddings.weight":
                shard[name] = np.split(array, 2, axis=embedding_axis)[k]
            elif name.split(".")[-2] in ("wo", "w2"):
                shard[name] = np.split(array, 2, axis=1)[k]
            else:
                assert name.split(".")[-2] in rows
                shard[name] = np.split(array, 2, axis=0)[k]
        write_pth(tmp_path / f"consolidated.0{k}.pth", shard)
    np.testing.assert_allclose(prompt_logits(llama_np.load(tmp_path), TOKENS), expected, atol=1e-4)


# ---------------------------------------------------------------- config.json


def test_both_config_spellings_give_the_same_config():
    hub = {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "vocab_size": 256,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        "torch_dtype": "bfloat16",
        "eos_token_id": [128001, 128008, 128009],
        "bos_token_id": 128000,
    }
    t5 = {k: v for k, v in hub.items() if k not in ("rope_theta", "rope_scaling", "torch_dtype")}
    t5["rope_parameters"] = {**hub["rope_scaling"], "rope_theta": 500000.0}
    t5["dtype"] = "bfloat16"
    config = config_from_hf(hub)
    assert config == config_from_hf(t5)
    assert config.rope_scaling.factor == 32.0 and config.rope_theta == 500000.0
    assert config.stop_ids == (128001, 128008, 128009) and config.bos_id == 128000
    # transformers' defaults: KV heads = heads, head_dim = hidden / heads, eps 1e-6, untied
    assert (config.n_kv_heads, config.head_dim, config.norm_eps) == (4, 16, 1e-6)
    assert not config.tie_embeddings and config.max_seq_len == 2048


def test_generation_config_adds_stop_ids():
    cfg = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 1}
    cfg |= {"num_attention_heads": 4, "vocab_size": 256, "eos_token_id": 2}
    assert config_from_hf(cfg, {"eos_token_id": [2, 7]}).stop_ids == (2, 7)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"architectures": ["Qwen2ForCausalLM"]}, "Qwen2ForCausalLM"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "'yarn'"),
        ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0}}, "low_freq_factor"),
        ({"mlp_bias": True}, "mlp_bias"),
        ({"hidden_act": "gelu"}, "gelu"),
        ({"num_attention_heads": 5}, "n_heads"),
        ({"hidden_size": None}, "hidden_size"),
    ],
)
def test_unsupported_configs_are_refused_by_name(change, message):
    cfg = hf_config(SMALL, spelling="hub") | change
    cfg.pop("head_dim")
    with pytest.raises(ConfigError, match=message):
        config_from_hf(cfg)


def test_mistral_without_sliding_window_is_llama():
    cfg = hf_config(SMALL) | {"architectures": ["MistralForCausalLM"], "sliding_window": None}
    assert config_from_hf(cfg).dim == SMALL.dim


def test_a_sliding_window_is_the_context():
    """Up to its window, a sliding window masks nothing: Mistral-7B-v0.1 (window 4096 of
    32768 positions) runs, exact, with a context of 4096; a longer window changes nothing,
    and Llama's config ignores the key as transformers' LlamaConfig does."""
    mistral = hf_config(SMALL) | {"architectures": ["MistralForCausalLM"]}
    mistral |= {"max_position_embeddings": 32768}
    assert config_from_hf(mistral | {"sliding_window": 4096}).max_seq_len == 4096
    assert config_from_hf(mistral).max_seq_len == 4096  # MistralConfig's default window
    assert config_from_hf(mistral | {"sliding_window": 65536}).max_seq_len == 32768
    llama = hf_config(SMALL) | {"sliding_window": 16, "max_position_embeddings": 4096}
    assert config_from_hf(llama).max_seq_len == 4096


def test_dynamic_rope_scaling_is_default_rope_up_to_its_original_context():
    """transformers' dynamic NTK scaling changes the angles only past the original context."""
    cfg = hf_config(SMALL, spelling="hub") | {"max_position_embeddings": 4096}
    dynamic = config_from_hf(cfg | {"rope_scaling": {"type": "dynamic", "factor": 2.0}})
    assert dynamic.rope_scaling is None and dynamic.max_seq_len == 4096
    scaling = {"rope_type": "dynamic", "factor": 4.0, "original_max_position_embeddings": 2048}
    assert config_from_hf(cfg | {"rope_scaling": scaling}).max_seq_len == 2048


def test_a_rope_scaling_error_names_the_file_once():
    cfg = hf_config(SMALL, spelling="hub") | {"rope_scaling": {"rope_type": "yarn", "factor": 4}}
    with pytest.raises(ConfigError) as caught:
        config_from_hf(cfg, source="x/config.json")
    assert str(caught.value).count("config.json") == 1


# ---------------------------------------------------------------- bad checkpoints


@pytest.fixture
def hf_dir(tmp_path, small_reference):
    return write_hf(tmp_path / "hf", SMALL, small_reference[0])


def rewrite_tensors(directory: Path, edit) -> None:
    path = directory / "model.safetensors"
    tensors = {n: np.asarray(a, dtype=np.float32) for n, a in read_safetensors(path).items()}
    edit(tensors)
    path.write_bytes(safetensors_bytes(tensors))


def test_missing_tensor_is_named_with_its_hf_name(hf_dir):
    rewrite_tensors(hf_dir, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing \['model.layers.1.mlp.up_proj.weight'\]"):
        llama_np.load(hf_dir)


def test_extra_tensor_is_named(hf_dir):
    rewrite_tensors(
        hf_dir, lambda t: t.update({"model.layers.0.mlp.gate_proj.bias": t["model.norm.weight"]})
    )
    with pytest.raises(
        CheckpointError, match=r"unexpected \['model.layers.0.mlp.gate_proj.bias'\]"
    ):
        llama_np.load(hf_dir)


def test_some_but_not_all_attention_biases_is_named(hf_dir):
    """q/k/v biases are optional (schema.py) but come together."""
    rewrite_tensors(
        hf_dir, lambda t: t.update({"model.layers.0.self_attn.q_proj.bias": t["model.norm.weight"]})
    )
    with pytest.raises(CheckpointError, match=r"wq\.bias but not .*wk\.bias.*come together"):
        llama_np.load(hf_dir)


def test_misshapen_tensor_is_named(hf_dir):
    def edit(t):
        t["model.layers.0.self_attn.k_proj.weight"] = t["model.layers.0.self_attn.q_proj.weight"]

    rewrite_tensors(hf_dir, edit)
    with pytest.raises(CheckpointError, match=r"k_proj.weight has shape \(32, 32\).*\(16, 32\)"):
        llama_np.load(hf_dir)


def test_tied_checkpoint_may_store_the_classifier_copy(tmp_path, small_reference):
    tensors = dict(small_reference[0])
    tied = SMALL.replace(tie_embeddings=True)
    del tensors["output.weight"]
    write_hf(tmp_path, tied, tensors)
    rewrite_tensors(
        tmp_path, lambda t: t.update({"lm_head.weight": t["model.embed_tokens.weight"]})
    )
    assert llama_np.load(tmp_path).config.tie_embeddings


def test_missing_shard_is_named(tmp_path, small_reference):
    write_hf(tmp_path, SMALL, small_reference[0], n_shards=3)
    (tmp_path / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model-00002-of-00003\.safetensors.*missing"):
        llama_np.load(tmp_path)


def header_file(path: Path, header: dict, data: bytes = b"\0" * 64) -> Path:
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)
    return path


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ({"w": {"dtype": "I8", "shape": [4], "data_offsets": [0, 4]}}, "'w' has dtype 'I8'"),
        ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, "'w' has 8 bytes"),
        ({"w": {"dtype": "F32", "shape": [40], "data_offsets": [0, 160]}}, "outside the data"),
        (
            {"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}},
            r"\['w'\]\.shape\[0\]: expected an integer",
        ),
        ({"w": {"dtype": "F32", "shape": [2]}}, r"\['w'\]\.data_offsets: required key is missing"),
        (
            {
                "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]},
            },
            "'a' and 'b' overlap",
        ),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_malformed_safetensors_headers(tmp_path, header, message):
    path = header_file(tmp_path / "bad.safetensors", header)
    with pytest.raises(CheckpointError, match=message) as info:
        read_safetensors(path)
    assert "bad.safetensors" in str(info.value)


def test_absurd_header_length_and_garbage_json(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes((2**40).to_bytes(8, "little") + b"{}")
    with pytest.raises(CheckpointError, match="header claims 1099511627776 bytes"):
        read_safetensors(path)
    path.write_bytes((4).to_bytes(8, "little") + b"{no}")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_safetensors(path)


def test_empty_and_unknown_directories_say_what_was_looked_for(tmp_path):
    with pytest.raises(CheckpointError, match=r"config\.json.*params\.json.*llama2\.c"):
        llama_np.load(tmp_path)
    (tmp_path / "params.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"no consolidated\.\*\.pth"):
        llama_np.load(tmp_path)


# ---------------------------------------------------------------- .pth safety


def malicious_pth(path: Path, marker: Path) -> Path:
    """A torch.save-shaped zip whose pickle calls os.system to create `marker`."""
    w = PickleWriter()
    w.global_("os", "system")
    w.out += b"("
    w.str_(f"touch {marker}")
    w.out += b"tR."  # TUPLE, REDUCE: os.system("touch ..."), STOP
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", bytes(w.out))
    return path


def test_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = malicious_pth(tmp_path / "evil.pth", marker)
    with pytest.raises(CheckpointError, match=r"refuses to load global os\.system"):
        read_pth(path)
    assert not marker.exists()


def test_malicious_meta_checkpoint_is_refused_by_load(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "params.json").write_text(json.dumps({"dim": 32, "n_layers": 1, "n_heads": 4}))
    malicious_pth(tmp_path / "consolidated.00.pth", marker)
    with pytest.raises(CheckpointError, match=r"refuses to load global os\.system"):
        llama_np.load(tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("module", "name"),
    [("builtins", "eval"), ("torch", "load"), ("numpy", "frombuffer"), ("torch._utils", "x")],
)
def test_only_the_tensor_globals_are_allowed(tmp_path, module, name):
    w = PickleWriter()
    w.global_(module, name)
    w.out += b"."
    path = tmp_path / "x.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x/data.pkl", bytes(w.out))
    with pytest.raises(CheckpointError, match=re.escape(f"refuses to load global {module}.{name}")):
        read_pth(path)


def test_pickle_may_not_modify_the_loaders_objects(tmp_path):
    # BUILD on an allowed global would otherwise set its attributes, e.g. the dtype that
    # torch.FloatStorage stands for, for every later load in the process.
    w = PickleWriter()
    w.global_("torch", "FloatStorage")
    w.out += b"}"  # EMPTY_DICT
    w.str_("dtype")
    w.str_("<i8")
    w.out += b"sb."  # SETITEM, BUILD, STOP
    path = tmp_path / "x.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x/data.pkl", bytes(w.out))
    with pytest.raises(CheckpointError, match="tries to modify a loader object"):
        read_pth(path)


def test_pth_tensor_outside_its_storage_is_refused(tmp_path):
    w = PickleWriter()
    w.empty_ordered_dict()
    w.out += b"("
    w.str_("w")
    w.tensor("FloatStorage", "0", 4, (3, 2))  # 6 elements from a 4-element storage
    w.out += b"u."
    path = tmp_path / "x.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x/data.pkl", bytes(w.out))
        z.writestr("x/data/0", np.zeros(4, dtype=np.float32).tobytes())
    with pytest.raises(CheckpointError, match="needs element 5 of a storage with 4"):
        read_pth(path)


def test_pth_tensors_are_memory_mapped_views(tmp_path, small_reference):
    write_meta(tmp_path, SMALL, small_reference[0])
    tensors = read_pth(tmp_path / "consolidated.00.pth")
    assert tensors["norm.weight"].dtype == BFLOAT16
    assert not tensors["norm.weight"].flags.writeable
    assert isinstance(tensors["norm.weight"].base, np.memmap)


# ---------------------------------------------------------------- progress


def test_progress_is_shown_only_when_loading_is_slow(monkeypatch, capsys):
    clock = [100.0]
    monkeypatch.setattr("llama_np.checkpoints.time.perf_counter", lambda: clock[0])
    progress = _Progress("tiny")
    progress(1, 2)
    assert capsys.readouterr().err == ""
    clock[0] += 5
    progress(2, 2)
    assert capsys.readouterr().err == "\rloading tiny: 2/2 tensors\n"


def test_copied_fixture_directory_still_loads(tmp_path):
    # Loading depends on the directory's contents only, not on its name or place.
    shutil.copytree(FIXTURES / "sharded", tmp_path / "renamed")
    assert llama_np.load(tmp_path / "renamed").config.name == "renamed"


@pytest.mark.parametrize("name", ["fp32", "fp16", "head_dim"])
def test_own_safetensors_reader_equals_the_safetensors_package(name):
    """llama_np reads safetensors itself (bf16 included); on the dtypes the package's NumPy
    API returns, both give the same tensors."""
    from safetensors.numpy import load_file

    directory = FIXTURES / name
    ours = read_safetensors_dir(directory)
    theirs = {}
    for file in sorted(directory.glob("*.safetensors")):
        theirs.update(load_file(file))
    assert sorted(ours) == sorted(theirs)
    for key, array in theirs.items():
        assert ours[key].dtype == array.dtype and np.array_equal(ours[key], array), key
