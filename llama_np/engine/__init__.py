"""The serving engine: continuous batching over a paged KV cache, with prefix caching and
chunked prefill (docs/architecture.md shows where each piece sits).

    blocks.py     BlockPool: which KV blocks are free, shared, cached by prefix
    request.py    Request: one prompt's tokens, block table, sampling and output
    scheduler.py  Scheduler: each step, who runs and how many tokens (a ScheduledStep)
    engine.py     Engine: runs the scheduled steps through the model, samples, reports
    batch.py      generate_batch / generate_batch_stream on an Engine
    background.py EngineThread: an engine stepping in its own thread, for a server
"""

from .batch import generate_batch, generate_batch_stream
from .engine import Completion, Engine, StepRecord, TokenEvent
from .request import Request
from .scheduler import SchedulerConfig

__all__ = [
    "Completion",
    "Engine",
    "Request",
    "SchedulerConfig",
    "StepRecord",
    "TokenEvent",
    "generate_batch",
    "generate_batch_stream",
]
