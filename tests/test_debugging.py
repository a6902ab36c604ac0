"""docs/debugging.md, run for real: its command with its pdb commands typed on stdin.

The walkthrough's ```pdb blocks are one session: lines starting with "(Pdb) " are typed, the
lines under each are what pdb must print for it ("..." matches anything, and lines pdb prints
that the page leaves out are allowed). So the page cannot drift from the code.
"""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "debugging.md"
PROMPT = "(Pdb) "


def fenced_blocks(text: str, language: str) -> list[list[str]]:
    return [m.splitlines() for m in re.findall(rf"```{language}\n(.*?)```", text, re.S)]


def walkthrough() -> tuple[list[str], list[tuple[str, list[str]]]]:
    """-> (argv of the command, [(pdb command, expected lines)]); the first command is ""
    for what pdb prints when it stops."""
    text = DOC.read_text()
    (command,) = [
        line for block in fenced_blocks(text, "bash") for line in block if "--break-at" in line
    ]
    argv = shlex.split(command)
    assert argv[0] == "llama-np"
    steps: list[tuple[str, list[str]]] = [("", [])]
    for block in fenced_blocks(text, "pdb"):
        for line in block:
            if line.startswith(PROMPT):
                steps.append((line.removeprefix(PROMPT), []))
            else:
                steps[-1][1].append(line)
    return [sys.executable, "-m", "llama_np", *argv[1:]], steps


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


def test_walkthrough_session_prints_what_the_page_shows():
    argv, steps = walkthrough()
    commands = [command for command, _ in steps[1:]]
    assert commands[-1] == "c" and len(commands) > 20
    result = run_pdb(argv, commands)
    assert result.returncode == 0, result.stderr
    # pdb prints its prompt before reading each command: the text between prompts is the
    # output of the command typed at the previous one.
    outputs = result.stdout.split(PROMPT)
    assert len(outputs) == len(steps), result.stdout
    for (command, expected), output in zip(steps, outputs, strict=True):
        lines = iter(output.splitlines())
        for want in expected:
            assert any(matches(want, line) for line in lines), (
                f"after (Pdb) {command!r} the page shows {want!r}; pdb printed:\n{output}"
            )


def test_break_at_a_pattern_stops_in_every_layer():
    argv, _ = walkthrough()
    argv[argv.index("--break-at") + 1] = "layers.*.attn.probs"
    result = run_pdb(argv, ["p name", "c"] * 5)
    assert result.returncode == 0, result.stderr
    names = re.findall(r"'(layers\.\d\.attn\.probs)'", result.stdout)
    assert names == [f"layers.{i}.attn.probs" for i in range(5)]


def test_pythonbreakpoint_0_runs_straight_through():
    argv, _ = walkthrough()
    env = {**os.environ, "PYTHONBREAKPOINT": "0"}
    result = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Pdb" not in result.stdout
    assert result.stdout.startswith("Once upon a time, there was")
