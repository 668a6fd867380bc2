"""Dev-set quality of a model: sacreBLEU BLEU and chrF on every dev set, through `zhen evaluate`.

    python bench/bench_quality.py --model src/zhen/models/default --beam 5 --out bench/results/quality_small.json
    python bench/bench_quality.py --model src/zhen/models/default --precisions fp32,int8,bf16 --ct2 float32,int8 \
        --write bench/results/translate.md         # the cost of lower precision, zhen's and CTranslate2's

Each zhen row runs exactly the command it prints (`zhen evaluate --model … --corpus … --json`), so any
number in bench/quality.md can be recomputed by pasting its command. Dev sets default to the four in
../shared/data (Tatoeba, 3AM, TV subtitles, WMT newsdev2017). Each zhen row also counts the outputs that are
no translation (the word "placeholder", an empty line for a non-empty source, a copy of the source).
CTranslate2 rows (`--ct2`) translate an export of the model (`zhen export --format ctranslate2
--quantization Q`) with the same normalisation, beam size and tokenizers, through `ctranslate2.Translator`;
its length penalty is its own (log P / |y|^α, see zhen/interop/parity.py), the rest as zhen.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BEGIN, END = "<!-- bench_quality:begin -->", "<!-- bench_quality:end -->"
DEV_SETS = {
    "tatoeba": "../shared/data/tatoeba/dev.tsv",
    "3am": "../shared/data/3am/dev",
    "tvsub": "../shared/data/tvsub/dev",
    "newsdev2017": "../shared/data/wmt/newsdev2017",
}


def non_translations(corpus: str, outputs: list[str]) -> dict:
    """Outputs that are no translation: the word "placeholder", an empty line for a non-empty source, a copy
    of the source. Counts, and up to three examples of each."""
    from zhen.config import CorpusConfig
    from zhen.data import read_corpus

    sources = [zh for zh, _ in read_corpus(CorpusConfig(path=corpus))]
    kinds = {"placeholder": lambda zh, en: "placeholder" in en.lower(),
             "empty": lambda zh, en: bool(zh.strip()) and not en.strip(),
             "copy": lambda zh, en: bool(en.strip()) and en.strip() == zh.strip()}
    found = {kind: [(zh, en) for zh, en in zip(sources, outputs, strict=True) if test(zh, en)]
             for kind, test in kinds.items()}
    return {kind: {"count": len(pairs), "examples": pairs[:3]} for kind, pairs in found.items()}


def evaluate(model: str, corpus: str, beam: int, device: str, precision: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="zhen-quality-") as work:
        output = Path(work) / "hypotheses.txt"
        row = _evaluate(model, corpus, beam, device, precision, output)
        row["non_translations"] = non_translations(corpus, output.read_text(encoding="utf-8").splitlines())
    return row


def _evaluate(model: str, corpus: str, beam: int, device: str, precision: str, output: Path) -> dict:
    command = ["zhen", "evaluate", "--model", model, "--corpus", corpus, "--beam", str(beam),
               "--device", device, "--precision", precision, "--json"]
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "zhen", *command[1:], "--output", str(output)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed:\n{result.stderr}")
    row = json.loads(result.stdout)
    row.update(command=shlex.join(command), seconds=round(time.perf_counter() - start, 1))
    return row


def ct2_evaluate(model: str, corpus: str, beam: int, quantization: str, work: Path) -> dict:
    """BLEU and chrF of a CTranslate2 export of `model` (made once per quantization under `work`)."""
    import ctranslate2
    import sentencepiece

    from zhen.checkpoint import load_model_dir
    from zhen.config import CorpusConfig
    from zhen.data import read_corpus
    from zhen.evaluate import score
    from zhen.interop.ct2 import export_ctranslate2
    from zhen.text import Normalizer
    from zhen.translator import one_line

    directory = work / quantization
    if not directory.exists():
        export_ctranslate2(Path(model), directory, quantization)
    loaded = load_model_dir(model)
    pairs = read_corpus(CorpusConfig(path=corpus))
    normalizer = Normalizer(loaded.config.text)
    sp_src = sentencepiece.SentencePieceProcessor(model_file=str(directory / "src.model"))
    sp_tgt = sentencepiece.SentencePieceProcessor(model_file=str(directory / "tgt.model"))
    start = time.perf_counter()
    translator = ctranslate2.Translator(str(directory), device="cpu", intra_threads=os.cpu_count() or 1)
    pieces = sp_src.encode([normalizer.zh(zh) for zh, _ in pairs], out_type=str)
    results = translator.translate_batch(pieces, beam_size=beam, max_batch_size=32,
                                         length_penalty=loaded.config.decode.length_penalty,
                                         suppress_sequences=[["<pad>"], ["<s>"]])
    hypotheses = [one_line(sp_tgt.decode(r.hypotheses[0])) for r in results]
    row = score(hypotheses, [en for _, en in pairs]).to_dict()
    row.update(command=f"CTranslate2 {ctranslate2.__version__} {quantization}, beam {beam}",
               seconds=round(time.perf_counter() - start, 1))
    return row


def precision_table(rows: list[dict]) -> str:
    """Markdown: each engine's BLEU and chrF per dev set, and the difference from zhen fp32."""
    reference = {r["set"]: r for r in rows if r["engine"] == "zhen fp32"}
    lines = [BEGIN, f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from the repository root with",
             f"`python bench/bench_quality.py {' '.join(sys.argv[1:])}`.", "",
             "| dev set | engine | BLEU | chrF | Δ BLEU vs zhen fp32 | Δ chrF | seconds |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        ref = reference.get(r["set"])
        delta = (f"{r['bleu'] - ref['bleu']:+.2f} | {r['chrf'] - ref['chrf']:+.2f}" if ref else " | ")
        lines.append(f"| {r['set']} | {r['engine']} | {r['bleu']:.2f} | {r['chrf']:.2f} | {delta} | {r['seconds']} |")
    return "\n".join([*lines, "", END])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model directory or training run")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--precisions", help="comma-separated precisions to compare (instead of --precision)")
    parser.add_argument("--ct2", default="", help="comma-separated CTranslate2 quantizations to compare too")
    parser.add_argument("--sets", default=",".join(DEV_SETS), help="comma-separated names of " + ", ".join(DEV_SETS))
    parser.add_argument("--out", help="write the rows as JSON here")
    parser.add_argument("--write", type=Path, help="markdown file whose bench_quality block gets the table")
    args = parser.parse_args()
    rows = []
    engines = [("zhen", p) for p in (args.precisions or args.precision).split(",")]
    engines += [("ct2", q) for q in args.ct2.split(",") if q]
    with tempfile.TemporaryDirectory(prefix="zhen-quality-") as work:
        for name in args.sets.split(","):
            for kind, setting in engines:
                if kind == "zhen":
                    row = evaluate(args.model, DEV_SETS[name], args.beam, args.device, setting)
                else:
                    row = ct2_evaluate(args.model, DEV_SETS[name], args.beam, setting, Path(work))
                row.update(set=name, engine=f"zhen {setting}" if kind == "zhen" else f"CT2 {setting}")
                rows.append(row)
                bad = {k: v["count"] for k, v in row.get("non_translations", {}).items()}
                print(f"{name:12s} {row['engine']:14s} BLEU {row['bleu']:6.2f}  chrF {row['chrf']:6.2f}  "
                      f"({row['sentences']} sentences, {row['seconds']} s, non-translations {bad})  "
                      f"{row['command']}", flush=True)
    if args.write:
        write_block(args.write, precision_table(rows))
    if args.out:
        meta = {"machine": platform.processor() or platform.machine(), "python": platform.python_version(),
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, ensure_ascii=False) + "\n",
                                  encoding="utf-8")
    return 0


def write_block(path: Path, text: str) -> None:
    """Replace the bench_quality block of `path` (or append one), keeping everything else."""
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        text = head + text + rest.split(END, 1)[1]
    else:
        text = old.rstrip() + "\n\n" + text + "\n"
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
