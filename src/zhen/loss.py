"""Note §8: cross-entropy on the logits, with label smoothing (paper §5.4, ε = 0.1).

    loss(t) = (1 − ε)·(−log p(y_t)) + ε·mean_v(−log p(v))

The target distribution puts 1 − ε on the reference token and spreads ε evenly over the whole
vocabulary (the definition `torch.nn.functional.cross_entropy(label_smoothing=ε)` uses).
Padding positions contribute nothing. The functions return *sums*, so the caller can normalise
by the number of target tokens of a whole update (several batches, several processes).

Shapes: B batch, T target length, V vocabulary.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def label_smoothed_cross_entropy(logits: Tensor, target: Tensor, smoothing: float, pad_id: int) -> Tensor:
    """Sum over the non-pad target tokens. logits (B, T, V), target (B, T) → scalar."""
    return F.cross_entropy(
        logits.flatten(0, 1).float(),  # (B·T, V); fp32 so the log-softmax over V stays exact under bf16
        target.flatten(),  # (B·T,)
        ignore_index=pad_id,
        label_smoothing=smoothing,
        reduction="sum",
    )


def negative_log_likelihood(logits: Tensor, target: Tensor, pad_id: int) -> Tensor:
    """Σ −log p(y_t) over the non-pad tokens: the dev loss, whose per-token mean gives perplexity."""
    return label_smoothed_cross_entropy(logits, target, 0.0, pad_id)
