"""Training throughput on the CPU: zhen against `torch.nn.Transformer` and Hugging Face `MarianMTModel`.

    python bench/bench_train_cpu.py                       # small at 3k and 6k tokens, base at one shape
    python bench/bench_train_cpu.py --rounds 3 --precisions bf16 --modes eager
    python bench/bench_train_cpu.py --smoke               # tiny shapes: checks the script

The systems and the training step are those of `bench_train.py` (its docstring says exactly what a step
is): zhen's real step (`Trainer.update`), zhen's model in the bare loop (`zhen-step`), and the two anchors
in the same bare loop with PyTorch's cross-entropy; every optimiser is PyTorch's fused AdamW. Here:

- precision: fp32, or bf16 autocast (weights' master copy in fp32) — on the CPU too;
- rounds: every (system, mode, precision, shape) runs once per round, systems alternating, and each
  keeps its best round (this CPU's speed drifts by several per cent over minutes);
- the matrix-product rate of this CPU, measured in the same run at the start of every round (2048³, fp32 and
  bf16, best of 10; the best round counts, as for the systems):
  `of matmul` = model FLOPs per second (the formula of bench_train.py) ÷ that rate, in the same precision;
- malloc: the run first calls `zhen.allocator.keep_freed_memory` (as `zhen train` does), so every system's
  freed tensors are reused without page faults; ZHEN_KEEP_FREED_MEMORY=0 runs all of them on glibc's defaults;
- `ratio` = tokens/s ÷ the faster anchor's at the same config, shape and precision (either mode).

Shapes are B×S×T of Tatoeba-length sentences (source 16, target 18 tokens with BOS/EOS) at the token
budgets `zhen train` uses: 88 sentences ≈ 3,000 tokens, 176 ≈ 6,000.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_train as bt

from zhen import allocator

DEFAULT_PLAN = "small:88x16x18,small:176x16x18,base:88x16x18"
MALLOC_KEPT = "malloc keeps freed memory (zhen.allocator, as `zhen train` sets it) for every system"
MALLOC_DEFAULT = "glibc's malloc defaults (ZHEN_KEEP_FREED_MEMORY=0) for every system"
IDEAS = ("chunked loss", "cheap dropout masks", "fused AdamW", "one Q/K/V product")


# ==================================================================== ablation: what each idea of #17 pays


def without(idea: str, trainer: Any) -> contextlib.ExitStack:
    """A context in which zhen's step runs without `idea` (PyTorch's plain way instead)."""
    import torch.nn.functional as F

    import zhen.dropout
    import zhen.trainer
    from zhen.attention import MultiHeadAttention
    from zhen.loss import reference_cross_entropy

    stack = contextlib.ExitStack()

    def patch(owner: Any, name: str, value: Any) -> None:
        stack.enter_context(mock.patch.object(owner, name, value))

    def separate(self: MultiHeadAttention, x: torch.Tensor, *projections: Any) -> tuple[torch.Tensor, ...]:
        return tuple(self.split_heads(projection(x)) for projection in projections)  # a product each

    if idea == "chunked loss":
        patch(zhen.trainer, "label_smoothed_cross_entropy", reference_cross_entropy)
    elif idea == "cheap dropout masks":
        patch(zhen.dropout, "dropout", lambda x, p, training=True: F.dropout(x, p, training))
    elif idea == "fused AdamW":
        group = trainer.optimizer.param_groups[0]
        patch(trainer, "optimizer", torch.optim.AdamW(trainer.model.parameters(), lr=0.0, betas=group["betas"],
                                                      eps=group["eps"], weight_decay=0.0, foreach=True))
    elif idea == "one Q/K/V product":
        patch(MultiHeadAttention, "project", separate)
    elif idea != "all":
        raise ValueError(idea)
    return stack


def ablation(args: argparse.Namespace, rounds: int) -> list[dict[str, Any]]:
    """zhen's real step (Trainer.update, bf16, small 88x16x18) with all ideas, and without each one in turn."""
    from zhen.model import Transformer
    from zhen.train import Processes, Trainer

    shape, dims = bt.CONFIGS["small"], (88, 16, 18)
    config = bt.zhen_config(shape, torch.device("cpu"), False, "bf16")
    batch = bt.synthetic_batch(shape, *dims)
    tokens = dims[0] * (dims[1] + dims[2])
    best: dict[str, float] = {}
    for _ in range(rounds):
        for idea in ("all", *IDEAS):
            torch.manual_seed(0)
            trainer = Trainer(Transformer(config.model), config, torch.device("cpu"), Processes())
            with without(idea, trainer):
                for _ in range(args.warmup):
                    trainer.update([batch])
                start = time.perf_counter()
                for _ in range(args.steps):
                    trainer.update([batch])
                rate = tokens * args.steps / (time.perf_counter() - start)
            best[idea] = max(best.get(idea, 0.0), rate)
            print(f"ablation: without {idea}: {rate:,.0f} tokens/s", flush=True)
    return [{"without": idea, "tokens_per_s": rate, "vs_all": rate / best["all"]} for idea, rate in best.items()]


def product_rate(rows: int, inner: int, cols: int, dtype: torch.dtype, repeats: int) -> float:
    """FLOP/s of a (rows × inner)·(inner × cols) product in `dtype` with the current threads (best of `repeats`)."""
    a, b = torch.randn(rows, inner, dtype=dtype), torch.randn(inner, cols, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * rows * inner * cols / best


def matmul_rate(dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of n³ products in `dtype` on this CPU: the rate the step's model FLOPs are compared with."""
    return product_rate(n, n, n, dtype, repeats)


def measure_rates(rates: dict[str, list[float]]) -> None:
    """Append this moment's fp32 and bf16 2048³ rates (GFLOP/s). Measured at the start of every round, like a
    system: on this shared VM one measurement varied from 262 to 429 GFLOP/s (bf16) within minutes, so the
    rate the shares are taken of is the best of the rounds, as each system's speed is."""
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        rates[precision].append(matmul_rate(dtype) / 1e9)


def shape_rates(shape: bt.ModelShape, dims: tuple[int, int, int], dtype: torch.dtype) -> dict[str, float]:
    """GFLOP/s of the forward products one training step of `shape` at `dims` is made of (target side,
    N = B·T rows): what this CPU's kernels reach at the model's own sizes, next to the 2048³ rate."""
    n, d, f, v = dims[0] * dims[2], shape.d_model, shape.d_ff, shape.tgt_vocab
    products = {"N×D·D×D (W_Q, W_K, W_V, W_O)": (n, d, d), "N×D·D×F (W_1)": (n, d, f), "N×F·F×D (W_2)": (n, f, d),
                "N×D·D×V (output)": (n, d, v)}
    return {name: product_rate(*sizes, dtype, repeats=10) / 1e9 for name, sizes in products.items()}


def parse_plan(text: str, smoke: bool) -> list[tuple[bt.ModelShape, tuple[int, int, int]]]:
    plan = []
    for item in (i.strip() for i in text.split(",") if i.strip()):
        config, _, dims = item.partition(":")
        shape = bt.SMOKE if smoke else bt.CONFIGS[config]
        plan.append((shape, bt.parse_shape(dims)))
    return plan


def run_cell(system: str, mode: str, precision: str, shape: bt.ModelShape, dims: tuple[int, int, int],
             args: argparse.Namespace) -> dict[str, Any]:
    opts = bt.Options(torch.device("cpu"), mode == "compile", precision=precision)
    row = bt.run_one(system, mode, shape, dims, opts, args.warmup, args.steps, None)
    row["precision"] = precision
    return row


def keep_best(best: dict[tuple, dict[str, Any]], row: dict[str, Any]) -> None:
    key = (row["system"], row["mode"], row["precision"], row["config"], row["shape"])
    old = best.get(key)
    if old is None or (row["status"] == "ok" and (old["status"] != "ok" or row["tokens_per_s"] > old["tokens_per_s"])):
        best[key] = row


def add_ratios(rows: list[dict[str, Any]], rates: dict[str, float]) -> None:
    """ratio to the faster anchor (same config, shape, precision) and model FLOP/s ÷ the matmul rate."""
    anchor: dict[tuple, float] = {}
    for r in rows:
        if r["system"] in bt.ANCHORS and r["status"] == "ok":
            key = (r["config"], r["shape"], r["precision"])
            anchor[key] = max(anchor.get(key, 0.0), r["tokens_per_s"])
    for r in rows:
        if r["status"] != "ok":
            continue
        best = anchor.get((r["config"], r["shape"], r["precision"]))
        r["ratio_to_best_anchor"] = r["tokens_per_s"] / best if best else None
        r["share_of_matmul_rate"] = r["achieved_tflops"] * 1e12 / rates[r["precision"]]


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    rates = meta["matmul_gflops"]
    lines = ["# Training throughput on the CPU: zhen vs torch.nn.Transformer vs Hugging Face Marian", "",
             f"- {meta['date']}: `{meta['command']}`",
             f"- CPU: {meta['card']}, {meta['threads']} threads; torch {meta['torch']}, transformers "
             f"{meta['transformers']}, Python {meta['python']}, zhen {meta['zhen_commit']}"
             f"{' + uncommitted changes in src/' if meta.get('zhen_dirty') else ''}",
             f"- matrix products measured in this run (2048³, best of 10, at the start of every round; the best "
             f"round is the rate): fp32 {rates['fp32']:.0f} GFLOP/s, bf16 {rates['bf16']:.0f} GFLOP/s (rounds: "
             + "; ".join(f"{p} " + " / ".join(f"{r:.0f}" for r in meta["matmul_gflops_rounds"][p])
                         for p in ("fp32", "bf16")) + ")",
             f"- the same products at the sizes of one step of {meta['shape_gflops_at']} (GFLOP/s, fp32 / bf16): "
             + ", ".join(f"{name} {meta['shape_gflops']['fp32'][name]:.0f} / {meta['shape_gflops']['bf16'][name]:.0f}"
                         for name in meta["shape_gflops"]["fp32"]),
             f"- {meta.get('malloc', MALLOC_DEFAULT)}",
             f"- {meta['rounds']} rounds, systems alternating; each cell is its best round of {meta['steps']} "
             f"timed steps after {meta['warmup']} warm-up steps", "",
             "| config | shape | precision | system | mode | ms/step | tokens/s | ratio to best anchor "
             "| model GFLOP/s | of matmul rate | first step s |",
             "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    order = {s: i for i, s in enumerate(bt.SYSTEMS)}
    rows = sorted(rows, key=lambda r: (r["config"], r.get("batch", 0), r["precision"],
                                       order[r["system"]], r["mode"]))
    for r in rows:
        head = f"| {r['config']} | {r['shape']} | {r['precision']} | {r['system']} | {r['mode']} "
        if r["status"] != "ok":
            lines.append(head + f"| {r['status']} | | | | | |")
            continue
        ratio = r.get("ratio_to_best_anchor")
        lines.append(head + f"| {r['ms_per_step']:.0f} | {r['tokens_per_s']:,.0f} "
                     f"| {bt.fmt(ratio, '.2f')}{'×' if ratio else ''} | {r['achieved_tflops'] * 1e3:.0f} "
                     f"| {100 * r['share_of_matmul_rate']:.0f}% | {r['first_step_s']:.1f} |")
    if meta.get("ablation"):
        lines += ["", "What each idea pays: zhen's real step (Trainer.update), small 88x16x18, bf16, with every idea "
                  "and without one at a time (PyTorch's plain way instead), best of "
                  f"{meta['ablation_rounds']} alternating rounds:", "",
                  "| step | tokens/s | vs all ideas |", "|---|---:|---:|"]
        for a in meta["ablation"]:
            name = "all ideas" if a["without"] == "all" else f"without {a['without']}"
            lines.append(f"| {name} | {a['tokens_per_s']:,.0f} | {a['vs_all']:.2f}× |")
    lines += ["", "Model FLOPs as in `bench_train.py`:", "", "```", bt.FORMULA, "```", ""]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plan", default=DEFAULT_PLAN, help="CONFIG:BxSxT, comma-separated (configs: small, base, big)")
    p.add_argument("--models", default="zhen,zhen-step,torch,hf", help=f"of {', '.join(bt.SYSTEMS)}")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--modes", default="eager,compile", help="eager, compile (torch.compile, inductor's C++)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", default=str(bt.REPO / "bench" / "results" / "train_cpu.md"))
    p.add_argument("--smoke", action="store_true", help="the tiny model of bench_train.py at the given shapes")
    p.add_argument("--ablation-rounds", type=int, default=2,
                   help="rounds of the ablation (zhen's step without each idea); 0: none")
    p.add_argument("--note", default="")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = parse_plan(args.plan, args.smoke)
    cells = [(system, mode, precision, shape, dims)
             for shape, dims in plan for precision in args.precisions.split(",")
             for mode in args.modes.split(",") for system in args.models.split(",")]
    args.device = "cpu"
    kept = allocator.keep_freed_memory()  # for every system alike, before anything is allocated
    meta = bt.environment(torch.device("cpu"), args)
    meta["malloc"] = MALLOC_KEPT if kept else MALLOC_DEFAULT
    meta.update(rounds=args.rounds, steps=args.steps, warmup=args.warmup, ablation_rounds=args.ablation_rounds)
    rate_rounds: dict[str, list[float]] = {"fp32": [], "bf16": []}
    first_shape, first_dims = plan[0]
    meta["shape_gflops"] = {precision: shape_rates(first_shape, first_dims, dtype)
                            for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    meta["shape_gflops_at"] = f"{first_shape.name} {bt.shape_name(first_dims)}"
    print(f"matrix products at the model's sizes: {meta['shape_gflops']}", flush=True)
    best: dict[tuple, dict[str, Any]] = {}
    for round_ in range(1, args.rounds + 1):
        measure_rates(rate_rounds)
        print(f"round {round_}: 2048³ products, GFLOP/s: fp32 {rate_rounds['fp32'][-1]:.0f}, "
              f"bf16 {rate_rounds['bf16'][-1]:.0f}", flush=True)
        for system, mode, precision, shape, dims in cells:
            row = run_cell(system, mode, precision, shape, dims, args)
            keep_best(best, row)
            summary = (f"{row['ms_per_step']:.0f} ms/step, {row['tokens_per_s']:,.0f} tokens/s"
                       if row["status"] == "ok" else row["status"])
            print(f"round {round_}: {system} {mode} {precision} {shape.name} {bt.shape_name(dims)}: {summary}",
                  flush=True)
    rows = list(best.values())
    meta["matmul_gflops_rounds"] = rate_rounds
    meta["matmul_gflops"] = {precision: max(values) for precision, values in rate_rounds.items()}
    meta["ablation"] = ablation(args, args.ablation_rounds) if args.ablation_rounds and not args.smoke else []
    rates = {k: v * 1e9 for k, v in meta["matmul_gflops"].items()}
    add_ratios(rows, rates)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(meta, rows), encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2, default=str) + "\n",
                                        encoding="utf-8")
    print(markdown(meta, rows))
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
