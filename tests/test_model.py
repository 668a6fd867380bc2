"""The network's behaviour: causality, padding invariance, cache equivalence, parameter count, learning."""

import pytest
import torch
import torch.nn.functional as F

from zhen.attention import BeamLayout, BeamLayoutError
from zhen.config import ModelConfig, load_config
from zhen.embedding import sinusoidal_table
from zhen.model import Transformer

PAD, BOS, EOS = 0, 2, 3


def tiny(**overrides) -> ModelConfig:
    settings = dict(src_vocab_size=40, tgt_vocab_size=30, d_model=32, n_heads=4, d_ff=64,
                    n_encoder_layers=2, n_decoder_layers=2, dropout=0.0, max_positions=64)
    return ModelConfig(**{**settings, **overrides})


def model_for(**overrides) -> Transformer:
    torch.manual_seed(0)
    return Transformer(tiny(**overrides)).eval()


VARIANTS = [{}, {"norm": "pre"}, {"positions": "learned"}, {"positions": "rotary"}, {"activation": "gelu"},
            {"tie_output": False},
            {"share_embeddings": True, "src_vocab_size": 30}]


def random_ids(b, t, vocab):
    return torch.randint(4, vocab, (b, t))


def test_sinusoidal_table_matches_paper_formula():
    table = sinusoidal_table(10, 8)
    for pos in (0, 3, 9):
        for i in range(4):
            angle = pos / 10000 ** (2 * i / 8)
            assert table[pos, 2 * i].item() == pytest.approx(torch.sin(torch.tensor(angle)).item(), abs=1e-6)
            assert table[pos, 2 * i + 1].item() == pytest.approx(torch.cos(torch.tensor(angle)).item(), abs=1e-6)


def test_embedding_is_scaled_by_sqrt_d_model_and_positions_are_added():
    model = model_for()
    ids = torch.tensor([[5, 6, 7]])
    expected = model.src_embed.tokens.embed(ids) * 32**0.5 + sinusoidal_table(64, 32)[:3]
    torch.testing.assert_close(model.src_embed(ids), expected)


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_causality_future_target_tokens_do_not_change_past_logits(variant):
    model = model_for(**variant)
    src = random_ids(2, 6, 30)
    tgt = random_ids(2, 8, 30)
    logits = model(src, tgt)
    for t in range(7):
        changed = tgt.clone()
        changed[:, t + 1 :] = random_ids(2, 7 - t, 30)
        assert not torch.equal(changed[:, t + 1 :], tgt[:, t + 1 :])
        torch.testing.assert_close(model(src, changed)[:, : t + 1], logits[:, : t + 1], rtol=1e-5, atol=1e-5)
    # and the future does matter when it is allowed to: the last position sees everything
    changed = tgt.clone()
    changed[:, 0] = (tgt[:, 0] + 1 - 4) % 26 + 4
    assert not torch.allclose(model(src, changed)[:, -1], logits[:, -1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_causality_holds_under_autocast_in_training_mode(dtype):
    """The training path (dropout on, bf16 autocast on CPUs that have it): the future stays hidden."""
    model = model_for(dropout=0.0).train()
    src, tgt = random_ids(2, 6, 30), random_ids(2, 8, 30)
    changed = tgt.clone()
    changed[:, 5:] = random_ids(2, 3, 30)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        a, b = model(src, tgt), model(src, changed)
    torch.testing.assert_close(a[:, :5], b[:, :5], rtol=0, atol=0)
    assert not torch.equal(a[:, 5:], b[:, 5:])


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_source_padding_does_not_change_outputs(variant):
    model = model_for(**variant)
    src = random_ids(1, 5, 30)
    tgt = random_ids(1, 4, 30)
    padded = torch.cat([src, torch.full((1, 7), PAD)], dim=1)
    torch.testing.assert_close(model(padded, tgt), model(src, tgt), rtol=1e-5, atol=1e-5)
    encoded, encoded_padded = model.encode(src), model.encode(padded)
    torch.testing.assert_close(encoded_padded.memory[:, :5], encoded.memory, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("positions", ["sinusoidal", "rotary"])
def test_padded_batch_equals_sentences_one_by_one(positions):
    model = model_for(positions=positions)
    a, b = random_ids(1, 3, 30), random_ids(1, 6, 30)
    tgt = random_ids(2, 4, 30)
    batch = torch.cat([torch.cat([a, torch.full((1, 3), PAD)], dim=1), b])
    logits = model(batch, tgt)
    torch.testing.assert_close(logits[:1], model(a, tgt[:1]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits[1:], model(b, tgt[1:]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_incremental_decoding_with_cache_equals_full_forward(variant):
    model = model_for(**variant)
    src = torch.cat([random_ids(3, 6, 30), torch.full((3, 1), EOS)], dim=1)
    src[2, 4:] = PAD
    tgt = torch.cat([torch.full((3, 1), BOS), random_ids(3, 7, 30)], dim=1)
    full = model(src, tgt).log_softmax(-1)
    encoded = model.encode(src)
    cache = model.start_decoding(encoded)
    steps = [model.decode_step(tgt[:, t : t + 1], cache) for t in range(tgt.size(1))]
    torch.testing.assert_close(torch.stack(steps, dim=1), full, rtol=1e-4, atol=1e-5)
    assert cache.length == 8 and cache.self_attn[0].k.shape == (3, 4, 8, 8)


def test_cache_reorder_and_select_follow_the_chosen_rows():
    """After reorder([2, 2, 0]), rows continue the prefixes of rows 2, 2 and 0 (one source, as in a beam)."""
    model = model_for()
    src = random_ids(1, 5, 30).expand(3, -1)
    tgt = random_ids(3, 4, 30)
    cache = model.start_decoding(model.encode(src))
    for t in range(3):
        model.decode_step(tgt[:, t : t + 1], cache)
    cache.reorder(torch.tensor([2, 2, 0]), BeamLayout(3))
    step = model.decode_step(tgt[:, 3:4], cache)
    continued = torch.cat([tgt[[2, 2, 0], :3], tgt[:, 3:4]], dim=1)
    expected = model(src, continued).log_softmax(-1)[:, -1]
    torch.testing.assert_close(step, expected, rtol=1e-4, atol=1e-5)
    cache.select(torch.tensor([1]), torch.tensor([1]), BeamLayout(1))
    assert cache.src_mask.size(0) == 1 and cache.cross_attn[0].k.size(0) == 1
    assert cache.self_attn[0].k.size(0) == 1


def test_beam_cache_shares_each_sentences_source_across_its_hypotheses():
    """start_decoding(beam=K): K target rows per sentence read one copy of its source K/V (and mask).
    Every row's next-token distribution equals a full forward pass of its own prefix, also after whole
    sentences leave the batch (select) and rows follow their parents (reorder)."""
    model = model_for()
    k = 3
    src = torch.cat([random_ids(2, 6, 30), torch.full((2, 1), EOS)], dim=1)
    src[1, 3:] = PAD  # (2, 7): the second sentence is padded
    tgt = torch.cat([torch.full((2 * k, 1), BOS), random_ids(2 * k, 4, 30)], dim=1)  # (B·K, 5)
    rows_src = src.repeat_interleave(k, dim=0)  # (B·K, 7): what each row reads
    cache = model.start_decoding(model.encode(src), beam=k)
    assert cache.cross_attn[0].k.size(0) == 2  # one copy per sentence, not per hypothesis
    for t in range(3):
        step = model.decode_step(tgt[:, t : t + 1], cache)
        expected = model(rows_src, tgt[:, : t + 1]).log_softmax(-1)[:, -1]
        torch.testing.assert_close(step, expected, rtol=1e-4, atol=1e-5)
    parents = torch.tensor([2, 2, 0, 4, 3, 3])  # each row continues a hypothesis of its own sentence
    cache.reorder(parents, BeamLayout(2, k))
    continued = torch.cat([tgt[parents, :3], tgt[:, 3:4]], dim=1)
    step = model.decode_step(tgt[:, 3:4], cache)
    torch.testing.assert_close(step, model(rows_src, continued).log_softmax(-1)[:, -1], rtol=1e-4, atol=1e-5)
    cache.select(torch.tensor([3, 4, 5]), torch.tensor([1]), BeamLayout(1, k))  # sentence 0 is done
    assert cache.cross_attn[0].k.size(0) == 1 and cache.src_mask.size(0) == 1
    step = model.decode_step(tgt[3:, 4:5], cache)
    continued = torch.cat([continued[3:], tgt[3:, 4:5]], dim=1)
    torch.testing.assert_close(step, model(rows_src[3:], continued).log_softmax(-1)[:, -1], rtol=1e-4, atol=1e-5)


def test_a_broken_beam_layout_is_a_clear_error():
    """Rows that do not fit the layout are refused where they are handed over, not guessed at."""
    model = model_for()
    src = torch.cat([random_ids(2, 5, 30), torch.full((2, 1), EOS)], dim=1)
    cache = model.start_decoding(model.encode(src), beam=2)
    with pytest.raises(BeamLayoutError, match="5 target rows and 2 source rows"):
        cache.reorder(torch.tensor([0, 0, 1, 2, 3]), BeamLayout(2, 2))
    with pytest.raises(BeamLayoutError, match="pass the search's BeamLayout"):  # 3 queries, 2 sources, no layout
        model.decoder_layers[0].cross_attn(torch.randn(3, 1, 32), model.encode(src).memory)
    cache.layout = BeamLayout(1, 4)  # 4 rows read the same source, but there are 2 sources
    with pytest.raises(BeamLayoutError, match="do not fit 1 sentences × 4 hypotheses"):
        model.decode_step(torch.full((4, 1), BOS), cache)


def test_attention_maps_returned_as_data():
    model = model_for()
    src, tgt = random_ids(2, 5, 30), random_ids(2, 4, 30)
    encoded = model.encode(src, need_weights=True)
    decoded = model.decode(tgt, encoded.memory, encoded.src_mask, need_weights=True)
    assert [w.shape for w in encoded.self_attention] == [(2, 4, 5, 5)] * 2
    assert [w.shape for w in decoded.self_attention] == [(2, 4, 4, 4)] * 2
    assert [w.shape for w in decoded.cross_attention] == [(2, 4, 4, 5)] * 2
    # the maps are not kept on the modules
    assert not any(isinstance(v, torch.Tensor) and v.dim() == 4 for m in model.modules() for v in vars(m).values())
    # and the readable path gives the same logits as the fused path
    torch.testing.assert_close(model.logits(decoded.hidden), model(src, tgt), rtol=1e-5, atol=1e-5)
    assert torch.all(decoded.self_attention[0].triu(diagonal=1) == 0)


def closed_form_parameter_count(c: ModelConfig) -> int:
    d, f = c.d_model, c.d_ff
    attention = 4 * (d * d + d)  # W_Q, W_K, W_V, W_O with biases
    ffn = d * f + f + f * d + d
    norm = 2 * d
    encoder = c.n_encoder_layers * (attention + ffn + 2 * norm)
    decoder = c.n_decoder_layers * (2 * attention + ffn + 3 * norm)
    embeddings = c.src_vocab_size * d + (0 if c.share_embeddings else c.tgt_vocab_size * d)
    output = 0 if c.tie_output else c.tgt_vocab_size * d
    final_norms = 2 * norm if c.norm == "pre" else 0
    return embeddings + encoder + decoder + output + final_norms


@pytest.mark.parametrize("overrides", [[], ["model.tie_output=false"], ["model.norm='pre'"]])
def test_parameter_count_of_base_config_matches_closed_form(overrides):
    config = load_config("configs/base.toml", overrides).model
    model = Transformer(config)
    assert sum(p.numel() for p in model.parameters()) == closed_form_parameter_count(config)
    assert (config.d_model, config.n_heads, config.d_ff, config.n_encoder_layers) == (512, 8, 2048, 6)


def test_base_with_shared_37k_vocabulary_has_the_papers_size():
    """Vaswani et al. report 65M parameters for the base model with a shared 37k vocabulary."""
    config = load_config("configs/base.toml").model
    config = ModelConfig(**{**config.__dict__, "src_vocab_size": 37000, "tgt_vocab_size": 37000,
                            "share_embeddings": True})
    n = sum(p.numel() for p in Transformer(config).parameters())
    assert n == closed_form_parameter_count(config) and 60e6 < n < 65.5e6


def test_tiny_model_overfits_a_handful_of_pairs():
    torch.manual_seed(0)
    model = Transformer(tiny(dropout=0.0))
    pairs = [([5, 6, 7], [8, 9]), ([10, 11], [12, 13, 14]), ([7, 6, 5, 15], [16]), ([20, 21, 22], [9, 8, 17])]
    s, t = max(len(p[0]) for p in pairs) + 1, max(len(p[1]) for p in pairs) + 1
    src = torch.tensor([a + [EOS] + [PAD] * (s - len(a) - 1) for a, _ in pairs])
    tgt_in = torch.tensor([[BOS] + b + [PAD] * (t - len(b) - 1) for _, b in pairs])
    tgt_out = torch.tensor([b + [EOS] + [PAD] * (t - len(b) - 1) for _, b in pairs])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = F.cross_entropy(model(src, tgt_in).flatten(0, 1), tgt_out.flatten(), ignore_index=PAD)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
    model.eval()
    assert torch.equal(model(src, tgt_in).argmax(-1)[tgt_out != PAD], tgt_out[tgt_out != PAD])


def test_tied_output_shares_the_target_embedding():
    model = model_for()
    assert model.output.weight is model.tgt_embed.tokens.weight
    untied = model_for(tie_output=False)
    assert untied.output.weight is not untied.tgt_embed.tokens.weight
    assert untied.output.weight.data_ptr() != untied.tgt_embed.tokens.weight.data_ptr()


def test_sequence_longer_than_position_table_is_a_clear_error():
    model = model_for()
    with pytest.raises(ValueError, match="max_positions"):
        model.encode(random_ids(1, 65, 30))
