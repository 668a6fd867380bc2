"""SentencePiece models renumbered so that piece i is token id i of a model's vocabulary.

zhen's tokenizer uses SentencePiece's own ids as token ids, with pad 0, unk 1, bos 2, eos 3. A Marian model
has its own numbering (vocab.json maps pieces to ids; opus-mt: </s> 0, <unk> 1, <pad> last), and its
SentencePiece models only segment text. An import therefore writes new SentencePiece models whose pieces are
the vocabulary's, in zhen's order: the same normalizer and the same pieces with the same scores (so text is
cut into the same pieces), every vocabulary entry the model never produces marked UNUSED, and zhen's four
special pieces at ids 0-3.

Uses SentencePiece's protobuf description of its model files (`sentencepiece_model_pb2`, needs protobuf).
"""

from __future__ import annotations

from typing import Any

from zhen.interop import require

SPECIAL_PIECES = ("<pad>", "<unk>", "<s>", "</s>")  # zhen's ids 0-3


def _proto() -> Any:
    require("google.protobuf", "renumbering SentencePiece models", "hf")
    from sentencepiece import sentencepiece_model_pb2

    return sentencepiece_model_pb2


def pieces(model: bytes) -> list[tuple[str, float, int]]:
    """(piece, score, type) of every piece of a serialized SentencePiece model, in id order."""
    proto = _proto().ModelProto()
    proto.ParseFromString(model)
    return [(p.piece, p.score, p.type) for p in proto.pieces]


def renumbered(model: bytes, names: list[str]) -> bytes:
    """`model` with piece i named `names[i]`: names[0:4] become zhen's special pieces, the others keep the
    score and type they have in `model`, or are UNUSED where `model` lacks them (or a name repeats)."""
    pb = _proto()
    proto = pb.ModelProto()
    proto.ParseFromString(model)
    kind = pb.ModelProto.SentencePiece.Type
    known = {p.piece: (p.score, p.type) for p in proto.pieces}
    del proto.pieces[:]
    special_types = (kind.CONTROL, kind.UNKNOWN, kind.CONTROL, kind.CONTROL)
    seen: set[str] = set()
    for i, name in enumerate(names):
        if i < len(SPECIAL_PIECES):
            name, score, type_ = SPECIAL_PIECES[i], 0.0, special_types[i]
        elif name in seen or name in SPECIAL_PIECES:
            name, score, type_ = f"<unused:{i}>", 0.0, kind.UNUSED  # never produced, never decoded to text
        else:
            score, type_ = known.get(name, (0.0, kind.UNUSED))
            if type_ in (kind.UNKNOWN, kind.CONTROL):
                type_ = kind.UNUSED
        seen.add(name)
        proto.pieces.add(piece=name, score=score, type=type_)
    spec = proto.trainer_spec
    spec.pad_id, spec.unk_id, spec.bos_id, spec.eos_id = 0, 1, 2, 3
    spec.pad_piece, spec.unk_piece, spec.bos_piece, spec.eos_piece = SPECIAL_PIECES
    spec.vocab_size = len(names)
    return proto.SerializeToString()
