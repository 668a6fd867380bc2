"""bench/bench_train.py: its FLOP and parameter formulas, and a tiny CPU run of the script itself."""

import json
from dataclasses import replace

import pytest
from bench_scripts import load_bench_script


@pytest.fixture(scope="module")
def bench():
    yield from load_bench_script("bench_train")


def test_flops_reproduce_the_issues_mfu_figures(bench):
    # The issue's orientation numbers on an H100 (989 TFLOP/s): HF Marian + compile, 512x64,
    # base 1.13M tokens/s = 21% MFU, big 564k tokens/s = 36% MFU.
    for name, tokens_per_s, mfu in (("base", 1.13e6, 0.21), ("big", 564e3, 0.36)):
        flops = bench.model_flops(bench.CONFIGS[name], 512, 64, 64)["total"]
        assert flops / (512 * 128) * tokens_per_s / 989e12 == pytest.approx(mfu, abs=0.005)


def test_flops_count_source_and_target_sides_separately(bench):
    shape = bench.CONFIGS["base"]
    longer_target = bench.model_flops(shape, 8, 16, 32)["matmul"] - bench.model_flops(shape, 8, 16, 16)["matmul"]
    n_src, n_tgt = bench.matmul_weights_per_token(shape)
    assert longer_target == 6 * n_tgt * 8 * 16
    # 6 + 6 layers: a target token's extra decoder self-attention (4D²) and cross W_Q W_O (2D²) weigh what a
    # source token's encoder attention (4D²) and cross W_K W_V (2D²) do; the output projection is the difference.
    assert n_tgt - n_src == shape.d_model * shape.tgt_vocab


@pytest.mark.parametrize("system", ["zhen", "torch", "hf"])
def test_parameter_formulas_match_the_built_models(bench, system):
    if system == "hf":
        pytest.importorskip("transformers")
    import torch

    shape = replace(bench.SMOKE, d_model=32, d_ff=48, n_encoder_layers=2, n_decoder_layers=1, src_vocab=300,
                    tgt_vocab=300, max_positions=32)
    opts = bench.Options(torch.device("cpu"), compile=False)
    runner = bench.build_runner(system, shape, bench.synthetic_batch(shape, 2, 5, 4), opts)
    assert bench.counted_params(runner.model) == bench.analytic_params(shape, system)


def test_smoke_run_writes_a_report(bench, tmp_path):
    out = tmp_path / "train.md"
    assert bench.main(["--smoke", "--models", "zhen,zhen-step,torch", "--shapes", "2x6", "--steps", "1",
                       "--out", str(out)]) == 0
    rows = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))["results"]
    assert [r["status"] for r in rows] == ["ok"] * 3
    assert all(r["tokens_per_s"] > 0 and r["params"] == r["params_analytic"] for r in rows)
    assert next(r for r in rows if r["system"] == "torch")["ratio_to_best_anchor"] == pytest.approx(1.0)
    assert "| zhen | eager | smoke | 2x6 |" in out.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def cpu_bench():
    yield from load_bench_script("bench_train_cpu")


def test_cpu_smoke_run_reports_ratios_and_the_share_of_the_matmul_rate(cpu_bench, tmp_path):
    out = tmp_path / "train_cpu.md"
    assert cpu_bench.main(["--smoke", "--plan", "small:2x6x5", "--models", "zhen,torch", "--precisions", "fp32,bf16",
                           "--modes", "eager", "--rounds", "2", "--steps", "1", "--warmup", "1",
                           "--ablation-rounds", "0", "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    rows = report["results"]
    assert sorted((r["system"], r["precision"]) for r in rows) == [
        ("torch", "bf16"), ("torch", "fp32"), ("zhen", "bf16"), ("zhen", "fp32")]  # the best of 2 rounds each
    assert all(r["status"] == "ok" and 0 < r["share_of_matmul_rate"] < 1 for r in rows)
    assert all(r["ratio_to_best_anchor"] == pytest.approx(1.0) for r in rows if r["system"] == "torch")
    assert report["meta"]["matmul_gflops"]["bf16"] > 0
    assert "| smoke | 2x6x5 | bf16 | zhen | eager |" in out.read_text(encoding="utf-8")


def test_ablation_switches_each_idea_off(cpu_bench):
    import torch

    import zhen.dropout
    import zhen.trainer
    from zhen.attention import MultiHeadAttention
    from zhen.loss import label_smoothed_cross_entropy, reference_cross_entropy

    bt = cpu_bench.bt
    config = bt.zhen_config(bt.SMOKE, torch.device("cpu"), False, "bf16")
    trainer = zhen.trainer.Trainer(zhen.trainer.Transformer(config.model), config, torch.device("cpu"),
                                   zhen.trainer.Processes())
    fused, project, drop = trainer.optimizer, MultiHeadAttention.project, zhen.dropout.dropout
    with cpu_bench.without("chunked loss", trainer):
        assert zhen.trainer.label_smoothed_cross_entropy is reference_cross_entropy
    with cpu_bench.without("cheap dropout masks", trainer):
        assert zhen.dropout.dropout is not drop
    with cpu_bench.without("fused AdamW", trainer):
        assert trainer.optimizer is not fused and not trainer.optimizer.defaults["fused"]
    with cpu_bench.without("one Q/K/V product", trainer):
        assert MultiHeadAttention.project is not project
    assert (zhen.trainer.label_smoothed_cross_entropy, trainer.optimizer, MultiHeadAttention.project,
            zhen.dropout.dropout) == (label_smoothed_cross_entropy, fused, project, drop)
    assert fused.defaults["fused"]
