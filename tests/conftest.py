import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # make tests/util.py importable

import llama_np


@pytest.fixture(scope="session")
def stories260k() -> llama_np.Model:
    """The bundled real checkpoint (weights/stories260K)."""
    return llama_np.load()
