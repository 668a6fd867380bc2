"""Settings for every part of zhen: frozen dataclasses read from TOML.

This module is the only home of defaults. A config file has up to six sections::

    [model]      the network (the note's D, heads, FFN width, layers)
    [text]       normalisation applied identically in training and translation
    [tokenizer]  SentencePiece settings
    [data]       training and dev corpora, cleaning, batching
    [train]      optimisation, schedule, validation, checkpoints
    [decode]     next-token inference (greedy / beam search)

Every key is checked: an unknown key or a value of the wrong type or range raises
`ConfigError` naming the section and the key. `load_config(path, overrides)` applies
command-line overrides of the form ``section.key=value`` (the value in TOML syntax).

Corpus paths (`data.train`, `data.dev`) become absolute when a config is loaded: a relative path in a TOML
file is relative to that file's folder (so a config works from any directory), one given as an override
(``--set data.train=[…]``) is relative to the current directory, and a built-in corpus name (`hsk`) stays a
name. A model directory's `config.json` is a record and keeps its paths as they were written.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zhen.errors import ZhenError


class ConfigError(ZhenError, ValueError):
    """A config file, key or value that zhen cannot use."""


# Compute precision, for training and translation alike (`zhen.device.compute_dtype` turns it into a dtype):
# auto = bf16 autocast on CUDA, fp32 elsewhere; bf16 = bf16 autocast (on CPUs with native bf16 units).
PRECISIONS = ("auto", "fp32", "bf16")
DECODE_PRECISIONS = (*PRECISIONS, "int8")  # translation also with int8 linear layers on the CPU (zhen.quantize)
DEFAULT_PRECISION = "auto"


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _one_of(name: str, value: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, f"{name} must be one of {', '.join(choices)}; got {value!r}")


@dataclass(frozen=True)
class ModelConfig:
    """The Transformer of the note. Names follow the paper (d_model, n_heads, d_ff)."""

    src_vocab_size: int = 8000  # training replaces both sizes with the tokenizer's
    tgt_vocab_size: int = 8000
    d_model: int = 512  # D: width of every token vector
    n_heads: int = 8  # H: Note §9, one head is the degenerate case
    d_ff: int = 2048  # FFN inner width (Note §5 "升维")
    n_encoder_layers: int = 6  # Note §6: six layers stacked
    n_decoder_layers: int = 6
    dropout: float = 0.1  # on embeddings and every sub-layer output
    attention_dropout: float = 0.0  # on the attention weights
    activation: str = "relu"  # relu | gelu | swish (x·σ(x), Marian's and opus-mt's)  (Note §5)
    norm: str = "post"  # post: LayerNorm(x + F(x)) as in the note | pre: x + F(LayerNorm(x))
    positions: str = "sinusoidal"  # sinusoidal | learned: added to X (Note §1) | rotary: Q and K rotated (Note §3)
    max_positions: int = 1024  # longest sequence the position table covers
    tie_output: bool = True  # output projection shares the target embedding matrix
    share_embeddings: bool = False  # source and target share one embedding (joint vocabulary)
    output_bias: bool = False  # a bias on the logits (Marian's final_logits_bias, kept by zhen import-marian)

    def __post_init__(self) -> None:
        for name in ("src_vocab_size", "tgt_vocab_size", "d_model", "n_heads", "d_ff", "max_positions"):
            _check(getattr(self, name) > 0, f"model.{name} must be positive; got {getattr(self, name)}")
        for name in ("n_encoder_layers", "n_decoder_layers"):
            _check(getattr(self, name) >= 1, f"model.{name} must be at least 1; got {getattr(self, name)}")
        _check(
            self.d_model % self.n_heads == 0,
            f"model.d_model ({self.d_model}) must be divisible by model.n_heads ({self.n_heads})",
        )
        for name in ("dropout", "attention_dropout"):
            _check(0.0 <= getattr(self, name) < 1.0, f"model.{name} must be in [0, 1); got {getattr(self, name)}")
        _one_of("model.activation", self.activation, ("relu", "gelu", "swish"))
        _one_of("model.norm", self.norm, ("post", "pre"))
        _one_of("model.positions", self.positions, ("sinusoidal", "learned", "rotary"))
        _check(
            not self.share_embeddings or self.src_vocab_size == self.tgt_vocab_size,
            "model.share_embeddings needs equal source and target vocabularies (a joint tokenizer)",
        )

    @property
    def d_head(self) -> int:
        """Dh = D / H, the width of one head (d_k = d_v in the paper)."""
        return self.d_model // self.n_heads


@dataclass(frozen=True)
class TextConfig:
    """Normalisation run on every sentence before tokenization, in training and in translation."""

    nfkc: bool = True  # Unicode NFKC: full-width forms, compatibility characters
    traditional_to_simplified: bool = True  # OpenCC t2s on the Chinese side
    max_chars: int = 1000  # translation splits longer inputs into pieces of at most this size


@dataclass(frozen=True)
class TokenizerConfig:
    """SentencePiece settings. Special ids: pad 0, unk 1, bos 2, eos 3."""

    model_type: str = "unigram"  # unigram | bpe
    vocab_size: int = 8000  # per side (once when joint)
    joint: bool = False  # one model for both languages
    character_coverage: float = 0.9995  # for Chinese; English uses 1.0
    byte_fallback: bool = True  # unknown characters become bytes, never <unk>
    input_sentence_size: int = 1_000_000  # sentences sampled (per model) for training it

    def __post_init__(self) -> None:
        _one_of("tokenizer.model_type", self.model_type, ("unigram", "bpe"))
        _check(self.vocab_size >= 300, f"tokenizer.vocab_size must be at least 300; got {self.vocab_size}")
        _check(0.9 <= self.character_coverage <= 1.0, "tokenizer.character_coverage must be in [0.9, 1]")
        _check(self.input_sentence_size > 0, "tokenizer.input_sentence_size must be positive")


BUILTIN_CORPORA = ("hsk", "cedict")  # corpora that ship with zhen, named instead of found on disk
CORPUS_LISTS = ("train", "dev")  # the [data] keys that list corpora


@dataclass(frozen=True)
class CorpusConfig:
    """One parallel corpus.

    `path` is a file (`.tsv`, `.jsonl`, each optionally `.gz`/`.xz`), a prefix of two line-aligned
    files (`path.zh` + `path.en`), or the name of a built-in corpus (`hsk`, `cedict`; see `zhen.corpora`).
    In a config file a relative path is relative to the file's folder (see `load_config`).
    """

    path: str = ""
    format: str = "auto"  # auto | pair | tsv | jsonl | builtin
    src_column: int = 0  # tsv: column of the Chinese side
    tgt_column: int = 1  # tsv: column of the English side
    src_key: str = "zh"  # jsonl: key of the Chinese side
    tgt_key: str = "en"  # jsonl: key of the English side
    on_decode_error: str = "error"  # error | skip  (undecodable bytes)
    weight: float = 1.0  # sampling weight: pairs per epoch = weight × pairs (0.3: a random 30%; 2: every pair twice)
    senses: int = 1  # cedict: clean English senses per headword, each its own pair
    proper_nouns: bool = True  # cedict: keep entries with capitalised pinyin (names, places)

    def __post_init__(self) -> None:
        _check(bool(self.path), "every corpus needs a path (a file, a prefix of .zh/.en files, or 'hsk')")
        _one_of("corpus format", self.format, ("auto", "pair", "tsv", "jsonl", "builtin"))
        _one_of("corpus on_decode_error", self.on_decode_error, ("error", "skip"))
        _check(self.src_column >= 0 and self.tgt_column >= 0, "corpus columns must be non-negative")
        _check(self.src_column != self.tgt_column, "corpus src_column and tgt_column must differ")
        _check(self.weight > 0, f"corpus weight must be positive; got {self.weight}")
        _check(self.senses >= 1, f"corpus senses must be at least 1; got {self.senses}")
        _check(self.path == "cedict" or (self.senses == 1 and self.proper_nouns),
               "corpus keys senses and proper_nouns apply to the built-in corpus 'cedict' only")


@dataclass(frozen=True)
class DataConfig:
    """Corpora, cleaning and batching."""

    train: tuple[CorpusConfig, ...] = ()
    dev: tuple[CorpusConfig, ...] = ()
    deduplicate: bool = True  # drop exact duplicate training pairs (after normalisation)
    max_target_sources: int = 20  # drop a target given for more different sources than this; 0: no limit
    max_length: int = 128  # tokens per side (with eos); longer training pairs are dropped
    max_length_ratio: float = 3.0  # pairs whose token-length ratio exceeds this are dropped
    ratio_min_length: int = 10  # the ratio test applies once the longer side has this many tokens
    max_tokens: int = 4096  # token budget per batch, padding included
    dev_max_sentences: int = 1000  # per dev corpus, for validation BLEU
    cache_dir: str = ""  # token cache; default: <out>/cache

    def __post_init__(self) -> None:
        _check(self.max_length >= 2, "data.max_length must be at least 2")
        _check(self.max_length_ratio >= 1.0, "data.max_length_ratio must be at least 1")
        _check(self.ratio_min_length >= 1, "data.ratio_min_length must be at least 1")
        _check(self.max_target_sources >= 0, "data.max_target_sources must be non-negative")
        _check(
            self.max_tokens >= self.max_length,
            f"data.max_tokens ({self.max_tokens}) must be at least data.max_length ({self.max_length})",
        )
        _check(self.dev_max_sentences > 0, "data.dev_max_sentences must be positive")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation as in the paper (Adam β=(0.9, 0.98), ε=1e-9, inverse-sqrt schedule)."""

    lr: float = 7e-4  # peak learning rate, reached at the end of warmup
    warmup_steps: int = 4000
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-9
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    clip_norm: float = 1.0  # 0 disables gradient clipping
    update_tokens: int = 0  # target tokens per update by accumulating batches; 0: one batch
    max_steps: int = 100_000
    max_epochs: int = 0  # 0: no limit
    max_minutes: float = 0.0  # wall-clock limit of this run (a resumed run counts afresh); 0: no limit
    valid_every: int = 1000  # steps between validations (and checkpoints)
    save_every: int = 0  # steps between checkpoints; 0: with every validation
    keep_last: int = 5  # checkpoints kept for resuming and averaging
    patience: int = 0  # stop after this many validations without a better BLEU; 0: never
    valid_beam: int = 1  # 1: greedy
    log_every: int = 100
    seed: int = 1
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: str = DEFAULT_PRECISION  # see PRECISIONS
    compile: bool = False  # torch.compile the model
    on_nan: str = "stop"  # stop | skip  (a non-finite loss)

    def __post_init__(self) -> None:
        _check(self.lr > 0, "train.lr must be positive")
        _check(self.warmup_steps >= 0, "train.warmup_steps must be non-negative")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "train.betas must be two values in [0, 1)")
        _check(self.eps > 0, "train.eps must be positive")
        _check(0 <= self.label_smoothing < 1, "train.label_smoothing must be in [0, 1)")
        _check(self.clip_norm >= 0, "train.clip_norm must be non-negative")
        _check(self.update_tokens >= 0, "train.update_tokens must be non-negative")
        _check(self.max_steps > 0, "train.max_steps must be positive")
        _check(self.max_epochs >= 0, "train.max_epochs must be non-negative")
        _check(self.max_minutes >= 0, "train.max_minutes must be non-negative")
        _check(self.valid_every > 0, "train.valid_every must be positive")
        _check(self.save_every >= 0, "train.save_every must be non-negative")
        _check(self.keep_last >= 1, "train.keep_last must be at least 1")
        _check(self.patience >= 0, "train.patience must be non-negative")
        _check(self.valid_beam >= 1, "train.valid_beam must be at least 1")
        _check(self.log_every > 0, "train.log_every must be positive")
        _one_of("train.precision", self.precision, PRECISIONS)
        _one_of("train.on_nan", self.on_nan, ("stop", "skip"))


@dataclass(frozen=True)
class DecodeConfig:
    """Next-token inference (Note §8: "推理选下一个 token")."""

    beam: int = 5  # 1: greedy
    nbest: int = 1
    length_penalty: float = 1.0  # GNMT α: score / ((5 + |y|) / 6)^α
    max_len_a: float = 2.0  # output at most a·|src| + b tokens
    max_len_b: int = 10
    batch_tokens: int = 4096  # source tokens per translation batch
    precision: str = DEFAULT_PRECISION  # see PRECISIONS

    def __post_init__(self) -> None:
        _check(self.beam >= 1, "decode.beam must be at least 1")
        _check(1 <= self.nbest <= self.beam, "decode.nbest must be between 1 and decode.beam")
        _check(self.length_penalty >= 0, "decode.length_penalty must be non-negative")
        _check(self.max_len_a >= 0 and self.max_len_b >= 1, "decode.max_len_a >= 0 and decode.max_len_b >= 1")
        _check(self.batch_tokens > 0, "decode.batch_tokens must be positive")
        _one_of("decode.precision", self.precision, DECODE_PRECISIONS)


@dataclass(frozen=True)
class Config:
    """One experiment: everything `zhen train` needs, copied into the output directory."""

    model: ModelConfig = field(default_factory=ModelConfig)
    text: TextConfig = field(default_factory=TextConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)


def _convert(value: Any, annotation: Any, where: str) -> Any:
    """Check `value` against a field annotation; build nested dataclasses and tuples."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        _check(isinstance(value, dict), f"{where} must be a table; got {value!r}")
        return from_dict(annotation, value, where)
    if origin is tuple:
        _check(isinstance(value, (list, tuple)), f"{where} must be a list; got {value!r}")
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        _check(len(value) == len(args), f"{where} must have {len(args)} values; got {len(value)}")
        return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin in (typing.Union, types.UnionType):
        return value
    if annotation is bool:
        _check(isinstance(value, bool), f"{where} must be true or false; got {value!r}")
    elif annotation is int:
        _check(isinstance(value, int) and not isinstance(value, bool), f"{where} must be an integer; got {value!r}")
    elif annotation is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        _check(ok, f"{where} must be a number; got {value!r}")
        value = float(value)
    elif annotation is str:
        _check(isinstance(value, str), f"{where} must be a string; got {value!r}")
    return value


def from_dict(cls: type, table: dict[str, Any], where: str = "") -> Any:
    """Build dataclass `cls` from a TOML/JSON table, rejecting unknown keys and bad values."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - names)
    prefix = f"{where}." if where else ""
    _check(not unknown, f"unknown key(s) {', '.join(prefix + k for k in unknown)}; known: {', '.join(sorted(names))}")
    kwargs = {k: _convert(v, hints[k], prefix + k) for k, v in table.items()}
    try:
        return cls(**kwargs)
    except TypeError as error:  # pragma: no cover - guarded by the checks above
        raise ConfigError(f"{where or cls.__name__}: {error}") from error


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.lr=3e-4' → (['train', 'lr'], 3e-4). The value is TOML; bare words are strings."""
    key, sep, raw = text.partition("=")
    _check(bool(sep) and bool(key.strip()), f"an override must look like section.key=value; got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().split("."), value


def is_builtin(path: str, format_: str = "auto") -> bool:
    """Whether a corpus `path` names a built-in corpus rather than a file."""
    return format_ == "builtin" or (format_ == "auto" and path in BUILTIN_CORPORA)


def _absolute_corpora(corpora: Any, base: Path) -> Any:
    """A [data] corpus list with relative paths made absolute against `base`; built-in names stay names.
    Anything malformed is returned as it is, for `from_dict` to report."""
    if not isinstance(corpora, list):
        return corpora
    resolved = []
    for corpus in corpora:
        path = corpus.get("path") if isinstance(corpus, dict) else None
        if isinstance(path, str) and path and not is_builtin(path, corpus.get("format", "auto")):
            corpus = {**corpus, "path": os.path.abspath(base / Path(path).expanduser())}
        resolved.append(corpus)
    return resolved


def apply_overrides(table: dict[str, Any], overrides: list[str], corpus_base: Path | None = None) -> dict[str, Any]:
    """Set each `section.key=value` in `table`; corpus lists given so are resolved against `corpus_base`."""
    for text in overrides:
        keys, value = parse_override(text)
        if corpus_base is not None and len(keys) == 2 and keys[0] == "data" and keys[1] in CORPUS_LISTS:
            value = _absolute_corpora(value, corpus_base)
        node = table
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            _check(isinstance(node, dict), f"override {text!r}: {k} is not a section")
        node[keys[-1]] = value
    return table


def _read_table(path: Path) -> dict[str, Any]:
    """A config file's table; a TOML file's relative corpus paths resolved against its folder."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        table = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not a valid config file: {error}") from error
    data = table.get("data")
    if path.suffix != ".json" and isinstance(data, dict):  # a model directory's config.json is a record
        for key in CORPUS_LISTS:
            if key in data:
                data[key] = _absolute_corpora(data[key], path.parent)
    return table


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a TOML (or the JSON a model directory holds) config; apply `section.key=value` overrides.
    Relative corpus paths: a TOML file's against its folder, the overrides' against the current directory."""
    table = _read_table(Path(path)) if path is not None else {}
    table = apply_overrides(table, overrides or [], corpus_base=Path.cwd())
    try:
        return from_dict(Config, table)
    except ConfigError as error:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{error}") from None
