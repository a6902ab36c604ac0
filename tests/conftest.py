import os
import sys
from pathlib import Path

import pytest
from hypothesis import settings

import llama_np

# CI runs the same examples every time (a fixed seed per test): a run that lands is
# reproducible. Locally, hypothesis explores new examples on each run.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

sys.path.insert(0, str(Path(__file__).parent))  # make tests/util.py importable


@pytest.fixture(scope="session")
def stories260k() -> llama_np.Model:
    """The bundled real checkpoint (weights/stories260K)."""
    return llama_np.load()
