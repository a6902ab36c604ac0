"""The README's Python examples run as written and print what the README says they print."""

import re
from pathlib import Path

import pytest

import llama_np

README = (Path(__file__).parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
# Client examples need a server: tests/test_server.py runs them against one.
SERVER = "# with llama-np serve running"
BLOCKS = [b for b in BLOCKS if not b.startswith(SERVER)]


def block(containing: str) -> str:
    (code,) = [b for b in BLOCKS if containing in b]
    return code


def run(code: str, capsys) -> tuple[dict, str]:
    """Run a README block; -> its variables and what it printed."""
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace, capsys.readouterr().out


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_python_block_prints_what_its_comments_say(code, capsys):
    """Every block runs; a `print(...)  # (5, 8, 24, 24)` line prints that shape."""
    _, out = run(code, capsys)
    assert out
    for said in re.findall(r"^print\(.*\)\s+# (\([\d, ]+\))", code, re.M):
        assert said in out.splitlines(), (said, out)


def test_readme_first_example_prints_the_config_then_the_seeded_story(capsys):
    namespace, out = run(block("for piece in llama_np.generate"), capsys)
    model = namespace["model"]
    config, story = out.split("\n", 1)
    assert config == str(model.config) and config.startswith("LlamaConfig(dim=64, ")
    # seed=42: the same story generate_text tells, streamed piece by piece
    kwargs = dict(max_new_tokens=80, temperature=0.8, top_p=0.95, seed=42)
    assert story == llama_np.generate_text(model, "Once upon a time", **kwargs)
    assert len(story.split()) > 30
    V = model.config.vocab_size
    assert namespace["logits"].shape == (V,)  # "(V,) one more token"
    prompt = model.tokenizer.encode("Once upon")
    assert namespace["cache"].length == len(prompt) + 1  # the prompt, then one decoded token


def test_readme_hook_example_prints_each_layers_attention_shape(capsys):
    _, out = run(block("AttentionRecorder"), capsys)
    model = llama_np.load()
    H, T = model.config.n_heads, len(model.tokenizer.encode("Once upon a time"))  # 8, 5
    hooked = [f"layers.{i}.attn.probs ({H}, {T}, {T})" for i in range(model.config.n_layers)]
    # then the recorder's (layers, heads, T + 19, T + 19): the 20th token is never run
    assert out.splitlines() == [*hooked, "(5, 8, 24, 24)"]


SETUP = (
    'pip install -e . && llama-np generate -p "Once upon a time, there was a little girl named '
    'Lily." -n 45 --temperature 0'
)


def test_readme_names_the_two_setup_commands():
    assert SETUP in README
    assert "pip install -e '.[test]' && python -m pytest -q" in README


def test_the_first_command_prints_the_published_story():
    """Its prompt is the first sentence stories260K writes from BOS alone, so the greedy
    continuation is the published story, token for token (tests/test_stories260k.py), while
    its timing lines show a real prefill: many tokens in one pass."""
    import shlex

    import llama_np

    argv = shlex.split(SETUP.split(" && ")[1])
    prompt, n = argv[argv.index("-p") + 1], int(argv[argv.index("-n") + 1])
    model = llama_np.load()
    from_bos = llama_np.generate_text(model, "", len(model.tokenizer.encode(prompt)) - 1 + n,
                                      temperature=0)  # fmt: skip
    assert prompt + llama_np.generate_text(model, prompt, n, temperature=0) == from_bos
    assert from_bos.startswith("Once upon a time, there was a little girl named Lily. She loved")


def test_a_bos_only_prompt_is_named_in_the_timing_lines(capsys):
    """Without -p the prefill is one token, no faster than a decode step: the timing lines
    say why, so that the first number a learner sees does not contradict the lesson."""
    from llama_np.cli import main

    assert main(["generate", "-n", "3", "--temperature", "0"]) == 0
    err = capsys.readouterr().err
    assert "llama-np: prefill      1 tokens" in err
    assert "the prompt was BOS alone (no -p)" in err
    assert main(["generate", "-p", "Once upon", "-n", "3", "--temperature", "0"]) == 0
    assert "BOS alone" not in capsys.readouterr().err
