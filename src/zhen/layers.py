"""Note §4–§7: residual + LayerNorm, the FFN, and one encoder / decoder layer.

    y = LayerNorm(x + F(x))                                    (Note §4, post-norm, the paper)
    y = x + F(LayerNorm(x))                                    (pre-norm, an option)
    FFN(x) = W_2·act(W_1·x + b_1) + b_2                         (Note §5)
    encoder layer = self-attention → FFN                       (Note §6)
    decoder layer = masked self-attention → cross-attention → FFN   (Note §7)

Shapes: B batch, S source length, T target length, D model width, F = d_ff, H heads.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from zhen.attention import BeamLayout, KVCache, MultiHeadAttention
from zhen.dropout import Dropout
from zhen.embedding import RotaryPositions
from zhen.linear import Linear


class AddNorm(nn.Module):
    """Residual connection and LayerNorm around one sub-layer F (Note §4: "保底通道 + 学增量").

    Use as `y = add_norm.after(x, F(add_norm.before(x)))`; post-norm normalises after the sum,
    pre-norm normalises what F sees and leaves the residual path untouched.
    """

    def __init__(self, d_model: int, dropout: float, pre_norm: bool) -> None:
        super().__init__()
        self.pre_norm = pre_norm
        self.norm = nn.LayerNorm(d_model)
        self.dropout = Dropout(dropout)

    def before(self, x: Tensor) -> Tensor:
        return self.norm(x) if self.pre_norm else x

    def after(self, x: Tensor, fx: Tensor) -> Tensor:
        if self.training:  # dropout is the identity in eval mode: skip the call when translating
            fx = self.dropout(fx)
        if self.pre_norm:
            return x + fx
        return self.norm(x + fx)  # (B, T, D)


class FeedForward(nn.Module):
    """Note §5: up-project to d_ff (升维) → ReLU/GELU → down-project to d_model (降维), per position."""

    def __init__(self, d_model: int, d_ff: int, activation: str = "relu") -> None:
        super().__init__()
        self.w_1 = Linear(d_model, d_ff)
        self.w_2 = Linear(d_ff, d_model)
        self.activation = {"relu": F.relu, "gelu": F.gelu, "swish": F.silu}[activation]
        for linear in (self.w_1, self.w_2):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_2(self.activation(self.w_1(x)))  # (B, T, D) → (B, T, F) → (B, T, D)


class EncoderLayer(nn.Module):
    """Note §6: self-attention → FFN, each wrapped in residual + LayerNorm."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float, attention_dropout: float,
                 activation: str, pre_norm: bool, rotary: RotaryPositions | None = None) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, n_heads, attention_dropout, rotary)
        self.self_attn_norm = AddNorm(d_model, dropout, pre_norm)
        self.ffn = FeedForward(d_model, d_ff, activation)
        self.ffn_norm = AddNorm(d_model, dropout, pre_norm)

    def forward(self, x: Tensor, src_mask: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """x: (B, S, D), src_mask: (B, 1, 1, S) → (B, S, D) and self-attention weights (B, H, S, S)."""
        h, weights = self.self_attn(self.self_attn_norm.before(x), mask=src_mask, need_weights=need_weights)
        x = self.self_attn_norm.after(x, h)
        x = self.ffn_norm.after(x, self.ffn(self.ffn_norm.before(x)))
        return x, weights


class DecoderLayer(nn.Module):
    """Note §7: masked self-attention → cross-attention (Q from here, K/V from H_enc) → FFN."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float, attention_dropout: float,
                 activation: str, pre_norm: bool, rotary: RotaryPositions | None = None) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, n_heads, attention_dropout, rotary)
        self.self_attn_norm = AddNorm(d_model, dropout, pre_norm)
        self.cross_attn = MultiHeadAttention(d_model, n_heads, attention_dropout)
        self.cross_attn_norm = AddNorm(d_model, dropout, pre_norm)
        self.ffn = FeedForward(d_model, d_ff, activation)
        self.ffn_norm = AddNorm(d_model, dropout, pre_norm)

    def forward(
        self,
        y: Tensor,
        memory: Tensor | None,
        src_mask: Tensor,
        self_cache: KVCache | None = None,
        cross_cache: KVCache | None = None,
        need_weights: bool = False,
        layout: BeamLayout | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """y: (B, T, D), memory: (B, S, D) or None when `cross_cache` holds its K/V; `layout`: which rows of
        y read which source row while searching (see `BeamLayout`).

        Returns (B, T, D), self-attention weights (B, H, T, T') and cross-attention weights (B, H, T, S).
        """
        h, self_weights = self.self_attn(
            self.self_attn_norm.before(y), causal=True, cache=self_cache, need_weights=need_weights
        )
        y = self.self_attn_norm.after(y, h)
        # Only the source padding is masked here: every target position may read the whole source.
        h, cross_weights = self.cross_attn(
            self.cross_attn_norm.before(y), memory, mask=src_mask, cache=cross_cache, need_weights=need_weights,
            layout=layout,
        )
        y = self.cross_attn_norm.after(y, h)
        y = self.ffn_norm.after(y, self.ffn(self.ffn_norm.before(y)))
        return y, self_weights, cross_weights
