"""Dropout with masks from 16-bit random slices (zhen.dropout): the probability, the scaling, the gradient,
the generator's seed, and eval mode."""

import pytest
import torch

from zhen.dropout import Dropout, dropout, random_int16


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_drops_a_fraction_p_and_scales_the_rest(p, dtype):
    torch.manual_seed(0)
    x = torch.ones(400, 1000, dtype=dtype)
    y = dropout(x, p)
    dropped = float((y == 0).float().mean())
    sigma = (p * (1 - p) / x.numel()) ** 0.5
    assert abs(dropped - p) < 5 * sigma + 1 / 65536
    kept = y[y != 0].float()
    assert torch.allclose(kept, torch.full_like(kept, 1 / (1 - p)), rtol=1e-2 if dtype == torch.bfloat16 else 1e-4)
    assert float(y.float().mean()) == pytest.approx(1.0, abs=0.01)  # the expectation is x


def test_random_bits_are_uniform_in_every_slice():
    torch.manual_seed(1)
    bits = random_int16(torch.Size([4, 100_000]))
    assert bits.dtype == torch.int16 and bits.shape == (4, 100_000)
    words = bits.flatten().view(-1, 4)  # the four slices of each 64-bit draw
    negative = (words < 0).float().mean(dim=0)
    assert torch.allclose(negative, torch.full_like(negative, 0.5), atol=0.01)  # the sign bits too
    assert abs(float(bits.float().mean())) < 300  # centred on -0.5 (σ of the mean ≈ 52)


def test_gradient_is_the_mask_times_the_scale():
    torch.manual_seed(2)
    x = torch.randn(64, 33, requires_grad=True)  # a size that is no multiple of 4
    y = dropout(x, 0.25)
    y.sum().backward()
    expected = (y != 0).float() / (1 - 0.25)
    assert torch.allclose(x.grad, expected)


def test_same_seed_same_mask_and_eval_mode_is_the_identity():
    x = torch.randn(8, 16)
    torch.manual_seed(3)
    first = dropout(x, 0.3)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.3), first)
    assert not torch.equal(dropout(x, 0.3), first)  # the generator moved on
    module = Dropout(0.3).eval()
    assert module(x) is x
    assert dropout(x, 0.0) is x
    assert bool((dropout(x, 1.0) == 0).all())
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.5)


def test_inside_torch_compile_pytorchs_dropout_is_used(monkeypatch):
    """Inductor cannot trace the int64 → int16 view; in a compiled graph F.dropout (inductor's own masks) runs."""
    x = torch.randn(8, 16)
    torch.manual_seed(4)
    expected = torch.nn.functional.dropout(x, 0.3)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    torch.manual_seed(4)
    assert torch.equal(dropout(x, 0.3), expected)
