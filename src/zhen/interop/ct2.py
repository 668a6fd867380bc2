"""`zhen export MODEL --format ctranslate2 -o DIR [--quantization …]`: a CTranslate2 model directory.

    DIR/model.bin, config.json, source_vocabulary.json, target_vocabulary.json    ctranslate2.Translator(DIR)
    DIR/src.model, tgt.model (or joint.model)                                   zhen's SentencePiece models
    DIR/zhen_config.json                                                        zhen's config (normalisation)

The conversion is CTranslate2's own: zhen's model becomes a `MarianMTModel` in memory (`marian_export`), which
CTranslate2's Transformers loader for BART-style models reads with Marian's settings (post-norm, no LayerNorm
on the embeddings, the logits bias when there is one). CTranslate2's `MarianMTLoader` itself is not used: it
is written for checkpoints converted from Marian (it drops the last vocabulary row and starts the decoder from
a zero vector). The vocabularies are zhen's SentencePiece pieces, the decoder starts from <s> (zhen's BOS), and
</s> is appended to every source (`add_source_eos`), so pieces from SentencePiece go straight in:

    translator = ctranslate2.Translator(DIR)
    sp_src = sentencepiece.SentencePieceProcessor(model_file=f"{DIR}/src.model")
    sp_tgt = sentencepiece.SentencePieceProcessor(model_file=f"{DIR}/tgt.model")
    result = translator.translate_batch(sp_src.encode(["我爱你"], out_type=str), beam_size=5)
    sp_tgt.decode(result[0].hypotheses[0])                                          # "I love you."

CTranslate2 ranks beam hypotheses by log P / |y|^α (`length_penalty` α), zhen by GNMT's log P / ((5 + |y|)/6)^α:
with α = 0 both rank by log P alone (the parity check, `parity.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zhen.checkpoint import load_model_dir
from zhen.config import Config
from zhen.interop import QUANTIZATIONS, InteropError, require
from zhen.interop.marian_export import build_marian
from zhen.special import BOS_ID, EOS_ID, UNK_ID
from zhen.textio import atomic_directory
from zhen.tokenizer import Tokenizer

CONFIG_FILE = "zhen_config.json"


def loader_class() -> type:
    """CTranslate2's BART/Marian loader with zhen's vocabularies and special tokens (a class made on demand:
    CTranslate2 and transformers are optional)."""
    from ctranslate2.converters.transformers import BartLoader

    class ZhenLoader(BartLoader):
        def __init__(self, src: list[str], tgt: list[str]) -> None:
            self.src, self.tgt = src, tgt

        def get_model_spec(self, model: Any) -> Any:
            model.config.normalize_before = False  # post-norm
            model.config.normalize_embedding = False  # no LayerNorm on the embeddings
            return super().get_model_spec(model)

        def get_vocabulary(self, model: Any, tokenizer: Any) -> list[str]:
            return self.src

        def set_vocabulary(self, spec: Any, tokens: list[str]) -> None:
            spec.register_source_vocabulary(self.src)
            spec.register_target_vocabulary(self.tgt)

        def set_config(self, config: Any, model: Any, tokenizer: Any) -> None:
            config.bos_token, config.eos_token, config.unk_token = self.tgt[BOS_ID], self.tgt[EOS_ID], self.tgt[UNK_ID]
            config.decoder_start_token = self.tgt[BOS_ID]
            config.add_source_eos = True  # zhen's sources end with EOS

    return ZhenLoader


def convert(model: Any, tokenizer: Tokenizer, config: Config, out: Path, quantization: str = "float32") -> Path:
    """Write zhen's `model` (with its tokenizer and config) as CTranslate2 directory `out`, atomically."""
    src = [tokenizer.id_to_src_piece(i) for i in range(tokenizer.src_vocab_size)]
    tgt = [tokenizer.id_to_tgt_piece(i) for i in range(tokenizer.tgt_vocab_size)]
    with atomic_directory(out, InteropError) as tmp:
        convert_with_vocabularies(model, src, tgt, tmp, quantization)
        tokenizer.save(tmp)
        (tmp / CONFIG_FILE).write_text(config.to_json(), encoding="utf-8")
    return Path(out)


def convert_with_vocabularies(model: Any, src: list[str], tgt: list[str], out: Path, quantization: str) -> Path:
    """CTranslate2's conversion of zhen's `model`, whose token i is src[i] (tgt[i]), into `out` (overwritten)."""
    purpose = "converting to CTranslate2"
    require("ctranslate2", purpose, "ct2")
    require("transformers", purpose, "ct2")
    from ctranslate2.converters import Converter

    if quantization not in QUANTIZATIONS:
        raise InteropError(f"unknown quantization {quantization!r}: use one of {', '.join(QUANTIZATIONS)}")
    hf = build_marian(model)
    loader = loader_class()(src, tgt)

    class InMemory(Converter):
        def _load(self) -> Any:
            return loader(hf, None)

    InMemory().convert(str(out), quantization=quantization, force=True)
    return Path(out)


def export_ctranslate2(model_dir: Path, out: Path, quantization: str = "float32") -> Path:
    loaded = load_model_dir(model_dir)
    return convert(loaded.model, loaded.tokenizer, loaded.config, out, quantization)
