"""Where a decoding step's time goes at batch 1 (greedy, one sentence): products, other operators, Python.

    python bench/profile_step.py                       # small model, fp32 and int8, 1 and 2 threads
    python bench/profile_step.py --configs small base --threads 1

For each setting it translates `--sentences` random sources (20 tokens, EOS included) with exactly 24 output
tokens forced, as bench_translate.py does, and reports per decoder step:

- wall: the best pass's time / steps (no profiler);
- ops: operators per step, and their self CPU time under torch.profiler, split into matrix products (oneDNN,
  BLAS, fbgemm's int8 kernel), attention (PyTorch's fused kernel) and everything else (LayerNorm, adds,
  the cache's copies, the search's argmax and indexing, …);
- the floor: the same model with d_model 16 and d_ff 32 (the same operators, almost no arithmetic), whose
  step time is what the operators cost by themselves, whatever their size.

The encoder runs once per sentence and is included (divided over the steps), as in a real translation.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from zhen.config import DecodeConfig, load_config
from zhen.model import Transformer
from zhen.quantize import quantize
from zhen.search import search
from zhen.special import EOS_ID

REPO = Path(__file__).resolve().parent.parent
PRODUCTS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "mkldnn::_linear_pointwise",
            "quantized::linear_dynamic"}
ATTENTION = {"aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math"}
TOKENS = 24


def model_for(config: str, precision: str, tiny: bool = False) -> Transformer:
    c = load_config(REPO / "configs" / f"{config}.toml").model
    if tiny:
        c = dataclasses.replace(c, d_model=16, d_ff=32)
    c = dataclasses.replace(c, src_vocab_size=8000, tgt_vocab_size=8000 if not tiny else 64, dropout=0.0)
    torch.manual_seed(0)
    model = Transformer(c).eval()
    return quantize(model) if precision == "int8" else model


def sources(n: int, vocab: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.cat([torch.randint(EOS_ID + 1, vocab, (1, 19), generator=g), torch.tensor([[EOS_ID]])], 1)
            for _ in range(n)]


def one_pass(model: Transformer, srcs: list[torch.Tensor]) -> None:
    config = DecodeConfig(beam=1, max_len_a=0.0, max_len_b=TOKENS + 1)
    for src in srcs:
        search(model, src, config, min_len=TOKENS + 1)


def wall_per_step(model: Transformer, srcs: list[torch.Tensor], passes: int) -> float:
    one_pass(model, srcs)  # warm-up: packed and int8 weights are made on first use
    best = float("inf")
    for _ in range(passes):
        start = time.perf_counter()
        one_pass(model, srcs)
        best = min(best, time.perf_counter() - start)
    return best / (len(srcs) * (TOKENS + 1))


def op_profile(model: Transformer, srcs: list[torch.Tensor]) -> dict[str, float]:
    """Per step: operator count and self CPU time (µs) by kind, under torch.profiler."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        one_pass(model, srcs)
    steps = len(srcs) * (TOKENS + 1)
    totals = {"products": 0.0, "attention": 0.0, "other": 0.0}
    for event in prof.key_averages():
        kind = "products" if event.key in PRODUCTS else "attention" if event.key in ATTENTION else "other"
        totals[kind] += event.self_cpu_time_total
    ops = sum(1 for e in prof.events() if e.cpu_parent is None)  # top-level operators: what Python called
    return {"ops": ops / steps, **{k: v / steps for k, v in totals.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["small"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "int8"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--sentences", type=int, default=8)
    parser.add_argument("--passes", type=int, default=5)
    args = parser.parse_args()
    print("| model | precision | threads | wall per step | top-level ops per step | products | attention | "
          "other ops | wall − ops (Python, dispatch) | floor: d_model 16 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for config in args.configs:
        for precision in args.precisions:
            model, tiny = model_for(config, precision), model_for(config, precision, tiny=True)
            srcs, tiny_srcs = sources(args.sentences, 8000), sources(args.sentences, 64)
            for threads in args.threads:
                torch.set_num_threads(threads)
                with torch.inference_mode():
                    wall = wall_per_step(model, srcs, args.passes)
                    floor = wall_per_step(tiny, tiny_srcs, args.passes)
                    ops = op_profile(model, srcs)
                ms = {k: v / 1e3 for k, v in ops.items() if k != "ops"}  # µs → ms
                print(f"| {config} | {precision} | {threads} | {wall * 1e3:.2f} ms | {ops['ops']:.0f} | "
                      f"{ms['products']:.2f} ms | {ms['attention']:.2f} ms | {ms['other']:.2f} ms | "
                      f"{max(0.0, wall * 1e3 - sum(ms.values())):.2f} ms | {floor * 1e3:.2f} ms |", flush=True)


if __name__ == "__main__":
    main()
