"""Everyday sentences through the shipped models side by side: docs/examples.md.

    python bench/examples.py --models /tmp/v1 /tmp/v2 src/zhen/models/default --names v1,v2,v3 --out docs/examples.md

Each sentence is translated with `Translator.translate` (beam 5, the models' own decode settings), one
call per model; the table shows what a reader can expect of each, good and bad.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from zhen import Translator
from zhen.textio import write_atomic

SENTENCES = (
    ("greeting", "你好"),
    ("greeting", "早上好！"),
    ("greeting", "谢谢你的帮助。"),
    ("love", "我爱你"),
    ("name", "你叫什么名字？"),
    ("weather", "今天天气很好。"),
    ("weather", "明天会下雨吗？"),
    ("time", "现在几点了？"),
    ("time", "我每天早上七点起床。"),
    ("family", "我有一个哥哥和两个妹妹。"),
    ("family", "我的父母住在上海。"),
    ("travel", "去火车站怎么走？"),
    ("travel", "我想订一张去北京的机票。"),
    ("shopping", "这件衣服多少钱？"),
    ("shopping", "太贵了，便宜一点吧。"),
    ("food", "我们去吃饭吧。"),
    ("work", "我今天要加班。"),
    ("work", "会议几点开始？"),
    ("authorship", "这本书是我的朋友写的。"),
    ("news headline", "中国经济今年增长百分之五。"),
    ("subordinate clause", "他昨天去了北京，因为他的母亲病了。"),
    ("subordinate clause", "如果明天不下雨，我们就去公园散步。"),
    ("longer", "虽然他很忙，但是他每个周末都会给父母打电话。"),
)


def table(outputs: list[list[str]], names: Sequence[str]) -> list[str]:
    """One row per sentence: its topic, the Chinese, and each model's translation (outputs[m][i])."""
    lines = ["| | Chinese | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for i, (topic, zh) in enumerate(SENTENCES):
        lines.append(f"| {topic} | {zh} | " + " | ".join(output[i] for output in outputs) + " |")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", required=True, help="model directories, oldest first")
    p.add_argument("--names", default="v1,v2,v3", help="their column names, comma-separated")
    p.add_argument("--out", default="docs/examples.md")
    p.add_argument("--intro", default="", help="a paragraph printed above the table")
    args = p.parse_args(argv)
    names = args.names.split(",")[: len(args.models)]
    if len(names) != len(args.models):
        p.error(f"--names gives {len(names)} names for {len(args.models)} models")
    sources = [zh for _, zh in SENTENCES]
    outputs = [Translator.load(path).translate(sources) for path in args.models]
    text = "\n".join(["# What the shipped model can and cannot do", "", args.intro, "",
                      *table(outputs, names), ""]) + "\n"
    write_atomic(Path(args.out), text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
