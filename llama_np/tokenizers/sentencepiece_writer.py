"""Write a SentencePiece `tokenizer.model` (a protobuf) from a vocabulary: pieces, scores, types.

What an HF export writes for a model whose tokenizer has no SentencePiece file of its own (a
llama2.c tokenizer.bin, a GGUF file's `tokenizer.ggml.*` of model "llama"), so that both
transformers (LlamaTokenizer) and llama_np read it. Only the fields a Llama-style BPE model
needs are written; sentencepiece fills in its defaults for the rest.

Protocol buffers, as much as is needed here: a message is a sequence of fields, each a key
varint (field number << 3 | wire type) then the value: wire type 0 a varint, 2 a length
varint and that many bytes (strings, nested messages), 5 four little-endian bytes (float).
The field numbers are those of sentencepiece's sentencepiece_model.proto:

    ModelProto      1 pieces (repeated SentencePiece), 2 trainer_spec, 3 normalizer_spec
    SentencePiece   1 piece (string), 2 score (float), 3 type (enum: NORMAL 1, UNKNOWN 2,
                    CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6 — GGUF's token types too)
    TrainerSpec     3 model_type (BPE = 2), 4 vocab_size, 35 byte_fallback, 40 unk_id,
                    41 bos_id, 42 eos_id, 43 pad_id
    NormalizerSpec  1 name, 3 add_dummy_prefix, 4 remove_extra_whitespaces,
                    5 escape_whitespaces
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

BPE = 2
BYTE = 6


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int32s are written as 10-byte two's complement varints
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _int(field: int, value: int) -> bytes:
    return _varint(field << 3 | 0) + _varint(value)


def _bytes(field: int, value: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(value)) + value


def _float(field: int, value: float) -> bytes:
    return _varint(field << 3 | 5) + struct.pack("<f", value)


def sentencepiece_model_bytes(
    pieces: Sequence[str],
    scores: Sequence[float],
    types: Sequence[int],
    *,
    unk_id: int = 0,
    bos_id: int = 1,
    eos_id: int = 2,
    pad_id: int = -1,
    add_dummy_prefix: bool = True,
) -> bytes:
    """A BPE SentencePiece model file: the pieces ("▁" for space), their scores (merge
    priority) and types, the special ids (-1: none), whether a space is prepended."""
    out = bytearray()
    for piece, score, kind in zip(pieces, scores, types, strict=True):
        entry = _bytes(1, piece.encode("utf-8")) + _float(2, float(score)) + _int(3, int(kind))
        out += _bytes(1, entry)
    trainer = (
        _int(3, BPE)
        + _int(4, len(pieces))
        + _int(35, int(BYTE in types))
        + _int(40, unk_id)
        + _int(41, bos_id)
        + _int(42, eos_id)
        + _int(43, pad_id)
    )
    normalizer = (
        _bytes(1, b"identity")
        + _int(3, int(add_dummy_prefix))
        + _int(4, 0)  # keep runs of spaces, as Llama's tokenizer does
        + _int(5, 1)  # spaces become "▁"
    )
    out += _bytes(2, trainer) + _bytes(3, normalizer)
    return bytes(out)
