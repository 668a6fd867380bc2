"""`zhen import-marian DIR -o MODEL`: a Hugging Face Marian checkpoint on disk → a zhen model directory.

DIR is what `MarianMTModel.save_pretrained` and `MarianTokenizer.save_pretrained` write (an opus-mt model
downloaded by hand, or `zhen export --format marian`): config.json, the weights, source.spm, target.spm,
vocab.json (and target_vocab.json with separate vocabularies). Nothing is downloaded.

The tensors go through `marian.from_marian_state` (sinusoid layout, final_logits_bias, scaling). The
vocabulary is renumbered to zhen's special ids (`marian.vocab_order`), and new SentencePiece models with the
same pieces in that numbering replace source.spm and target.spm (`spm_vocab`). A source piece that Marian's
vocabulary lacks (its tokenizer maps it to <unk>) gets a row of its own holding <unk>'s embedding, so the
text is cut as Marian cuts it. Normalisation: Marian's tokenizer applies only the SentencePiece models' own
(usually NFKC), so the imported model's `text` settings turn zhen's NFKC and Traditional → Simplified off.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from zhen.checkpoint import save_model_dir
from zhen.config import Config, DecodeConfig, TextConfig
from zhen.interop import InteropError, require
from zhen.interop.marian import from_marian_state, vocab_order, zhen_model_config
from zhen.interop.spm_vocab import SPECIAL_PIECES, pieces, renumbered
from zhen.model import Transformer
from zhen.tokenizer import Tokenizer

SEGMENTING = (1, 4, 6)  # SentencePiece piece types that text is cut into: NORMAL, USER_DEFINED, BYTE


@dataclass
class Side:
    """One side's vocabulary in zhen's numbering: Marian's row of each zhen id, and its piece."""

    order: list[int]  # zhen id → Marian id
    names: list[str]  # zhen id → piece
    spm: bytes  # Marian's SentencePiece model of this side


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InteropError(f"{path}: {error}") from None


def read_side(directory: Path, spm_file: str, vocab_file: str, hf: Any, tokens: dict[str, str],
              source: bool) -> Side:
    """A side's vocabulary in zhen's order (see the module doc for source pieces missing from it)."""
    vocab: dict[str, int] = read_json(directory / vocab_file)
    size = hf.vocab_size if source or hf.share_encoder_decoder_embeddings else hf.decoder_vocab_size
    by_id = {i: piece for piece, i in vocab.items() if i < size}
    unk = vocab.get(tokens.get("unk_token", "<unk>"))
    if unk is None:
        raise InteropError(f"{directory / vocab_file} has no {tokens.get('unk_token', '<unk>')!r}")
    order = vocab_order(size, hf.pad_token_id, unk, hf.decoder_start_token_id, hf.eos_token_id)
    names = [*SPECIAL_PIECES, *(by_id.get(i, f"<unused:{i}>") for i in order[len(SPECIAL_PIECES):])]
    try:
        model = (directory / spm_file).read_bytes()
    except OSError as error:
        raise InteropError(f"{directory / spm_file}: {error.strerror}") from None
    if source:
        missing = [p for p, _, kind in pieces(model) if kind in SEGMENTING and p not in vocab]
        order, names = order + [unk] * len(missing), names + missing
    return Side(order, names, model)


def read_marian(directory: Path) -> tuple[Any, Any, dict[str, torch.Tensor]]:
    """(MarianConfig, generation config or None, fp32 state dict) of a checkpoint directory."""
    from transformers import GenerationConfig, MarianConfig, MarianMTModel

    kind = read_json(directory / "config.json").get("model_type")
    if kind != "marian":
        raise InteropError(f"{directory} holds a {kind!r} model, not a Marian one (config.json model_type)")
    config = MarianConfig.from_pretrained(str(directory), local_files_only=True)
    model = MarianMTModel.from_pretrained(str(directory), local_files_only=True)
    try:
        generation = GenerationConfig.from_pretrained(str(directory), local_files_only=True)
    except OSError:
        generation = None
    return config, generation, {k: v.detach().float() for k, v in model.state_dict().items()}


def import_marian(directory: Path, out: Path) -> Path:
    """Write the Marian checkpoint in `directory` as zhen model directory `out`."""
    require("transformers", "zhen import-marian", "hf")
    require("google.protobuf", "zhen import-marian", "hf")
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise InteropError(f"{directory} is not a Hugging Face model directory (no config.json)")
    hf, generation, state = read_marian(directory)
    tokens = read_json(directory / "tokenizer_config.json") if (directory / "tokenizer_config.json").is_file() else {}
    separate = bool(tokens.get("separate_vocabs", False))
    src = read_side(directory, "source.spm", "vocab.json", hf, tokens, source=True)
    tgt = read_side(directory, "target.spm", "target_vocab.json" if separate else "vocab.json", hf, tokens, False)
    bias = bool(state["final_logits_bias"].any()) or len(set(tgt.order)) < len(tgt.order)
    shared = bool(hf.share_encoder_decoder_embeddings) and src.order == tgt.order
    c = zhen_model_config(hf, len(src.order), len(tgt.order), shared=shared, bias=bias)
    model = Transformer(c).eval()
    ours = from_marian_state(state, hf, c, src.order, tgt.order)
    tied = {"tgt_embed.tokens.embed.weight"} if c.share_embeddings else set()
    missing = set(model.state_dict()) - set(ours) - tied - ({"output.weight"} if c.tie_output else set())
    if missing or set(ours) - set(model.state_dict()):
        raise InteropError(f"tensor mapping incomplete: {sorted(missing)[:5]}")
    model.load_state_dict(ours, strict=False)
    tokenizer = Tokenizer(renumbered(src.spm, src.names), renumbered(tgt.spm, tgt.names), origin=str(directory))
    beam = getattr(generation, "num_beams", None) or DecodeConfig().beam
    config = Config(model=c, text=TextConfig(nfkc=False, traditional_to_simplified=False),
                    decode=DecodeConfig(beam=beam))
    return save_model_dir(Path(out), model, config, tokenizer, metadata={"imported_from": directory.name})
