"""`zhen export MODEL --format marian -o DIR`: a Hugging Face Marian model directory.

    DIR/config.json, generation_config.json, model.safetensors       MarianMTModel.from_pretrained(DIR)
    DIR/source.spm, target.spm, vocab.json, target_vocab.json,       MarianTokenizer.from_pretrained(DIR)
        tokenizer_config.json

The tokenizer files are zhen's own SentencePiece models (source.spm = src.model, target.spm = tgt.model, or
joint.model twice) and vocabularies that map each piece to its SentencePiece id, which is zhen's token id:
separate vocabularies use MarianTokenizer's `separate_vocabs`. The token ids, the special ids and the
decoder start (BOS, not Marian's usual <pad>) are zhen's, so both produce the same token ids. What the
directory cannot carry is zhen's text normalisation (NFKC, Traditional → Simplified, `config.text`): pass
text through `zhen.text.Normalizer` first for the same input as zhen.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from zhen.checkpoint import load_model_dir
from zhen.config import DecodeConfig
from zhen.interop import InteropError, require
from zhen.interop.marian import marian_config, to_marian_state
from zhen.special import BOS_ID, EOS_ID, PAD_ID
from zhen.textio import atomic_directory
from zhen.tokenizer import JOINT_FILE, SRC_FILE, TGT_FILE, Tokenizer

MAX_LENGTH = 512  # generate's default output limit for an exported model (opus-mt's)


def build_marian(model: Any) -> Any:
    """An in-memory `MarianMTModel` (fp32, eval) computing the same function as zhen's `model`."""
    require("transformers", "a Marian model", "hf")
    from transformers import MarianMTModel

    hf = MarianMTModel(marian_config(model.config)).eval()
    state = to_marian_state(model)
    theirs = set(hf.state_dict())
    if theirs != set(state):
        raise InteropError(f"tensor mapping incomplete: Marian lacks {sorted(set(state) - theirs)[:5]}, "
                           f"zhen lacks {sorted(theirs - set(state))[:5]}")
    hf.load_state_dict(state, strict=True)
    return hf


def generation_config(decode: DecodeConfig, max_positions: int) -> Any:
    """generate()'s defaults for an exported model: zhen's beam size, and PAD and BOS never generated."""
    from transformers import GenerationConfig

    return GenerationConfig(
        decoder_start_token_id=BOS_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
        suppress_tokens=[PAD_ID, BOS_ID], num_beams=decode.beam, max_new_tokens=min(MAX_LENGTH, max_positions) - 1,
    )


def write_tokenizer(tokenizer: Tokenizer, directory: Path, max_positions: int) -> None:
    """MarianTokenizer's files for zhen's SentencePiece models, written through MarianTokenizer itself."""
    from transformers import MarianTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save(tmp)
        shutil.copyfile(Path(tmp) / (JOINT_FILE if tokenizer.joint else SRC_FILE), directory / "source.spm")
        shutil.copyfile(Path(tmp) / (JOINT_FILE if tokenizer.joint else TGT_FILE), directory / "target.spm")
    src = {tokenizer.id_to_src_piece(i): i for i in range(tokenizer.src_vocab_size)}
    tgt = {tokenizer.id_to_tgt_piece(i): i for i in range(tokenizer.tgt_vocab_size)}
    (directory / "vocab.json").write_text(json.dumps(src, ensure_ascii=False), encoding="utf-8")
    files = {"vocab": str(directory / "vocab.json")}
    if not tokenizer.joint:
        (directory / "target_vocab.json").write_text(json.dumps(tgt, ensure_ascii=False), encoding="utf-8")
        files["target_vocab_file"] = str(directory / "target_vocab.json")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Recommended: pip install sacremoses": zhen does not use it
        marian = MarianTokenizer(source_spm=str(directory / "source.spm"), target_spm=str(directory / "target.spm"),
                                 separate_vocabs=not tokenizer.joint, source_lang="zh", target_lang="en",
                                 model_max_length=max_positions, **files)
        marian.save_pretrained(str(directory))


def export_marian(model_dir: Path, out: Path) -> Path:
    """Write zhen's model directory `model_dir` as a Hugging Face Marian directory `out` (atomically)."""
    require("transformers", "zhen export --format marian", "hf")
    if Path(out).exists():  # refused before the model is loaded
        raise InteropError(f"{out} already exists; refusing to overwrite it")
    loaded = load_model_dir(model_dir)
    hf = build_marian(loaded.model)
    c = loaded.config.model
    hf.generation_config = generation_config(loaded.config.decode, c.max_positions)
    with atomic_directory(out, InteropError) as tmp:
        hf.save_pretrained(str(tmp))
        write_tokenizer(loaded.tokenizer, tmp, c.max_positions)
    return Path(out)
