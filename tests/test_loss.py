"""Note §8: label-smoothed cross-entropy, written out by hand, with padding ignored."""

import math

import pytest
import torch

from zhen.loss import label_smoothed_cross_entropy, negative_log_likelihood

PAD = 0


def by_hand(logits, target, eps):
    """Σ over non-pad tokens of −Σ_v q(v) log p(v), q = (1 − ε)·onehot + ε/V."""
    total = 0.0
    v = logits.size(-1)
    for row, t in zip(logits.reshape(-1, v), target.reshape(-1), strict=True):
        if t == PAD:
            continue
        logp = torch.log_softmax(row.double(), dim=0)
        q = torch.full((v,), eps / v, dtype=torch.double)
        q[t] += 1 - eps
        total += float(-(q * logp).sum())
    return total


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_matches_the_formula_and_ignores_padding(eps):
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11)
    target = torch.randint(1, 11, (3, 5))
    target[0, 3:] = PAD
    target[2, 1:] = PAD
    got = label_smoothed_cross_entropy(logits, target, eps, PAD).item()
    assert got == pytest.approx(by_hand(logits, target, eps), rel=1e-5)
    # what padding positions hold makes no difference
    changed = logits.clone()
    changed[target == PAD] = torch.randn_like(changed[target == PAD]) * 10
    assert label_smoothed_cross_entropy(changed, target, eps, PAD).item() == pytest.approx(got, rel=1e-6)


def test_smoothing_value_sets_the_floor_of_the_loss():
    """With ε = 0.1 the best a model can do is predict q itself: loss = entropy(q) > 0."""
    v, eps = 8, 0.1
    q = torch.full((v,), eps / v)
    q[3] += 1 - eps
    logits = q.log()[None, None, :]  # p = q exactly
    entropy = float(-(q * q.log()).sum())
    assert label_smoothed_cross_entropy(logits, torch.tensor([[3]]), eps, PAD).item() == pytest.approx(entropy)
    assert entropy > 0.4
    # without smoothing, a confident correct prediction costs nearly nothing
    confident = torch.full((1, 1, v), -20.0)
    confident[..., 3] = 20.0
    assert negative_log_likelihood(confident, torch.tensor([[3]]), PAD).item() < 1e-6


def test_nll_is_the_sum_of_minus_log_p():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]]))
    got = negative_log_likelihood(logits, torch.tensor([[1, 2]]), pad_id=PAD).item()
    assert got == pytest.approx(-math.log(0.25) - math.log(0.8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_chunked_loss_and_gradient_equal_pytorch_cross_entropy(monkeypatch, dtype, eps):
    """The CPU path (a few rows at a time, gradient by hand) against F.cross_entropy on fp32 logits."""
    import zhen.loss as loss_module

    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", 3 * 50)  # 3 rows a chunk: 5 chunks, the last one short
    torch.manual_seed(0)
    logits = (torch.randn(2, 7, 50) * 3).to(dtype)
    target = torch.randint(1, 50, (2, 7))
    target[1, 4:] = PAD
    results = []
    for fn in (loss_module.label_smoothed_cross_entropy, loss_module.reference_cross_entropy):
        x = logits.clone().requires_grad_(True)
        value = fn(x, target, eps, PAD)
        (value * 0.5).backward()  # a non-unit upstream gradient
        results.append((value.detach(), x.grad))
    (chunked, grad), (reference, reference_grad) = results
    assert chunked.dtype == torch.float32
    assert chunked.item() == pytest.approx(reference.item(), rel=1e-5)
    assert grad.dtype == dtype
    assert torch.allclose(grad.float(), reference_grad.float(), atol=1e-6 if dtype == torch.float32 else 4e-3)
    assert bool((grad[1, 4:] == 0).all())  # padding gets no gradient
    assert chunked.item() == pytest.approx(by_hand(logits.float(), target, eps), rel=1e-5)
