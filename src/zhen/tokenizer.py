"""SentencePiece subword models: trained from the training data, saved with every checkpoint.

    "我爱你"       →  pieces ["▁我", "爱", "你"]  →  ids [15, 284, 97, EOS]      encode_src
    "I love you."  →  pieces ["▁I", "▁love", "▁you", "."]  →  [63, 271, 24, 5]     encode_tgt (no BOS/EOS)
    [[63, 271, 24, 5, EOS, PAD, …]]  →  ["I love you."]                           decode_tgt
    (the ids are illustrations: every trained model numbers its pieces differently)

Formats: a batch of sentences is `list[str]`; a batch of id sequences is `list[list[int]]` (ragged:
padding is the job of `zhen.data.Batch`). Every model reserves the special ids of `zhen.special`
(pad 0, unk 1, bos 2, eos 3); loading checks them.

Separate vocabularies (default) are two files in a directory, `src.model` (Chinese) and `tgt.model`
(English); a joint vocabulary (`TokenizerConfig.joint`) is one file, `joint.model`, used for both.
Chinese needs `character_coverage` < 1 (0.9995: rare characters become UTF-8 bytes instead of
wasting vocabulary entries); English uses 1.0; a joint model uses the Chinese setting.

`zhen tokenize "我爱你" [--model DIR]` prints the pieces and ids of a sentence.
"""

from __future__ import annotations

import collections
import hashlib
import io
import os
import random
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from zhen.config import TokenizerConfig
from zhen.errors import ZhenError
from zhen.special import BOS_ID, EOS_ID, PAD_ID, UNK_ID

SRC_FILE, TGT_FILE, JOINT_FILE = "src.model", "tgt.model", "joint.model"

# SentencePiece's batched encode runs on this many threads (all the cores this process may use).
NUM_THREADS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

# Pieces SentencePiece adds to every vocabulary besides characters and subwords: the four special
# ids, and the 256 byte pieces when byte fallback is on.
_N_SPECIAL, _N_BYTES = 4, 256


class TokenizerError(ZhenError, ValueError):
    """A tokenizer that cannot be trained or loaded; the message names the file or setting."""


class Tokenizer:
    """The source (Chinese) and target (English) SentencePiece models, possibly one joint model.

    Holds the serialized models, so that `save` can copy them into a checkpoint and `fingerprint`
    can key the token cache on their exact bytes."""

    def __init__(self, src_model: bytes, tgt_model: bytes | None = None, *, origin: str = "<memory>") -> None:
        """`tgt_model=None` means one joint model for both sides. `origin` names the source in errors."""
        self.joint = tgt_model is None
        self._models = {JOINT_FILE: src_model} if tgt_model is None else {SRC_FILE: src_model, TGT_FILE: tgt_model}
        self._src = _processor(src_model, f"{origin}/{JOINT_FILE if self.joint else SRC_FILE}")
        self._tgt = self._src if tgt_model is None else _processor(tgt_model, f"{origin}/{TGT_FILE}")

    # ---------------------------------------------------------------- training, loading, saving

    @classmethod
    def train(
        cls,
        pairs: Sequence[tuple[str, str]],
        config: TokenizerConfig,
        directory: Path,
        *,
        log: Callable[[str], None] | None = None,
    ) -> Tokenizer:
        """Train on already-normalised (Chinese, English) pairs and write the model file(s) to
        `directory`. At most `config.input_sentence_size` sentences per model are used, sampled with a
        fixed seed so that the same data always gives the same tokenizer."""
        if not pairs:
            raise TokenizerError("cannot train a tokenizer on an empty corpus")
        zh = [p[0] for p in pairs]
        en = [p[1] for p in pairs]
        if config.joint:
            models = [_train_model(zh + en, config, config.character_coverage, "joint", log)]
        else:
            models = [
                _train_model(zh, config, config.character_coverage, "Chinese", log),
                _train_model(en, config, 1.0, "English", log),
            ]
        tokenizer = cls(*models, origin=str(directory))
        tokenizer.save(directory)
        return tokenizer

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        """Load `joint.model`, or `src.model` and `tgt.model`, from a directory."""
        directory = Path(directory)
        if (directory / JOINT_FILE).is_file():
            return cls(_read(directory / JOINT_FILE), origin=str(directory))
        if (directory / SRC_FILE).is_file() and (directory / TGT_FILE).is_file():
            return cls(_read(directory / SRC_FILE), _read(directory / TGT_FILE), origin=str(directory))
        raise TokenizerError(f"no tokenizer in {directory}: expected {SRC_FILE} and {TGT_FILE}, or {JOINT_FILE}")

    def save(self, directory: str | Path) -> None:
        """Write the model file(s) into `directory` (e.g. a checkpoint), each atomically, and remove
        those of the other layout, which `load` would otherwise find instead."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, model in self._models.items():
            temporary = directory / f".{name}.{os.getpid()}.tmp"
            temporary.write_bytes(model)
            temporary.replace(directory / name)
        for name in {SRC_FILE, TGT_FILE, JOINT_FILE} - set(self._models):
            (directory / name).unlink(missing_ok=True)

    def fingerprint(self) -> str:
        """SHA-256 of the model bytes: equal fingerprints encode every text identically."""
        digest = hashlib.sha256()
        for name, model in sorted(self._models.items()):
            digest.update(name.encode() + b"\0" + model)
        return digest.hexdigest()

    # ---------------------------------------------------------------- sizes and pieces

    @property
    def src_vocab_size(self) -> int:
        return self._src.get_piece_size()

    @property
    def tgt_vocab_size(self) -> int:
        return self._tgt.get_piece_size()

    def id_to_src_piece(self, id_: int) -> str:
        return self._src.id_to_piece(int(id_))

    def id_to_tgt_piece(self, id_: int) -> str:
        return self._tgt.id_to_piece(int(id_))

    def src_pieces(self, text: str) -> list[str]:
        """The pieces of one source sentence, without EOS (for display)."""
        return self._src.encode(text, out_type=str)

    def tgt_pieces(self, text: str) -> list[str]:
        """The pieces of one target sentence (for display)."""
        return self._tgt.encode(text, out_type=str)

    # ---------------------------------------------------------------- encoding and decoding

    def encode_src(self, texts: Sequence[str]) -> list[list[int]]:
        """Source sentences → ids, each followed by EOS (the encoder sees where the sentence ends)."""
        return self._src.encode(list(texts), out_type=int, add_eos=True, num_threads=NUM_THREADS)

    def encode_tgt(self, texts: Sequence[str]) -> list[list[int]]:
        """Target sentences → ids without BOS or EOS: `Batch` adds BOS to the decoder input and EOS
        to the decoder output, the two shifted copies of one target."""
        return self._tgt.encode(list(texts), out_type=int, num_threads=NUM_THREADS)

    def decode_tgt(self, ids: Iterable[Iterable[int]]) -> list[str]:
        """Target ids → detokenized sentences. Each sequence ends at its first EOS; PAD and BOS are
        ignored, so raw decoder output can be passed as it is."""
        cleaned = []
        for sequence in ids:
            kept = []
            for i in sequence:
                i = int(i)
                if i == EOS_ID:
                    break
                if i not in (PAD_ID, BOS_ID):
                    kept.append(i)
            cleaned.append(kept)
        return self._tgt.decode(cleaned) if cleaned else []


# -------------------------------------------------------------------- SentencePiece helpers


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise TokenizerError(f"cannot read tokenizer model {path}: {error.strerror}") from None


def _processor(model: bytes, origin: str) -> spm.SentencePieceProcessor:
    """Load a serialized model, checking that it is one and that it has zhen's special ids."""
    processor = spm.SentencePieceProcessor()
    try:
        processor.load_from_serialized_proto(model)
    except (RuntimeError, OSError, TypeError) as error:
        raise TokenizerError(f"{origin}: not a SentencePiece model ({error})") from None
    found = (processor.pad_id(), processor.unk_id(), processor.bos_id(), processor.eos_id())
    if found != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
        raise TokenizerError(
            f"{origin}: special ids (pad, unk, bos, eos) are {found}; zhen needs {(PAD_ID, UNK_ID, BOS_ID, EOS_ID)}"
        )
    return processor


def _train_model(
    sentences: list[str],
    config: TokenizerConfig,
    coverage: float,
    what: str,
    log: Callable[[str], None] | None,
) -> bytes:
    """Train one SentencePiece model in memory and return its bytes.

    A small vocabulary cannot hold every character that `coverage` asks for: SentencePiece refuses
    ("Vocabulary size is smaller than required_chars") and accepts no coverage below 0.98. Then the
    model is trained without the rarest characters — each splits its sentence into fragments — so
    that the rest fit in three quarters of the free entries. With byte fallback those characters are
    simply spelled as UTF-8 bytes; the change is reported through `log`."""
    sentences = [s for s in sentences if s]
    if not sentences:
        raise TokenizerError(f"cannot train the {what} tokenizer: every sentence is empty")
    if len(sentences) > config.input_sentence_size:  # a fixed-seed sample: same data, same tokenizer
        sentences = random.Random(0).sample(sentences, config.input_sentence_size)
    try:
        return _run_trainer(sentences, config, coverage)
    except RuntimeError as error:
        if "required_chars" not in str(error):
            raise TokenizerError(f"SentencePiece could not train the {what} tokenizer: {error}") from None
    meta = _N_SPECIAL + (_N_BYTES if config.byte_fallback else 0)
    slots = (config.vocab_size - meta) * 3 // 4
    if slots < 1:
        raise TokenizerError(f"tokenizer.vocab_size {config.vocab_size} leaves no room for characters")
    fragments, dropped = _without_rare_chars(sentences, slots)
    if log is not None:
        spelled = "spelled as bytes" if config.byte_fallback else "unknown (<unk>)"
        log(
            f"tokenizer: the {what} side has more characters than a {config.vocab_size}-piece vocabulary holds; "
            f"its {dropped} rarest characters will be {spelled}"
        )
    try:
        return _run_trainer(fragments, config, coverage)
    except RuntimeError as error:
        raise TokenizerError(f"SentencePiece could not train the {what} tokenizer: {error}") from None


def _run_trainer(sentences: list[str], config: TokenizerConfig, coverage: float) -> bytes:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        model_type=config.model_type,
        vocab_size=config.vocab_size,
        hard_vocab_limit=False,  # a small corpus may not support the full size: use what it supports
        character_coverage=coverage,
        byte_fallback=config.byte_fallback,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        input_sentence_size=config.input_sentence_size,
        shuffle_input_sentence=True,
        num_threads=NUM_THREADS,
        minloglevel=2,  # errors only: training otherwise logs pages of progress
    )
    return model.getvalue()


def _without_rare_chars(sentences: list[str], n_chars: int) -> tuple[list[str], int]:
    """Split every sentence at the characters outside the `n_chars` most frequent ones (those
    characters removed). Returns the fragments and how many distinct characters were dropped."""
    counts = collections.Counter(c for sentence in sentences for c in sentence if c != " ")
    rare = {ord(c): "\n" for c, _ in counts.most_common()[n_chars:]}
    fragments = [f for sentence in sentences for f in sentence.translate(rare).split("\n") if f.strip()]
    return fragments, len(rare)


# -------------------------------------------------------------------- display


def _width(text: str) -> int:
    """Columns a string takes in a terminal: CJK characters are two wide."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def show_pieces(tokenizer: Tokenizer, text: str, side: str = "src") -> str:
    """The pieces and ids of one sentence as aligned columns, e.g. for 我爱你::

        ▁我  爱   你   </s>
        15   284  97   3

    `side` is "src" (with the EOS the encoder sees) or "tgt". The text is shown as given:
    normalise it first (zhen.text.Normalizer) to see what a model sees."""
    if side == "src":
        ids = tokenizer.encode_src([text])[0]
        pieces = [tokenizer.id_to_src_piece(i) for i in ids]
    elif side == "tgt":
        ids = tokenizer.encode_tgt([text])[0]
        pieces = [tokenizer.id_to_tgt_piece(i) for i in ids]
    else:
        raise ValueError(f"side must be 'src' or 'tgt'; got {side!r}")
    widths = [max(_width(p), len(str(i))) for p, i in zip(pieces, ids, strict=True)]
    piece_row = "  ".join(p + " " * (w - _width(p)) for p, w in zip(pieces, widths, strict=True))
    id_row = "  ".join(str(i).ljust(w) for i, w in zip(ids, widths, strict=True))
    return f"{text}  →  {len(ids)} tokens\n{piece_row.rstrip()}\n{id_row.rstrip()}"
