"""Note §8: cross-entropy on the logits, with label smoothing (paper §5.4, ε = 0.1).

    loss(t) = (1 − ε)·(−log p(y_t)) + ε·mean_v(−log p(v))
            = logsumexp(x_t) − (1 − ε)·x_t[y_t] − ε·mean_v(x_t[v])            (x_t: the logits of token t)
    ∂loss(t)/∂x_t = softmax(x_t) − (1 − ε)·onehot(y_t) − ε/V

The target distribution puts 1 − ε on the reference token and spreads ε evenly over the whole
vocabulary (the definition `torch.nn.functional.cross_entropy(label_smoothing=ε)` uses).
Padding positions contribute nothing. The functions return *sums*, so the caller can normalise
by the number of target tokens of a whole update (several batches, several processes).

Two paths, same numbers (a test proves it): `reference_cross_entropy` is PyTorch's cross-entropy on
fp32 logits; on the CPU, `label_smoothed_cross_entropy` computes the first line and its gradient
(the third) by hand, 64 rows at a time, so the fp32 log-probabilities and gradient of the whole
(B·T, V) batch are never held in memory at once and each chunk's passes run in cache (measured: see
bench/results/train_cpu_epyc.md).

Shapes: B batch, T target length, V vocabulary, N = B·T, C rows per chunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

CHUNK_ELEMENTS = 1 << 19  # logits per chunk (2 MiB in fp32, 64 rows of 8,000): large enough that the calls per
# chunk cost little, small enough to stay in the cores' caches (measured: 16 rows took twice the time of 64)


def reference_cross_entropy(logits: Tensor, target: Tensor, smoothing: float, pad_id: int) -> Tensor:
    """Sum over the non-pad target tokens, by PyTorch's cross-entropy. logits (B, T, V), target (B, T) → scalar."""
    return F.cross_entropy(
        logits.flatten(0, 1).float(),  # (B·T, V); fp32 so the log-softmax over V stays exact under bf16
        target.flatten(),  # (B·T,)
        ignore_index=pad_id,
        label_smoothing=smoothing,
        reduction="sum",
    )


def label_smoothed_cross_entropy(logits: Tensor, target: Tensor, smoothing: float, pad_id: int) -> Tensor:
    """Sum over the non-pad target tokens. logits (B, T, V), target (B, T) → scalar (fp32)."""
    if logits.device.type != "cpu":  # one fused kernel per pass on an accelerator: chunks would only add launches
        return reference_cross_entropy(logits, target, smoothing, pad_id)
    return _ChunkedCrossEntropy.apply(logits.flatten(0, 1), target.flatten(), smoothing, pad_id)


def negative_log_likelihood(logits: Tensor, target: Tensor, pad_id: int) -> Tensor:
    """Σ −log p(y_t) over the non-pad tokens: the dev loss, whose per-token mean gives perplexity."""
    return label_smoothed_cross_entropy(logits, target, 0.0, pad_id)


def _chunks(n_rows: int, n_classes: int) -> list[slice]:
    rows = max(1, CHUNK_ELEMENTS // n_classes)
    return [slice(start, min(start + rows, n_rows)) for start in range(0, n_rows, rows)]


class _ChunkedCrossEntropy(torch.autograd.Function):
    """The loss above and its gradient, C rows at a time in fp32, whatever the logits' dtype (bf16 under
    autocast). PyTorch's (log-)softmax reads bf16 and writes fp32 in one pass (`dtype=torch.float32`), so no
    fp32 copy of the logits is made. Saved for backward: the logits as they came."""

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, smoothing: float, pad_id: int) -> Tensor:  # (N, V), (N,)
        total = torch.zeros((), dtype=torch.float64)
        keep = target != pad_id  # (N,)
        for rows in _chunks(*logits.shape):
            log_p = torch.log_softmax(logits[rows], dim=-1, dtype=torch.float32)  # (C, V): x − logsumexp(x)
            picked = log_p.gather(1, target[rows, None]).squeeze(1)  # (C,): log p(y_t)
            per_token = -(1.0 - smoothing) * picked - smoothing * log_p.mean(dim=-1)  # (C,)
            total += per_token[keep[rows]].sum(dtype=torch.float64)
        ctx.save_for_backward(logits, target)
        ctx.smoothing = smoothing
        ctx.keep = keep
        return total.float()

    @staticmethod
    def backward(ctx, grad_total: Tensor) -> tuple[Tensor | None, ...]:
        logits, target = ctx.saved_tensors
        smoothing, n_classes = ctx.smoothing, logits.size(1)
        weight = (ctx.keep.float() * grad_total)[:, None]  # (N, 1): 0 on padding
        grad = torch.empty_like(logits)  # (N, V), the logits' dtype
        for rows in _chunks(*logits.shape):
            g = torch.softmax(logits[rows], dim=-1, dtype=torch.float32)  # (C, V)
            g.sub_(smoothing / n_classes)
            g.scatter_add_(1, target[rows, None], torch.full_like(g[:, :1], smoothing - 1.0))
            torch.mul(g, weight[rows], out=grad[rows])  # rounded to the logits' dtype as it is written
        return grad, None, None, None
