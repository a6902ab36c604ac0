"""docs/debugging.md, run for real: each session's command with its pdb commands on stdin.

Each ```bash block holding a `llama-np ... --break-at` command starts a session; the ```pdb
blocks after it are that session: lines starting with "(Pdb) " are typed, the lines under
each are what pdb must print for it ("..." matches anything; lines pdb prints that the page
leaves out are allowed, except in a `where` listing, which must match frame for frame). The
```pycon blocks run as doctests. So the page cannot drift from the code.
"""

import doctest
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "debugging.md"
PROMPT = "(Pdb) "
Session = tuple[list[str], list[tuple[str, list[str]]]]


def sessions() -> list[Session]:
    """[(argv, [(pdb command, expected lines)])]; each session's first command is "" for
    what pdb prints when it stops."""
    text = DOC.read_text()
    found: list[Session] = []
    for m in re.finditer(r"```(bash|pdb)\n(.*?)```", text, re.S):
        kind, lines = m[1], m[2].splitlines()
        if kind == "bash":
            for line in lines:
                if "--break-at" in line:
                    argv = shlex.split(line)
                    assert argv[0] == "llama-np"
                    found.append(([sys.executable, "-m", "llama_np", *argv[1:]], [("", [])]))
            continue
        steps = found[-1][1]
        for line in lines:
            if line.startswith(PROMPT):
                steps.append((line.removeprefix(PROMPT), []))
            else:
                steps[-1][1].append(line)
    return found


SESSIONS = sessions()


def run_pdb(argv: list[str], commands: list[str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONBREAKPOINT"}  # plain pdb
    return subprocess.run(
        argv,
        input="".join(c + "\n" for c in commands),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )


def matches(expected: str, actual: str) -> bool:
    pattern = ".*".join(re.escape(part) for part in expected.split("..."))
    return re.fullmatch(pattern, actual) is not None


def test_the_page_has_a_prefill_and_a_decode_session():
    assert len(SESSIONS) == 2
    prefill, decode = (argv for argv, _ in SESSIONS)
    assert "--prefill-chunk" in prefill and "--break-at-step" not in prefill
    assert decode[decode.index("--break-at-step") + 1] == "1"


@pytest.mark.parametrize("argv, steps", SESSIONS, ids=["prefill", "decode"])
def test_session_prints_what_the_page_shows(argv, steps):
    commands = [command for command, _ in steps[1:]]
    assert commands[-1] == "c" and len(commands) > 15
    result = run_pdb(argv, commands)
    assert result.returncode == 0, result.stderr
    # pdb prints its prompt before reading each command: the text between prompts is the
    # output of the command typed at the previous one.
    outputs = result.stdout.split(PROMPT)
    assert len(outputs) == len(steps), result.stdout
    for (command, expected), output in zip(steps, outputs, strict=True):
        if command == "where":  # every frame, in order, none left out
            frames = [line for line in output.splitlines() if not line.startswith("->")]
            assert len(frames) == len(expected), f"pdb's where:\n{output}"
            for want, line in zip(expected, frames, strict=True):
                assert matches(want, line), f"{want!r} != {line!r} in:\n{output}"
            continue
        lines = iter(output.splitlines())
        for want in expected:
            assert any(matches(want, line) for line in lines), (
                f"after (Pdb) {command!r} the page shows {want!r}; pdb printed:\n{output}"
            )


def test_hook_examples_run_as_shown():
    result = doctest.testfile(
        str(DOC),
        module_relative=False,
        optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS,
    )
    assert result.attempted > 15 and result.failed == 0


def test_break_at_a_pattern_stops_in_every_layer():
    argv = list(SESSIONS[1][0])
    argv[argv.index("--break-at") + 1] = "layers.*.attn.probs"
    result = run_pdb(argv, ["p name", "c"] * 5)
    assert result.returncode == 0, result.stderr
    names = re.findall(r"'(layers\.\d\.attn\.probs)'", result.stdout)
    assert names == [f"layers.{i}.attn.probs" for i in range(5)]


@pytest.mark.parametrize("index", [0, 1], ids=["prefill", "decode"])
def test_pythonbreakpoint_0_runs_straight_through(index):
    argv = SESSIONS[index][0]
    env = {**os.environ, "PYTHONBREAKPOINT": "0"}
    result = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Pdb" not in result.stdout
    assert result.stdout.startswith("Once upon a time, there was")
