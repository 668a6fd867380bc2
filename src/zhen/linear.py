"""The linear layer y = x·Wᵀ + b (Note §2's X·W_Q, §5's FFN, §8's logits), fast for translation on the CPU.

Training runs PyTorch's own `F.linear`, with autograd. Inference on the CPU (fp32, no autograd) takes one of
two faster routes to the same products, summed in a different order (results agree with `F.linear` to
float rounding; tests check both):

- One or two rows (a greedy decoding step of one sentence): the cost is reading W. `F.linear` hands x·Wᵀ to
  BLAS in a form that, for so few rows, reads W slowly and on one thread: on a 2-core AVX-512 CPU, with
  weights not in cache, one row times a 512 × 2048 W took 400 µs (10 GB/s). Computed the other way round,
  y = (W·xᵀ)ᵀ, with W's rows split into one block per thread (a view of W, no copy), each thread streams
  its block once: 100 µs.
- Three rows or more (beam search, batches, the encoder): oneDNN's matrix product on a copy of W in its
  own blocked layout (`pack`, made once per weight and kept until the weight changes). On this project's
  AMD EPYC it took 0.5-0.8× the time of `F.linear` (MKL) and of the blocks above: for the small model's
  decoder and output layer at 5 / 10 / 32 / 160 / 640 rows, 1.2 / 1.5 / 3.0 / 10 / 36 ms against 1.8 /
  3.0 / 5.5 / 15 / 44 ms. The copy costs memory: one more fp32 copy of every weight, in inference only.

Shapes: R rows (every dimension of x but the last), K input features, N output features, P threads.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FEW_ROWS = 2  # up to this many rows the weight-stationary blocks win (measured for R = 1, 2, 5, 10, 32, 160, 640)


def onednn_works(reorder: Callable[..., Tensor] | None = None, product: Callable[..., Tensor] | None = None) -> bool:
    """Whether oneDNN's packed linear, reached through PyTorch's private ops `mkldnn._reorder_linear_weight`
    and `mkldnn._linear_pointwise`, exists in this build and computes what `F.linear` computes. Checked once
    at import; when it does not, every product takes `F.linear` (slower here, never wrong)."""
    if not torch.backends.mkldnn.is_available():
        return False
    reorder = reorder or getattr(torch.ops.mkldnn, "_reorder_linear_weight", None)
    product = product or getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if reorder is None or product is None:
        return False
    generator = torch.Generator().manual_seed(0)
    x, weight, bias = (torch.randn(*shape, generator=generator) for shape in ((5, 8), (16, 8), (16,)))
    try:
        with torch.no_grad():
            y = product(x, reorder(weight, None), bias, "none", [], "")
        return bool(torch.allclose(y, F.linear(x, weight, bias), rtol=1e-4, atol=1e-5))
    except (RuntimeError, TypeError, ValueError):  # a changed signature or an unsupported CPU
        return False


ONEDNN = onednn_works()
# Parameters' version counters (bumped by every in-place change) tell when a derived copy is stale. Where a
# build lacks them, derived copies are rebuilt at every call: slower, never stale.
VERSIONED = hasattr(torch.zeros(1), "_version")


def inference_on_cpu(x: Tensor) -> bool:
    """True for translation on the CPU in fp32: no autograd, no autocast (those keep PyTorch's own path)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu"))


def pack(weight: Tensor) -> Tensor | None:
    """W (N, K) in oneDNN's blocked layout for `linear`; None where oneDNN cannot take it."""
    if not ONEDNN or weight.device.type != "cpu" or weight.dtype != torch.float32:
        return None
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, packed: Tensor | None = None) -> Tensor:
    """y = x·Wᵀ + b: x (…, K), weight (N, K), bias (N,) → (…, N). `packed`: `pack(weight)`, or None."""
    if not inference_on_cpu(x):
        return F.linear(x, weight, bias)
    return _inference_linear(x, weight, bias, packed)


def _inference_linear(x: Tensor, weight: Tensor, bias: Tensor | None, packed: Tensor | None) -> Tensor:
    """`linear` once `inference_on_cpu(x)` holds: the weight-stationary blocks or oneDNN (see the module doc)."""
    if callable(packed):  # a kernel with its own copy of W and b (zhen.quantize's int8)
        return packed(x)
    n, k = weight.shape
    rows = x.numel() // k
    blocks = torch.get_num_threads()
    if rows <= FEW_ROWS and n % blocks == 0 and weight.is_contiguous():
        w = weight.view(blocks, n // blocks, k)  # (P, N/P, K): output features split between the threads
        x_t = x.reshape(rows, k).t().expand(blocks, k, rows)  # (P, K, R)
        y = torch.bmm(w, x_t) if bias is None else torch.baddbmm(bias.view(blocks, n // blocks, 1), w, x_t)
        return y.view(n, rows).t().contiguous().view(*x.shape[:-1], n)  # (P, N/P, R) = (N, R) → (R, N) → (…, N)
    if packed is not None:
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")  # (…, N)
    return F.linear(x, weight, bias)


class DerivedCache(dict):
    """Tensors derived from parameters (stacked, packed), each rebuilt when one of its parameters changes:
    updated in place (an optimizer step bumps its version; a fused one does not, so `zhen.trainer` bumps them
    itself) or replaced (a new tensor). Copies and pickles
    start empty: oneDNN's packed tensors cannot be copied, and a copy's parameters are not the original's."""

    def derive(self, key: Hashable, parameters: Sequence[Tensor], build: Callable[[], Any]) -> Any:
        if not VERSIONED:
            return build()
        version = tuple((p.data_ptr(), p._version) for p in parameters)  # changes whenever a parameter does
        cached = self.get(key)
        if cached is None or cached[0] != version:
            cached = self[key] = (version, build())
        return cached[1]

    def __reduce__(self) -> tuple:
        return (type(self), ())


class Linear(nn.Linear):
    """`nn.Linear` (same parameters, same state dict) whose forward is `linear` above, with the packed weight
    kept between calls."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.derived = DerivedCache()

    def inference_copy(self, weight: Tensor, bias: Tensor | None) -> Any:
        """What `linear` runs inference on for this layer's (or stacked layers') W and b: `pack(weight)`."""
        return pack(weight)

    def forward(self, x: Tensor) -> Tensor:
        if not inference_on_cpu(x):  # training: no packed copy, which every optimizer step would make stale
            return F.linear(x, self.weight, self.bias)
        packed = self.derived.derive("packed", [self.weight], lambda: pack(self.weight))
        return _inference_linear(x, self.weight, self.bias, packed)
