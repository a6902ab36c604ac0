"""Several prompts at once, on the serving engine: `generate_batch` and its stream.

The same arguments and results as `generate` for one prompt, for a list of them: an engine
sized for the batch (a KV pool that holds every prompt and its new tokens, so nothing is
preempted) prefills them, then decodes all running sequences together, each with its own
random generator (seeded from `seed` and its place in the list), and retires each as it ends.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence

import numpy as np

from .. import arguments
from ..generate import (
    PROMPTS,
    GenerationStats,
    check_arguments,
    check_prompt,
    fit_text,
    prompt_tokens,
)
from ..model import Model
from ..paged_kv_cache import BLOCK_SIZE, blocks_for
from ..sampling import SamplingParams
from .engine import Engine, StepRecord

BATCH_TOKENS = 2048  # tokens per step: prompts beyond it prefill in chunks


def generate_batch_stream(
    model: Model,
    prompts: Sequence[str | Sequence[int]],
    max_new_tokens: int = 256,
    *,
    sampling: SamplingParams | None = None,
    seed: int | None = None,
    stop: str | Sequence[str] = (),
    stats: GenerationStats | None = None,
    special: bool = False,
    stop_ids: Collection[int] | None = None,
    **sampling_kwargs: float,
) -> Iterator[tuple[int, str]]:
    """Continue several prompts at once, yielding (prompt index, text piece) as produced.

    Every step reads each weight once for all running sequences (continuous batching on
    engine.Engine). Prompts may have different lengths; a sequence that ends (end token,
    stop string, max_new_tokens, the context) leaves the batch, and stats.stop_reasons says
    why, per prompt. Same arguments as `generate` (`stop_ids` replaces config.stop_ids);
    prompt b samples with the seed derived from (seed, b), so its text does not depend on
    the other prompts.
    """
    prompts = arguments.sequence(prompts, "prompts", min_len=1, allowed=PROMPTS)
    for b, prompt in enumerate(prompts):
        check_prompt(model, prompt, f"prompts[{b}]")
    check_arguments(model, max_new_tokens, stop, seed, stats, stop_ids, special)
    config = model.config
    stats = stats if stats is not None else GenerationStats()
    batch = [
        prompt_tokens(model, fit_text(model, p, config.max_seq_len, False, stats)) for p in prompts
    ]
    positions = [min(config.max_seq_len, len(t) + max_new_tokens) for t in batch]
    n_blocks = sum(blocks_for(n + 1, BLOCK_SIZE) for n in positions)
    engine = Engine(
        model,
        kv_memory=n_blocks * config.kv_cache_bytes(BLOCK_SIZE),
        max_seqs=len(batch),
        max_batch_tokens=max(1, min(BATCH_TOKENS, sum(len(t) for t in batch))),
    )
    seeds = [None if seed is None else _seed(seed, b) for b in range(len(batch))]
    requests = [
        engine.add_request(
            tokens, max_new_tokens, sampling=sampling, seed=s, stop=stop, stop_ids=stop_ids,
            special=special, **sampling_kwargs,
        )
        for tokens, s in zip(batch, seeds, strict=True)
    ]  # fmt: skip
    return _run(engine, requests, stats)


def generate_batch(
    model: Model,
    prompts: Sequence[str | Sequence[int]],
    max_new_tokens: int = 256,
    **kwargs,
) -> list[str]:
    """Continue several prompts at once; -> one text per prompt (see generate_batch_stream)."""
    prompts = arguments.sequence(prompts, "prompts", min_len=1, allowed=PROMPTS)
    texts = [""] * len(prompts)
    for b, piece in generate_batch_stream(model, prompts, max_new_tokens, **kwargs):
        texts[b] += piece
    return texts


def _seed(seed: int, index: int) -> int:
    """Prompt `index`'s seed: the same for the same (seed, index), whatever the batch."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _run(engine: Engine, requests: list, stats: GenerationStats) -> Iterator[tuple[int, str]]:
    """Step the engine until every request has ended, filling `stats` as generate does:
    steps with prompt rows count as prefill, the others as decode."""
    index = {r.id: b for b, r in enumerate(requests)}
    stats.prompt_tokens = sum(len(r.prompt) for r in requests)
    stats.stop_reasons = ["max_new_tokens"] * len(requests)

    def count(record: StepRecord) -> None:
        stats.sample_seconds += record.sample_seconds
        if any(kind == "prefill" for _, kind, *_ in record.rows):
            stats.prefill_seconds += record.seconds
        elif record.rows:
            stats.step_seconds.append(record.seconds)
            stats.decode_seconds += record.seconds
            stats.decode_tokens += len(record.rows)

    engine.on_step.append(count)
    try:
        while engine.has_unfinished():
            for event in engine.step():
                b = index[event.request_id]
                if event.finish_reason is not None:
                    stats.stop_reasons[b] = event.finish_reason
                if event.text:
                    yield b, event.text
        for request in requests:
            if request.error is not None:
                raise request.error
    except KeyboardInterrupt:
        for b, request in enumerate(requests):
            if not request.finished:
                stats.stop_reasons[b] = "interrupted"
        raise
    finally:
        stats.sequence_tokens = [r.generated for r in requests]
        stats.tokens = stats.sequence_tokens[0]
        stats.generated_tokens = sum(len(t) for t in stats.sequence_tokens)
        stats.stop_reason = ",".join(dict.fromkeys(stats.stop_reasons))
