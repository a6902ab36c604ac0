"""Property: generation never yields more than max_new_tokens tokens and never passes the
context, whatever the model, context length, prompt and limits."""

from __future__ import annotations

from bad_files import TOKENIZER_512, random_tensors
from hypothesis import given, settings
from hypothesis import strategies as st

from llama_np import GenerationStats, LlamaConfig, Model, generate, load_tokenizer

TOKENIZER = load_tokenizer(TOKENIZER_512, 512)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_generation_stays_within_max_new_tokens_and_the_context(data):
    context = data.draw(st.integers(1, 24), label="context")
    config = LlamaConfig(
        dim=8, n_layers=1, n_heads=2, n_kv_heads=1, hidden_dim=8, vocab_size=512,
        max_seq_len=context, stop_ids=data.draw(st.sampled_from([(), (2,), (2, 1)])),
    )  # fmt: skip
    model = Model.from_tensors(config, random_tensors(config, seed=data.draw(st.integers(0, 9))))
    model.tokenizer = TOKENIZER
    # prompts longer than the context are truncated (truncate_prompt=True)
    n_prompt = data.draw(st.integers(1, context + 8), label="prompt length")
    prompt = data.draw(st.lists(st.integers(0, 511), min_size=n_prompt, max_size=n_prompt))
    max_new = data.draw(st.integers(0, 40), label="max_new_tokens")
    stats = GenerationStats()
    pieces = list(
        generate(
            model, prompt, max_new, stats=stats, seed=0, temperature=1.0, top_k=0, min_p=0,
            truncate_prompt=True,
        )
    )  # fmt: skip

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
