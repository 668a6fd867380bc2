"""Note §1 (前置步骤): tokens → vectors, plus each token's seat number (position).

    X = Embed(ids)·√D + PE[positions]                         sinusoidal or learned: added to the input
    q_m ← R(m)·q_m,  k_n ← R(n)·k_n                            rotary: injected in the attention itself

The note allows both: positions added to the token vectors, or put into the attention scores. Rotary
positions (RoFormer, Su et al. 2021) rotate each pair of Q/K components by an angle proportional to the
position, so q_m·k_n = (R(m)q)·(R(n)k) = q·R(n − m)k depends only on the offset n − m.

Shapes: B batch, H heads, T sequence length, D model width (d_model), Dh head width, V vocabulary, P positions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from zhen.dropout import Dropout


class TokenEmbedding(nn.Module):
    """Token ids → vectors, scaled by √d_model (paper §3.4) so they are not drowned by the positions."""

    def __init__(self, vocab_size: int, d_model: int, pad_id: int) -> None:
        super().__init__()
        self.d_model = d_model
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        # std D^-1/2: after the √D scaling every component has unit variance, and a tied
        # output projection starts with logits of the same size as an untied one.
        nn.init.normal_(self.embed.weight, mean=0.0, std=d_model**-0.5)
        with torch.no_grad():
            self.embed.weight[pad_id].zero_()

    @property
    def weight(self) -> Tensor:
        return self.embed.weight  # (V, D)

    def forward(self, ids: Tensor) -> Tensor:
        return self.embed(ids) * math.sqrt(self.d_model)  # (B, T) → (B, T, D)


def sinusoidal_table(n_positions: int, d_model: int) -> Tensor:
    """PE[pos, 2i] = sin(pos / 10000^(2i/D)),  PE[pos, 2i+1] = cos(pos / 10000^(2i/D))."""
    position = torch.arange(n_positions, dtype=torch.float32)[:, None]  # (P, 1)
    inv_freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(n_positions, d_model)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq)[:, : d_model // 2]
    return table  # (P, D)


class PositionalEncoding(nn.Module):
    """The seat number of every token: a fixed sinusoidal table (the paper) or learned vectors."""

    def __init__(self, max_positions: int, d_model: int, kind: str = "sinusoidal") -> None:
        super().__init__()
        self.kind = kind
        self.max_positions = max_positions
        if kind == "learned":
            self.table = nn.Parameter(torch.randn(max_positions, d_model) * d_model**-0.5)
        else:
            # Not a parameter and not saved: it is a function of (P, D) alone.
            self.register_buffer("table", sinusoidal_table(max_positions, d_model), persistent=False)

    def forward(self, length: int, offset: int = 0) -> Tensor:
        end = offset + length
        if end > self.max_positions:
            raise ValueError(
                f"sequence of {end} positions exceeds model.max_positions={self.max_positions}; "
                "shorten the input or train with a larger max_positions"
            )
        return self.table[offset:end]  # (T, D)


class RotaryPositions(nn.Module):
    """Rotary positions: rotate component pairs (x_i, x_{i+Dh/2}) of every query and key at position m by the
    angle m·θ_i, θ_i = 10000^(−2i/Dh), applied per head in self-attention (Note §3's Q·Kᵀ then sees offsets)."""

    def __init__(self, max_positions: int, d_head: int, base: float = 10000.0) -> None:
        super().__init__()
        if d_head % 2:
            raise ValueError(f"rotary positions need an even head width; got {d_head}")
        self.max_positions = max_positions
        inv_freq = base ** (-torch.arange(0, d_head, 2, dtype=torch.float64) / d_head)  # (Dh/2,)
        angles = torch.arange(max_positions, dtype=torch.float64)[:, None] * inv_freq  # (P, Dh/2)
        cos, sin = angles.cos().float(), angles.sin().float()  # (P, Dh/2) each
        # Not parameters and not saved: functions of (P, Dh) alone. Laid out for `forward`'s two products.
        self.register_buffer("cos", torch.cat((cos, cos), dim=-1), persistent=False)  # (P, Dh)
        self.register_buffer("sin", torch.cat((-sin, sin), dim=-1), persistent=False)  # (P, Dh)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """x: (…, T, Dh), its first position at `offset` → x rotated, same shape and dtype.

        Each pair turns by its angle: (x_i, x_{i+Dh/2}) → (x_i·cos − x_{i+Dh/2}·sin, x_{i+Dh/2}·cos + x_i·sin),
        computed as x·[cos, cos] + [x_{Dh/2…}, x_{…Dh/2}]·[−sin, sin]: four operations on whole rows. Q and K
        can be rotated in one call, stacked in front: (2, B, H, T, Dh).
        """
        end = offset + x.size(-2)
        if end > self.max_positions:
            raise ValueError(
                f"sequence of {end} positions exceeds model.max_positions={self.max_positions}; "
                "shorten the input or train with a larger max_positions"
            )
        x32 = x.float()
        x1, x2 = x32.chunk(2, dim=-1)  # (…, T, Dh/2) each: the pairs (x_i, x_{i+Dh/2})
        swapped = torch.cat((x2, x1), dim=-1)  # (…, T, Dh)
        return (x32 * self.cos[offset:end] + swapped * self.sin[offset:end]).to(x.dtype)  # (…, T, Dh)


class Embeddings(nn.Module):
    """X = Dropout(Embed(ids)·√D + PE): the matrix whose rows are the tokens (Note §1, step 1). Without
    `positions` (rotary positions, in the attention) X = Dropout(Embed(ids)·√D)."""

    def __init__(self, tokens: TokenEmbedding, positions: PositionalEncoding | None, dropout: float) -> None:
        super().__init__()
        self.tokens = tokens
        self.positions = positions
        self.dropout = Dropout(dropout)

    def forward(self, ids: Tensor, offset: int = 0) -> Tensor:
        """`offset` is the position of the first id: non-zero when decoding one token at a time."""
        x = self.tokens(ids)  # (B, T, D)
        if self.positions is not None:
            x = x + self.positions(ids.size(1), offset)
        return self.dropout(x) if self.training else x
