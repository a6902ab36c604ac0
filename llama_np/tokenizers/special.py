"""Looking up a tokenizer's special tokens by name, one error message for every tokenizer kind."""

from __future__ import annotations

from collections.abc import Mapping

from .. import arguments
from ..errors import TokenizerError


def special_token_id(tokenizer: str, special_tokens: Mapping[str, int], name: str) -> int:
    """The id of special token `name` (e.g. "</s>", "<|eot_id|>") of the tokenizer named
    `tokenizer`, or a TokenizerError listing the special tokens it has."""
    if arguments.string(name, "name") not in special_tokens:
        raise TokenizerError(
            f"{tokenizer}: no special token {name!r}; it has {sorted(special_tokens)}"
        )
    return special_tokens[name]
