"""Dev-set quality of a model: sacreBLEU BLEU and chrF on every dev set, through `zhen evaluate`.

    python bench/bench_quality.py --model src/zhen/models/default --beam 5 --out bench/results/quality_small.json

Each row runs exactly the command it prints (`zhen evaluate --model … --corpus … --json`), so any
number in bench/quality.md can be recomputed by pasting its command. Dev sets default to the four in
../shared/data (Tatoeba, 3AM, TV subtitles, WMT newsdev2017).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

DEV_SETS = {
    "tatoeba": "../shared/data/tatoeba/dev.tsv",
    "3am": "../shared/data/3am/dev",
    "tvsub": "../shared/data/tvsub/dev",
    "newsdev2017": "../shared/data/wmt/newsdev2017",
}


def evaluate(model: str, corpus: str, beam: int, device: str, precision: str) -> dict:
    command = ["zhen", "evaluate", "--model", model, "--corpus", corpus, "--beam", str(beam),
               "--device", device, "--precision", precision, "--json"]
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "zhen", *command[1:]], capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed:\n{result.stderr}")
    row = json.loads(result.stdout)
    row.update(command=shlex.join(command), seconds=round(time.perf_counter() - start, 1))
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model directory or training run")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--sets", default=",".join(DEV_SETS), help="comma-separated names of " + ", ".join(DEV_SETS))
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args()
    rows = []
    for name in args.sets.split(","):
        row = evaluate(args.model, DEV_SETS[name], args.beam, args.device, args.precision)
        row["set"] = name
        rows.append(row)
        print(f"{name:12s} BLEU {row['bleu']:6.2f}  chrF {row['chrf']:6.2f}  ({row['sentences']} sentences, "
              f"{row['seconds']} s)  {row['command']}", flush=True)
    if args.out:
        meta = {"machine": platform.processor() or platform.machine(), "python": platform.python_version(),
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, ensure_ascii=False) + "\n",
                                  encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
