"""Note §2, §3 and §9: Q/K/V projections and scaled dot-product multi-head attention.

    Q = X·W_Q,  K = X·W_K,  V = X·W_V                      (Note §2; cross-attention: K, V from H_enc)
    Attn(Q, K, V) = softmax(Q·Kᵀ / √d_k)·V                 (Note §3)
    MultiHead(X) = Concat(head_1, …, head_H)·W_O           (Note §9)

Shapes: B batch, Tq query length, Tk key length, D model width, H heads, Dh = D/H head width.
Masks are boolean and True where attention is allowed, broadcastable to (B, H, Tq, Tk).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zhen.embedding import RotaryPositions
from zhen.linear import DerivedCache, Linear, linear


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

    Two paths, same numbers (a test proves it): the formula written out step by step, which returns the
    weights (explain, plots), and PyTorch's fused kernel, taken when the weights are not wanted and it is the
    faster of the two (see `CPU_FORMULA_MAX_KEYS`).
    """
    fused = not need_weights and not _formula_is_faster(q, k)
    n_queries, n_keys = q.size(-2), k.size(-2)
    if causal and n_queries == 1:
        causal = False  # the newest token may look at every token before it
    if causal and (mask is not None or not fused or n_queries != n_keys):
        allowed = causal_mask(n_queries, n_keys, q.device)  # the fused kernel's is_causal, spelled out
        mask = allowed if mask is None else mask & allowed
        causal = False

    if fused:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal)
        return out, None

    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, H, Tq, Tk): how well query i matches key j
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))  # masked keys get weight exactly 0
    weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)  # (B, H, Tq, Tk): each row sums to 1
    kept = F.dropout(weights, p=dropout_p) if dropout_p else weights
    out = kept @ v  # (B, H, Tq, Dh): weighted sum of the values
    return out, weights if need_weights else None


# On the CPU, PyTorch's fused kernel pays off only for long sequences: in fp32 the formula was faster up to
# 128 keys (decoding steps 1.2-2.2x, cross-attention of a beam 2x, encoders of 12-64 tokens 1.3-1.6x) and the
# fused kernel from 256 (2.5x at 256 tokens, batch 4); in bf16 the fused kernel was slower at every length tried
# (3-9x for forward + backward at 16-64). Measured on this project's 2-core AMD EPYC, torch 2.13.
CPU_FORMULA_MAX_KEYS = 128


def _formula_is_faster(q: Tensor, k: Tensor) -> bool:
    return q.device.type == "cpu" and (q.dtype == torch.bfloat16 or k.size(-2) <= CPU_FORMULA_MAX_KEYS)


class BeamLayoutError(ValueError):
    """Decoder rows that do not fit the beam layout: a bug in a search loop, not a user error."""


@dataclass(frozen=True)
class BeamLayout:
    """How decoder rows map to sentences while searching: the one contract between `zhen.search`, the
    decoder cache (`zhen.model.DecoderCache`) and cross-attention.

    Sentence i owns target rows i·K … i·K + K - 1 (its K hypotheses) and one source row i (its encoder
    output, source mask and cross-attention K/V), which all its hypotheses read. K = 1 outside beam search
    and at beam search's first step, where each sentence still has one (empty) prefix.
    """

    sentences: int  # B: source rows
    beam: int = 1  # K: target rows per sentence

    @property
    def rows(self) -> int:
        return self.sentences * self.beam  # B·K target rows

    def check(self, target_rows: int, source_rows: int, where: str) -> None:
        if (target_rows, source_rows) != (self.rows, self.sentences):
            raise BeamLayoutError(f"{where}: {target_rows} target rows and {source_rows} source rows do not fit "
                                  f"{self.sentences} sentences × {self.beam} hypotheses")

    def group(self, q: Tensor) -> Tensor:
        """(B·K, H, 1, Dh) → (B, H, K, Dh): a sentence's K hypotheses as K query positions of one row, so its
        one copy of the source K/V is read once, not once per hypothesis."""
        _, heads, n_queries, d_head = q.shape
        if n_queries != 1:
            raise BeamLayoutError(f"hypotheses can share a source only one query at a time; got {n_queries}")
        return q.view(self.sentences, self.beam, heads, d_head).transpose(1, 2)

    def ungroup(self, t: Tensor) -> Tensor:
        """(B, H, K, X) → (B·K, H, 1, X): back to one row per hypothesis."""
        return t.transpose(1, 2).flatten(0, 1).unsqueeze(2)


@dataclass
class KVCache:
    """Keys and values kept between decoding steps.

    Self-attention appends the new token's K/V at every step (`append`); cross-attention computes the K/V
    of the source (H_enc·W_K, H_enc·W_V) once per sentence (`static`).

    Appending copies only the new positions: K and V live in buffers with room for more positions, whose
    capacity doubles when full, and `k`, `v` are views of their first Tk positions. (Concatenating would copy
    the whole prefix at every step: O(T²) memory traffic for a sentence of T tokens instead of O(T).)
    """

    k: Tensor | None = None  # (B, H, Tk, Dh)
    v: Tensor | None = None  # (B, H, Tk, Dh)
    static: bool = False
    buffers: tuple[Tensor, Tensor] | None = field(default=None, repr=False)  # 2 × (B, H, capacity, Dh)

    @property
    def length(self) -> int:
        """Positions cached so far: the position of the next token."""
        return 0 if self.k is None else self.k.size(2)

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add the K/V of the new positions, (B, H, n, Dh) each; return the K/V of all positions so far."""
        length = 0 if self.k is None else self.k.size(2)
        end = length + k.size(2)
        if self.buffers is None or end > self.buffers[0].size(2):
            self.buffers = (self._grow(self.k, k, 2 * end), self._grow(self.v, v, 2 * end))
        k_buffer, v_buffer = self.buffers
        k_buffer[:, :, length:end] = k
        v_buffer[:, :, length:end] = v
        self.k, self.v = k_buffer[:, :, :end], v_buffer[:, :, :end]
        return self.k, self.v

    @staticmethod
    def _grow(old: Tensor | None, new: Tensor, capacity: int) -> Tensor:
        """A buffer of `capacity` positions holding `old` (B, H, Tk, Dh) at the start."""
        buffer = new.new_empty(new.size(0), new.size(1), capacity, new.size(3))  # (B, H, capacity, Dh)
        if old is not None:
            buffer[:, :, : old.size(2)] = old
        return buffer

    def index_select(self, index: Tensor) -> None:
        """Keep rows `index` of the batch (beam parents, or the sentences still being decoded)."""
        if self.k is None:
            return
        if self.buffers is None:
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)
            return
        # The whole buffers move (unused capacity included), so the next append needs no growing.
        length = self.k.size(2)
        self.buffers = (self.buffers[0].index_select(0, index), self.buffers[1].index_select(0, index))
        self.k, self.v = self.buffers[0][:, :, :length], self.buffers[1][:, :, :length]


class MultiHeadAttention(nn.Module):
    """Learned W_Q, W_K, W_V, W_O; H heads of width Dh attend in parallel (Note §9). With `rotary`, self-attention
    rotates every head's Q and K by their positions before the scores (cross-attention never: source and target
    positions are not comparable); the cache keeps rotated keys."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, rotary: RotaryPositions | None = None) -> None:
        super().__init__()
        self.rotary = rotary
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.dropout = dropout
        self.w_q = Linear(d_model, d_model)
        self.w_k = Linear(d_model, d_model)
        self.w_v = Linear(d_model, d_model)
        self.w_o = Linear(d_model, d_model)
        self._stacked_cache = DerivedCache()  # see `project`
        for projection in (self.w_q, self.w_k, self.w_v, self.w_o):
            nn.init.xavier_uniform_(projection.weight)
            nn.init.zeros_(projection.bias)

    def split_heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.d_head).transpose(1, 2)  # (B, T, D) → (B, H, T, Dh)

    def merge_heads(self, x: Tensor) -> Tensor:
        b, _, t, _ = x.shape
        return x.transpose(1, 2).reshape(b, t, self.n_heads * self.d_head)  # (B, H, T, Dh) → (B, T, D)

    def project(self, x: Tensor, *projections: nn.Linear) -> tuple[Tensor, ...]:
        """x·Wᵀ + b for each of `projections`, split into heads: (B, T, D) → n × (B, H, T, Dh)."""
        return self.project_stacked(x, *projections).unbind(0)

    def project_stacked(self, x: Tensor, *projections: nn.Linear) -> Tensor:
        """`project`'s n results stacked in front, a view of one product: (B, T, D) → (n, B, H, T, Dh).

        Without autograd (translation), the weights are stacked, e.g. [W_Q; W_K; W_V], and the projections
        are one matrix product: one pass over x, one call instead of three. The stacked copy is built once
        and rebuilt only when a parameter changes (in place, as an optimizer step does, or by replacement).
        With autograd (training) the stack is concatenated at every call (autograd hands each W its slice of
        the gradient), still one product forward and two backward instead of three and six.
        """
        b, t, _ = x.shape
        if torch.is_grad_enabled():
            weight = torch.cat([projection.weight for projection in projections])  # (n·D, D)
            bias = torch.cat([projection.bias for projection in projections])  # (n·D,)
            y = F.linear(x, weight, bias)  # (B, T, n·D)
        else:
            weight, bias, packed = self._stacked(projections, x.device.type)  # (n·D, D), (n·D,), its packed copy
            y = linear(x, weight, bias, packed)  # (B, T, n·D)
        y = y.view(b, t, len(projections), self.n_heads, self.d_head)  # (B, T, n, H, Dh)
        return y.permute(2, 0, 3, 1, 4)  # (n, B, H, T, Dh)

    def _stacked(self, projections: tuple[nn.Linear, ...], device_type: str) -> tuple[Tensor, Tensor, Tensor | None]:
        # Under autocast the copy is kept in the autocast dtype: cast once, not at every call.
        autocast = torch.is_autocast_enabled(device_type)
        dtype = torch.get_autocast_dtype(device_type) if autocast else projections[0].weight.dtype
        parameters = [p for projection in projections for p in (projection.weight, projection.bias)]

        def build() -> tuple[Tensor, Tensor, Tensor | None]:
            weight = torch.cat([projection.weight for projection in projections]).to(dtype)
            bias = torch.cat([projection.bias for projection in projections]).to(dtype)
            return weight, bias, projections[0].inference_copy(weight, bias)  # e.g. packed, or int8

        return self._stacked_cache.derive((*(id(projection) for projection in projections), dtype), parameters, build)

    def keys_values(self, source: Tensor) -> tuple[Tensor, Tensor]:
        """K = source·W_K, V = source·W_V, split into heads: (B, Tk, D) → 2 × (B, H, Tk, Dh)."""
        return self.project(source, self.w_k, self.w_v)

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None = None,
        *,
        mask: Tensor | None = None,
        causal: bool = False,
        cache: KVCache | None = None,
        need_weights: bool = False,
        layout: BeamLayout | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Self-attention when `memory` is None (Q, K, V all from x); cross-attention otherwise
        (Q from x, K and V from memory). x: (B, Tq, D) → (B, Tq, D) and weights (B, H, Tq, Tk).

        Cross-attention during decoding passes `memory` = None and a static `cache` holding its K/V, and,
        in beam search, the `layout` saying which query rows share which source row."""
        if cache is not None and cache.static and cache.k is not None:
            q = self.split_heads(self.w_q(x))  # (B, H, Tq, Dh)
            k, v = cache.k, cache.v  # the source's K/V, computed once per sentence
        elif memory is not None:  # cross-attention
            q = self.split_heads(self.w_q(x))  # (B, H, Tq, Dh)
            k, v = self.keys_values(memory)  # (B, H, Tk, Dh)
            if cache is not None:
                cache.k, cache.v = k, v
        else:  # self-attention: Q, K and V from x in one matrix product
            qkv = self.project_stacked(x, self.w_q, self.w_k, self.w_v)  # (3, B, H, Tq, Dh)
            q, k, v = qkv.unbind(0)  # (B, H, Tq, Dh) each
            if self.rotary is not None:  # the new tokens sit after the cached ones; Q and K turn in one call
                offset = cache.length if cache is not None else 0
                q, k = self.rotary(qkv[:2], offset).unbind(0)  # (B, H, Tq, Dh) each
            if cache is not None:
                k, v = cache.append(k, v)  # the prefix's K/V plus the new tokens'
        grouped = layout is not None and layout.beam > 1
        if layout is not None:
            layout.check(q.size(0), k.size(0), "attention")
        elif q.size(0) != k.size(0):
            raise BeamLayoutError(f"{q.size(0)} query rows but {k.size(0)} key rows: pass the search's BeamLayout")
        if grouped:
            q = layout.group(q)  # (B·K, H, 1, Dh) → (B, H, K, Dh)
        dropout_p = self.dropout if self.training else 0.0
        out, weights = scaled_dot_product_attention(
            q, k, v, mask, causal=causal, dropout_p=dropout_p, need_weights=need_weights
        )  # (B, H, Tq, Dh)
        if grouped:  # back to one row per hypothesis: (B, H, K, ·) → (B·K, H, 1, ·)
            out, weights = (None if t is None else layout.ungroup(t) for t in (out, weights))
        return self.w_o(self.merge_heads(out)), weights  # concatenate the heads, then W_O
