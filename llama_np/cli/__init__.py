"""The command line: `llama-np` (main.py) and its performance commands (perf.py)."""

from .main import main

__all__ = ["main"]
