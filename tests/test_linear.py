"""The linear layer's inference routes (weight-stationary blocks, oneDNN on packed weights) compute what
`F.linear` computes, and the packed copy follows the weight."""

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F

from zhen import linear as linear_module
from zhen.attention import MultiHeadAttention
from zhen.linear import FEW_ROWS, ONEDNN, Linear, linear, onednn_works, pack


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(1, 1, 64), (FEW_ROWS, 64), (5, 1, 64), (2, 3, 64), (33, 64), (4, 40, 64)])
@pytest.mark.parametrize("bias", [True, False])
def test_equals_f_linear(threads, shape, bias):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x, weight = torch.randn(*shape), torch.randn(96, 64)
        b = torch.randn(96) if bias else None
        with torch.no_grad():
            for packed in (None, pack(weight)):
                y = linear(x, weight, b, packed)
                assert y.shape == (*shape[:-1], 96) and y.is_contiguous()
                torch.testing.assert_close(y, F.linear(x, weight, b), rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(previous)


def packed_copy(layer: Linear) -> torch.Tensor | None:
    cached = layer.derived.get("packed")  # (parameter versions, packed weight)
    return None if cached is None else cached[1]


@pytest.mark.skipif(not ONEDNN, reason="this torch has no oneDNN")
def test_packed_copy_follows_the_weight_and_is_not_copied():
    layer = Linear(64, 96)
    x = torch.randn(5, 64)  # more than FEW_ROWS rows: the packed route
    with torch.no_grad():
        before = layer(x)
        first = packed_copy(layer)
        assert first is not None and layer.derived.derive("packed", [layer.weight], lambda: None) is first  # kept
        layer.weight.mul_(2.0)  # in place, as an optimizer step: the version changes
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
        assert packed_copy(layer) is not first
        layer.weight = torch.nn.Parameter(torch.randn(96, 64))  # replaced
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
        for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
            assert packed_copy(clone) is None
            torch.testing.assert_close(clone(x), layer(x))
    assert not torch.equal(before, layer(x).detach())


def test_odd_output_size_and_non_contiguous_weight_fall_back():
    x = torch.randn(3, 64)
    with torch.no_grad():
        odd = torch.randn(97, 64)
        torch.testing.assert_close(linear(x, odd), F.linear(x, odd))
        transposed = torch.randn(64, 96).t()  # (96, 64), not contiguous
        torch.testing.assert_close(linear(x, transposed), F.linear(x, transposed))


def test_module_keeps_nn_linear_state_dict_and_gradients():
    layer = Linear(64, 96)
    reference = torch.nn.Linear(64, 96)
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(4, 64)
    layer(x).sum().backward()  # autograd on: PyTorch's own path
    reference(x).sum().backward()
    torch.testing.assert_close(layer.weight.grad, reference.weight.grad)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), reference(x), rtol=1e-5, atol=1e-5)


def test_without_the_private_ops_every_route_falls_back_to_f_linear(monkeypatch):
    """The private oneDNN ops are checked at import; a build where they are missing or wrong uses F.linear."""
    assert not onednn_works(product=lambda x, w, b, *rest: torch.zeros(x.size(0), 16))  # wrong numbers
    assert not onednn_works(reorder=lambda w, _: (_ for _ in ()).throw(RuntimeError("no such op")))
    monkeypatch.setattr(linear_module, "ONEDNN", False)
    monkeypatch.setattr(linear_module, "VERSIONED", False)  # and no version counters either
    layer = Linear(64, 96)
    x = torch.randn(5, 64)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
        assert pack(layer.weight) is None and packed_copy(layer) is None
        layer.weight.mul_(2.0)  # without version counters nothing is cached, so nothing goes stale
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
        attention = MultiHeadAttention(64, 4)
        h = x[None]  # (1, 5, 64)

        def expected(projection: torch.nn.Linear) -> torch.Tensor:
            return attention.split_heads(F.linear(h, projection.weight, projection.bias))

        q, _, _ = attention.project(h, attention.w_q, attention.w_k, attention.w_v)
        torch.testing.assert_close(q, expected(attention.w_q))
        attention.w_k.weight.add_(1.0)
        _, k, _ = attention.project(h, attention.w_q, attention.w_k, attention.w_v)
        torch.testing.assert_close(k, expected(attention.w_k))
