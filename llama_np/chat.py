"""Chat: the prompt formats chat models were trained on, and a conversation with one KV cache.

A chat model sees the whole conversation as one token sequence. By default it is written by
the checkpoint's own Jinja chat template (chat_template.py), exactly as transformers writes it.
A checkpoint without one (Meta's downloads, llama2.c) falls back to a built-in format; they
also show plainly what the templates do. Each marks who speaks and where a turn ends:

llama3  <|begin_of_text|><|start_header_id|>system<|end_header_id|>\\n\\nSYSTEM<|eot_id|>
        <|start_header_id|>user<|end_header_id|>\\n\\nUSER<|eot_id|>
        <|start_header_id|>assistant<|end_header_id|>\\n\\nREPLY<|eot_id|>...
llama2  <s>[INST] <<SYS>>\\nSYSTEM\\n<</SYS>>\\n\\nUSER [/INST] REPLY </s><s>[INST] USER [/INST]...
        (each exchange is encoded on its own, with its own BOS and EOS, as Meta does)
zephyr  <s><|system|>\\nSYSTEM</s>\\n<|user|>\\nUSER</s>\\n<|assistant|>\\nREPLY</s>\\n...
        (TinyLlama-Chat; "</s>" is the EOS token, the tags are plain text)
chatml  <|im_start|>system\\nSYSTEM<|im_end|>\\n<|im_start|>user\\nUSER<|im_end|>\\n
        <|im_start|>assistant\\nREPLY<|im_end|>\\n...      (SmolLM2-Instruct)

Special tokens are inserted by id, never parsed out of the user's text: a user who types
"<|eot_id|>" gets those characters, not the end of their turn.

`Chat` keeps one KV cache for the whole conversation. Each turn writes the conversation so far
as tokens (a built-in format appends the end of the previous reply, the user's message and
the assistant header; a template re-renders everything), keeps the cached tokens that the new
tokens start with, and prefills only the rest. A template that rewrites earlier turns (drops
old reasoning, moves the system prompt, changes the date) makes the cache roll back to the
first token that differs; `chat.last_turn` says so.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

from . import arguments
from .chat_template import ChatTemplate, check_messages
from .errors import ArgumentError, ContextLengthError, LlamaNpError
from .generate import GenerationStats, TextStream, generate
from .kv_cache import KVCache
from .model import Model
from .tokenizers import Llama2cTokenizer, SentencePieceTokenizer

BUILTIN_FORMATS = ("llama3", "llama2", "zephyr", "chatml")
CHAT_FORMATS = ("template", *BUILTIN_FORMATS)  # "template": the checkpoint's own


class ChatFormat(ABC):
    """How one model family writes a conversation as tokens.

    start(system, user)  the first turn, BOS included, up to where the assistant speaks
    reply(text)          a reply's tokens as they sit in the conversation
    end_reply()          what closes the assistant's reply (the end-of-turn token, ...)
    next_turn(user)      a later user turn, up to where the assistant speaks
    stop_ids             tokens with which the model ends its reply
    """

    name = ""
    needs: tuple[str, ...] = ()  # special tokens the tokenizer must have
    stop_ids: frozenset[int]

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    @abstractmethod
    def start(self, system: str | None, user: str) -> list[int]: ...

    @abstractmethod
    def next_turn(self, user: str) -> list[int]: ...

    @abstractmethod
    def end_reply(self) -> list[int]: ...

    def reply(self, text: str) -> list[int]:
        return _text(self.tokenizer)(text.strip())

    def conversation(self, messages: list[dict[str, str]], history: list[int]) -> list[int]:
        """The conversation ready for the reply: `history` (the tokens so far, ending with the
        last reply) + the end of that reply + the new user turn, or the first turn."""
        if history:
            return history + self.end_reply() + self.next_turn(messages[-1]["content"])
        system = messages[0]["content"] if messages[0]["role"] == "system" else None
        return self.start(system, messages[-1]["content"])

    def dialog(self, messages: list[dict[str, str]]) -> list[int]:
        """A whole conversation ([system,] user, assistant, ..., user) ready for the reply."""
        messages = check_messages(messages, text_only=True)
        system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
        turns = messages[1:] if system is not None else messages
        roles = [m["role"] for m in turns]
        if roles != ["user", "assistant"] * (len(roles) // 2) + ["user"]:
            raise ArgumentError(
                f"the built-in chat format {self.name!r} writes one optional system message, "
                f"then user and assistant messages in turn, ending with a user message; got the "
                f"roles {[m['role'] for m in messages]} (a checkpoint's own chat template may "
                f"take others)"
            )
        tokens = self.start(system, turns[0]["content"])
        for answer, user in zip(turns[1::2], turns[2::2], strict=True):
            tokens += (
                self.reply(answer["content"]) + self.end_reply() + self.next_turn(user["content"])
            )
        return tokens


class Llama3Format(ChatFormat):
    """Meta's Llama 3 Instruct format (header ids around the role, <|eot_id|> after each)."""

    name = "llama3"
    needs = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")

    def __init__(self, tokenizer) -> None:
        super().__init__(tokenizer)
        tid = tokenizer.token_id
        self.start_header, self.end_header = tid("<|start_header_id|>"), tid("<|end_header_id|>")
        self.eot = tid("<|eot_id|>")
        # <|eom_id|> ends a message that expects a tool's answer; treat it as an end of turn.
        ends = ["<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"]
        self.stop_ids = frozenset(tid(n) for n in ends if n in tokenizer.special_tokens)

    def header(self, role: str) -> list[int]:
        text = _text(self.tokenizer)
        return [self.start_header, *text(role), self.end_header, *text("\n\n")]

    def message(self, role: str, content: str) -> list[int]:
        return [*self.header(role), *_text(self.tokenizer)(content.strip()), self.eot]

    def start(self, system: str | None, user: str) -> list[int]:
        tokens = [self.tokenizer.bos_id]
        if system is not None:
            tokens += self.message("system", system)
        return tokens + self.next_turn(user)

    def next_turn(self, user: str) -> list[int]:
        return self.message("user", user) + self.header("assistant")

    def end_reply(self) -> list[int]:
        return [self.eot]

    def dialog(self, messages: list[dict[str, str]]) -> list[int]:
        """Any order of system, user and assistant messages, as Meta's template writes them
        (each its own header and <|eot_id|>): two system messages, a system message alone."""
        tokens = [self.tokenizer.bos_id]
        for m in _roles_known(self, messages):
            tokens += self.message(m["role"], m["content"])
        return tokens + self.header("assistant")


class Llama2Format(ChatFormat):
    """Meta's Llama 2 chat format: each [INST] exchange is its own BOS ... EOS sequence."""

    name = "llama2"

    def __init__(self, tokenizer) -> None:
        super().__init__(tokenizer)
        self.stop_ids = frozenset([tokenizer.eos_id])
        # Meta encodes f"{prompt} [/INST] {answer} " with EOS: a space piece, then EOS.
        self._end_reply = [*_continuation(tokenizer)(" "), tokenizer.eos_id]

    def start(self, system: str | None, user: str) -> list[int]:
        if system is not None:  # Meta folds the system prompt into the first user message
            user = f"<<SYS>>\n{system.strip()}\n<</SYS>>\n\n{user.strip()}"
        return self.next_turn(user)

    def next_turn(self, user: str) -> list[int]:
        return self.tokenizer.encode(f"[INST] {user.strip()} [/INST]", bos=True)

    def end_reply(self) -> list[int]:
        return list(self._end_reply)


class ZephyrFormat(ChatFormat):
    """TinyLlama-Chat / Zephyr: <|role|> tags as plain text, each message ended by EOS.

    As transformers encodes the template, only the very first text gets SentencePiece's dummy
    prefix; text after an EOS is encoded as a continuation (no space prepended).
    """

    name = "zephyr"

    def __init__(self, tokenizer) -> None:
        super().__init__(tokenizer)
        self.eos = tokenizer.eos_id
        self.stop_ids = frozenset([self.eos])
        self.cont = _continuation(tokenizer)

    def start(self, system: str | None, user: str) -> list[int]:
        first, cont = _text(self.tokenizer), self.cont
        if system is None:
            return [self.tokenizer.bos_id, *first(f"<|user|>\n{user.strip()}"), *self._ask()]
        return [
            self.tokenizer.bos_id,
            *first(f"<|system|>\n{system.strip()}"),
            self.eos,
            *cont(f"\n<|user|>\n{user.strip()}"),
            *self._ask(),
        ]

    def next_turn(self, user: str) -> list[int]:
        return [*self.cont(f"\n<|user|>\n{user.strip()}"), *self._ask()]

    def _ask(self) -> list[int]:
        """End the user's message and open the assistant's."""
        return [self.eos, *self.cont("\n<|assistant|>\n")]

    def reply(self, text: str) -> list[int]:
        return self.cont(text.strip())

    def end_reply(self) -> list[int]:
        return [self.eos]


class ChatMLFormat(ChatFormat):
    """ChatML (SmolLM2-Instruct and others): <|im_start|>role\\n...<|im_end|>\\n."""

    name = "chatml"
    needs = ("<|im_start|>", "<|im_end|>")

    def __init__(self, tokenizer) -> None:
        super().__init__(tokenizer)
        self.im_start = tokenizer.token_id("<|im_start|>")
        self.im_end = tokenizer.token_id("<|im_end|>")
        self.stop_ids = frozenset([self.im_end])

    def message(self, role: str, content: str) -> list[int]:
        return [
            self.im_start,
            *_text(self.tokenizer)(f"{role}\n{content.strip()}"),
            *self.end_reply(),
        ]

    def start(self, system: str | None, user: str) -> list[int]:
        tokens = self.message("system", system) if system is not None else []
        return tokens + self.next_turn(user)

    def next_turn(self, user: str) -> list[int]:
        return [*self.message("user", user), self.im_start, *_text(self.tokenizer)("assistant\n")]

    def end_reply(self) -> list[int]:
        return [self.im_end, *_text(self.tokenizer)("\n")]

    def dialog(self, messages: list[dict[str, str]]) -> list[int]:
        """Any order of system, user and assistant messages (each its own <|im_start|> ...
        <|im_end|>), a reply encoded as `conversation` encodes it."""
        text, tokens = _text(self.tokenizer), []
        for m in _roles_known(self, messages):
            if m["role"] == "assistant":
                tokens += [self.im_start, *text("assistant\n"), *self.reply(m["content"])]
                tokens += self.end_reply()
            else:
                tokens += self.message(m["role"], m["content"])
        return [*tokens, self.im_start, *text("assistant\n")]


_FORMATS = {f.name: f for f in (Llama3Format, Llama2Format, ZephyrFormat, ChatMLFormat)}


def _roles_known(chat_format: ChatFormat, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The messages, checked: at least one, each system, user or assistant."""
    messages = check_messages(messages, text_only=True)
    if not messages:
        raise ArgumentError("a dialog needs at least one message")
    for i, m in enumerate(messages):
        if m["role"] not in ("system", "user", "assistant"):
            raise ArgumentError(
                f"messages[{i}]: the built-in chat format {chat_format.name!r} writes system, "
                f"user and assistant messages, got the role {m['role'][:40]!r}"
            )
    return messages


def _text(tokenizer):
    """encode(text) without BOS/EOS."""
    return lambda text: tokenizer.encode(text, bos=False)


def _continuation(tokenizer):
    """encode(text) for text that sits right after a special token: no dummy-prefix space."""
    if not tokenizer.adds_dummy_prefix:
        return _text(tokenizer)
    if not isinstance(tokenizer, (SentencePieceTokenizer, Llama2cTokenizer)):  # GGUF `llama`
        raise ArgumentError(
            f"{type(tokenizer).__name__} cannot encode text without its leading space; "
            f"this chat format needs a SentencePiece vocabulary"
        )
    return lambda text: tokenizer.encode(text, bos=False, dummy_prefix=False)


def detect_chat_format(tokenizer) -> str:
    """The chat format a model was trained with, from its chat template (tokenizer_config.json)
    or, without one, from its special tokens and tokenizer kind."""
    template = getattr(tokenizer, "chat_template", None) or ""
    special = getattr(tokenizer, "special_tokens", {})
    markers = [
        ("llama3", "<|start_header_id|>"),
        ("chatml", "<|im_start|>"),
        ("zephyr", "<|user|>"),
        ("llama2", "[INST]"),
    ]
    for name, marker in markers:
        if marker in template:
            return name
    if not template:  # Meta's downloads have none: tell by the special tokens
        for name, marker in markers[:2]:
            if marker in special:
                return name
        if isinstance(tokenizer, SentencePieceTokenizer):
            return "llama2"  # a bare SentencePiece tokenizer.model
    raise ArgumentError(
        "cannot tell this model's chat format from its tokenizer"
        + (" and chat template" if template else " (no chat template)")
        + f"; pass --chat-format ({'|'.join(BUILTIN_FORMATS)})"
    )


def make_chat_format(tokenizer, name: str | None = None) -> ChatFormat | ChatTemplate:
    """The chat format `name`: "template" (the checkpoint's own Jinja template) or a built-in
    one. None picks the template when the tokenizer has one, else the built-in format that
    detect_chat_format recognises."""
    if tokenizer is None:
        raise ArgumentError("this model has no tokenizer; chat needs one (pass its path)")
    arguments.string(name, "chat_format", optional=True)
    if name is None:
        name = "template" if getattr(tokenizer, "chat_template", None) else None
        name = name or detect_chat_format(tokenizer)
    if name == "template":
        return ChatTemplate(tokenizer)
    if name not in _FORMATS:
        raise ArgumentError(f"unknown chat format {name!r}; expected one of {CHAT_FORMATS}")
    special = getattr(tokenizer, "special_tokens", {})
    missing = [t for t in _FORMATS[name].needs if t not in special]
    if missing:
        raise ArgumentError(
            f"chat format {name!r} needs the special tokens {', '.join(missing)}, which this "
            f"tokenizer ({type(tokenizer).__name__}) does not have; use the model's own format "
            f"(leave out --chat-format) or one of {', '.join(CHAT_FORMATS)} that fits it"
        )
    return _FORMATS[name](tokenizer)


@dataclass
class Turn:
    """How a turn used the KV cache."""

    reused: int  # tokens of the conversation whose keys and values were already cached
    prefilled: int  # tokens prefilled this turn
    rewritten_at: int | None = None  # the first cached token the new rendering changed, if any
    forgotten: int = 0  # oldest messages left out: the conversation outgrew the KV cache


class Chat:
    """A conversation with a model: one KV cache and the tokens in it.

    chat.messages is the conversation ({"role", "content"} dicts, the system prompt first);
    chat.tokens is it written out as the model sees it; the cache holds their keys and
    values, so each turn prefills only what is new. The token that ended a reply is not in the
    cache (generation stops before running it), and neither is the last token of a reply cut
    off by max_new_tokens: the next turn's tokens start where the cache ends.
    """

    def __init__(
        self,
        model: Model,
        chat_format: str | None = None,
        system: str | None = None,
        max_seq_len: int | None = None,
    ) -> None:
        self.model = arguments.instance(model, "model", Model)
        arguments.text(system, "system", optional=True)
        self.format = make_chat_format(model.tokenizer, chat_format)
        self.messages: list[dict[str, str]] = (
            [{"role": "system", "content": system}] if system is not None else []
        )
        self.cache: KVCache = model.new_cache(max_seq_len)
        self.tokens: list[int] = []  # the conversation as the model sees it
        self.stop_ids = self.format.stop_ids | set(model.config.stop_ids)
        self.turns = 0
        self.last_turn: Turn | None = None

    @property
    def format_name(self) -> str:
        """The format, and for a template where it came from."""
        if isinstance(self.format, ChatTemplate):
            return f"template ({self.format.source})"
        return self.format.name

    def send(
        self,
        user: str,
        max_new_tokens: int = 512,
        stats: GenerationStats | None = None,
        **sampling,
    ) -> Iterator[str]:
        """Add the user's message and stream the model's reply (sampling as in `generate`).

        The arguments are checked when the reply starts (the first next()), before any work;
        `generate` checks the sampling settings.
        """
        arguments.text(user, "user")
        arguments.integer(max_new_tokens, "max_new_tokens", 0)
        stats = arguments.instance(stats, "stats", GenerationStats, optional=True)
        stats = stats if stats is not None else GenerationStats()
        # Before the (whole-conversation) tokenization: a message that cannot fit anyway.
        at_least = self.model.tokenizer.min_tokens(user)
        if at_least > self.cache.max_seq_len:
            raise ContextLengthError(
                f"the message is at least {at_least:,} tokens, more than the chat's KV cache "
                f"of {self.cache.max_seq_len} (-c/--ctx-size) holds; send a shorter one"
            )
        messages = [*self.messages, {"role": "user", "content": user}]
        tokens = self.format.conversation(messages, self.tokens)
        # A conversation that outgrew the cache (leaving less than a quarter of it, or
        # max_new_tokens, for the reply) forgets its oldest exchanges, the system prompt kept,
        # as Ollama does (llama.cpp shifts the cache instead): a chat goes on for as long as
        # its user likes.
        room = self.cache.max_seq_len - min(max_new_tokens, self.cache.max_seq_len // 4)
        first = 1 if messages[0]["role"] == "system" else 0
        forgotten = 0
        while len(tokens) > room and len(messages) - first > 1:
            del messages[first : first + 2]  # a user message and the reply to it
            forgotten += 2
            tokens = self._render(messages)
        if len(tokens) >= self.cache.max_seq_len:  # no room for a reply even so
            raise ContextLengthError(
                f"the message is {len(tokens):,} tokens written out in the chat format (with the "
                f"system prompt), and the chat's KV cache holds {self.cache.max_seq_len} "
                f"(-c/--ctx-size): send a shorter one"
            )
        # Keep the cached tokens the new conversation starts with (all of them, unless the
        # template rewrote history), but prefill at least one token: its logits start the reply.
        cached = self.cache.length
        keep = _common_prefix(tokens, self.tokens[:cached])
        keep = max(0, min(keep, len(tokens) - 1))
        self.cache.lengths[0] = keep  # roll back past the first changed token (if any)
        try:
            pieces = generate(
                self.model,
                tokens[keep:],
                max_new_tokens,
                stats=stats,
                stop_ids=self.stop_ids,
                cache=self.cache,
                **sampling,
            )
        except LlamaNpError:  # it does not fit, ...: the conversation stays as it was
            self.cache.lengths[0] = cached
            raise
        self.last_turn = Turn(keep, len(tokens) - keep, keep if keep < cached else None, forgotten)
        self.tokens = tokens
        self.messages = messages
        self.turns += 1
        try:
            yield from pieces
        finally:
            self.tokens += stats.tokens
            self.messages.append({"role": "assistant", "content": self._text(tokens, stats.tokens)})

    def _render(self, messages: list[dict[str, str]]) -> list[int]:
        """The whole conversation written out anew, ready for the reply."""
        if isinstance(self.format, ChatTemplate):
            return self.format.conversation(messages, [])
        return self.format.dialog(messages)

    def _text(self, prompt: list[int], reply: list[int]) -> str:
        """A reply's text for the next rendering: as streamed, without special tokens (also
        when `special=True` showed their names)."""
        stream = TextStream(self.model.tokenizer, prompt[-1] == self.model.config.bos_id)
        return "".join(stream.push(t) for t in reply) + stream.flush()


def _common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens a and b share."""
    n = 0
    for x, y in zip(a, b, strict=False):  # they may differ in length
        if x != y:
            break
        n += 1
    return n
