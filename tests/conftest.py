import os
import random
import sys
from pathlib import Path

import hypothesis
import pytest
from hypothesis import HealthCheck, settings

import llama_np

# Hypothesis: no wall-clock limits (a per-example deadline, the too-slow health check: on a
# busy machine they fail without anything being wrong), and a failure prints the blob that
# replays it (@reproduce_failure). Locally each test draws new examples every run and replays
# past failures from .hypothesis/. CI draws new examples every run too (not hypothesis' own
# "ci" profile, derandomized: the same examples forever), from one seed for the whole run,
# chosen at random and printed in the header: `pytest --hypothesis-seed=N` repeats the run.
IN_CI = bool(os.environ.get("CI"))
_profile = dict(deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", settings.get_profile("default"), **_profile)
settings.register_profile("ci", settings.get_profile("default"), derandomize=False, **_profile)
settings.load_profile("ci" if IN_CI else "dev")

sys.path.insert(0, str(Path(__file__).parent))  # make tests/util.py importable


def pytest_configure(config: pytest.Config) -> None:
    if IN_CI and config.getoption("hypothesis_seed") is None:
        config.option.hypothesis_seed = random.SystemRandom().randrange(2**32)
    seed = config.getoption("hypothesis_seed")
    if seed is not None:  # (hypothesis' plugin does this too, when it runs after us)
        hypothesis.core.global_force_seed = int(seed)


def pytest_report_header(config: pytest.Config) -> list[str]:
    seed = config.getoption("hypothesis_seed")
    if seed is None:
        return ["hypothesis: a random seed per test; a failure prints how to replay it"]
    return [f"hypothesis seed: {seed} (the same examples again: --hypothesis-seed={seed})"]


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    seed = config.getoption("hypothesis_seed")
    if seed is not None:  # also at the end, where a failed run's log is read
        terminalreporter.write_line(f"hypothesis seed: {seed} (rerun: --hypothesis-seed={seed})")


@pytest.fixture(scope="session")
def stories260k() -> llama_np.Model:
    """The bundled real checkpoint (weights/stories260K)."""
    return llama_np.load()
