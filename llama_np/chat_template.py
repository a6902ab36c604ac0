"""The checkpoint's own chat template: Jinja text from tokenizer_config.json or a GGUF file,
rendered the way Hugging Face transformers renders it.

A chat model's tokenizer files usually carry a `chat_template`: a small Jinja program that
turns the conversation (a list of {"role", "content"} messages) into the exact prompt text the
model was trained on, special-token text included ("<|start_header_id|>user<|end_header_id|>
\\n\\nHi<|eot_id|>"). Running it, rather than a hand-written copy, keeps details such as
SmolLM2's default system prompt or Llama 3's "Cutting Knowledge Date" header.

Rendering follows transformers' `apply_chat_template`:

- the environment is jinja2's ImmutableSandboxedEnvironment with trim_blocks and lstrip_blocks
  (a template is text from a downloaded file: no attribute access beyond what the sandbox
  allows, no changing of lists and dicts), the loop-controls extension, and a `tojson` filter
  that is plain json.dumps (no HTML escaping, non-ASCII kept);
- the variables are `messages`, `add_generation_prompt`, the special token strings
  (`bos_token`, `eos_token`, ... as tokenizer_config.json names them), `raise_exception(msg)`
  and `strftime_now(format)`; `tools` and `documents` are None.

The rendered text is then tokenized with special-token text parsed as special tokens, as
transformers does. Special-token text inside a message's content stays ordinary text: it is
bracketed by a private-use marker before rendering, and the marked spans are encoded as text
(transformers' `sanitize_control_tokens`), so a user who types "<|eot_id|>" cannot end a turn.
"""

from __future__ import annotations

import json
import numbers
import re
from collections.abc import Mapping, Sequence
from datetime import datetime

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from . import arguments
from .errors import ArgumentError, TokenizerError

# Tokens that end an assistant turn, when a template writes them (besides the tokenizer's EOS).
END_OF_TURN_TOKENS = ("<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>")

# Brackets special-token text typed inside a message (a Unicode private-use character).
_MARK = "\ue000"


class TemplateRaised(jinja2.TemplateError):
    """What a template's raise_exception(message) raises."""


def _raise_exception(message: str):
    raise TemplateRaised(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    """transformers' tojson: json.dumps, without Jinja's HTML escaping."""
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


class _Generation(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (transformers marks assistant text with it for
    training masks): renders its body unchanged."""

    tags = frozenset({"generation"})

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller) -> str:
        return caller()


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols, _Generation]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    return env


class _Missing:
    def __repr__(self) -> str:
        return "nothing (the key is missing)"


_MISSING = _Missing()
_CONTENT = (str, list, tuple, Mapping, numbers.Real)  # what a message's content may be


def check_messages(
    messages: Sequence[Mapping], name: str = "messages", *, text_only: bool = False
) -> list[dict]:
    """The conversation checked as far as rendering it needs; -> a list of dicts.

    As permissive as transformers' apply_chat_template: a message is a mapping that the
    template reads, with a string "role". Its "content" may be a string, absent or None (an
    assistant turn that only calls tools), a list of content parts ({"type": "text", "text":
    ...}), or for a tool's result a JSON value (a dict, a number), which templates write with
    tojson; other keys (tool_calls, name, ...) go to the template unchecked. Refused: what
    would render as Python's repr (bytes, a set, an arbitrary object). With `text_only` (the
    built-in formats) content must be a string.
    """
    items = arguments.sequence(messages, name, allowed='a list of messages ({"role", "content"})')
    for i, message in enumerate(items):
        at = f"{name}[{i}]"
        if not isinstance(message, Mapping):
            raise arguments.refuse(at, message, 'a message: a dict with "role" and "content"')
        arguments.string(message.get("role", _MISSING), f"{at}['role']")
        content = message.get("content", _MISSING if text_only else None)
        if text_only:
            arguments.string(content, f"{at}['content']")
        elif not (content is None or isinstance(content, _CONTENT)):
            allowed = "a string, None, a list of content parts or a JSON value"
            raise arguments.refuse(f"{at}['content']", content, allowed)
    return [dict(m) for m in items]


def compile_template(text: str, source: str) -> jinja2.Template:
    """Parse a chat template; a syntax error is a TokenizerError naming `source` and the line."""
    arguments.string(text, "text")
    try:
        return _environment().from_string(text)
    except jinja2.TemplateSyntaxError as e:
        raise TokenizerError(
            f"{source}: the chat template is not valid Jinja: {e.message} (template line "
            f"{e.lineno}); fix the template, or pick a built-in format with --chat-format"
        ) from None


def render_template(
    template: jinja2.Template,
    source: str,
    messages: Sequence[dict],
    add_generation_prompt: bool,
    special_tokens: dict,
    now: datetime | None = None,
) -> str:
    """Run a compiled chat template over `messages` -> the prompt text.

    `special_tokens` are the template variables bos_token, eos_token, ...; `now` fixes what
    strftime_now sees (default: the current local time, as transformers uses).
    """

    messages = check_messages(messages)
    arguments.flag(add_generation_prompt, "add_generation_prompt")
    arguments.instance(now, "now", datetime, optional=True)

    def strftime_now(fmt: str) -> str:
        return (now or datetime.now()).strftime(fmt)

    try:
        return template.render(
            **special_tokens,
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            tools=None,
            documents=None,
            strftime_now=strftime_now,
        )
    except TemplateRaised as e:
        raise ArgumentError(f"{source}: the chat template refused the conversation: {e}") from None
    except SecurityError as e:
        raise TokenizerError(
            f"{source}: the chat template tried something the sandbox forbids ({e}); a "
            f"template may only read its inputs: this one is not usable, pick a built-in format "
            f"with --chat-format"
        ) from None
    # Jinja's own errors (an undefined name, ...) and those of the Python operations a
    # template can run ('a' + 1, int('x'), [][0], 1 / 0)
    except (
        jinja2.TemplateError,
        TypeError,
        ValueError,
        KeyError,
        IndexError,
        ZeroDivisionError,
    ) as e:
        raise TokenizerError(
            f"{source}: the chat template failed: {type(e).__name__}: {e}; pick a built-in "
            f"format with --chat-format"
        ) from None


def special_token_strings(tokenizer) -> dict:
    """The special-token template variables: tokenizer_config.json's (bos_token, eos_token,
    unk_token, pad_token, additional_special_tokens) when the tokenizer came with one, else
    bos_token and eos_token named from the tokenizer's own ids (GGUF, tokenizer.model)."""
    configured = getattr(tokenizer, "template_tokens", None)
    if configured:
        return dict(configured)
    names = {i: name for name, i in getattr(tokenizer, "special_tokens", {}).items()}
    found = {"bos_token": names.get(tokenizer.bos_id), "eos_token": names.get(tokenizer.eos_id)}
    return {key: name for key, name in found.items() if name is not None}


class ChatTemplate:
    """A checkpoint's chat template, bound to its tokenizer: messages -> prompt tokens.

    render(messages)   the prompt text, exactly as transformers' apply_chat_template renders it
    encode(messages)   its token ids (special-token text parsed, BOS added when the tokenizer
                       adds one and the template did not write it, as llama.cpp does)
    stop_ids           tokens with which the model ends its reply: EOS and the end-of-turn
                       tokens the template writes (<|eot_id|>, <|im_end|>, ...)
    """

    name = "template"

    def __init__(self, tokenizer, text: str | None = None, source: str | None = None) -> None:
        arguments.string(text, "text", optional=True)
        arguments.string(source, "source", optional=True)
        self.tokenizer = tokenizer
        self.text = text if text is not None else getattr(tokenizer, "chat_template", None)
        if not self.text:
            raise ArgumentError(
                "this model's tokenizer has no chat template (tokenizer_config.json "
                "chat_template, chat_template.jinja or GGUF tokenizer.chat_template); pick a "
                "built-in format with --chat-format"
            )
        self.source = (
            source
            or getattr(tokenizer, "chat_template_source", None)
            or f"{getattr(tokenizer, 'name', '') or 'tokenizer'} (chat template)"
        )
        self.template = compile_template(self.text, self.source)
        self.special_tokens = special_token_strings(tokenizer)
        special = getattr(tokenizer, "special_tokens", {})
        self.stop_ids = frozenset(
            [special[n] for n in END_OF_TURN_TOKENS if n in special and n in self.text]
            + ([tokenizer.eos_id] if tokenizer.eos_id is not None else [])
        )
        names = sorted(special, key=len, reverse=True)  # longest first: a name may contain another
        alternatives = "|".join(map(re.escape, names)) or "(?!)"  # (?!) never matches
        self._special_re = re.compile(alternatives)
        # Splits a rendering into [template text, marked text, template text, ...]; a lone marker
        # (a template that cut a marked span apart) is dropped.
        self._marked_re = re.compile(f"{_MARK}({alternatives}){_MARK}|{_MARK}")
        self._bos = tokenizer.encode("", bos=True, eos=False)  # [BOS] if it adds one, else []

    def render(self, messages: Sequence[dict], add_generation_prompt: bool = True, now=None) -> str:
        """The prompt text for `messages` (what transformers' apply_chat_template returns)."""
        return render_template(
            self.template, self.source, messages, add_generation_prompt, self.special_tokens, now
        )

    def encode(
        self, messages: Sequence[dict], add_generation_prompt: bool = True, now=None
    ) -> list[int]:
        """The prompt tokens for `messages`; special-token text typed in a message stays text."""
        marked = [
            {**m, "content": self._mark(m["content"])} if "content" in m else m
            for m in check_messages(messages)
        ]
        pieces = self._marked_re.split(self.render(marked, add_generation_prompt, now))
        tokens: list[int] = []
        for i, piece in enumerate(pieces):  # even: template text; odd: typed special-token text
            if piece:
                tokens += self._encode_piece(piece, special=i % 2 == 0, first=not tokens)
        if self._bos and tokens[:1] != self._bos:
            tokens = self._bos + tokens
        return tokens

    def conversation(self, messages: Sequence[dict], history: list[int]) -> list[int]:
        """The whole conversation so far, ready for the reply (the template re-renders it all;
        `history`, the tokens already in the cache, is not needed)."""
        return self.encode(messages, add_generation_prompt=True)

    def _mark(self, content):
        if isinstance(content, (list, tuple)):  # content parts: mark the text of each
            return [
                {**p, "text": self._mark(p["text"])}
                if isinstance(p, Mapping) and isinstance(p.get("text"), str)
                else p
                for p in content
            ]
        if not isinstance(content, str):
            return content
        content = content.replace(_MARK, "")  # a typed marker cannot forge a marked span
        return self._special_re.sub(lambda m: f"{_MARK}{m[0]}{_MARK}", content)

    def _encode_piece(self, text: str, special: bool, first: bool) -> list[int]:
        # Text after the start is a continuation: no SentencePiece dummy-prefix space.
        extra = {} if first or not self.tokenizer.adds_dummy_prefix else {"dummy_prefix": False}
        return self.tokenizer.encode(text, bos=False, eos=False, allow_special=special, **extra)
