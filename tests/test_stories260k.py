"""The real bundled checkpoint reproduces its author's published output."""

import llama_np

# Greedy decoding of stories260K from BOS alone, as published by its author
# (karpathy/tinyllamas; quoted in the assets README this checkpoint came with).
REFERENCE = (
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the "
    "park. One day, she saw a big, red ball. She wanted to play with it, but it was too high.\n"
    "Lily's mom said, \"Lily, let's go to the park.\" Lily was sad and didn't know what to do. "
    'She said, "I want to play with your ball, but I can\'t find it."'
)


def test_greedy_from_bos_reproduces_published_story(stories260k):
    text = llama_np.generate_text(stories260k, "", max_new_tokens=200, temperature=0)
    assert text.startswith(REFERENCE)


def test_config_matches_published_shape(stories260k):
    c = stories260k.config
    assert (c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads) == (64, 172, 5, 8, 4)
    assert (c.vocab_size, c.max_seq_len, c.tie_embeddings) == (512, 512, True)
    assert c.head_dim == 8 and c.rope_interleaved


def test_prompt_continuation_is_deterministic_per_seed(stories260k):
    a = llama_np.generate_text(stories260k, "Once upon a time", 40, seed=7)
    b = llama_np.generate_text(stories260k, "Once upon a time", 40, seed=7)
    c = llama_np.generate_text(stories260k, "Once upon a time", 40, seed=8)
    assert a == b
    assert a != c  # different seeds give different stories (checked: they do for 40 tokens)


def test_story_ends_at_bos(stories260k):
    stats = llama_np.GenerationStats()
    text = llama_np.generate_text(stories260k, "", 500, temperature=0, stats=stats)
    # the greedy story ends (with BOS, llama2.c's end-of-story marker) before 500 tokens
    assert stats.stop_reason == "end_token"
    assert "<s>" not in text and "\n<s>\n" not in text
