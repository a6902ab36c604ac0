"""The generation loop: prefill the prompt, then decode one token at a time, streaming text.

tokens = encode(prompt)
logits = model.prefill(tokens, cache)        # whole prompt, one pass
repeat:
    token = sample(logits)                   # choose the next token
    stop on an end token, a stop string, max_new_tokens or the context limit
    yield its text
    logits = model.decode(token, cache)      # one token, reads the cache

`_loop` is that loop for one sequence: `generate` (one prompt, streamed), chat (a
conversation's cache) and the profiler (tools/profile.py) run it. Many prompts at once run
on the serving engine (engine/: `generate_batch`), which applies the same rules to each
sampled token (`accept_token`).
"""

from __future__ import annotations

import codecs
import operator
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field, fields

import numpy as np

from . import arguments
from .errors import ArgumentError, ContextLengthError
from .kv_cache import KVCache
from .model import Model
from .numerics import check_logits
from .sampling import SamplingParams, penalty_window, sample
from .validate import check_text

SAMPLING_FIELDS = tuple(f.name for f in fields(SamplingParams))
PROMPT = "text or a list of token ids"
PROMPTS = "a non-empty list of prompts (text or token ids)"


@dataclass
class GenerationStats:
    """What a generation did and how long each phase took (filled in as it runs)."""

    prompt_tokens: int = 0
    prefill_seconds: float = 0.0
    generated_tokens: int = 0  # tokens sampled and emitted (an end token is not counted)
    decode_tokens: int = 0  # tokens run through Model.decode
    decode_seconds: float = 0.0
    sample_seconds: float = 0.0
    # "end_token", "stop_string", "max_new_tokens", "context_full" or "interrupted" (Ctrl-C);
    # for a batch, the reasons of its sequences joined with "," when they differ
    stop_reason: str = ""
    stop_reasons: list[str] = field(default_factory=list)  # one per sequence
    tokens: list[int] = field(default_factory=list)  # the generated token ids (sequence 0)
    sequence_tokens: list[list[int]] = field(default_factory=list)  # ... of every sequence
    step_seconds: list[float] = field(default_factory=list)  # each decode step's time
    prompt_tokens_dropped: int = 0  # cut from the prompt's start by truncate_prompt
    prompt_chars_dropped: int = 0  # ... and before that from a text too long to tokenize whole


class TextStream:
    """Turns token ids into text pieces as they arrive.

    A multi-byte UTF-8 character can be split across tokens (byte-fallback pieces); its
    first bytes are held back until the character is complete. With `strip_leading_space`,
    the space of a SentencePiece dummy prefix is removed from the very first text (as when
    the text starts right after BOS). Special tokens (<|eot_id|>, </s>) add no text, or with
    `special` their names (llama.cpp's --special).
    """

    def __init__(self, tokenizer, strip_leading_space: bool = False, special: bool = False):
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._strip = strip_leading_space
        self.special = special

    def push(self, token: int) -> str:
        if self.tokenizer is None:  # a model without one generates ids (stats.tokens) only
            return ""
        text = self._utf8.decode(self.tokenizer.token_bytes(token, special=self.special))
        if self._strip and text:
            self._strip = False
            text = text.removeprefix(" ")
        return text

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


class TextOutput:
    """A sequence's generated text: token ids in, text pieces out, never a stop string.

    Text that might be the start of a stop string is held back until it is not; when a stop
    string appears, the text before it is the last piece. `unsent` counts the latest tokens
    whose text has not all gone out: held back, or, once a stop string appeared, cut with it
    (a server reports the log-probabilities of the tokens whose text it sent, as llama-server
    does, so that they spell the text).
    """

    def __init__(self, stream: TextStream, stop: list[str]) -> None:
        self.stream = stream
        self.stop = stop
        self.held = ""  # text that might grow into a stop string, not yet given out
        # where each unsent token's text ends in `held` (None: none of its text decoded yet,
        # e.g. the first byte of a character)
        self.ends: list[int | None] = []

    @property
    def unsent(self) -> int:
        return len(self.ends)

    def push(self, token: int) -> tuple[str, bool]:
        """-> (text to give out now, whether a stop string appeared)."""
        text = self._add(self.stream.push(token), token=True)
        text, self.held, stopped = _split_at_stop(text, self.stop)
        self._gave(text)
        return text, stopped

    def flush(self) -> str:
        """The rest, at the end (cut at a stop string; held text that did not become one
        goes out: it can no longer grow)."""
        rest = self._add(self.stream.flush(), token=False)
        text, _, stopped = _split_at_stop(rest, self.stop)
        self.held = ""
        if stopped:
            self._gave(text)
        else:
            text, self.ends = rest, []
        return text

    def _add(self, piece: str, token: bool) -> str:
        """held + piece, the text a new token (or the end) decoded to; -> that text."""
        text = self.held + piece
        if token:
            self.ends.append(None)
        if piece:  # it ends the text of the tokens that had none yet
            self.ends = [len(text) if end is None else end for end in self.ends]
        return text

    def _gave(self, text: str) -> None:
        """`text`, the start of the held text, went out: so did the tokens ending in it."""
        sent = 0
        while (
            sent < len(self.ends) and self.ends[sent] is not None and self.ends[sent] <= len(text)
        ):
            sent += 1
        self.ends = [None if end is None else end - len(text) for end in self.ends[sent:]]


def accept_token(
    token: int,
    tokens: list[int],
    n_prompt: int,
    max_new_tokens: int,
    output: TextOutput,
    stop_ids: Collection[int],
) -> tuple[str, str | None]:
    """What every generation loop does with a sampled token; -> (text to give out, why the
    sequence ends, or None).

    An end token ends it and is not kept; any other joins `tokens` (prompt + generated) and
    its text goes out, unless a stop string appears in it or it is the max_new_tokens-th.
    """
    if token in stop_ids:
        return output.flush(), "end_token"
    tokens.append(token)
    text, stopped = output.push(token)
    if stopped:
        return text, "stop_string"
    if len(tokens) - n_prompt >= max_new_tokens:
        return text + output.flush(), "max_new_tokens"
    return text, None


def generate(
    model: Model,
    prompt: str | Sequence[int],
    max_new_tokens: int = 256,
    *,
    sampling: SamplingParams | None = None,
    seed: int | None = None,
    stop: str | Sequence[str] = (),
    stats: GenerationStats | None = None,
    stop_ids: Collection[int] | None = None,
    cache: KVCache | None = None,
    truncate_prompt: bool = False,
    special: bool = False,
    prefill_chunk: int | None = None,
    **sampling_kwargs: float,
) -> Iterator[str]:
    """Generate a continuation of `prompt`, yielding text pieces as they are produced.

    `prompt` is text (encoded with BOS) or a list of token ids. Sampling follows `sampling`
    (a SamplingParams), or its fields given as keywords (temperature=0.8, top_k=40,
    top_p=0.95, min_p=0.05, repetition_penalty=1.0). Stops at an end token
    (config.stop_ids), when a `stop` string appears (it is not yielded), after
    `max_new_tokens`, or when the model's context is full. Pass a GenerationStats to get the
    timings and the stop reason. The same seed gives the same text.

    `stop_ids` replaces config.stop_ids (e.g. a chat format's end-of-turn tokens). With a
    `cache`, the prompt is appended after the cache.length positions already in it (a
    conversation goes on where it stopped) and generation ends when that cache is full. The
    end token is not run through the model, and the last generated token is not either
    (nothing needs its logits): the cache then holds the prompt and all but the last of
    stats.tokens. Special tokens the model generates are left out of the text, or shown by
    name with `special` (they rarely appear: the end-of-turn tokens stop generation).

    `prefill_chunk` runs the prompt through the model that many tokens at a time (chunked
    prefill; the result is the same). A prompt longer than the context raises
    ContextLengthError, or with `truncate_prompt`
    (without a `cache`) loses its first tokens (BOS is kept), leaving room for
    min(max_new_tokens, context / 2) new tokens. Arguments are checked before any work is
    done; NaN or Inf in the logits raises NumericalError naming the layer where it first
    appeared. Ctrl-C (KeyboardInterrupt) ends the loop with stats.stop_reason "interrupted";
    the text yielded so far is the result.
    """
    params = sampling_params(sampling, **sampling_kwargs)
    max_new_tokens, stop, seed, stop_ids = check_arguments(
        model, max_new_tokens, stop, seed, stats, stop_ids, special
    )
    check_prompt(model, prompt, "prompt")
    cache = arguments.kv_cache(cache, "cache", model.config, optional=True)
    arguments.flag(truncate_prompt, "truncate_prompt")
    prefill_chunk = arguments.integer(
        prefill_chunk, "prefill_chunk", 1, optional=True, allowed="a positive integer"
    )
    stats = stats if stats is not None else GenerationStats()
    room = model.config.max_seq_len if cache is None else cache.max_seq_len - cache.length
    prompt = fit_text(model, prompt, room, truncate_prompt and cache is None, stats)
    tokens = prompt_tokens(model, prompt)
    if cache is None:
        tokens = _fit_context(model, tokens, max_new_tokens, truncate_prompt, stats)
        # The cache only needs room for the prompt and what may be generated.
        cache = model.new_cache(min(model.config.max_seq_len, len(tokens) + max_new_tokens))
    else:
        cache.check_room(len(tokens))
    stop_ids = frozenset(model.config.stop_ids if stop_ids is None else stop_ids)
    return _loop(
        model,
        tokens,
        max_new_tokens,
        params,
        seed,
        stop,
        stats,
        stop_ids,
        cache,
        special,
        prefill_chunk,
    )


def generate_text(
    model: Model, prompt: str | Sequence[int], max_new_tokens: int = 256, **kwargs
) -> str:
    """The whole continuation as one string (same arguments as `generate`)."""
    return "".join(generate(model, prompt, max_new_tokens, **kwargs))


def sampling_params(sampling: SamplingParams | None = None, **kwargs: float) -> SamplingParams:
    """`sampling`, or a SamplingParams from keyword arguments (checked); not both."""
    unknown = [name for name in kwargs if name not in SAMPLING_FIELDS]
    if unknown:
        raise ArgumentError(
            f"{unknown[0]} is not an argument of generation; sampling settings are "
            f"{', '.join(SAMPLING_FIELDS)}"
        )
    if sampling is None:
        return SamplingParams(**kwargs)
    if kwargs:
        raise ArgumentError(
            f"pass sampling settings either as sampling=SamplingParams(...) or as keywords, "
            f"not both (got both sampling and {', '.join(kwargs)})"
        )
    return arguments.instance(sampling, "sampling", SamplingParams)


def check_arguments(
    model: Model,
    max_new_tokens: int,
    stop: str | Sequence[str],
    seed: int | None,
    stats: GenerationStats | None,
    stop_ids: Collection[int] | None,
    special: bool,
) -> tuple[int, list[str], int | None, list[int] | None]:
    """The arguments every generation takes, checked; -> max_new_tokens, the stop strings as
    a list, the seed and the stop ids, as plain Python values."""
    arguments.instance(model, "model", Model)
    max_new_tokens = arguments.integer(max_new_tokens, "max_new_tokens", 0)
    seed = arguments.integer(seed, "seed", 0, optional=True)
    stop = arguments.strings(stop, "stop", non_empty=True)
    arguments.instance(stats, "stats", GenerationStats, optional=True)
    if stop_ids is not None:  # any collection: a set has no order, and needs none here
        ids = list(stop_ids) if isinstance(stop_ids, (set, frozenset)) else stop_ids
        stop_ids = arguments.token_ids(ids, "stop_ids", model.config.vocab_size, min_len=0)
        stop_ids = stop_ids.tolist()
    arguments.flag(special, "special")
    return max_new_tokens, stop, seed, stop_ids


def check_prompt(model: Model, prompt: str | Sequence[int], name: str) -> None:
    """A prompt is text (valid Unicode) or token ids that the model can take."""
    if isinstance(prompt, str):
        arguments.text(prompt, name)
    else:
        arguments.token_ids(prompt, name, decodable_ids(model), min_len=0, allowed=PROMPT)


def fit_text(
    model: Model, prompt: str | Sequence[int], room: int, truncate: bool, stats: GenerationStats
) -> str | Sequence[int]:
    """A text prompt checked against `room` tokens BEFORE it is tokenized, or with `truncate`
    only its end, long enough to fill the room; token-id prompts are returned as they are.

    Tokenizing costs time (and for llama2.c's BPE, Python time) in proportion to the text: a
    megabyte that cannot fit anyway is refused at once. `tokenizer.min_tokens(text)` bounds
    the count from below in linear time (each token covers at most max_token_bytes bytes).
    """
    tokenizer = model.tokenizer
    if not isinstance(prompt, str) or tokenizer is None:
        return prompt
    check_text(prompt, "the prompt")
    min_tokens = tokenizer.min_tokens
    if min_tokens(prompt) + 1 <= room:  # + 1: BOS
        return prompt
    if not truncate:
        raise ContextLengthError(
            f"prompt is at least {min_tokens(prompt) + 1:,} tokens ({len(prompt):,} characters), "
            f"longer than the room left: the context of {room} (KV cache positions free); "
            f"shorten it, or keep only its end with truncate_prompt=True (CLI: --truncate-prompt)"
        )
    # The end of the text with more tokens than the room, so that _fit_context still cuts
    # tokens from its start, where the text was cut mid-word: each character is at least one
    # byte, so (room + 1) × max_token_bytes characters hold at least room + 1 tokens.
    chars = (room + 1) * tokenizer.max_token_bytes
    while min_tokens(prompt[-chars:]) + 1 <= room and chars < len(prompt):
        chars *= 2
    stats.prompt_chars_dropped = max(0, len(prompt) - chars)
    return prompt[-chars:]


def _fit_context(
    model: Model, tokens: list[int], max_new_tokens: int, truncate: bool, stats: GenerationStats
) -> list[int]:
    """The prompt, or with `truncate` its BOS and last tokens, if it is longer than the context."""
    context = model.config.max_seq_len
    if len(tokens) <= context:
        return tokens
    if not truncate:
        raise ContextLengthError(
            f"prompt is {len(tokens)} tokens, longer than the model's context of {context}; "
            f"shorten it, or keep only its end with truncate_prompt=True (CLI: --truncate-prompt)"
        )
    keep = context - min(max_new_tokens, context // 2)
    head = tokens[:1] if tokens[0] == model.config.bos_id else []
    stats.prompt_tokens_dropped = len(tokens) - keep
    return head + tokens[len(tokens) - keep + len(head) :]


def decodable_ids(model: Model) -> int:
    """How many ids generation may use: a model may have more embedding rows than its
    tokenizer has tokens (padded to a round number); the ids past the tokenizer's cannot be
    decoded, so they are never sampled (as llama.cpp masks them) nor taken in a prompt."""
    if model.tokenizer is None:
        return model.config.vocab_size
    return min(model.config.vocab_size, model.tokenizer.vocab_size)


def prompt_tokens(model: Model, prompt: str | Sequence[int]) -> list[int]:
    """A prompt's token ids (text is encoded with BOS), checked against the vocabulary.

    A model without a tokenizer takes ids only, and generates ids only (no text).
    """
    tokenizer = model.tokenizer
    if isinstance(prompt, str):
        if tokenizer is None:
            raise ArgumentError(
                "this model has no tokenizer to turn text into tokens; load one with "
                "llama_np.load(path, tokenizer=...) or pass the prompt as token ids"
            )
        tokens = tokenizer.encode(prompt, bos=True)
    else:
        try:
            tokens = [operator.index(t) for t in prompt]
        except TypeError:
            raise ArgumentError(f"prompt token ids must be integers, got {prompt!r:.80}") from None
    if not tokens:
        raise ArgumentError("the prompt has no tokens: pass text, or at least one id (e.g. BOS)")
    V = decodable_ids(model)
    bad = [t for t in tokens if not 0 <= t < V]
    if bad:
        raise ArgumentError(f"prompt token id {bad[0]} is outside the vocabulary 0..{V - 1}")
    return tokens


def _prefill(model: Model, tokens: list[int], cache: KVCache, chunk: int | None) -> np.ndarray:
    """Prefill `tokens` into the cache, in passes of `chunk` tokens (chunked prefill: each pass
    appends after the last, its causal mask offset by what is cached); -> (V,) logits of the
    last token."""
    chunk = chunk or len(tokens)
    for start in range(0, len(tokens), chunk):
        logits = model.prefill(tokens[start : start + chunk], cache)
    return logits


def _loop(
    model: Model,
    prompt: list[int],
    max_new_tokens: int,
    params: SamplingParams,
    seed: int | None,
    stop: list[str],
    stats: GenerationStats,
    stop_ids: frozenset[int],
    cache: KVCache,
    special: bool = False,
    prefill_chunk: int | None = None,
) -> Iterator[str]:
    """The generation loop of one sequence: prefill the prompt (after what the cache holds;
    in passes of `prefill_chunk` tokens if given), then sample a token, decode it, and again,
    until an end token, a stop string, max_new_tokens or a full cache. Yields text pieces;
    fills `stats` as it goes, so it is complete even after Ctrl-C."""
    rng = np.random.default_rng(seed)
    decodable = decodable_ids(model)  # ids past these (padding) are never sampled
    stream = TextStream(model.tokenizer, prompt[-1] == model.config.bos_id, special)
    output = TextOutput(stream, stop)
    tokens = list(prompt)  # what the sequence has seen: for the penalty
    stats.tokens = []
    stats.sequence_tokens = [stats.tokens]
    stats.prompt_tokens = len(prompt)
    reason = None
    try:
        t0 = time.perf_counter()
        with np.errstate(over="ignore", invalid="ignore"):  # non-finite logits: checked below
            logits = _prefill(model, prompt, cache, prefill_chunk)  # (V,)
        stats.prefill_seconds = time.perf_counter() - t0
        check_logits(model, logits, tokens)
        while len(tokens) - len(prompt) < max_new_tokens:
            if cache.length >= cache.max_seq_len:  # the context is full: no room for more
                reason = "context_full"
                if text := output.flush():
                    yield text
                break
            t0 = time.perf_counter()
            token = sample(logits[:decodable], params, rng, penalty_window(tokens, params))
            stats.sample_seconds += time.perf_counter() - t0
            text, reason = accept_token(
                token, tokens, len(prompt), max_new_tokens, output, stop_ids
            )
            if reason != "end_token":  # kept
                stats.tokens.append(token)
                stats.generated_tokens += 1
            if text:
                yield text
            if reason is not None:
                break  # the last token is sampled: nothing needs its logits
            t0 = time.perf_counter()
            with np.errstate(over="ignore", invalid="ignore"):
                logits = model.decode(token, cache)  # (V,)
            stats.step_seconds.append(time.perf_counter() - t0)
            stats.decode_seconds += stats.step_seconds[-1]
            stats.decode_tokens += 1
            check_logits(model, logits, tokens)
        stats.stop_reason = reason or "max_new_tokens"
    except KeyboardInterrupt:
        stats.stop_reason = "interrupted"
        raise
    finally:
        stats.stop_reasons = [stats.stop_reason]


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
