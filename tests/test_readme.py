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


def test_readme_names_the_two_setup_commands():
    assert "pip install -e . && llama-np generate -n 60 --temperature 0" in README
    assert "pip install -e '.[test]' && python -m pytest -q" in README
