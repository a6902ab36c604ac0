"""The generation loop: streaming, stop conditions, limits."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from util import byte_tokenizer, random_model, small_config

import llama_np
from llama_np import ArgumentError, ContextLengthError, GenerationStats, generate, generate_text
from llama_np.engine import Engine, generate_batch_stream
from llama_np.generate import TextOutput


def test_streamed_pieces_join_to_the_decoded_tokens(stories260k):
    """Pieces are yielded one per token as they come, and add up to the full decode."""
    stats = GenerationStats()
    pieces = list(generate(stories260k, "", 80, temperature=0, stats=stats))
    assert len(pieces) > 10
    greedy = [stories260k.config.bos_id]
    cache = stories260k.new_cache()
    logits = stories260k.prefill(greedy, cache)
    for _ in range(stats.generated_tokens):
        greedy.append(int(np.argmax(logits)))
        logits = stories260k.decode(greedy[-1], cache)
    assert "".join(pieces) == stories260k.tokenizer.decode(greedy, skip_special=True)


def test_stop_string_ends_generation_and_is_not_yielded(stories260k):
    full = generate_text(stories260k, "", 80, temperature=0)
    assert "Lily" in full
    stats = GenerationStats()
    text = generate_text(stories260k, "", 80, temperature=0, stop=["Lily"], stats=stats)
    assert text == full[: full.index("Lily")]
    assert stats.stop_reason == "stop_string"


def test_stop_string_split_across_tokens_is_held_back(stories260k):
    full = generate_text(stories260k, "", 80, temperature=0)
    stop = "d Lil"  # spans the tokens " named" and " Lily"
    pieces = list(generate(stories260k, "", 80, temperature=0, stop=[stop]))
    assert "".join(pieces) == full[: full.index(stop)]
    assert not any(stop in p for p in pieces)


def test_text_held_at_a_possible_stop_string_goes_out_at_the_end(stories260k):
    """The last token's text may be the start of a stop string; at max_new_tokens it can no
    longer become one, so it is given out (it was dropped)."""
    full = generate_text(stories260k, "", 12, temperature=0)
    stop = full[-3:] + "never seen"  # its first 3 characters end the text, then it stops
    stats = GenerationStats()
    assert generate_text(stories260k, "", 12, temperature=0, stop=[stop], stats=stats) == full
    assert stats.stop_reason == "max_new_tokens"


class Pieces:
    """A TextStream whose tokens are their own text."""

    def push(self, token: str) -> str:
        return token

    def flush(self) -> str:
        return ""


@given(
    pieces=st.lists(st.sampled_from(["a", "b", "ab", " ab", "", "ba", "c"]), max_size=12),
    stop=st.lists(st.sampled_from(["ab", "bab", "ca", "zz"]), max_size=2),
    end=st.booleans(),
)
def test_unsent_tokens_are_those_whose_text_did_not_all_go_out(pieces, stop, end):
    """TextOutput.unsent: the latest tokens not all of whose text was given out (held back,
    or cut with a stop string); the tokens before them spell a prefix of the text given."""
    output = TextOutput(Pieces(), stop)
    given, stopped, pushed = "", False, []
    for piece in pieces:
        text, stopped = output.push(piece)
        given += text
        pushed.append(piece)
        if stopped:
            break
    if end and not stopped:
        given += output.flush()
    sent = pushed[: len(pushed) - output.unsent]
    assert given.startswith("".join(sent))
    if not stopped:  # what is held back is the text of the unsent tokens
        assert "".join(pushed) == given + output.held
        unsent_text = "".join(pushed[len(sent) :])
        assert unsent_text.endswith(output.held) and len(unsent_text) >= len(output.held)
    for s in stop:
        assert s not in given


def test_max_new_tokens_and_prompt_not_counted(stories260k):
    stats = GenerationStats()
    generate_text(stories260k, "Once upon a time", 7, temperature=0, stats=stats)
    assert stats.prompt_tokens == 5 and stats.generated_tokens == 7
    assert stats.decode_tokens == 6  # the 7th token is sampled but never needs a forward pass
    assert stats.stop_reason == "max_new_tokens"


def test_prompt_as_token_ids(stories260k):
    ids = stories260k.tokenizer.encode("Once upon a time")
    assert generate_text(stories260k, ids, 20, temperature=0) == generate_text(
        stories260k, "Once upon a time", 20, temperature=0
    )


def penalized_greedy(model, prompt, n, penalty, last_n):
    """Greedy tokens with a repetition penalty, by hand: the model's logits, each token of the
    last `last_n` seen (the prompt's included) penalized as CTRL defines it (positive logits
    divided, negative multiplied), then the argmax."""
    history = model.tokenizer.encode(prompt, bos=True)
    cache = model.new_cache()
    logits = model.prefill(history, cache)
    tokens = []
    for _ in range(n):
        penalized = logits.astype(np.float64)
        for token in set(history[-last_n:]):
            value = penalized[token]
            penalized[token] = value / penalty if value > 0 else value * penalty
        tokens.append(int(np.argmax(penalized)))
        history.append(tokens[-1])
        logits = model.decode(tokens[-1], cache)
    return tokens


PENALIZED = dict(temperature=0, repetition_penalty=1.5, repeat_last_n=12)


def test_generate_applies_the_repetition_penalty(stories260k):
    stats = GenerationStats()
    list(generate(stories260k, "Once upon a time", 40, stop_ids=(), stats=stats, **PENALIZED))
    assert stats.tokens == penalized_greedy(stories260k, "Once upon a time", 40, 1.5, 12)
    plain = GenerationStats()
    list(generate(stories260k, "Once upon a time", 40, temperature=0, stop_ids=(), stats=plain))
    assert plain.tokens != stats.tokens  # the penalty changes this text: the test can fail


def test_the_serving_engine_applies_the_repetition_penalty(stories260k):
    """Each request of a batch on the engine is penalized by its own history."""
    prompts = ["Once upon a time", "The little dog"]
    done = Engine(stories260k).generate(prompts, 30, stop_ids=(), **PENALIZED)
    for prompt, completion in zip(prompts, done, strict=True):
        assert completion.tokens == penalized_greedy(stories260k, prompt, 30, 1.5, 12)


def test_context_limit_stops_generation():
    config = small_config(max_seq_len=16, vocab_size=300, stop_ids=())  # no end token
    model = random_model(config, 3, byte_tokenizer(300))
    stats = GenerationStats()
    list(generate(model, [1, 5, 7], 100, temperature=1.0, seed=0, stats=stats))
    assert stats.stop_reason == "context_full"
    assert stats.prompt_tokens + stats.generated_tokens == 16


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_generation_stays_within_max_new_tokens_and_the_context(data):
    """Whatever the model, context, prompt and limits: never more than max_new_tokens, never
    past the context, and the stop reason says which limit was met. A prompt longer than the
    context is refused, or truncated with truncate_prompt=True."""
    context = data.draw(st.integers(1, 24), label="context")
    stop_ids = data.draw(st.sampled_from([(), (2,), (2, 1)]))
    config = small_config(max_seq_len=context, vocab_size=300, stop_ids=stop_ids)
    model = random_model(config, data.draw(st.integers(0, 9)), byte_tokenizer(300))
    n_prompt = data.draw(st.integers(1, context + 8), label="prompt length")
    prompt = data.draw(st.lists(st.integers(0, 299), min_size=n_prompt, max_size=n_prompt))
    max_new = data.draw(st.integers(0, 40), label="max_new_tokens")
    sampling = dict(seed=0, temperature=1.0, top_k=0, min_p=0)
    if n_prompt > context:
        with pytest.raises(ContextLengthError, match="longer than the model's context"):
            generate(model, prompt, max_new)
    stats = GenerationStats()
    pieces = list(generate(model, prompt, max_new, stats=stats, truncate_prompt=True, **sampling))

    assert stats.prompt_tokens + stats.prompt_tokens_dropped == len(prompt)
    if stats.prompt_tokens_dropped:  # room is left for new tokens, up to half the context
        assert stats.prompt_tokens == context - min(max_new, context // 2)
    assert stats.generated_tokens <= max_new
    assert stats.prompt_tokens + stats.generated_tokens <= context
    assert stats.decode_tokens <= stats.generated_tokens
    if stats.stop_reason == "context_full":
        assert stats.prompt_tokens + stats.generated_tokens == context
    elif stats.stop_reason == "max_new_tokens":
        assert stats.generated_tokens == max_new
    else:
        assert stats.stop_reason == "end_token" and config.stop_ids
    if stats.generated_tokens == 0:
        assert pieces == []

    # The same limits hold for every sequence of a batch (the same loop).
    other = data.draw(st.lists(st.integers(0, 299), min_size=1, max_size=context))
    batch = GenerationStats()
    list(generate_batch_stream(model, [prompt[:context], other], max_new, stats=batch, **sampling))
    for tokens, n in zip(batch.sequence_tokens, [min(n_prompt, context), len(other)], strict=True):
        assert len(tokens) <= max_new and n + len(tokens) <= context
    assert batch.generated_tokens == sum(len(t) for t in batch.sequence_tokens)


def test_invalid_arguments_fail_before_any_work(stories260k):
    with pytest.raises(ArgumentError, match="temperature"):
        generate(stories260k, "hi", 10, temperature=-1)
    with pytest.raises(ArgumentError, match="max_new_tokens"):
        generate(stories260k, "hi", -5)
    with pytest.raises(ArgumentError, match="stop"):
        generate(stories260k, "hi", 5, stop=[""])


def test_load_default_model_api():
    model = llama_np.load()
    assert model.tokenizer.vocab_size == model.config.vocab_size == 512
    cache = model.new_cache()
    assert cache.nbytes == model.config.kv_cache_bytes(512)


def test_model_without_tokenizer_takes_and_generates_ids_only():
    model = random_model(small_config())
    with pytest.raises(ArgumentError, match="no tokenizer"):
        generate(model, "text needs a tokenizer", 5)
    stats = GenerationStats()
    assert list(generate(model, [1, 2], 5, temperature=0, stats=stats, stop_ids=())) == []
    assert len(stats.tokens) == 5
