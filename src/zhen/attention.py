"""Note §2, §3 and §9: Q/K/V projections and scaled dot-product multi-head attention.

    Q = X·W_Q,  K = X·W_K,  V = X·W_V                      (Note §2; cross-attention: K, V from H_enc)
    Attn(Q, K, V) = softmax(Q·Kᵀ / √d_k)·V                 (Note §3)
    MultiHead(X) = Concat(head_1, …, head_H)·W_O           (Note §9)

Shapes: B batch, Tq query length, Tk key length, D model width, H heads, Dh = D/H head width.
Masks are boolean and True where attention is allowed, broadcastable to (B, H, Tq, Tk).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def causal_mask(n_queries: int, n_keys: int, device: torch.device | None = None) -> Tensor:
    """Query i may see keys 0..i (aligned so the last query sees the last key): "遮右边"."""
    offset = n_keys - n_queries
    return torch.ones(n_queries, n_keys, dtype=torch.bool, device=device).tril(diagonal=offset)  # (Tq, Tk)


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    *,
    causal: bool = False,
    dropout_p: float = 0.0,
    need_weights: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Attn(Q, K, V) = softmax(Q·Kᵀ/√d_k)·V for every position at once, in parallel (Note §3).

    q: (B, H, Tq, Dh); k, v: (B, H, Tk, Dh) → out (B, H, Tq, Dh), weights (B, H, Tq, Tk) or None.

    Two paths, same numbers (a test proves it): when the weights are not wanted, PyTorch's fused
    kernel; when they are (explain, plots), the formula written out step by step.
    """
    n_queries, n_keys = q.size(-2), k.size(-2)
    if causal and n_queries == 1:
        causal = False  # the newest token may look at every token before it
    if causal and (mask is not None or need_weights or n_queries != n_keys):
        allowed = causal_mask(n_queries, n_keys, q.device)
        mask = allowed if mask is None else mask & allowed
        causal = False

    if not need_weights:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal)
        return out, None

    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, H, Tq, Tk): how well query i matches key j
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))  # masked keys get weight exactly 0
    weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)  # (B, H, Tq, Tk): each row sums to 1
    out = F.dropout(weights, p=dropout_p) @ v  # (B, H, Tq, Dh): weighted sum of the values
    return out, weights


@dataclass
class KVCache:
    """Keys and values kept between decoding steps.

    Self-attention appends the new token's K/V at every step; cross-attention computes the K/V of
    the source (H_enc·W_K, H_enc·W_V) once per sentence (`static`).
    """

    k: Tensor | None = None  # (B, H, Tk, Dh)
    v: Tensor | None = None  # (B, H, Tk, Dh)
    static: bool = False

    def index_select(self, index: Tensor) -> None:
        """Keep rows `index` of the batch (beam parents, or the sentences still being decoded)."""
        if self.k is not None:
            self.k = self.k.index_select(0, index)
            self.v = self.v.index_select(0, index)


class MultiHeadAttention(nn.Module):
    """Learned W_Q, W_K, W_V, W_O; H heads of width Dh attend in parallel (Note §9)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.dropout = dropout
        self.w_q = nn.Linear(d_model, d_model)
        self.w_k = nn.Linear(d_model, d_model)
        self.w_v = nn.Linear(d_model, d_model)
        self.w_o = nn.Linear(d_model, d_model)
        for linear in (self.w_q, self.w_k, self.w_v, self.w_o):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def split_heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.d_head).transpose(1, 2)  # (B, T, D) → (B, H, T, Dh)

    def merge_heads(self, x: Tensor) -> Tensor:
        b, _, t, _ = x.shape
        return x.transpose(1, 2).reshape(b, t, self.n_heads * self.d_head)  # (B, H, T, Dh) → (B, T, D)

    def keys_values(self, source: Tensor) -> tuple[Tensor, Tensor]:
        """K = source·W_K, V = source·W_V, split into heads: (B, Tk, D) → 2 × (B, H, Tk, Dh)."""
        return self.split_heads(self.w_k(source)), self.split_heads(self.w_v(source))

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None = None,
        *,
        mask: Tensor | None = None,
        causal: bool = False,
        cache: KVCache | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Self-attention when `memory` is None (Q, K, V all from x); cross-attention otherwise
        (Q from x, K and V from memory). x: (B, Tq, D) → (B, Tq, D) and weights (B, H, Tq, Tk)."""
        q = self.split_heads(self.w_q(x))  # (B, H, Tq, Dh)
        if cache is not None and cache.static and cache.k is not None:
            k, v = cache.k, cache.v  # the source's K/V, computed once per sentence
        else:
            k, v = self.keys_values(x if memory is None else memory)  # (B, H, Tk, Dh)
            if cache is not None:
                if not cache.static and cache.k is not None:
                    k = torch.cat([cache.k, k], dim=2)  # the prefix's K/V plus the new tokens'
                    v = torch.cat([cache.v, v], dim=2)
                cache.k, cache.v = k, v
        dropout_p = self.dropout if self.training else 0.0
        out, weights = scaled_dot_product_attention(
            q, k, v, mask, causal=causal, dropout_p=dropout_p, need_weights=need_weights
        )  # (B, H, Tq, Dh)
        return self.w_o(self.merge_heads(out)), weights  # concatenate the heads, then W_O
