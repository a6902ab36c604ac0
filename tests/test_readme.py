"""The README's Python examples run as written."""

import re
from pathlib import Path

import pytest

README = (Path(__file__).parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_python_block_runs(code, capsys):
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out  # each example prints something


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
