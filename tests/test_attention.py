"""Note §3 and §9: the two attention paths agree, and agree with PyTorch's own multi-head attention."""

import pytest
import torch
from torch import nn

from zhen.attention import (
    CPU_FORMULA_MAX_KEYS,
    KVCache,
    MultiHeadAttention,
    _formula_is_faster,
    causal_mask,
    scaled_dot_product_attention,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def random_qkv(b=2, h=4, tq=5, tk=7, dh=8):
    return torch.randn(b, h, tq, dh), torch.randn(b, h, tk, dh), torch.randn(b, h, tk, dh)


def mask_case(case: str):
    """q, k, v, mask, causal for one of MASK_CASES: no mask, padding, causal, both, causal with Tq < Tk."""
    tq, tk = (3, 7) if case == "causal-rectangular" else (6, 6)
    q, k, v = random_qkv(tq=tq, tk=tk)
    mask = None
    if "padding" in case:
        mask = torch.ones(2, 1, 1, tk, dtype=torch.bool)
        mask[1, ..., 4:] = False
    return q, k, v, mask, case.startswith("causal")


MASK_CASES = ["none", "padding", "causal", "causal+padding", "causal-rectangular"]


def test_formula_by_hand():
    """softmax(QKᵀ/√d_k)·V, computed with plain loops, for one head."""
    q, k, v = random_qkv(b=1, h=1, tq=3, tk=4, dh=2)
    out, weights = scaled_dot_product_attention(q, k, v, need_weights=True)
    for i in range(3):
        scores = torch.tensor([float(q[0, 0, i] @ k[0, 0, j]) / 2**0.5 for j in range(4)])
        w = torch.softmax(scores, dim=0)
        torch.testing.assert_close(weights[0, 0, i], w)
        torch.testing.assert_close(out[0, 0, i], sum(w[j] * v[0, 0, j] for j in range(4)))


@pytest.mark.parametrize("long", [False, True], ids=["short", "long"])
@pytest.mark.parametrize("case", MASK_CASES)
def test_readable_path_equals_fused_path(case, long):
    """The formula (with weights) against PyTorch's fused kernel itself, and against what zhen runs without
    weights: the formula for short sequences on the CPU, the fused kernel for long ones."""
    q, k, v, mask, causal = mask_case(case)
    if long:  # past CPU_FORMULA_MAX_KEYS: the path without weights is the fused kernel
        q, k, v = (t.repeat_interleave(CPU_FORMULA_MAX_KEYS // 4, dim=2) for t in (q, k, v))
        mask = None if mask is None else mask.repeat_interleave(CPU_FORMULA_MAX_KEYS // 4, dim=-1)
        assert k.size(2) > CPU_FORMULA_MAX_KEYS
    fast, none = scaled_dot_product_attention(q, k, v, mask, causal=causal)
    slow, weights = scaled_dot_product_attention(q, k, v, mask, causal=causal, need_weights=True)
    assert none is None and weights.shape == (2, 4, q.size(2), k.size(2))
    allowed = mask
    if causal:
        allowed = causal_mask(q.size(2), k.size(2)) if mask is None else mask & causal_mask(q.size(2), k.size(2))
    kernel = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    torch.testing.assert_close(slow, kernel, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast, kernel, rtol=1e-5, atol=1e-5)


def test_the_cpu_takes_the_formula_for_short_sequences_and_the_kernel_for_long_ones():
    short, long = (torch.randn(1, 1, n, 8) for n in (CPU_FORMULA_MAX_KEYS, CPU_FORMULA_MAX_KEYS + 1))
    assert _formula_is_faster(short, short) and not _formula_is_faster(long, long)
    assert _formula_is_faster(long.bfloat16(), long.bfloat16())  # bf16: the fused CPU kernel is always slower


def test_weights_rows_sum_to_one_and_masked_cells_are_exactly_zero():
    q, k, v = random_qkv(tq=6, tk=6)
    mask = torch.ones(2, 1, 1, 6, dtype=torch.bool)
    mask[0, ..., 3:] = False
    _, weights = scaled_dot_product_attention(q, k, v, mask, causal=True, need_weights=True)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 6))
    allowed = mask & causal_mask(6, 6)
    assert torch.all(weights.masked_select(~allowed.expand_as(weights)) == 0)
    assert torch.all(weights.masked_select(allowed.expand_as(weights)) > 0)


def test_causal_mask_aligns_last_query_with_last_key():
    assert causal_mask(3, 3).tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    assert causal_mask(1, 4).tolist() == [[1, 1, 1, 1]]
    assert causal_mask(2, 4).tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]


@pytest.mark.parametrize("n_heads", [1, 4])
@pytest.mark.parametrize("need_weights", [False, True])
def test_equals_torch_multihead_attention(n_heads, need_weights):
    """Same W_Q, W_K, W_V, W_O copied into nn.MultiheadAttention give the same output and weights."""
    d_model = 16
    ours = MultiHeadAttention(d_model, n_heads).eval()
    ref = nn.MultiheadAttention(d_model, n_heads, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([ours.w_q.weight, ours.w_k.weight, ours.w_v.weight]))
        ref.in_proj_bias.copy_(torch.cat([ours.w_q.bias, ours.w_k.bias, ours.w_v.bias]))
        ref.out_proj.weight.copy_(ours.w_o.weight)
        ref.out_proj.bias.copy_(ours.w_o.bias)
    x, memory = torch.randn(3, 5, d_model), torch.randn(3, 7, d_model)
    keep = torch.ones(3, 7, dtype=torch.bool)
    keep[2, 5:] = False
    out, weights = ours(x, memory, mask=keep[:, None, None, :], need_weights=need_weights)
    ref_out, ref_weights = ref(x, memory, memory, key_padding_mask=~keep, average_attn_weights=False)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    if need_weights:
        torch.testing.assert_close(weights, ref_weights, rtol=1e-5, atol=1e-5)


def test_self_attention_cache_equals_full_causal_pass():
    attn = MultiHeadAttention(16, 4).eval()
    x = torch.randn(2, 6, 16)
    full, _ = attn(x, causal=True)
    cache = KVCache()
    steps = [attn(x[:, t : t + 1], causal=True, cache=cache)[0] for t in range(6)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache.k.shape == (2, 4, 6, 4)


@pytest.mark.parametrize("case", MASK_CASES)
def test_bf16_on_cpu_agrees_with_fp32(case):
    """bf16 on the CPU takes the readable path (faster there than the fused kernel): same numbers,
    with every mask, the causal one included."""
    q, k, v, mask, causal = mask_case(case)
    reference, _ = scaled_dot_product_attention(q, k, v, mask, causal=causal)
    low, weights = scaled_dot_product_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask, causal=causal)
    assert low.dtype == torch.bfloat16 and weights is None
    torch.testing.assert_close(low.float(), reference, rtol=0.05, atol=0.05)


def test_cache_append_across_growth_equals_concatenation():
    """The cache buffer grows by doubling; what it holds is always the concatenation of what was appended."""
    cache = KVCache()
    ks, vs = [], []
    for n in (1, 1, 3, 1, 5, 1, 1):
        k, v = torch.randn(2, 4, n, 8), torch.randn(2, 4, n, 8)
        ks.append(k)
        vs.append(v)
        out_k, out_v = cache.append(k, v)
        assert torch.equal(out_k, torch.cat(ks, dim=2)) and torch.equal(out_v, torch.cat(vs, dim=2))
        assert out_k is cache.k and cache.buffers[0].size(2) >= cache.k.size(2)
    assert cache.k.shape == (2, 4, 13, 8)


def test_cache_index_select_then_append():
    """Reordering rows (beam parents) or dropping them (finished sentences) keeps the rows' own K/V."""
    cache = KVCache()
    k, v = torch.randn(3, 2, 4, 8), torch.randn(3, 2, 4, 8)
    cache.append(k, v)
    rows = torch.tensor([2, 2, 0])
    cache.index_select(rows)
    k_new, v_new = torch.randn(3, 2, 1, 8), torch.randn(3, 2, 1, 8)
    out_k, out_v = cache.append(k_new, v_new)
    assert torch.equal(out_k, torch.cat([k[rows], k_new], dim=2))
    assert torch.equal(out_v, torch.cat([v[rows], v_new], dim=2))
    cache.index_select(torch.tensor([1]))
    assert torch.equal(cache.k, torch.cat([k[[2]], k_new[[1]]], dim=2))


def test_stacked_projection_equals_separate_linears_and_follows_updates():
    """Q, K, V come from one product with [W_Q; W_K; W_V]: the same numbers as the three linears, with autograd
    the same gradients, and without it a cached stack rebuilt when a weight changes (in place, as an optimizer
    step changes it)."""
    attn = MultiHeadAttention(16, 4).eval()
    x = torch.randn(2, 5, 16)
    projections = (attn.w_q, attn.w_k, attn.w_v)
    separate = [attn.split_heads(w(x)) for w in projections]  # the formula: one linear at a time
    sum(((i + 1) * t).sum() for i, t in enumerate(separate)).backward()
    expected_grads = [p.grad.clone() for w in projections for p in (w.weight, w.bias)]
    attn.zero_grad()
    trained = attn.project(x, *projections)  # autograd on: one product of the concatenated weights
    sum(((i + 1) * t).sum() for i, t in enumerate(trained)).backward()
    for a, b in zip([p.grad for w in projections for p in (w.weight, w.bias)], expected_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        stacked = attn.project(x, *projections)
        for a, b, c in zip(separate, stacked, trained, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)
        attn.w_k.weight.mul_(2.0)
        attn.w_v.bias.add_(1.0)
        updated = attn.project(x, attn.w_q, attn.w_k, attn.w_v)
    expected = [attn.split_heads(w(x)) for w in projections]
    for a, b in zip(expected, updated, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
