"""The command-line side of interop: `zhen export --format …` and `zhen import-marian`.

The CLI (zhen.cli) adds these arguments and calls `run_export` / `run_import`; this module imports only the
standard library until a command runs, so `zhen --help` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from zhen.interop import FORMATS, QUANTIZATIONS, InteropError


def add_interop_commands(parser: argparse.ArgumentParser, commands: Any, *, export: Any, import_marian: Any) -> None:
    """The export `parser`'s --format, --quantization and --check, and the `import-marian` subcommand of
    `commands` (what `add_subparsers` returns); `export` and `import_marian` become their `run`."""
    add_export_arguments(parser).set_defaults(run=export)
    add_import_marian(commands).set_defaults(run=import_marian)


def add_export_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--format", default="zhen", choices=FORMATS,
                        help="zhen (default), ctranslate2 (needs zhen[ct2]) or marian (Hugging Face, needs zhen[hf])")
    parser.add_argument("--quantization", choices=QUANTIZATIONS,
                        help="ctranslate2: the type its weights are stored in (default float32)")
    parser.add_argument("--check", action="store_true",
                        help="then translate --check-corpus with zhen and with the export and compare the tokens "
                        "(greedy, and beam 5 for ctranslate2); fails unless identical (float32 exports)")
    parser.add_argument("--check-corpus", default="hsk", help="corpus for --check, as in a config (default: hsk)")
    parser.add_argument("--check-limit", type=int, default=200, help="sentences of it (default 200)")
    return parser


def add_import_marian(commands: Any) -> argparse.ArgumentParser:
    """The `import-marian` subcommand's parser, added to `commands` (what `add_subparsers` returns)."""
    parser = commands.add_parser("import-marian", help="a Hugging Face Marian checkpoint (e.g. opus-mt-zh-en) as "
                                 "a zhen model directory")
    parser.add_argument("directory", metavar="DIR",
                        help="a Hugging Face Marian checkpoint on disk (config.json, weights, source.spm, "
                        "target.spm, vocab.json), e.g. a downloaded opus-mt-zh-en")
    parser.add_argument("--output", "-o", required=True, help="new zhen model directory")
    return parser


def run_export(args: argparse.Namespace) -> int:
    """`zhen export MODEL --format ctranslate2|marian -o DIR [--quantization Q] [--check]`."""
    from zhen.checkpoint import resolve_model_dir

    if args.format == "zhen":
        raise InteropError("--quantization and --check are for --format ctranslate2 or marian")
    if args.dtype != "float32":
        raise InteropError(f"--dtype is for --format zhen; {args.format} takes --quantization (ctranslate2)")
    model_dir = resolve_model_dir(args.model)
    out = Path(args.output)
    if args.format == "ctranslate2":
        from zhen.interop.ct2 import export_ctranslate2

        quantization = args.quantization or "float32"
        export_ctranslate2(model_dir, out, quantization)
        print(f"exported {model_dir} to {out} (CTranslate2, {quantization})")
    else:
        if args.quantization:
            raise InteropError("--quantization is for --format ctranslate2")
        from zhen.interop.marian_export import export_marian

        quantization = "float32"
        export_marian(model_dir, out)
        print(f"exported {model_dir} to {out} (Hugging Face Marian)")
    return run_check(model_dir, out, args, exact=quantization == "float32") if args.check else 0


def run_check(model_dir: Path, out: Path, args: argparse.Namespace, exact: bool) -> int:
    """Print the parity of export `out` with `model_dir`; an inexact float32 export is an error."""
    from zhen.checkpoint import load_model_dir
    from zhen.interop import parity

    loaded = load_model_dir(model_dir)
    texts = parity.sentences(loaded, args.check_corpus, args.check_limit)
    results = parity.check(loaded, out, args.format, texts)
    for result in results:
        print(result)
    failed = [str(r) for r in results if not r.passed]
    if failed and exact:
        raise InteropError(f"parity check failed: {failed[0]}")
    if failed:
        print(f"({args.quantization} weights: differences from zhen's fp32 tokens are expected)")
    return 0


def run_import(args: argparse.Namespace) -> int:
    """`zhen import-marian DIR -o MODEL`."""
    from zhen.interop.marian_import import import_marian

    out = import_marian(Path(args.directory), Path(args.output))
    print(f"imported {args.directory} to {out}: zhen translate --model {out}")
    return 0
