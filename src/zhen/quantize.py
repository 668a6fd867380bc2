"""int8 translation on the CPU (`--precision int8`): every linear layer's product in 8-bit integers.

    y = x·Wᵀ + b  ≈  s_x·s_w[n] · Σ_k (q_x[k] - z_x)·q_w[n, k] + b[n]

W is quantized once, per output feature n: q_w = round(W[n] / s_w[n]) in [-127, 127], s_w[n] = max|W[n]| / 127.
x is quantized at every call, as a whole (dynamic quantization): q_x in [0, 255] with the scale s_x and zero
point z_x that map [min(x, 0), max(x, 0)] onto it. The sums run in 32-bit integers; the result is fp32 again,
so everything between the products (attention's softmax, LayerNorm, the search) stays fp32.

Which kernel: measured on this project's 2-core AMD EPYC (AVX-512 VNNI) with the base model's shapes
(bench/results/translate.md has the numbers), PyTorch's quantized engine (fbgemm,
`torch.ops.quantized.linear_dynamic` on weights prepacked once) was the fastest of the int8 routes at 1 to
160 rows — 2-4× zhen's fp32 products — ahead of oneDNN's `onednn.qlinear_pointwise` with the activation
quantized by hand (whose extra operators cost more than they save at few rows) and of `torch._int_mm`. Where
the quantized engine is missing (a build without it), `Int8Weight` falls back to fp32 products on the
dequantized weights: the same weights' rounding, no speed.

fbgemm multiplies u8 × s8 pairs; CPUs without VNNI add two such products in 16 bits, which can saturate, and
PyTorch then needs `reduce_range` (7-bit activations). `saturates()` checks the CPU once, on a product that
would saturate, rather than guessing from its name.

Everything goes through zhen's own `Linear` (zhen.linear): `quantize` makes a copy of a model, sharing its
parameters, whose Linear layers are `Int8Linear`; the attention's stacked W_Q/W_K/W_V asks its projections
for their inference copy (`inference_copy`), so the stacked products run in int8 too. Training and autograd
never see int8: `Int8Linear` is a `Linear` everywhere but in CPU inference.

Shapes: R rows (all dimensions of x but the last), K input features, N output features.
"""

from __future__ import annotations

import copy
import functools
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zhen.linear import DerivedCache, Linear, inference_on_cpu

QMAX = 127


def fbgemm_available() -> bool:
    """True where PyTorch has its quantized engine for dynamic int8 linear layers (x86 builds do)."""
    engines = torch.backends.quantized.supported_engines
    ops = hasattr(torch.ops.quantized, "linear_dynamic") and hasattr(torch.ops.quantized, "linear_prepack")
    return ops and ("fbgemm" in engines or "x86" in engines)


def quantize_weight(weight: Tensor) -> tuple[Tensor, Tensor]:
    """W (N, K) → q_w (N, K) int8 in [-127, 127] and s_w (N,): W ≈ q_w · s_w[:, None]."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / QMAX  # (N,)
    return torch.round(w / scale[:, None]).clamp(-QMAX, QMAX).to(torch.int8), scale


def prepack(q_w: Tensor, scale: Tensor, bias: Tensor | None) -> Any:
    """fbgemm's packed form of an int8 weight and its fp32 bias."""
    zero_points = torch.zeros(q_w.size(0), dtype=torch.long)
    with warnings.catch_warnings():  # quantized tensors are deprecated as a public type, not the kernel
        warnings.simplefilter("ignore")
        # Quantizing q_w·s_w again gives back exactly q_w (|q_w| ≤ 127: nothing is clamped).
        quantized = torch.quantize_per_channel(q_w.float() * scale[:, None], scale.double(), zero_points, 0,
                                               torch.qint8)
        return torch.ops.quantized.linear_prepack(quantized, None if bias is None else bias.detach().float())


@functools.cache
def saturates() -> bool:
    """True where fbgemm's 8-bit products overflow (no VNNI): 64 × (255 · 127) must sum to 64, not about half."""
    q_w, scale = quantize_weight(torch.ones(8, 64))
    y = torch.ops.quantized.linear_dynamic(torch.ones(1, 64), prepack(q_w, scale, None), False)
    return not torch.allclose(y, torch.full_like(y, 64.0), rtol=0.01)


class Int8Weight:
    """A weight (N, K) and bias (N,) ready for int8 products: `int8_weight(x)` is x·Wᵀ + b, x (…, K) → (…, N)."""

    def __init__(self, weight: Tensor, bias: Tensor | None, kernel: str | None = None) -> None:
        self.kernel = kernel or ("fbgemm" if fbgemm_available() else "reference")
        q_w, scale = quantize_weight(weight)
        self.bias = None if bias is None else bias.detach().float()
        if self.kernel == "fbgemm":
            try:
                self.packed, self.reduce_range = prepack(q_w, scale, self.bias), saturates()
            except RuntimeError:  # an engine that is listed but cannot run here
                self.kernel = "reference"
        if self.kernel == "reference":
            self.dequantized = q_w.float() * scale[:, None]  # (N, K)

    def __call__(self, x: Tensor) -> Tensor:
        if self.kernel == "fbgemm":
            return torch.ops.quantized.linear_dynamic(x, self.packed, self.reduce_range)
        return F.linear(x, self.dequantized, self.bias)


class Int8Linear(Linear):
    """zhen's `Linear` whose CPU inference runs on an `Int8Weight`, made once and rebuilt when W or b change."""

    def inference_copy(self, weight: Tensor, bias: Tensor | None) -> Int8Weight:
        return Int8Weight(weight, bias)

    def forward(self, x: Tensor) -> Tensor:
        if not inference_on_cpu(x):
            return super().forward(x)
        parameters = [p for p in (self.weight, self.bias) if p is not None]
        return self.derived.derive("int8", parameters, lambda: self.inference_copy(self.weight, self.bias))(x)

    @classmethod
    def like(cls, linear: Linear) -> Int8Linear:
        """An Int8Linear holding `linear`'s own parameters (a tied weight stays tied)."""
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        new.weight, new.bias = linear.weight, linear.bias
        new.derived = DerivedCache()
        return new


def quantize(model: nn.Module) -> nn.Module:
    """A copy of `model` that shares its parameters and buffers and runs every zhen `Linear` in int8 (CPU
    inference only); `model` itself is unchanged."""
    shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
    quantized = copy.deepcopy(model, memo=shared)
    for module in list(quantized.modules()):
        for name, child in list(module.named_children()):
            if type(child) is Linear:
                setattr(module, name, Int8Linear.like(child))
    return quantized
