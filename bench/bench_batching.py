"""How much of one call's speed calls of 32 sentences keep: zhen against CTranslate2 on the same model (#15).

    python bench/bench_batching.py --git-model 06d6f72 --write bench/results/batching.md
    python bench/bench_batching.py --model DIR --sentences 500 --rounds 2

Why: `zhen serve` under 32 closed-loop clients never has more than 32 sentences to batch, so its ceiling is the
offline speed of calls of 32, and bench_serve.py compares the server with one offline call over everything.
This script asks whether that ceiling is zhen's or the load pattern's: the same sentences through CTranslate2,
the reference CPU engine, converted from the same weights (`zhen export --format ctranslate2`).

The model must have sinusoidal positions (CTranslate2's Transformer loader has no rotary ones), so the shipped
v3 cannot be used; `--git-model REV` takes the model shipped in src/zhen/models/default at commit REV (06d6f72:
v2, the same network size as v3 with sinusoidal positions).

Sentences: the Chinese side of Tatoeba's dev set, as bench_serve.py reads it. Both engines get the same source
pieces (zhen's normaliser and tokenizer) and zhen's search settings: beam 5, α = 1, PAD and BOS never
generated, at most zhen's max_len (CTranslate2's limit is per call: the largest max_len of the call's
sentences, minus the EOS zhen counts); their beam searches differ in details (see zhen.interop.parity), so
their outputs are compared, not required equal.

Each round times, engine by engine: one call over all the sentences and one call per --chunk sentences in
their order. zhen's one call is `Translator.translate` (it sorts by length into token-budget batches and
includes normalising, tokenizing and detokenizing); CTranslate2 gets its pieces ready-made and, for its one
call, the faster of one batch of everything and its own sorted token-budget batches (`max_batch_size` in
tokens, zhen's budget / beam). torch and CTranslate2 both run 2 threads, never in the same process: each
round's CTranslate2 passes run in a fresh process (see `in_own_process`), after a warm-up call.
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from bench_serve import cpu_name, installed, read_sentences

from zhen.checkpoint import load_model_dir
from zhen.config import DecodeConfig
from zhen.interop.ct2 import convert
from zhen.interop.parity import ct2_options, max_lengths, never_pieces
from zhen.translator import Translator

SHIPPED = "src/zhen/models/default"
FILES = ("config.json", "model.safetensors", "src.model", "tgt.model")


@dataclass
class Engine:
    """One engine's passes: sentences/s of one call and of calls of --chunk, round by round."""

    name: str
    one: list[float] = field(default_factory=list)
    chunked: list[float] = field(default_factory=list)
    outputs: dict[str, list] = field(default_factory=dict)  # "one" / "chunked" → the last pass's outputs


def model_from_git(rev: str, out: Path) -> Path:
    """The shipped model's files at commit `rev`, written to `out`."""
    out.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shown = subprocess.run(["git", "show", f"{rev}:{SHIPPED}/{name}"], capture_output=True)
        if shown.returncode:
            sys.exit(f"bench_batching: no {SHIPPED}/{name} at {rev!r} in this repository: "
                     f"{shown.stderr.decode(errors='replace').strip()}")
        (out / name).write_bytes(shown.stdout)
    return out


def timed(run: Callable[[], list]) -> tuple[float, list]:
    start = time.perf_counter()
    outputs = run()
    return time.perf_counter() - start, outputs


def zhen_passes(translator: Translator, texts: list[str], chunk: int) -> dict[str, Callable[[], list]]:
    """zhen's two ways of calling, each giving every sentence's best translation (text, score, tokens)."""
    def one(lines: list[str]) -> list:
        return [nbest[0] for nbest in translator.translate_nbest(lines, 1)]  # what `translate` runs

    return {"one": lambda: one(texts),
            "chunked": lambda: [t for i in range(0, len(texts), chunk) for t in one(texts[i : i + chunk])]}


def ct2_round(path: Path, pieces: list[list[str]], limits: list[int], decode: DecodeConfig, chunk: int,
              never: list[list[str]]) -> dict[str, tuple[float, list]]:
    """One round of CTranslate2's passes: name → (seconds, best hypotheses). Runs in a process of its own (see
    `in_own_process`)."""
    import ctranslate2

    translator = ctranslate2.Translator(str(path), device="cpu", inter_threads=1, intra_threads=2)

    def call(start: int, end: int, **batching: object) -> list:
        options = ct2_options(decode, max(limits[start:end]), never)  # its length limit is per call
        return [r.hypotheses[0] for r in translator.translate_batch(pieces[start:end], **options, **batching)]

    n = len(pieces)
    call(0, min(chunk, n))  # warm-up
    passes = {
        "one (one batch)": lambda: call(0, n),
        "one (sorted token batches)": lambda: call(0, n, max_batch_size=decode.batch_tokens // decode.beam,
                                                   batch_type="tokens"),
        "chunked": lambda: [h for i in range(0, n, chunk) for h in call(i, min(i + chunk, n))],
    }
    return {name: timed(run) for name, run in passes.items()}


def in_own_process(function: Callable, *args: object) -> object:
    """`function(*args)` in a fresh process, where no torch operator has run: sharing a process, torch and
    CTranslate2 slow each other down (measured: see bench_translate.ct2_engine)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args)


def record(engine: Engine, timings: dict[str, tuple[float, list]], n: int) -> None:
    """One round's passes (name → (seconds, outputs)): one call's best rate, and the calls of --chunk."""
    ones = {name: t for name, t in timings.items() if name != "chunked"}
    engine.one.append(max(n / seconds for seconds, _ in ones.values()))
    engine.chunked.append(n / timings["chunked"][0])
    engine.outputs = {"one": next(iter(ones.values()))[1], "chunked": timings["chunked"][1]}


def measure(args: argparse.Namespace, model_dir: Path, work: Path) -> tuple[list[Engine], dict[str, int]]:
    loaded = load_model_dir(model_dir)
    if loaded.model.config.positions == "rotary":
        sys.exit(f"{model_dir} has rotary positions, which CTranslate2's Transformer cannot load: pass --git-model "
                 "06d6f72 (v2, sinusoidal) or another sinusoidal model")
    decode = replace(loaded.config.decode, beam=args.beam, nbest=1)  # both engines search with these settings
    translator = Translator(loaded.model, loaded.tokenizer, replace(loaded.config, decode=decode))
    texts = read_sentences(args.sentences_from, args.sentences)
    tokenizer = loaded.tokenizer
    ids = tokenizer.encode_src([translator.normalizer.zh(t) for t in texts])
    pieces = [[tokenizer.id_to_src_piece(i) for i in s[:-1]] for s in ids]  # </s> added by CTranslate2
    limits = max_lengths(loaded, ids, decode)
    ct2_path = convert(loaded.model, tokenizer, loaded.config, work / "ct2")
    zhen, ct2 = Engine("zhen"), Engine("CTranslate2")
    zhen_passes(translator, texts[: args.chunk], args.chunk)["one"]()  # warm-up
    for _ in range(args.rounds):
        record(zhen, {name: timed(run) for name, run in zhen_passes(translator, texts, args.chunk).items()},
               len(texts))
        record(ct2, in_own_process(ct2_round, ct2_path, pieces, limits, decode, args.chunk, never_pieces(tokenizer)),
               len(texts))
    # The same translations (their scores, sums of log-probabilities, may differ in the last bits with the batch).
    assert [t.tokens for t in zhen.outputs["one"]] == [t.tokens for t in zhen.outputs["chunked"]], \
        "zhen's translations depend on the batch"
    index = {tokenizer.id_to_tgt_piece(i): i for i in range(tokenizer.tgt_vocab_size)}
    ct2_ids = [[index[p] for p in h] for h in ct2.outputs["one"]]
    same = sum(a == b for a, b in zip(ct2.outputs["one"], ct2.outputs["chunked"], strict=True))
    agreement = {"sentences": len(texts), "ct2 one = ct2 chunked": same,
                 "zhen = ct2": sum(list(a.tokens) == b for a, b in zip(zhen.outputs["one"], ct2_ids, strict=True))}
    return [zhen, ct2], agreement


def report(engines: list[Engine], agreement: dict[str, int], args: argparse.Namespace, model: str) -> str:
    def cells(xs: list[float]) -> str:
        return " / ".join(f"{x:.1f}" for x in xs)

    lines = [
        "# Calls of 32 sentences against one call: zhen and CTranslate2 (#15)", "",
        "Measured by `bench/bench_batching.py` (its docstring says what it does) in one run:", "",
        f"    python bench/bench_batching.py {' '.join(sys.argv[1:])}", "",
        f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC. Machine: {cpu_name()}. "
        f"Python {sys.version.split()[0]}, zhen {installed('zhen')}, torch {torch.__version__}, "
        f"ctranslate2 {installed('ctranslate2')}. Model: {model}. {agreement['sentences']} sentences of "
        f"{args.sentences_from}, beam {args.beam}, {args.rounds} rounds.", "",
        f"| engine | one call, sentences/s (each round) | calls of {args.chunk}, sentences/s (each round) "
        f"| calls of {args.chunk} / one call, each round | best / best |",
        "|---|---|---|---|---|",
    ]
    for e in engines:
        ratios = " / ".join(f"{c / o:.0%}" for o, c in zip(e.one, e.chunked, strict=True))
        lines.append(f"| {e.name} | {cells(e.one)} | {cells(e.chunked)} | {ratios} | "
                     f"{max(e.chunked) / max(e.one):.0%} |")
    zhen, ct2 = engines
    lines += ["", f"zhen's calls of {args.chunk} against CTranslate2's: "
              f"{max(zhen.chunked) / max(ct2.chunked):.0%}; one call against one call: "
              f"{max(zhen.one) / max(ct2.one):.0%}.", "",
              f"Outputs: zhen's are the same in both ways of calling (checked); CTranslate2's calls of {args.chunk} "
              f"gave its one call's tokens in {agreement['ct2 one = ct2 chunked']} of {agreement['sentences']} "
              f"sentences; zhen and CTranslate2 (one call each) agree in {agreement['zhen = ct2']} of "
              f"{agreement['sentences']} (their beam searches differ in details, see zhen.interop.parity).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="a zhen model directory with sinusoidal positions")
    source.add_argument("--git-model", metavar="REV", help=f"the model in {SHIPPED} at this commit (06d6f72: v2)")
    parser.add_argument("--sentences-from", type=Path, default=Path("../shared/data/tatoeba/dev.tsv"))
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--chunk", type=int, default=32)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", type=Path, help="write the report here (Markdown)")
    args = parser.parse_args()
    if not args.sentences_from.is_file():
        sys.exit(f"bench_batching: no sentences at {args.sentences_from} (--sentences-from)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = args.model or model_from_git(args.git_model, work / "model")
        model = str(args.model) if args.model else f"{SHIPPED} at {args.git_model}"
        engines, agreement = measure(args, model_dir, work)
    text = report(engines, agreement, args, model)
    print(text)
    if args.write:
        args.write.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
