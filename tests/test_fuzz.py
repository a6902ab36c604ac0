"""Fuzzing: mutated and truncated files of every format load or raise our errors.

One table, bad_files.FORMATS: llama2.c checkpoints (three versions) and tokenizer, a
safetensors file, a Meta .pth as raw zip bytes, and its data.pkl repacked into a sound zip
(so the damage reaches the unpickler past the zip's CRC check). Never another exception.
scripts/fuzz.py runs the same mutations thousands of times; structure-aware fuzzing (wrong
types and nesting in well-formed JSON) is in test_structured_fuzz.py.
"""

from __future__ import annotations

import pytest
from bad_files import FORMATS, apply_mutations, mutations
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llama_np import LlamaNpError


@pytest.mark.parametrize("name, make_valid, load_fn", FORMATS, ids=[f[0] for f in FORMATS])
def test_mutated_files_load_or_raise_our_errors(name, make_valid, load_fn):
    valid = make_valid()
    load_fn(valid)  # the unmutated file loads

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(ops=mutations(len(valid)))
    def check(ops):
        try:
            load_fn(apply_mutations(valid, ops))
        except LlamaNpError:
            pass  # any other exception fails the test, and hypothesis shrinks it

    check()


@pytest.mark.parametrize("name, make_valid, load_fn", FORMATS[:3], ids=[f[0] for f in FORMATS[:3]])
def test_every_truncation_of_a_checkpoint_is_refused(name, make_valid, load_fn):
    valid = make_valid()

    @settings(max_examples=50, deadline=None)
    @given(length=st.integers(0, len(valid) - 1))
    def check(length):
        with pytest.raises(LlamaNpError, match=r"llama2\.c"):
            load_fn(valid[:length])

    check()
