"""The generation loop: prefill the prompt, then decode one token at a time, streaming text.

tokens = encode(prompt)
logits = model.prefill(tokens, cache)        # whole prompt, one pass
repeat:
    token = sample(logits)                   # choose the next token
    stop on an end token, a stop string, max_new_tokens or the context limit
    yield its text
    logits = model.decode(token, cache)      # one token, reads the cache
"""

from __future__ import annotations

import codecs
import operator
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import ArgumentError, ContextLengthError
from .kv_cache import KVCache
from .model import Model
from .numerics import check_logits
from .sampling import SamplingParams, sample


@dataclass
class GenerationStats:
    """What a generation did and how long each phase took (filled in as it runs)."""

    prompt_tokens: int = 0
    prefill_seconds: float = 0.0
    generated_tokens: int = 0  # tokens sampled and emitted (an end token is not counted)
    decode_tokens: int = 0  # tokens run through Model.decode
    decode_seconds: float = 0.0
    sample_seconds: float = 0.0
    # "end_token", "stop_string", "max_new_tokens", "context_full" ("interrupted": set by the CLI)
    stop_reason: str = ""
    tokens: list[int] = field(default_factory=list)  # the generated token ids
    prompt_tokens_dropped: int = 0  # cut from the prompt's start by truncate_prompt


class TextStream:
    """Turns token ids into text pieces as they arrive.

    A multi-byte UTF-8 character can be split across tokens (byte-fallback pieces); its
    first bytes are held back until the character is complete. With `strip_leading_space`,
    the space of a SentencePiece dummy prefix is removed from the very first text (as when
    the text starts right after BOS).
    """

    def __init__(self, tokenizer, strip_leading_space: bool = False) -> None:
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._strip = strip_leading_space

    def push(self, token: int) -> str:
        text = self._utf8.decode(self.tokenizer.token_bytes(token))
        if self._strip and text:
            self._strip = False
            text = text.removeprefix(" ")
        return text

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


def generate(
    model: Model,
    prompt: str | Sequence[int],
    max_new_tokens: int = 256,
    *,
    temperature: float = 0.8,
    top_k: int = 40,
    top_p: float = 0.95,
    min_p: float = 0.05,
    repetition_penalty: float = 1.0,
    seed: int | None = None,
    stop: Sequence[str] = (),
    stats: GenerationStats | None = None,
    stop_ids: Collection[int] | None = None,
    cache: KVCache | None = None,
    truncate_prompt: bool = False,
) -> Iterator[str]:
    """Generate a continuation of `prompt`, yielding text pieces as they are produced.

    `prompt` is text (encoded with BOS) or a list of token ids. Stops at an end token
    (config.stop_ids), when a `stop` string appears (it is not yielded), after
    `max_new_tokens`, or when the model's context is full. Pass a GenerationStats to get the
    timings and the stop reason. The same seed gives the same text.

    `stop_ids` replaces config.stop_ids (e.g. a chat format's end-of-turn tokens). With a
    `cache`, the prompt is appended after the cache.length positions already in it (a
    conversation goes on where it stopped) and generation ends when that cache is full. The
    end token is not run through the model, and the last generated token is not either
    (nothing needs its logits): the cache then holds the prompt and all but the last of
    stats.tokens.

    A prompt longer than the context raises ContextLengthError, or with `truncate_prompt`
    (without a `cache`) loses its first tokens (BOS is kept), leaving room for
    min(max_new_tokens, context / 2) new tokens. Arguments are checked before any work is
    done; NaN or Inf in the logits raises NumericalError naming the layer where it first
    appeared.
    """
    params = SamplingParams(temperature, top_k, top_p, min_p, repetition_penalty)
    stop = _check_limits(max_new_tokens, stop)
    tokens = prompt_tokens(model, prompt)
    stats = stats if stats is not None else GenerationStats()
    if cache is None:
        context = model.config.max_seq_len
        if len(tokens) > context:
            if not truncate_prompt:
                raise ContextLengthError(
                    f"prompt is {len(tokens)} tokens, longer than the model's context of "
                    f"{context}; shorten it, or keep only its end with truncate_prompt=True "
                    f"(CLI: --truncate-prompt)"
                )
            keep = context - min(max_new_tokens, context // 2)
            head = tokens[:1] if tokens[0] == model.config.bos_id else []
            stats.prompt_tokens_dropped = len(tokens) - keep
            tokens = head + tokens[len(tokens) - keep + len(head) :]
        # The cache only needs room for the prompt and what may be generated.
        cache = model.new_cache(min(context, len(tokens) + max_new_tokens))
    else:
        cache.check_room(len(tokens))
    stop_ids = frozenset(model.config.stop_ids if stop_ids is None else stop_ids)
    return _generate(model, tokens, max_new_tokens, params, seed, stop, stats, stop_ids, cache)


def _check_limits(max_new_tokens: int, stop: str | Sequence[str]) -> list[str]:
    """Validate max_new_tokens and the stop strings; -> the stop strings as a list."""
    if not (isinstance(max_new_tokens, int) and max_new_tokens >= 0):
        raise ArgumentError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    stop = [stop] if isinstance(stop, str) else list(stop)
    if any(not s for s in stop):
        raise ArgumentError("stop strings must be non-empty")
    return stop


def prompt_tokens(model: Model, prompt: str | Sequence[int]) -> list[int]:
    """A prompt's token ids (text is encoded with BOS), checked against the vocabulary."""
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise ArgumentError(
            "this model has no tokenizer to turn tokens into text; load one with "
            "llama_np.load(path, tokenizer=...) or use Model.prefill/decode with token ids"
        )
    if isinstance(prompt, str):
        tokens = tokenizer.encode(prompt, bos=True)
    else:
        try:
            tokens = [operator.index(t) for t in prompt]
        except TypeError:
            raise ArgumentError(f"prompt token ids must be integers, got {prompt!r:.80}") from None
    if not tokens:
        raise ArgumentError("the prompt has no tokens: pass text, or at least one id (e.g. BOS)")
    V = model.config.vocab_size
    bad = [t for t in tokens if not 0 <= t < V]
    if bad:
        raise ArgumentError(f"prompt token id {bad[0]} is outside the vocabulary 0..{V - 1}")
    return tokens


def _generate(
    model, tokens, max_new_tokens, params, seed, stop, stats, stop_ids, cache
) -> Iterator[str]:
    config = model.config
    rng = np.random.default_rng(seed)
    stream = TextStream(model.tokenizer, strip_leading_space=tokens[-1] == config.bos_id)
    held = ""  # text that might be the start of a stop string, not yet yielded

    start = cache.length  # the prompt goes at positions start, start + 1, ...
    stats.prompt_tokens = len(tokens)
    t0 = time.perf_counter()
    with np.errstate(over="ignore", invalid="ignore"):  # non-finite logits are checked below
        logits = model.prefill(tokens, cache)
    stats.prefill_seconds = time.perf_counter() - t0
    history = list(tokens)
    check_logits(model, logits, history)

    stats.stop_reason = "max_new_tokens"
    for step in range(max_new_tokens):
        if start + len(history) >= cache.max_seq_len:
            stats.stop_reason = "context_full"
            break
        t0 = time.perf_counter()
        recent = history[-params.repeat_last_n :] if params.repeat_last_n else ()
        token = sample(logits, params, rng, recent)
        stats.sample_seconds += time.perf_counter() - t0
        if token in stop_ids:
            stats.stop_reason = "end_token"
            break
        history.append(token)
        stats.tokens.append(token)
        stats.generated_tokens += 1

        held += stream.push(token)
        text, held, stopped = _split_at_stop(held, stop)
        if text:
            yield text
        if stopped:
            stats.stop_reason = "stop_string"
            return

        if step + 1 < max_new_tokens and start + len(history) < cache.max_seq_len:
            t0 = time.perf_counter()
            with np.errstate(over="ignore", invalid="ignore"):
                logits = model.decode(token, cache)
            stats.decode_seconds += time.perf_counter() - t0
            stats.decode_tokens += 1
            check_logits(model, logits, history)
    held += stream.flush()
    text, _, _ = _split_at_stop(held, stop)
    if text:
        yield text


def _split_at_stop(text: str, stop: list[str]) -> tuple[str, str, bool]:
    """-> (text safe to yield, text to hold back, whether a stop string was found).

    Holds back the longest tail of `text` that could still grow into a stop string.
    """
    if not stop:
        return text, "", False
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    if hits:
        return text[: min(hits)], "", True
    keep = 0
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), keep, -1):
            if text.endswith(s[:n]):
                keep = n
                break
    return text[: len(text) - keep], text[len(text) - keep :], False


def generate_text(
    model: Model, prompt: str | Sequence[int], max_new_tokens: int = 256, **kwargs
) -> str:
    """The whole continuation as one string (same arguments as `generate`)."""
    return "".join(generate(model, prompt, max_new_tokens, **kwargs))


def generate_batch(
    model: Model,
    prompts: Sequence[str | Sequence[int]],
    max_new_tokens: int = 256,
    *,
    temperature: float = 0.8,
    top_k: int = 40,
    top_p: float = 0.95,
    min_p: float = 0.05,
    repetition_penalty: float = 1.0,
    seed: int | None = None,
    stop: Sequence[str] = (),
    stats: GenerationStats | None = None,
) -> list[str]:
    """Continue several prompts at once; -> one text per prompt.

    Each prompt is prefilled alone into its own row of a batched cache; then every step
    decodes one token for all of them together (Model.decode_batch), reading each weight once
    for the whole batch. Prompts may have different lengths. A sequence that ends (end token,
    stop string) stops producing text; the batch runs until all have ended, max_new_tokens,
    or the context is full for the longest prompt. Same arguments as `generate`.
    """
    params = SamplingParams(temperature, top_k, top_p, min_p, repetition_penalty)
    stop = _check_limits(max_new_tokens, stop)
    if isinstance(prompts, str) or not prompts:
        raise ArgumentError("prompts must be a non-empty list of prompts (text or token ids)")
    config, tokenizer = model.config, model.tokenizer
    batch = [prompt_tokens(model, p) for p in prompts]
    longest = max(len(t) for t in batch)
    if longest > config.max_seq_len:
        raise ContextLengthError(
            f"a prompt is {longest} tokens, longer than the model's context of "
            f"{config.max_seq_len}; shorten it"
        )
    stats = stats if stats is not None else GenerationStats()
    cache = model.new_cache(min(config.max_seq_len, longest + max_new_tokens), len(batch))
    rng = np.random.default_rng(seed)
    streams = [TextStream(tokenizer, strip_leading_space=t[-1] == config.bos_id) for t in batch]
    texts, held = [""] * len(batch), [""] * len(batch)
    running = [True] * len(batch)

    stats.prompt_tokens = sum(len(t) for t in batch)
    t0 = time.perf_counter()
    logits = np.stack([model.prefill(t, cache, seq=b) for b, t in enumerate(batch)])  # (B, V)
    stats.prefill_seconds = time.perf_counter() - t0
    history = [list(t) for t in batch]
    stats.stop_reason = "max_new_tokens"
    for step in range(max_new_tokens):
        t0 = time.perf_counter()
        recent = [h[-params.repeat_last_n :] if params.repeat_last_n else () for h in history]
        chosen = [sample(logits[b], params, rng, recent[b]) for b in range(len(batch))]
        stats.sample_seconds += time.perf_counter() - t0
        for b, token in enumerate(chosen):
            if not running[b]:
                continue
            if token in config.stop_ids:
                running[b] = False
                continue
            history[b].append(token)
            stats.generated_tokens += 1
            text, held[b], stopped = _split_at_stop(held[b] + streams[b].push(token), stop)
            texts[b] += text
            running[b] = not stopped
        if not any(running):
            stats.stop_reason = "end_token"
            break
        if step + 1 == max_new_tokens:  # its token is sampled; no need to run it
            break
        if longest + step + 1 >= cache.max_seq_len:
            stats.stop_reason = "context_full"
            break
        t0 = time.perf_counter()
        logits = model.decode_batch(chosen, cache)  # ended sequences run along, unused
        stats.decode_seconds += time.perf_counter() - t0
        stats.decode_tokens += len(batch)
    for b in range(len(batch)):
        if running[b]:
            texts[b] += _split_at_stop(held[b] + streams[b].flush(), stop)[0]
    return texts
