"""The linear layer y = x·Wᵀ + b (Note §2's X·W_Q, §5's FFN, §8's logits), fast for the few rows of a decoding step.

A decoding step multiplies a few rows (one per sentence, or one per hypothesis with beam search) by every
weight matrix of the decoder, so its cost is reading the weights. `F.linear` hands x·Wᵀ to BLAS in a form
that, for few rows, reads W slowly and on one thread: on a 2-core AVX-512 CPU, with weights not in cache,
one row times a 512 × 2048 W took 400 µs (10 GB/s). Computed the other way round, y = (W·xᵀ)ᵀ, with W's
rows split into one block per thread (a view of W, no copy), each thread streams its block once: 100 µs.
From about a hundred rows on (training, the encoder, large beams) BLAS's own x·Wᵀ is faster again.

Same products, summed in a different order: results agree with `F.linear` to float rounding (a test checks).

Shapes: R rows (every dimension of x but the last), K input features, N output features, P threads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FEW_ROWS = 32  # up to this many rows the weight-stationary product wins (measured for R = 1, 5, 20, 32, 160, 640)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """y = x·Wᵀ + b: x (…, K), weight (N, K), bias (N,) → (…, N)."""
    n, k = weight.shape
    rows = x.numel() // k
    blocks = torch.get_num_threads()
    few_rows = rows <= FEW_ROWS and x.device.type == "cpu" and n % blocks == 0 and weight.is_contiguous()
    # Training (autograd) and autocast keep PyTorch's own path: gradients and dtype casts as usual.
    if not few_rows or torch.is_grad_enabled() or torch.is_autocast_enabled(x.device.type):
        return F.linear(x, weight, bias)
    w = weight.view(blocks, n // blocks, k)  # (P, N/P, K): output features split between the threads
    x_t = x.reshape(rows, k).t().expand(blocks, k, rows)  # (P, K, R)
    y = torch.bmm(w, x_t) if bias is None else torch.baddbmm(bias.view(blocks, n // blocks, 1), w, x_t)  # (P, N/P, R)
    return y.view(n, rows).t().contiguous().view(*x.shape[:-1], n)  # (N, R) → (R, N) → (…, N)


class Linear(nn.Linear):
    """`nn.Linear` (same parameters, same state dict) whose forward is `linear` above."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)
