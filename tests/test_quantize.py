"""zhen.quantize: int8 linear layers for CPU translation — close to fp32, on a copy that shares the weights,
covering the stacked W_Q/W_K/W_V products, with a plain-PyTorch fallback; `--precision int8` end to end."""

from __future__ import annotations

import warnings

import pytest
import torch

from zhen import device as devices
from zhen import quantize as q
from zhen.config import ModelConfig
from zhen.linear import Linear
from zhen.model import Transformer

CONFIG = ModelConfig(src_vocab_size=300, tgt_vocab_size=300, d_model=64, n_heads=4, d_ff=128, n_encoder_layers=2,
                     n_decoder_layers=2, dropout=0.0, max_positions=64)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(CONFIG).eval()


def relative_error(y: torch.Tensor, reference: torch.Tensor) -> float:
    return float((y - reference).norm() / reference.norm())


@pytest.mark.parametrize("kernel", ["fbgemm", "reference"])
@pytest.mark.parametrize("rows", [1, 5, 160])
def test_int8_products_are_close_to_fp32(kernel, rows):
    if kernel == "fbgemm" and not q.fbgemm_available():
        pytest.skip("no quantized engine in this PyTorch build")
    torch.manual_seed(rows)
    weight, bias, x = torch.randn(96, 64) / 8, torch.randn(96), torch.randn(2, rows, 64)
    int8 = q.Int8Weight(weight, bias, kernel)
    assert int8.kernel == kernel
    y = int8(x)  # (2, R, 96)
    assert y.shape == (2, rows, 96)
    assert relative_error(y, torch.nn.functional.linear(x, weight, bias)) < 0.02


def test_the_weight_round_trips_per_output_feature():
    weight = torch.randn(16, 32) * torch.logspace(-3, 1, 16)[:, None]  # rows of very different sizes
    q_w, scale = q.quantize_weight(weight)
    assert q_w.dtype == torch.int8 and int(q_w.abs().max()) == q.QMAX
    assert torch.all((q_w.float() * scale[:, None] - weight).abs() <= scale[:, None] / 2 + 1e-7)


def test_this_cpu_needs_no_reduced_range_or_says_so():
    if not q.fbgemm_available():
        pytest.skip("no quantized engine in this PyTorch build")
    assert isinstance(q.saturates(), bool)  # answered by a product, not by the CPU's name


def test_quantize_copies_the_model_sharing_its_weights(model):
    int8 = q.quantize(model)
    linears = [m for m in int8.modules() if isinstance(m, Linear)]
    assert linears and all(type(m) is q.Int8Linear for m in linears)
    assert all(type(m) is Linear for m in model.modules() if isinstance(m, Linear))  # the original is untouched
    assert int8.output.weight is model.output.weight is model.tgt_embed.tokens.weight  # still tied, not copied
    assert {p.data_ptr() for p in int8.parameters()} == {p.data_ptr() for p in model.parameters()}


def test_int8_model_is_close_to_fp32_and_autograd_never_sees_int8(model):
    int8 = q.quantize(model)
    torch.manual_seed(1)
    src, tgt = torch.randint(4, 300, (3, 9)), torch.randint(4, 300, (3, 7))
    with torch.inference_mode():
        reference = model(src, tgt).log_softmax(-1)
        quantized = int8(src, tgt).log_softmax(-1)
    assert 0 < float((quantized - reference).abs().max()) < 0.2
    assert torch.equal(int8(src, tgt), model(src, tgt))  # with autograd: fp32, exactly


def test_stacked_projections_run_in_int8_too(model):
    int8 = q.quantize(model)
    with torch.inference_mode():
        int8(torch.randint(4, 300, (2, 5)), torch.randint(4, 300, (2, 4)))
    attention = int8.decoder_layers[0].self_attn
    stacked = [value[1][2] for value in attention._stacked_cache.values()]  # (weight, bias, inference copy)
    assert stacked and all(isinstance(copy, q.Int8Weight) for copy in stacked)


def test_fallback_without_the_quantized_engine(model, monkeypatch):
    monkeypatch.setattr(q, "fbgemm_available", lambda: False)
    int8 = q.quantize(model)
    src, tgt = torch.randint(4, 300, (2, 6)), torch.randint(4, 300, (2, 5))
    with torch.inference_mode():
        out = int8(src, tgt)
        assert float((out - model(src, tgt)).abs().max()) < 0.2
    assert all(w.kernel == "reference" for m in int8.modules() if type(m) is q.Int8Linear
               for _, (_, w) in m.derived.items())


def test_int8_precision_is_chosen_in_device_for_the_cpu_only():
    assert devices.compute_dtype(torch.device("cpu"), "int8") == torch.int8
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert devices.compute_dtype(torch.device("cuda"), "int8") == torch.float32
    assert "int8 is for the CPU" in str(caught[0].message)


def test_translate_with_int8_agrees_with_fp32(model, tmp_path):
    from zhen.translator import Translator

    fp32 = Translator.load(precision="fp32", beam=1)
    int8 = Translator(fp32.model, fp32.tokenizer, fp32.config, precision="int8")
    assert any(type(m) is q.Int8Linear for m in int8.model.modules())
    assert not any(type(m) is q.Int8Linear for m in fp32.model.modules())  # the model passed in stays fp32
    sentences = ["我爱你", "今天天气很好。", "你叫什么名字？", "我们明天去北京。", "这本书很有意思。"]
    same = sum(a == b for a, b in zip(fp32.translate(sentences), int8.translate(sentences), strict=True))
    assert same >= 4
    assert int8.translate(["我爱你"]) == ["I love you."]


def test_cli_precision_int8(capsys):
    from zhen.cli import main

    assert main(["translate", "--precision", "int8", "--beam", "1", "我爱你"]) == 0
    assert capsys.readouterr().out == "I love you.\n"
