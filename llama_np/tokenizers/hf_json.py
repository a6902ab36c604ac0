"""Hugging Face `tokenizer.json` of the byte-level BPE kind, run through tiktoken.

Byte-level BPE (GPT-2, Llama 3, SmolLM) stores each token as a string in which every byte is
one printable character (GPT-2's byte <-> unicode map: "Ġ" is the space byte 0x20). Mapping
the strings back to bytes gives tiktoken's mergeable ranks, with rank = token id: these
vocabularies number their tokens in merge order, which is exactly the order tiktoken merges
in (checked below). The pre-tokenizer's split regex becomes tiktoken's pattern, and
`added_tokens` become special tokens. BOS/EOS come from tokenizer_config.json when present.

Other kinds (SentencePiece-style BPE with "▁" and byte fallback, Unigram, WordPiece) are
refused: use the model's tokenizer.model for those.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import TokenizerError
from ..validate import HF_TOKENIZER, TOKENIZER_CONFIG, read_bytes, read_json, validate
from .tiktoken_bpe import TiktokenTokenizer

# GPT-2's ByteLevel split regex, used when ByteLevel(use_regex=True) does the splitting.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# The same after a Digits(individual_digits=True) pre-tokenizer (SmolLM): every digit is a
# piece of its own, and whitespace before a digit ends at the digit as at the end of a piece.
GPT2_DIGITS_PATTERN = (
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"""
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character: printable Latin-1 bytes map to
    themselves, the other 68 to chr(256), chr(257), ... in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def load_hf_json(path: str | Path) -> TiktokenTokenizer:
    """Read a byte-level BPE tokenizer.json (and tokenizer_config.json beside it)."""
    path = Path(path)
    spec = validate(read_json(path, TokenizerError), HF_TOKENIZER, path, TokenizerError)
    model = spec["model"]
    # Files written by early versions of `tokenizers` leave out the model's type, which that
    # library then infers from the keys: merges mean BPE.
    kind = model["type"] or ("BPE" if model["merges"] else None)
    if kind != "BPE" or model["byte_fallback"] or not _has_byte_level(spec["decoder"]):
        found = f"{kind}{' with byte fallback' if model['byte_fallback'] else ''}"
        raise TokenizerError(
            f"{path}: a {found} tokenizer.json, not byte-level BPE; llama_np reads only "
            f"byte-level BPE tokenizer.json files (Llama 3, GPT-2, SmolLM). For SentencePiece "
            f"models (Llama 2, TinyLlama) load the tokenizer.model next to it"
        )
    normalization = _normalization(path, spec["normalizer"])
    pattern = _split_pattern(path, spec["pre_tokenizer"])

    added = {t["content"]: t["id"] for t in spec["added_tokens"] or []}
    vocab = {token: i for token, i in model["vocab"].items() if token not in added}
    ranks = byte_level_ranks(vocab, str(path))
    if not ranks:
        raise TokenizerError(f"{path}: model.vocab is empty")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    check_merge_order(str(path), merges, model["vocab"])

    config = _read_config(path.parent / "tokenizer_config.json")
    # BOS: the special token the post-processor puts first (Llama 3), else the configured one.
    leading = _leading_special(spec["post_processor"])
    bos_name = leading or _token_name(config["bos_token"])
    eos_name = _token_name(config["eos_token"])
    bos_id = added.get(bos_name) if bos_name else None
    add_bos = config["add_bos_token"]
    return TiktokenTokenizer(
        ranks,
        added,
        pattern,
        bos_id=bos_id,
        eos_id=added.get(eos_name) if eos_name else None,
        add_bos=leading is not None if add_bos is None else add_bos,
        name=str(path),
        merges=merges,
        normalization=normalization,
        text_tokens=[t["content"] for t in spec["added_tokens"] or [] if not t["special"]],
    )


# The Unicode normalizers a byte-level tokenizer.json may run before splitting (Qwen2's has
# NFC); each is unicodedata.normalize of that form.
UNICODE_FORMS = ("NFC", "NFD", "NFKC", "NFKD")


def _normalization(path: Path, normalizer: dict | None) -> tuple[str, ...]:
    """The Unicode forms `normalizer` applies, in order (() for none)."""
    if normalizer is None:
        return ()
    steps = normalizer["normalizers"] if normalizer["type"] == "Sequence" else [normalizer]
    kinds = tuple(step["type"] for step in steps)
    if not all(kind in UNICODE_FORMS for kind in kinds):
        raise TokenizerError(
            f"{path}: normalizer {list(kinds)} is not supported; a byte-level BPE "
            f"tokenizer.json may normalize with {', '.join(UNICODE_FORMS)} (or a Sequence of them)"
        )
    return kinds


def _has_byte_level(decoder: dict | None) -> bool:
    if decoder is None:
        return False
    if decoder["type"] == "Sequence":
        return any(d["type"] == "ByteLevel" for d in decoder["decoders"])
    return decoder["type"] == "ByteLevel"


def _split_pattern(path: Path, pre: dict | None) -> str:
    """The one regex that splits text as the pre-tokenizer does (steps checked by
    validate.HF_TOKENIZER: every key below is present)."""
    steps = pre["pretokenizers"] if pre and pre["type"] == "Sequence" else [pre]
    kinds = [s["type"] if s else None for s in steps]
    byte_level = steps[-1] if kinds and kinds[-1] == "ByteLevel" else None
    if byte_level is None or byte_level["add_prefix_space"]:
        raise TokenizerError(
            f"{path}: pre-tokenizer {kinds} is not supported: expected ByteLevel last, without "
            f"add_prefix_space"
        )
    rest = steps[:-1]
    use_regex = byte_level["use_regex"]
    if not rest and use_regex:  # GPT-2
        return GPT2_PATTERN
    if (
        len(rest) == 1
        and rest[0]["type"] == "Split"
        and not use_regex
        and rest[0]["behavior"] == "Isolated"
        and not rest[0]["invert"]
        and "Regex" in (rest[0]["pattern"] or {})
    ):  # Llama 3: the regex, then bytes
        return rest[0]["pattern"]["Regex"]
    if (
        len(rest) == 1
        and rest[0]["type"] == "Digits"
        and rest[0]["individual_digits"]
        and use_regex
    ):  # SmolLM: single digits, then GPT-2's regex
        return GPT2_DIGITS_PATTERN
    raise TokenizerError(
        f"{path}: pre-tokenizer {kinds} is not supported (supported: ByteLevel; "
        f"Split(Regex, Isolated) + ByteLevel; Digits(individual) + ByteLevel)"
    )


def byte_level_ranks(vocab: dict[str, int], where: str) -> dict[bytes, int]:
    """tiktoken's mergeable ranks from byte-level token strings: token bytes -> id."""
    # Each alphabet character -> the Latin-1 character of its byte, so that
    # token.translate(...).encode("latin-1") gives the token's bytes.
    to_latin1 = str.maketrans({c: chr(b) for b, c in bytes_to_unicode().items()})
    ranks: dict[bytes, int] = {}
    for token, i in vocab.items():
        try:
            ranks[token.translate(to_latin1).encode("latin-1")] = i
        except UnicodeEncodeError:
            raise TokenizerError(
                f"{where}: vocab entry {token!r} (id {i}) is not in GPT-2's byte-level "
                f"alphabet; not a byte-level BPE vocabulary"
            ) from None
    return ranks


def check_merge_order(where: str, merges: list[str], vocab: dict[str, int]) -> None:
    """tiktoken merges the pair whose merged token has the lowest rank; BPE applies merges in
    list order. With rank = id these agree only if ids never decrease along the merge list
    (several merges may make the same token)."""
    last = -1
    for merge in merges:
        a, _, b = merge.partition(" ")
        i = vocab.get(a + b)
        if i is None or i < last:
            raise TokenizerError(
                f"{where}: merge {a!r} + {b!r} "
                + ("makes a token not in the vocab" if i is None else "is out of id order")
                + "; this vocabulary cannot be run as tiktoken ranks"
            )
        last = i


def _read_config(path: Path) -> dict:
    """tokenizer_config.json's keys we use (validate.TOKENIZER_CONFIG), all None if absent."""
    config = read_json(path, TokenizerError, missing_ok=True)
    return validate({} if config is None else config, TOKENIZER_CONFIG, path, TokenizerError)


def _token_name(value: str | dict | None) -> str | None:
    """tokenizer_config writes a token as "<s>" or as {"content": "<s>", ...}."""
    return value["content"] if isinstance(value, dict) else value


def _leading_special(post: dict | None) -> str | None:
    """The special token the post-processor puts before a single sequence, if any."""
    if post is None:
        return None
    steps = post["processors"] if post["type"] == "Sequence" else [post]
    for step in steps:
        if step["type"] == "TemplateProcessing" and step["single"]:
            first = step["single"][0]
            return first["SpecialToken"]["id"] if "SpecialToken" in first else None
    return None


def read_chat_template(directory: Path) -> tuple[str | None, str | None]:
    """The chat template beside a tokenizer, and where it came from: chat_template.jinja
    (where newer transformers saves it), else tokenizer_config.json's "chat_template" (a
    string, or the "default" one of a list of named templates). (None, None) if there is none."""
    jinja_file = directory / "chat_template.jinja"
    if jinja_file.is_file():
        data = read_bytes(jinja_file, TokenizerError, MAX_TEMPLATE_BYTES, "chat template")
        try:
            return data.decode("utf-8"), str(jinja_file)
        except UnicodeDecodeError as e:
            raise TokenizerError(f"{jinja_file}: not UTF-8 text ({e})") from None
    config_file = directory / "tokenizer_config.json"
    template = _read_config(config_file)["chat_template"]
    if isinstance(template, list):
        template = {t["name"]: t["template"] for t in template}.get("default")
    if template is None:
        return None, None
    return template, f"{config_file} (chat_template)"


# The special-token strings tokenizer_config.json may set; a chat template sees them by name.
TEMPLATE_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")
MAX_TEMPLATE_BYTES = 1 << 20


def read_template_tokens(directory: Path) -> dict:
    """tokenizer_config.json's special-token strings, as transformers passes them to a chat
    template (bos_token, eos_token, unk_token, pad_token, additional_special_tokens)."""
    config = _read_config(directory / "tokenizer_config.json")
    tokens = {k: _token_name(config[k]) for k in TEMPLATE_TOKEN_KEYS}
    tokens = {k: v for k, v in tokens.items() if v is not None}
    if config["additional_special_tokens"]:
        tokens["additional_special_tokens"] = [
            _token_name(t) for t in config["additional_special_tokens"]
        ]
    return tokens
