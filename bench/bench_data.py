"""Benchmark the data pipeline: building the token cache for a large corpus, reloading it, and the floor.

    python bench/bench_data.py                         # ../shared/data/tvsub/train.{zh,en}.xz, 1.79M pairs
    python bench/bench_data.py --subset 100000         # its first 100,000 pairs, for a quick look
    python bench/bench_data.py --write bench/results/data.md

Stages, each in a fresh Python process, so that no stage runs on memory an earlier one already
touched (on this VM first-touching memory costs ~1 s/GiB, which would otherwise flatter later stages):

    tokenizer  read + normalise + clean every pair (`load_pairs`), then train one unigram model per
               side on a sample (`Tokenizer.train`): done once per experiment, reported separately
    build      `load_or_build` into an empty cache directory: read .xz → normalise → clean → encode → save
    breakdown  the same stages called one by one and timed separately (one run)
    reload     `load_or_build` again: the cache hit
    floor      SentencePiece alone batch-encoding the already decompressed raw lines (both sides,
               num_threads=2): what any pipeline must at least spend, with Python's garbage collector
               on (as a plain script runs it) and paused (as `encode_corpus` runs it)

Times are wall-clock seconds; with --repeats R each of build, reload and floor runs R times and the
report gives the median and the minimum.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import importlib.metadata
import lzma
import multiprocessing
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from zhen.config import DataConfig

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PREFIX = str(REPO / "../shared/data/tvsub/train")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ==================================================================== stages (each runs in a fresh process)


def stage_tokenizer(prefix: str, work: str, vocab_size: int, sample: int) -> dict[str, Any]:
    from zhen.config import CorpusConfig, DataConfig, TokenizerConfig
    from zhen.data import load_pairs
    from zhen.text import Normalizer
    from zhen.tokenizer import Tokenizer

    start = time.perf_counter()
    pairs, stats = load_pairs([CorpusConfig(path=prefix)], Normalizer(), clean=True, data_config=DataConfig())
    loaded = time.perf_counter()
    config = TokenizerConfig(vocab_size=vocab_size, input_sentence_size=sample)
    tokenizer = Tokenizer.train(pairs, config, Path(work) / "tokenizer", log=print)
    return {
        "load_pairs": loaded - start,
        "train": time.perf_counter() - loaded,
        "summary": stats.summary(),
        "vocab": (tokenizer.src_vocab_size, tokenizer.tgt_vocab_size),
        "rss": peak_rss_mib(),
    }


def stage_build(prefix: str, work: str, reuse: bool) -> dict[str, Any]:
    from zhen.config import CorpusConfig, DataConfig
    from zhen.data import load_or_build
    from zhen.text import Normalizer
    from zhen.tokenizer import Tokenizer

    tokenizer, normalizer = Tokenizer.load(Path(work) / "tokenizer"), Normalizer()
    cache = Path(work) / "cache"
    if not reuse:
        shutil.rmtree(cache, ignore_errors=True)
    messages: list[str] = []
    start = time.perf_counter()
    corpus = load_or_build([CorpusConfig(path=prefix)], normalizer, tokenizer, DataConfig(), cache, messages.append)
    seconds = time.perf_counter() - start
    batching = {}
    if reuse:  # the cache hit: also time one epoch's batches, as training will use them
        from zhen.data import collate, make_batches

        start = time.perf_counter()
        batches = make_batches(corpus.src_lengths, corpus.tgt_lengths, DataConfig().max_tokens, seed=1, epoch=0)
        batching["make_batches"] = time.perf_counter() - start
        start = time.perf_counter()
        for indices in batches[:1000]:
            collate(corpus, indices)
        batching["collate_ms"] = (time.perf_counter() - start) / min(1000, len(batches)) * 1000
        batching["batches"] = len(batches)
    return {
        "batching": batching,
        "seconds": seconds,
        "log": messages,
        "pairs": len(corpus),
        "tokens": (len(corpus.src_ids), len(corpus.tgt_ids)),
        "cache_mib": sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) / 2**20,
        "rss": peak_rss_mib(),
    }


def stage_breakdown(prefix: str, work: str) -> dict[str, Any]:
    from zhen.config import CorpusConfig, DataConfig
    from zhen.data import encode_corpus, read_columns
    from zhen.text import Normalizer
    from zhen.tokenizer import Tokenizer

    tokenizer, normalizer, config = Tokenizer.load(Path(work) / "tokenizer"), Normalizer(), DataConfig()
    times: dict[str, float] = {}

    @contextlib.contextmanager
    def timed(name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        times[name] = time.perf_counter() - start

    gc.disable()  # as load_pairs and encode_corpus do
    with timed("read + decompress (both files, 2 threads)"):
        columns = read_columns(CorpusConfig(path=prefix))
    with timed("normalise Chinese"):
        zh = normalizer.zh_many(columns.zh)
    with timed("normalise English"):
        en = normalizer.en_many(columns.en)
    del columns
    with timed("clean (empty sides, duplicates)"):  # load_pairs' cleaning, written out to time it alone
        pairs = list(dict.fromkeys(p for p in zip(zh, en, strict=True) if p[0] and p[1]))
    del zh, en
    with timed("encode + length rules"):
        corpus, _ = encode_corpus(pairs, tokenizer, config)
    with timed("save (.npy)"):
        corpus.save(Path(tempfile.mkdtemp(dir=work)))
    gc.enable()
    return {"times": times, "rss": peak_rss_mib()}


def stage_floor(prefix: str, work: str, paused_gc: bool) -> dict[str, Any]:
    import sentencepiece as spm

    from zhen.config import CorpusConfig
    from zhen.data import read_columns

    columns = read_columns(CorpusConfig(path=prefix))
    src = spm.SentencePieceProcessor(model_file=str(Path(work) / "tokenizer" / "src.model"))
    tgt = spm.SentencePieceProcessor(model_file=str(Path(work) / "tokenizer" / "tgt.model"))
    if paused_gc:
        gc.disable()
    start = time.perf_counter()
    src_ids = src.encode(columns.zh, out_type=int, add_eos=True, num_threads=2)
    middle = time.perf_counter()
    tgt_ids = tgt.encode(columns.en, out_type=int, num_threads=2)
    end = time.perf_counter()
    tokens = (sum(map(len, src_ids)), sum(map(len, tgt_ids)))
    return {"zh": middle - start, "en": end - middle, "seconds": end - start, "tokens": tokens, "rss": peak_rss_mib()}


def fresh(stage: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run one stage in a new interpreter and return its result."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(stage, args)


# ==================================================================== the report


def machine() -> list[str]:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), "?")
    memory = Path("/proc/meminfo").read_text().split("\n")[0].split()[1] if Path("/proc/meminfo").exists() else "0"
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}" for name in ("torch", "sentencepiece", "opencc", "numpy")
    )
    return [
        f"- CPU: {model}, {multiprocessing.cpu_count()} cores (`lscpu`), {int(memory) / 2**20:.0f} GiB memory",
        f"- Python {platform.python_version()}, {versions}, {platform.platform()}",
    ]


def seconds(values: list[float]) -> str:
    """'1.23 s (min 1.20)': the median of the runs, and the fastest."""
    digits = 3 if max(values) < 1 else 2
    median, fastest = statistics.median(values), min(values)
    return f"{median:.{digits}f} s (min {fastest:.{digits}f})" if len(values) > 1 else f"{median:.{digits}f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="corpus prefix: PREFIX.zh[.xz] + PREFIX.en[.xz]")
    parser.add_argument("--subset", type=int, default=0, help="use only the first N pairs (written to .xz files)")
    parser.add_argument("--vocab-size", type=int, default=8000, help="SentencePiece pieces per side")
    parser.add_argument("--sample", type=int, default=300_000, help="sentences per side to train the tokenizer on")
    parser.add_argument("--repeats", type=int, default=3, help="runs of build, reload and floor")
    parser.add_argument("--write", type=Path, help="write the markdown report here")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="zhen-bench-data-")
    prefix = args.prefix
    try:
        if args.subset:
            prefix = str(Path(work) / "subset")
            for side in ("zh", "en"):
                source = Path(f"{args.prefix}.{side}.xz")
                with lzma.open(source, "rt", encoding="utf-8") as lines:
                    head = "".join(line for _, line in zip(range(args.subset), lines, strict=False))
                Path(f"{prefix}.{side}.xz").write_bytes(lzma.compress(head.encode(), preset=1))

        print("tokenizer …", flush=True)
        tok = fresh(stage_tokenizer, prefix, work, args.vocab_size, args.sample)
        print(f"  {tok}\nbuild …", flush=True)
        builds = [fresh(stage_build, prefix, work, False) for _ in range(args.repeats)]
        print(f"  {builds[-1]}\nbreakdown …", flush=True)
        breakdown = fresh(stage_breakdown, prefix, work)
        print(f"  {breakdown}\nreload …", flush=True)
        reloads = [fresh(stage_build, prefix, work, True) for _ in range(args.repeats)]
        print(f"  {reloads[-1]}\nfloor …", flush=True)
        floors = {
            paused: [fresh(stage_floor, prefix, work, paused) for _ in range(args.repeats)] for paused in (False, True)
        }
        print(f"  {floors}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    build = builds[-1]
    build_times = [b["seconds"] for b in builds]
    plain = [f["seconds"] for f in floors[False]]
    paused = [f["seconds"] for f in floors[True]]
    corpus = f"`{os.path.relpath(args.prefix, REPO)}`" + (f", first {args.subset:,} pairs" if args.subset else "")
    rows = [
        ("tokenizer: read + normalise + clean all pairs (`load_pairs`)", f"{tok['load_pairs']:.2f} s", tok["rss"]),
        (
            f"tokenizer: train 2 × {args.vocab_size}-piece unigram on ≤ {args.sample:,} sentences per side "
            f"(vocab {tok['vocab'][0]} / {tok['vocab'][1]})",
            f"{tok['train']:.2f} s",
            None,
        ),
        ("**token cache build** (`load_or_build`, empty cache)", f"**{seconds(build_times)}**", build["rss"]),
        *((f"&nbsp;&nbsp;breakdown: {name}", f"{value:.2f} s", None) for name, value in breakdown["times"].items()),
        (
            "**token cache reload** (`load_or_build`, cache hit)",
            f"**{seconds([r['seconds'] for r in reloads])}**",
            reloads[-1]["rss"],
        ),
        ("floor: SentencePiece alone, zh + en, 2 threads, GC on", seconds(plain), floors[False][-1]["rss"]),
        ("floor: SentencePiece alone, zh + en, 2 threads, GC paused", seconds(paused), None),
    ]
    ratio_plain = statistics.median(build_times) / statistics.median(plain)
    ratio_paused = statistics.median(build_times) / statistics.median(paused)
    report = [
        "# Data pipeline benchmark: the token cache",
        "",
        f"Run {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} from the repository root with",
        f"`python {' '.join(sys.argv)}` (corpus {corpus}).",
        "",
        *machine(),
        "",
        f"Corpus: {tok['summary']} by `load_pairs`; the cache holds {build['pairs']:,} pairs, "
        f"{build['tokens'][0]:,} source and {build['tokens'][1]:,} target tokens ({build['cache_mib']:.0f} MiB).",
        "",
        "| stage | time | peak memory |",
        "|---|---|---|",
        *(f"| {name} | {time_} | {f'{rss:,.0f} MiB' if rss else ''} |" for name, time_, rss in rows),
        "",
        f"Build / floor (medians): {ratio_plain:.2f}× the plain SentencePiece floor, "
        f"{ratio_paused:.2f}× the GC-paused one.",
        "",
        f"Batching one epoch with `max_tokens = {DataConfig().max_tokens}`: `make_batches` "
        f"{reloads[-1]['batching']['make_batches']:.2f} s for {reloads[-1]['batching']['batches']:,} batches; "
        f"`collate` {reloads[-1]['batching']['collate_ms']:.2f} ms a batch (mean over the first ≤ 1,000).",
        "",
        "The build's own log (last run):",
        "",
        *(f"    {line}" for line in build["log"]),
        "",
    ]
    text = "\n".join(report)
    print("\n" + text)
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
