"""Rotary positions (model.positions = "rotary"): scores see only relative offsets; both attention paths agree."""

import pytest
import torch

from zhen.attention import KVCache, MultiHeadAttention
from zhen.config import ModelConfig
from zhen.embedding import RotaryPositions
from zhen.explain.trace import trace_encoder
from zhen.model import Transformer


def test_scores_depend_only_on_the_relative_offset():
    torch.manual_seed(0)
    rotary = RotaryPositions(max_positions=64, d_head=8)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)  # (B, H, 1, Dh)

    def score(m: int, n: int) -> torch.Tensor:
        return (rotary(q, m) * rotary(k, n)).sum()

    for m, n in [(0, 3), (5, 2), (7, 7)]:
        for shift in (1, 10, 40):
            torch.testing.assert_close(score(m + shift, n + shift), score(m, n), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(score(0, 3), score(0, 4))  # a different offset, a different score


def test_rotation_keeps_lengths_and_position_zero_is_the_identity():
    rotary = RotaryPositions(16, 8)
    x = torch.randn(2, 3, 5, 8)
    torch.testing.assert_close(rotary(x).norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(rotary(x[:, :, :1]), x[:, :, :1])
    with pytest.raises(ValueError, match="max_positions"):
        rotary(x, offset=12)


def test_each_pair_turns_by_its_angle_and_q_k_stacked_turn_alike():
    torch.manual_seed(0)
    d_head, offset = 8, 3
    rotary = RotaryPositions(16, d_head)
    x = torch.randn(2, 1, 3, 5, d_head)  # (2, B, H, T, Dh): Q and K stacked, as self-attention passes them
    turned = rotary(x, offset)
    for m in range(5):
        for i in range(d_head // 2):  # pair (x_i, x_{i+Dh/2}) at position offset + m, angle (offset + m)·θ_i
            angle = torch.tensor((offset + m) * 10000.0 ** (-2 * i / d_head), dtype=torch.float64)
            cos, sin = angle.cos().float(), angle.sin().float()
            a, b = x[..., m, i], x[..., m, i + d_head // 2]
            torch.testing.assert_close(turned[..., m, i], a * cos - b * sin)
            torch.testing.assert_close(turned[..., m, i + d_head // 2], b * cos + a * sin)
    assert torch.equal(turned[0], rotary(x[0], offset)) and torch.equal(turned[1], rotary(x[1], offset))


def test_readable_and_fused_attention_agree_with_rotary():
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 4, rotary=RotaryPositions(32, 4)).eval()
    x = torch.randn(2, 6, 16)
    fused, _ = attn(x, causal=True)
    readable, weights = attn(x, causal=True, need_weights=True)
    torch.testing.assert_close(readable, fused, rtol=1e-5, atol=1e-5)
    assert weights is not None and weights.shape == (2, 4, 6, 6)


def test_cache_keeps_rotated_keys_at_their_absolute_positions():
    torch.manual_seed(0)
    rotary = RotaryPositions(32, 4)
    attn = MultiHeadAttention(16, 4, rotary=rotary).eval()
    x = torch.randn(1, 5, 16)
    with torch.no_grad():
        full, _ = attn(x, causal=True)
        cache = KVCache()
        steps = [attn(x[:, t : t + 1], causal=True, cache=cache)[0] for t in range(5)]
        _, k, _ = attn.project(x, attn.w_q, attn.w_k, attn.w_v)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cache.k, rotary(k), rtol=1e-5, atol=1e-5)


def test_rotary_positions_tell_word_order_apart():
    torch.manual_seed(0)
    config = ModelConfig(src_vocab_size=20, tgt_vocab_size=20, d_model=16, n_heads=2, d_ff=32, n_encoder_layers=1,
                         n_decoder_layers=1, dropout=0.0, max_positions=32, positions="rotary")
    model = Transformer(config).eval()
    assert model.src_embed.positions is None and not list(model.buffers(recurse=False))
    src = torch.tensor([[5, 6, 7, 3]])
    memory, swapped = model.encode(src).memory, model.encode(src[:, [1, 0, 2, 3]]).memory
    assert not torch.allclose(memory[0, 2], swapped[0, 2], atol=1e-4)  # same token, neighbours swapped
    assert "cos" not in str(model.state_dict().keys())  # nothing to save: a function of (P, Dh)
    traced = trace_encoder(model, [5, 6, 3], ["我", "爱你", "</s>"])  # explain turns Q and K as the model does
    torch.testing.assert_close(traced.memory, model.encode(torch.tensor([[5, 6, 3]])).memory[0])
    assert not traced.embedding.positions.any()  # nothing added to X
