"""The `zhen` command: train | translate | evaluate | explain | tokenize | data-check | average | export.

Every command turns the errors a user can cause (a bad config, a missing file, a corrupt model)
into one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from zhen import __version__, textio

Subcommands = argparse._SubParsersAction  # what add_subparsers returns


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _model_args(parser: argparse.ArgumentParser) -> None:
    from zhen.config import DECODE_PRECISIONS

    parser.add_argument("--model", "-m", help="model directory or training run (default: the shipped model)")
    parser.add_argument("--beam", type=positive_int, help="beam size (1: greedy); default: the model's decode.beam")
    parser.add_argument("--batch-tokens", type=positive_int, help="source tokens per batch")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    parser.add_argument("--precision", choices=DECODE_PRECISIONS,
                        help="default: the model's decode.precision (auto: bf16 autocast on CUDA, fp32 elsewhere; "
                        "int8: int8 linear layers on the CPU)")


def _load_translator(args: argparse.Namespace, nbest: int | None = None):
    from zhen.errors import ZhenError
    from zhen.translator import Translator

    decode = {"beam": args.beam, "batch_tokens": args.batch_tokens}
    decode = {k: v for k, v in decode.items() if v is not None}
    if nbest is not None:
        if args.beam is not None and nbest > args.beam:
            raise ZhenError(f"--nbest {nbest} needs a beam at least as wide: --beam {args.beam} keeps only "
                            f"{args.beam} hypotheses (raise --beam or lower --nbest)")
        decode["nbest"] = nbest
        decode.setdefault("beam", nbest)
    return Translator.load(args.model, device=args.device, precision=args.precision, **decode)


def cmd_train(args: argparse.Namespace) -> int:
    from zhen.config import load_config
    from zhen.train import train

    config = load_config(args.config, args.set)
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    train(config, out, resume=args.resume, init=args.init)
    return 0


def cmd_translate(args: argparse.Namespace) -> int:
    nbest = args.nbest if args.nbest and args.nbest > 1 else None
    with _input_batches(args) as (batches, interactive, total):  # the input is checked before anything else
        translator = _load_translator(args, nbest)
        with _output(args.output) as output, textio.progress(total, "translate") as bar:
            index = 0
            for batch in batches:
                if nbest:
                    for hyps in translator.translate_nbest(batch, nbest):
                        output.write("".join(f"{index}\t{hyp.score:.4f}\t{hyp.text}\n" for hyp in hyps))
                        index += 1
                else:
                    output.write("".join(text + "\n" for text in translator.translate(batch)))
                if interactive:
                    output.flush()  # someone may be waiting for this answer before sending the next line
                bar.update(len(batch))
    return 0


@contextlib.contextmanager
def _input_batches(args: argparse.Namespace) -> Iterator[tuple[Iterator[list[str]], bool, int | None]]:
    """The lines to translate in batches, whether they arrive over time, and how many there are (if known).
    A file is checked to exist, and not to be the output, before anything is written."""
    if args.text:
        yield iter([args.text]), False, len(args.text)
    elif args.input and args.input != "-":
        path = Path(args.input)
        textio.check_input(path)
        if args.output:
            textio.check_not_same(path, Path(args.output))
        total = textio.count_lines(path) if sys.stderr.isatty() else None
        with path.open("rb") as handle:
            yield textio.file_batches(handle, str(path)), False, total
    else:
        batches, interactive = textio.stdin_batches()
        yield batches, interactive, None


@contextlib.contextmanager
def _output(path: str | None) -> Iterator[IO[str]]:
    """Standard output, or a file that appears whole at the end (and not at all after an error)."""
    if not path:
        yield sys.stdout
        return
    with textio.atomic_output(Path(path)) as handle:
        yield handle


def cmd_evaluate(args: argparse.Namespace) -> int:
    from zhen.evaluate import score

    sources, references, where = _test_set(args)
    for given in filter(None, (args.src, args.ref, args.corpus)):
        if args.output:
            textio.check_not_same(Path(given), Path(args.output))
    translator = _load_translator(args)
    with textio.progress(len(sources), "evaluate") as bar:
        hypotheses = translator.translate(sources, progress=lambda done, total: bar.update(done - bar.n))
    if args.output:
        textio.write_atomic(Path(args.output), "".join(h + "\n" for h in hypotheses))
    scores = score(hypotheses, references)
    if args.json:
        print(json.dumps({"model": str(args.model or "shipped"), **where, "beam": translator.config.decode.beam,
                          **scores.to_dict()}, ensure_ascii=False))
    else:
        print(scores)
    return 0


def _test_set(args: argparse.Namespace) -> tuple[list[str], list[str], dict[str, str]]:
    """Sources, references and where they came from, from --corpus or --src/--ref; never empty."""
    from zhen.errors import ZhenError

    if args.corpus:
        if args.src or args.ref:
            raise ZhenError("give either --corpus or --src and --ref, not both")
        from zhen.config import CorpusConfig
        from zhen.data import read_corpus

        pairs = read_corpus(CorpusConfig(path=args.corpus))
        sources, references, where = [zh for zh, _ in pairs], [en for _, en in pairs], {"corpus": args.corpus}
    elif args.src and args.ref:
        sources, references = (_read_all(Path(name)) for name in (args.src, args.ref))
        if len(sources) != len(references):
            raise ZhenError(f"{args.src} has {len(sources)} lines but {args.ref} has {len(references)}")
        where = {"src": args.src, "ref": args.ref}
    else:
        raise ZhenError("give --src FILE --ref FILE, or --corpus PATH (a .tsv, .jsonl, PREFIX of .zh/.en, or hsk)")
    if not sources:
        raise ZhenError(f"{where.get('corpus') or where['src']}: no sentences to evaluate")
    return sources, references, where


def _read_all(path: Path) -> list[str]:
    textio.check_input(path)
    with path.open("rb") as handle:
        return [line for batch in textio.file_batches(handle, str(path)) for line in batch]


def cmd_explain(args: argparse.Namespace) -> int:
    from zhen.checkpoint import DEFAULT_MODEL, load_model_dir
    from zhen.explain import check_choice, explain_sentence
    from zhen.explain.render import View, render_sections, render_text
    from zhen.text import Normalizer

    loaded = load_model_dir(args.model or DEFAULT_MODEL)
    check_choice(loaded.model.config, args.layer, args.head, args.values)
    trace = explain_sentence(loaded.model, loaded.tokenizer, args.text,
                             normalize=Normalizer(loaded.config.text).zh, decode=loaded.config.decode)
    view = View(layer=args.layer, head=args.head, values=args.values, model=str(loaded.directory))
    sections = render_sections(trace, view)
    print(render_text(sections))
    if args.out or args.html:
        _write_explain_files(trace, sections, Path(args.out or "explain-out"), args.layer, args.html)
    return 0


def _write_explain_files(trace, sections, out: Path, layer: int | None, html: bool) -> None:
    """The heatmaps (and the page) in `out`; every path written is printed, so nothing lands unannounced."""
    from zhen.explain.plot import write_heatmaps
    from zhen.explain.render import render_html

    pictures = write_heatmaps(trace, out, layer=layer)
    written = [path for paths in pictures.values() for path in paths]
    if html:
        page = out / "walkthrough.html"
        textio.write_atomic(page, render_html(trace, sections, pictures))
        written.append(page)
    where = out.resolve()
    print(f"\nwrote {len(written)} files to {where}" + ("" if out.is_absolute() else f" (--out {out})"))
    print("\n".join(f"  {path}" for path in written))


def cmd_tokenize(args: argparse.Namespace) -> int:
    from zhen.checkpoint import CONFIG_FILE, DEFAULT_MODEL, read_config, resolve_model_dir
    from zhen.config import TextConfig
    from zhen.text import Normalizer
    from zhen.tokenizer import JOINT_FILE, SRC_FILE, Tokenizer, show_pieces

    directory = Path(args.model or DEFAULT_MODEL)
    if not any((directory / name).is_file() for name in (SRC_FILE, JOINT_FILE)):  # a run: its best checkpoint
        directory = resolve_model_dir(directory)
    tokenizer = Tokenizer.load(directory)
    texts = args.text
    if not args.raw:  # what the model sees: the text normalised as in its training (a bare tokenizer: defaults)
        has_config = (directory / CONFIG_FILE).is_file()
        normalizer = Normalizer(read_config(directory).text if has_config else TextConfig())
        texts = normalizer.zh_many(texts) if args.side == "src" else normalizer.en_many(texts)
    for text in texts:
        print(show_pieces(tokenizer, text, args.side))
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from zhen.checkpoint import DEFAULT_MODEL
    from zhen.config import load_config
    from zhen.data import check_corpora
    from zhen.text import Normalizer
    from zhen.tokenizer import Tokenizer

    config = load_config(args.config, args.set)
    tokenizer = None if args.tokenizer == "none" else Tokenizer.load(args.tokenizer or DEFAULT_MODEL)
    stats = check_corpora(config.data.train, Normalizer(config.text), tokenizer, config.data)
    print(stats.report(examples=args.examples))
    print("kept per corpus (a pair also in an earlier corpus counts there):")
    for corpus, size in zip(config.data.train, stats.sizes, strict=True):
        print(f"  {size:>10,}  {corpus.path}" + (f"  (weight {corpus.weight:g})" if corpus.weight != 1 else ""))
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

    if args.format != "zhen" or args.quantization or args.check:  # another engine's format: zhen.interop
        from zhen.interop.command import run_export

        return run_export(args)
    out = export_model(resolve_model_dir(args.model), Path(args.output), dtype=_dtype(args.dtype))
    print(f"exported {resolve_model_dir(args.model)} to {out}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from zhen.interop.command import run_import

    return run_import(args)


def cmd_serve(args: argparse.Namespace) -> int:
    from zhen.serve.command import run

    return run(args)


def _dtype(name: str):
    import torch

    return {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zhen", description="Chinese→English translation with the Transformer.")
    parser.add_argument("--version", action="version", version=f"zhen {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_train_parser, _translate_parser, _evaluate_parser, _explain_parser, _tokenize_parser,
                _data_check_parser, _average_parser, _export_parsers, _serve_parser):
        add(commands)
    return parser


def _train_parser(commands: Subcommands) -> None:
    """zhen train CONFIG."""
    p = commands.add_parser("train", help="train a model from a TOML config")
    p.add_argument("config", help="TOML config, e.g. configs/small.toml")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (repeatable), e.g. --set train.max_steps=1000")
    p.add_argument("--out", "-o", help="output directory (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--init", metavar="MODEL", help="start a new run from this model's weights and tokenizer "
                   "(fine-tuning; a model directory or a run); the optimiser and schedule start afresh")
    p.set_defaults(run=cmd_train)


def _translate_parser(commands: Subcommands) -> None:
    """zhen translate."""
    p = commands.add_parser("translate", help="translate sentences, a file, or standard input")
    p.add_argument("text", nargs="*", help="sentences to translate (otherwise -i FILE or standard input)")
    p.add_argument("--input", "-i", help="input file, one sentence per line ('-': standard input)")
    p.add_argument("--output", "-o", help="output file (default: standard output)")
    p.add_argument("--nbest", type=positive_int, help="print the N best translations: index, score, text")
    _model_args(p)
    p.set_defaults(run=cmd_translate)


def _evaluate_parser(commands: Subcommands) -> None:
    """zhen evaluate."""
    p = commands.add_parser("evaluate", help="translate a test set and print sacreBLEU BLEU and chrF")
    p.add_argument("--src", help="Chinese source file, one sentence per line")
    p.add_argument("--ref", help="English reference file, line-aligned with --src")
    p.add_argument("--corpus", help="instead of --src/--ref: a corpus as in a config (.tsv, .jsonl, PREFIX, hsk)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--output", "-o", help="also write the translations to this file")
    _model_args(p)
    p.set_defaults(run=cmd_evaluate)


def _explain_parser(commands: Subcommands) -> None:
    """zhen explain."""
    p = commands.add_parser("explain", help="walk a sentence through the model step by step, as in the note")
    p.add_argument("text", nargs="?", default="我爱你", help="Chinese sentence (default: 我爱你)")
    p.add_argument("--model", "-m", help="model directory (default: the shipped model)")
    p.add_argument("--layer", type=int, help="show only this layer (1-based; default: all, pictures for the last)")
    p.add_argument("--head", type=int, default=1, help="head whose score table is printed (1-based; default 1)")
    p.add_argument("--out", help="directory for the attention heatmaps (PNG; with --html alone: ./explain-out)")
    p.add_argument("--html", action="store_true", help="also write one self-contained walkthrough.html in --out")
    p.add_argument("--values", type=int, default=6, help="how many numbers of each vector to print (default 6)")
    p.set_defaults(run=cmd_explain)


def _tokenize_parser(commands: Subcommands) -> None:
    """zhen tokenize."""
    p = commands.add_parser("tokenize", help="show the SentencePiece pieces and ids of a sentence")
    p.add_argument("text", nargs="+", help="sentence(s) to split")
    p.add_argument("--model", "-m", help="model directory (default: the shipped model)")
    p.add_argument("--side", choices=("src", "tgt"), default="src", help="source (Chinese, default) or target model")
    p.add_argument("--raw", action="store_true", help="skip the model's text normalisation")
    p.set_defaults(run=cmd_tokenize)


def _data_check_parser(commands: Subcommands) -> None:
    """zhen data-check CONFIG."""
    p = commands.add_parser("data-check", help="what each cleaning rule removes from a config's training corpora")
    p.add_argument("config", help="TOML config, e.g. configs/small.toml")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value")
    p.add_argument("--examples", type=int, default=5, help="dropped pairs shown per rule (default 5)")
    p.add_argument("--tokenizer", help="model directory whose tokenizer counts tokens for the length rules "
                   "(default: the shipped model's; 'none': skip those rules)")
    p.set_defaults(run=cmd_data_check)


def _average_parser(commands: Subcommands) -> None:
    """zhen average RUN."""
    p = commands.add_parser("average", help="average the last K checkpoints of a training run into a model")
    p.add_argument("run_dir", metavar="RUN", help="training run directory")
    p.add_argument("--last", type=positive_int, default=5, help="how many of the newest checkpoints (default 5)")
    p.add_argument("--output", "-o", required=True, help="new model directory")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.set_defaults(run=cmd_average)


def _export_parsers(commands: Subcommands) -> None:
    """zhen export MODEL and zhen import-marian DIR."""
    p = commands.add_parser("export", help="copy a model without its training state, or for CTranslate2 or Marian")
    p.add_argument("model", help="model directory or training run")
    p.add_argument("--output", "-o", required=True, help="new model directory")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    from zhen.interop.command import add_interop_commands  # standard library only
    add_interop_commands(p, commands, export=cmd_export, import_marian=cmd_import)


def _serve_parser(commands: Subcommands) -> None:
    """zhen serve."""
    from zhen.serve.command import add_arguments  # standard library only: the server's own imports wait for cmd_serve

    add_arguments(commands.add_parser("serve", help="translation server and page")).set_defaults(run=cmd_serve)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from zhen.errors import ZhenError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = lambda message, *a, **k: print(f"zhen: warning: {message}", file=sys.stderr)
            return args.run(args)
    except BrokenPipeError:  # the reader left (`zhen … | head`): not an error; keep Python from complaining at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ZhenError, OSError) as error:
        print(f"zhen: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("zhen: interrupted", file=sys.stderr)
        return 130
