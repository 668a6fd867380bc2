"""The `zhen` command: train | translate | evaluate | explain | tokenize | average | export.

Every command turns the errors a user can cause (a bad config, a missing file, a corrupt model)
into one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from zhen import __version__


def _model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", "-m", help="model directory or training run (default: the shipped model)")
    parser.add_argument("--beam", type=int, help="beam size (1: greedy); default: the model's decode.beam")
    parser.add_argument("--batch-tokens", type=int, help="source tokens per batch")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"],
                        help="fp32 (default) or bf16 autocast (fast on GPUs and CPUs with bf16 units)")


def _load_translator(args: argparse.Namespace, nbest: int | None = None):
    from zhen.translator import Translator

    decode = {"beam": args.beam, "batch_tokens": args.batch_tokens}
    decode = {k: v for k, v in decode.items() if v is not None}
    if nbest is not None:
        decode["nbest"] = nbest
        decode.setdefault("beam", nbest)
    return Translator.load(args.model, device=args.device, precision=args.precision, **decode)


def cmd_train(args: argparse.Namespace) -> int:
    from zhen.config import load_config
    from zhen.train import train

    config = load_config(args.config, args.set)
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    train(config, out, resume=args.resume)
    return 0


def cmd_translate(args: argparse.Namespace) -> int:
    translator = _load_translator(args, args.nbest if args.nbest and args.nbest > 1 else None)
    output = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout  # noqa: SIM115
    try:
        if args.text:
            lines = args.text
        elif args.input and args.input != "-":
            lines = _read_lines(Path(args.input))
        else:
            lines = sys.stdin
        chunk = 1 if lines is sys.stdin and sys.stdin.isatty() else 256
        if args.nbest and args.nbest > 1:
            for i, hyps in enumerate(translator.translate_nbest_stream(lines, args.nbest, chunk_lines=chunk)):
                output.write("".join(f"{i}\t{hyp.score:.4f}\t{hyp.text}\n" for hyp in hyps))
                output.flush() if chunk == 1 else None
        else:
            for text in translator.translate_stream(lines, chunk_lines=chunk):
                output.write(text + "\n")
                output.flush() if chunk == 1 else None
    finally:
        if output is not sys.stdout:
            output.close()
    return 0


def _read_lines(path: Path):
    """Lines of a UTF-8 file, streamed; a line that is not UTF-8 is an error naming the line."""
    from zhen.text import TextError

    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise TextError(f"{path}, line {number}: not valid UTF-8 ({error.reason}); "
                                "convert the file first, e.g. iconv -f GBK -t UTF-8") from None


def cmd_evaluate(args: argparse.Namespace) -> int:
    from zhen.errors import ZhenError
    from zhen.evaluate import score

    if args.corpus:
        if args.src or args.ref:
            raise ZhenError("give either --corpus or --src and --ref, not both")
        from zhen.config import CorpusConfig
        from zhen.data import read_corpus

        pairs = list(read_corpus(CorpusConfig(path=args.corpus)))
        if not pairs:
            raise ZhenError(f"{args.corpus}: no sentence pairs to evaluate")
        sources, references = [zh for zh, _ in pairs], [en for _, en in pairs]
        where = {"corpus": args.corpus}
    elif args.src and args.ref:
        sources = [line.rstrip("\r\n") for line in _read_lines(Path(args.src))]
        references = [line.rstrip("\r\n") for line in _read_lines(Path(args.ref))]
        if len(sources) != len(references):
            raise ZhenError(f"{args.src} has {len(sources)} lines but {args.ref} has {len(references)}")
        where = {"src": args.src, "ref": args.ref}
    else:
        raise ZhenError("give --src FILE --ref FILE, or --corpus PATH (a .tsv, .jsonl, PREFIX of .zh/.en, or hsk)")
    translator = _load_translator(args)
    hypotheses = translator.translate(sources)
    if args.output:
        Path(args.output).write_text("".join(h + "\n" for h in hypotheses), encoding="utf-8")
    scores = score(hypotheses, references)
    if args.json:
        print(json.dumps({"model": str(args.model or "shipped"), **where, "beam": translator.config.decode.beam,
                          **scores.to_dict()}, ensure_ascii=False))
    else:
        print(scores)
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from zhen.explain import run

    return run(args)


def cmd_tokenize(args: argparse.Namespace) -> int:
    from zhen.checkpoint import resolve_model_dir
    from zhen.config import TextConfig
    from zhen.text import Normalizer
    from zhen.tokenizer import Tokenizer, show_pieces
    from zhen.translator import DEFAULT_MODEL

    directory = resolve_model_dir(args.model or DEFAULT_MODEL)
    tokenizer = Tokenizer.load(directory)
    from zhen.checkpoint import read_config

    text_config = read_config(directory).text if (directory / "config.json").is_file() else TextConfig()
    print(show_pieces(tokenizer, Normalizer(text_config).zh(args.text)))
    return 0


def cmd_average(args: argparse.Namespace) -> int:
    from zhen.checkpoint import CheckpointError, export_model, list_checkpoints

    checkpoints = list_checkpoints(Path(args.run_dir))
    if not checkpoints:
        raise CheckpointError(f"no checkpoints in {args.run_dir}/checkpoints")
    chosen = checkpoints[-args.last :]
    out = export_model(chosen, Path(args.output), dtype=_dtype(args.dtype))
    print(f"averaged {len(chosen)} checkpoints ({chosen[0].name} … {chosen[-1].name}) into {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from zhen.checkpoint import export_model, resolve_model_dir

    out = export_model(resolve_model_dir(args.model), Path(args.output), dtype=_dtype(args.dtype))
    print(f"exported {resolve_model_dir(args.model)} to {out}")
    return 0


def _dtype(name: str):
    import torch

    return {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zhen", description="Chinese→English translation with the Transformer.")
    parser.add_argument("--version", action="version", version=f"zhen {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("train", help="train a model from a TOML config")
    p.add_argument("config", help="TOML config, e.g. configs/small.toml")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (repeatable), e.g. --set train.max_steps=1000")
    p.add_argument("--out", "-o", help="output directory (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.set_defaults(run=cmd_train)

    p = commands.add_parser("translate", help="translate sentences, a file, or standard input")
    p.add_argument("text", nargs="*", help="sentences to translate (otherwise -i FILE or standard input)")
    p.add_argument("--input", "-i", help="input file, one sentence per line ('-': standard input)")
    p.add_argument("--output", "-o", help="output file (default: standard output)")
    p.add_argument("--nbest", type=int, help="print the N best translations: index, score, text")
    _model_args(p)
    p.set_defaults(run=cmd_translate)

    p = commands.add_parser("evaluate", help="translate a test set and print sacreBLEU BLEU and chrF")
    p.add_argument("--src", help="Chinese source file, one sentence per line")
    p.add_argument("--ref", help="English reference file, line-aligned with --src")
    p.add_argument("--corpus", help="instead of --src/--ref: a corpus as in a config (.tsv, .jsonl, PREFIX, hsk)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--output", "-o", help="also write the translations to this file")
    _model_args(p)
    p.set_defaults(run=cmd_evaluate)

    p = commands.add_parser("explain", help="walk a sentence through the model step by step, as in the note")
    p.add_argument("text", nargs="?", default="我爱你", help="Chinese sentence (default: 我爱你)")
    p.add_argument("--model", "-m", help="model directory (default: the shipped model)")
    p.add_argument("--layer", type=int, help="show only this layer (1-based; default: all, pictures for the last)")
    p.add_argument("--head", type=int, default=1, help="head whose score table is printed (1-based; default 1)")
    p.add_argument("--out", help="directory for the attention heatmaps (PNG)")
    p.add_argument("--html", action="store_true", help="also write one self-contained walkthrough.html in --out")
    p.add_argument("--values", type=int, default=6, help="how many numbers of each vector to print (default 6)")
    p.set_defaults(run=cmd_explain)

    p = commands.add_parser("tokenize", help="show the SentencePiece pieces and ids of a Chinese sentence")
    p.add_argument("text")
    p.add_argument("--model", "-m", help="model directory (default: the shipped model)")
    p.set_defaults(run=cmd_tokenize)

    p = commands.add_parser("average", help="average the last K checkpoints of a training run into a model")
    p.add_argument("run_dir", metavar="RUN", help="training run directory")
    p.add_argument("--last", type=int, default=5, help="how many of the newest checkpoints (default 5)")
    p.add_argument("--output", "-o", required=True, help="new model directory")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.set_defaults(run=cmd_average)

    p = commands.add_parser("export", help="copy a model without its training state, optionally as fp16")
    p.add_argument("model", help="model directory or training run")
    p.add_argument("--output", "-o", required=True, help="new model directory")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.set_defaults(run=cmd_export)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from zhen.errors import ZhenError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = lambda message, *a, **k: print(f"zhen: warning: {message}", file=sys.stderr)
            return args.run(args)
    except (ZhenError, OSError) as error:
        print(f"zhen: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("zhen: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
