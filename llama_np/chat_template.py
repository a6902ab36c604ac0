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

A template is also a program of unbounded work, so rendering is bounded (`Budget`): the
output by MAX_CHARS characters (a real prompt is a few hundred thousand at most), loop steps
over `range` by MAX_STEPS, the whole rendering by MAX_SECONDS, and a string or list made by
`*` or `+`, or passed to a call, by MAX_CHARS before it is made. Recursion and memory
exhaustion inside a template end in the same TokenizerError that names the template.

The rendered text is then tokenized with special-token text parsed as special tokens, as
transformers does. Special-token text inside a message's content stays ordinary text: it is
bracketed by a private-use marker before rendering, and the marked spans are encoded as text
(transformers' `sanitize_control_tokens`), so a user who types "<|eot_id|>" cannot end a turn.
"""

from __future__ import annotations

import json
import math
import numbers
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import MAX_RANGE, ImmutableSandboxedEnvironment, SecurityError
from jinja2.utils import Namespace

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


# Bounds of one rendering: far above what any real template does (Llama 3.1's, the longest
# committed, renders a conversation in a few thousand steps and milliseconds).
MAX_CHARS = 16 * 2**20  # characters of output, or of one string or list the template makes
MAX_STEPS = 1_000_000  # iterations over range(...)
MAX_SECONDS = 10.0
MAX_POWER_BITS = 1 << 16  # size of an integer made by **


class TemplateTooBig(jinja2.TemplateError):
    """A rendering passed one of its bounds."""


class Budget:
    """What one rendering may still spend: output characters, range steps and time."""

    def __init__(self, max_chars: int, max_steps: int, seconds: float) -> None:
        self.max_chars, self.steps_left = max_chars, max_steps
        self.max_steps, self.seconds = max_steps, seconds
        self.deadline = time.monotonic() + seconds

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateTooBig(f"it ran for more than {self.seconds:g} s")

    def step(self) -> None:
        self.steps_left -= 1
        if self.steps_left < 0:
            raise TemplateTooBig(f"its loops ran more than {self.max_steps:,} steps over range()")
        if not self.steps_left & 1023:
            self.tick()

    def check_size(self, value, what: str) -> None:
        if isinstance(value, str | list | tuple) and len(value) > self.max_chars:
            raise TemplateTooBig(f"{what} would hold {len(value):,} items")


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, with every call, attribute and item access, `*`, `**` and `+`, loop over
    range() and namespace assignment counted against the rendering's Budget."""

    intercepted_binops = frozenset({"*", "**", "+"})
    budget = Budget(MAX_CHARS, MAX_STEPS, math.inf)  # render_template sets each rendering's

    def call_binop(self, context, operator: str, left, right):
        self.budget.tick()
        if operator == "*":
            for seq, count in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(count, int):
                    size = len(seq) * max(count, 0)
                    if size > self.budget.max_chars:
                        raise TemplateTooBig(f"a repetition would make {size:,} items")
        if operator == "**" and isinstance(left, int) and isinstance(right, int):
            bits = right * math.log2(abs(left)) if abs(left) > 1 and right > 0 else 0
            if bits > MAX_POWER_BITS:
                raise TemplateTooBig(f"a power would have {bits:,.0f} bits")
        if operator == "+" and isinstance(left, str | list | tuple) and type(right) is type(left):
            size = len(left) + len(right)
            if size > self.budget.max_chars:
                raise TemplateTooBig(f"a sum would make {size:,} items")
        return super().call_binop(context, operator, left, right)

    def call(__self, __context, __obj, *args, **kwargs):  # jinja2's signature
        __self.budget.tick()
        for arg in (*args, *kwargs.values()):
            __self.budget.check_size(arg, "an argument of a call")
        result = super().call(__context, __obj, *args, **kwargs)
        __self.budget.check_size(result, "the result of a call")
        return result

    def getattr(self, obj, attribute):
        self.budget.tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj, argument):
        self.budget.tick()
        return super().getitem(obj, argument)

    def range(self, *args: int) -> _CountedRange:
        """jinja2's range (at most MAX_RANGE items), each step of a loop over it counted."""
        steps = range(*args)
        if len(steps) > MAX_RANGE:
            raise OverflowError(f"range too big, maximum size for range is {MAX_RANGE}")
        return _CountedRange(steps, self)

    def namespace(self, *args, **kwargs) -> Namespace:
        ns = _BoundedNamespace(*args, **kwargs)
        object.__setattr__(ns, "_environment", self)  # Namespace hides its own attributes
        return ns


class _CountedRange(Sequence):
    """A range whose iteration counts each step against the rendering's budget; a sequence
    like range (len, indexing, `in`, |length, |reverse work). Its attributes start with "_",
    which the sandbox does not let a template read."""

    def __init__(self, steps: range, env: _BoundedEnvironment) -> None:
        self._steps, self._env = steps, env

    def __len__(self) -> int:
        return len(self._steps)

    def __getitem__(self, i):
        return self._steps[i]

    def __iter__(self) -> Iterator[int]:
        for i in self._steps:
            self._env.budget.step()
            yield i

    def __reversed__(self) -> Iterator[int]:
        for i in reversed(self._steps):
            self._env.budget.step()
            yield i


class _BoundedNamespace(Namespace):
    """namespace(): a value assigned to it ({% set ns.s = ns.s ~ ns.s %}) counts too."""

    def __setitem__(self, name: str, value) -> None:
        budget = object.__getattribute__(self, "_environment").budget
        budget.check_size(value, f"namespace attribute {name!r}")
        super().__setitem__(name, value)


def _environment() -> ImmutableSandboxedEnvironment:
    env = _BoundedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols, _Generation]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["range"] = env.range
    env.globals["namespace"] = env.namespace
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
    max_chars: int = MAX_CHARS,
) -> str:
    """Run a compiled chat template over `messages` -> the prompt text.

    `special_tokens` are the template variables bos_token, eos_token, ...; `now` fixes what
    strftime_now sees (default: the current local time, as transformers uses). The rendering
    stops with a TokenizerError naming `source` past `max_chars` characters of output or
    past the other bounds of Budget.
    """

    messages = check_messages(messages)
    arguments.flag(add_generation_prompt, "add_generation_prompt")
    arguments.instance(now, "now", datetime, optional=True)

    def strftime_now(fmt: str) -> str:
        return (now or datetime.now()).strftime(fmt)

    budget = Budget(max_chars, MAX_STEPS, MAX_SECONDS)
    template.environment.budget = budget
    try:
        context = template.new_context(
            dict(
                **special_tokens,
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                tools=None,
                documents=None,
                strftime_now=strftime_now,
            )
        )
        return _bounded_output(template.root_render_func(context), budget)
    except TemplateTooBig as e:
        raise TokenizerError(
            f"{source}: the chat template was stopped: {e} (bounds: {max_chars:,} characters, "
            f"{MAX_STEPS:,} loop steps, {MAX_SECONDS:g} s); a chat template that does this "
            f"much work is broken or hostile: pick a built-in format with --chat-format"
        ) from None
    except (RecursionError, MemoryError) as e:
        what = "recursed too deeply" if isinstance(e, RecursionError) else "ran out of memory"
        raise TokenizerError(
            f"{source}: the chat template was stopped: it {what}; a chat template that does "
            f"this is broken or hostile: pick a built-in format with --chat-format"
        ) from None
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
        OverflowError,
    ) as e:
        raise TokenizerError(
            f"{source}: the chat template failed: {type(e).__name__}: {e}; pick a built-in "
            f"format with --chat-format"
        ) from None


def _bounded_output(pieces: Iterator[str], budget: Budget) -> str:
    """Join a rendering's pieces, stopping once they pass budget.max_chars characters (kept
    joined in blocks: millions of one-character pieces would cost far more than their text)."""
    blocks: list[str] = []
    block: list[str] = []
    n = 0
    for piece in pieces:
        n += len(piece)
        if n > budget.max_chars:
            raise TemplateTooBig(f"its output passed {budget.max_chars:,} characters")
        block.append(piece)
        if len(block) >= 4096:
            budget.tick()
            blocks.append("".join(block))
            block = []
    return "".join(blocks) + "".join(block)


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
