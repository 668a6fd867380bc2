"""`zhen explain`: the numbers it shows are the model's own.

A tiny random model (fp32, CPU, eval mode) is traced step by step and compared with `model.encode`,
`model.decode`, `model.forward`, `model.decode_step` and `zhen.search.greedy_search`; then the whole
command runs on a model directory with a real (tiny) SentencePiece tokenizer and writes text, PNGs and HTML.
"""

from __future__ import annotations

import io
import warnings

import pytest
import torch

from zhen.checkpoint import load_model_dir, save_model_dir
from zhen.cli import main
from zhen.config import Config, DecodeConfig, ModelConfig, TokenizerConfig
from zhen.explain import AttentionTrace, ExplainError, Trace, explain_sentence, greedy_walk, trace_encoder
from zhen.explain.render import View, render_sections, render_text
from zhen.model import Transformer
from zhen.search import EOS_ID, greedy_search, max_output_lengths
from zhen.tokenizer import Tokenizer

D, H, F, LAYERS = 32, 4, 64, 2
SRC = [5, 9, 7, 12, EOS_ID]  # a source sentence of S = 5 ids, as encode_src makes them (EOS last)
TOL = {"atol": 1e-5, "rtol": 1e-5}
VARIANTS = [{}, {"norm": "pre"}, {"activation": "gelu"}, {"tie_output": False}, {"positions": "learned"},
            {"positions": "rotary"}]


def tiny(**overrides) -> ModelConfig:
    settings = dict(src_vocab_size=40, tgt_vocab_size=30, d_model=D, n_heads=H, d_ff=F, n_encoder_layers=LAYERS,
                    n_decoder_layers=LAYERS, dropout=0.0, max_positions=64)
    return ModelConfig(**{**settings, **overrides})


def random_model(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(tiny(**overrides)).eval()


def walk(model: Transformer, ids: list[int] = SRC, max_len: int = 6):
    encoder = trace_encoder(model, ids, [f"s{i}" for i in ids])
    return encoder, greedy_walk(model, encoder, max_len=max_len, piece=lambda i: f"t{i}")


def attentions(encoder, steps) -> list[AttentionTrace]:
    found = [layer.self_attn for layer in encoder.layers]
    for step in steps:
        found += [a for layer in step.decoder.layers for a in (layer.self_attn, layer.cross_attn)]
    return found


# ----------------------------------------------------------------------------- the trace is the model


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_trace_ends_where_the_model_ends(variant):
    model = random_model(**variant)
    src = torch.tensor([SRC])
    encoder, steps = walk(model)
    encoded = model.encode(src, need_weights=True)

    torch.testing.assert_close(encoder.embedding.x, model.src_embed(src)[0], **TOL)  # Note §1
    torch.testing.assert_close(encoder.memory, encoded.memory[0], **TOL)  # H_enc
    for layer, weights in zip(encoder.layers, encoded.self_attention, strict=True):
        torch.testing.assert_close(layer.self_attn.weights, weights[0], **TOL)

    cache = model.start_decoding(encoded)
    for step in steps:
        tgt = torch.tensor([step.decoder.embedding.ids])  # <s> + the tokens chosen so far: (1, T)
        decoded = model.decode(tgt, encoded.memory, encoded.src_mask, need_weights=True)
        torch.testing.assert_close(step.decoder.embedding.x, model.tgt_embed(tgt)[0], **TOL)
        torch.testing.assert_close(step.decoder.hidden, decoded.hidden[0], **TOL)
        for layer, self_w, cross_w in zip(step.decoder.layers, decoded.self_attention, decoded.cross_attention,
                                          strict=True):
            torch.testing.assert_close(layer.self_attn.weights, self_w[0], **TOL)
            torch.testing.assert_close(layer.cross_attn.weights, cross_w[0], **TOL)
        torch.testing.assert_close(step.logits, model(src, tgt)[0, -1], **TOL)  # the logits = forward's
        # and the incremental, cached path that translation uses gives the same distribution
        log_probs = model.decode_step(tgt[:, -1:], cache)[0]
        torch.testing.assert_close(step.logits.log_softmax(-1), log_probs, **TOL)
        torch.testing.assert_close(step.probs.sum(), torch.tensor(1.0), **TOL)


def test_padding_in_the_source_is_masked_like_the_model_masks_it():
    model = random_model()
    ids = [5, 9, EOS_ID, 0, 0]
    encoder = trace_encoder(model, ids, [str(i) for i in ids])
    torch.testing.assert_close(encoder.memory, model.encode(torch.tensor([ids])).memory[0], **TOL)
    for layer in encoder.layers:
        assert layer.self_attn.allowed[:, 3:].any().item() is False
        assert torch.equal(layer.self_attn.weights[:, :, 3:], torch.zeros(H, 5, 2))


@pytest.mark.parametrize("variant", VARIANTS[:2], ids=str)
def test_attention_rows_sum_to_one_and_masked_cells_are_exactly_zero(variant):
    encoder, steps = walk(random_model(**variant))
    for attn in attentions(encoder, steps):
        torch.testing.assert_close(attn.weights.sum(-1), torch.ones(attn.weights.shape[:2]), **TOL)
        assert torch.all(attn.weights[:, ~attn.allowed] == 0)
        # the displayed score table is what the model's softmax turned into these weights
        torch.testing.assert_close(attn.scores.softmax(-1), attn.weights, **TOL)
        torch.testing.assert_close(attn.heads, attn.weights @ attn.v_heads, **TOL)  # the weighted sum of V
    final = steps[-1].decoder
    t = len(final.embedding.ids)
    for layer in final.layers:
        assert torch.equal(layer.self_attn.allowed, torch.ones(t, t, dtype=torch.bool).tril())  # 遮右边
        assert torch.equal(layer.self_attn.weights.triu(1), torch.zeros(H, t, t))  # the future gets exactly 0
        assert layer.cross_attn.allowed.all()  # cross-attention only masks padding


def test_every_step_has_the_right_shape():
    model = random_model()
    encoder, steps = walk(model, max_len=4)
    s, dh = len(SRC), D // H
    emb = encoder.embedding
    for tensor in (emb.rows, emb.scaled, emb.positions, emb.x, encoder.memory):
        assert tensor.shape == (s, D)
    for layer in encoder.layers:
        a = layer.self_attn
        assert a.q.shape == a.k.shape == a.v.shape == a.concat.shape == a.out.shape == (s, D)
        assert a.q_heads.shape == a.k_heads.shape == a.v_heads.shape == a.heads.shape == (H, s, dh)
        assert a.scores.shape == a.weights.shape == (H, s, s) and a.allowed.shape == (s, s)
        assert layer.ffn.up.shape == layer.ffn.activated.shape == (s, F) and layer.ffn.out.shape == (s, D)
        for add_norm in (layer.self_attn_norm, layer.ffn_norm):
            assert add_norm.x.shape == add_norm.fx.shape == add_norm.out.shape == (s, D)
    assert [step.step for step in steps] == list(range(1, len(steps) + 1))
    for step in steps:
        t = step.step  # the decoder reads <s> + step - 1 tokens
        assert step.decoder.hidden.shape == (t, D) and step.logits.shape == step.probs.shape == (30,)
        for layer in step.decoder.layers:
            assert layer.self_attn.q.shape == (t, D) and layer.self_attn.weights.shape == (H, t, t)
            assert layer.cross_attn.q.shape == (t, D) and layer.cross_attn.k.shape == (s, D)
            assert layer.cross_attn.weights.shape == (H, t, s) and layer.cross_attn.heads.shape == (H, t, dh)
            assert layer.ffn.up.shape == (t, F)
        assert len(step.top) == 5 and step.top == sorted(step.top, key=lambda c: -c.prob)


@pytest.mark.parametrize("seed", range(4))
def test_greedy_walk_chooses_the_tokens_of_greedy_search(seed):
    model = random_model(seed, norm="pre" if seed % 2 else "post")
    src = torch.tensor([SRC])
    max_len = int(max_output_lengths(src, 1.0, 3, model.config.max_positions, 0)[0])
    _, steps = walk(model, max_len=max_len)
    expected = greedy_search(model, src, max_len_a=1.0, max_len_b=3)[0][0].tokens
    assert [s.chosen for s in steps] == [*expected, EOS_ID]
    assert steps[-1].rule or steps[-1].chosen == steps[-1].top[0].id


def test_a_model_that_stops_at_once_is_explained_too():
    model = random_model()
    with torch.no_grad():  # push every final hidden state towards the </s> row of the output layer
        model.decoder_layers[-1].ffn_norm.norm.bias.copy_(model.output.weight[EOS_ID] * 100)
    _, steps = walk(model)
    assert [s.chosen for s in steps] == [EOS_ID] == [*greedy_search(model, torch.tensor([SRC]), max_len_a=1.0,
                                                                     max_len_b=1)[0][0].tokens, EOS_ID]
    assert steps[0].decoder.layers[0].self_attn.weights.shape == (H, 1, 1)


# ----------------------------------------------------------------------------- the command, on a model directory

SUBJECTS = [("我", "I"), ("你", "you"), ("他", "he"), ("她", "she"), ("我们", "we"), ("他们", "they")]
VERBS = [("爱", "love"), ("喜欢", "like"), ("看", "see"), ("想", "miss"), ("认识", "know"), ("帮助", "help")]
OBJECTS = [("你", "you"), ("猫", "cats"), ("狗", "dogs"), ("书", "books"), ("茶", "tea"), ("米饭", "rice"),
           ("中国", "China"), ("音乐", "music"), ("老师", "the teacher"), ("妈妈", "mom")]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A model directory: a SentencePiece tokenizer trained on 360 made-up pairs and a random tiny model."""
    root = tmp_path_factory.mktemp("explain")
    pairs = [(s + v + o, f"{se} {ve} {oe}.") for s, se in SUBJECTS for v, ve in VERBS for o, oe in OBJECTS]
    tokenizer = Tokenizer.train(pairs, TokenizerConfig(vocab_size=300), root / "tokenizer")
    config = Config(model=tiny(src_vocab_size=tokenizer.src_vocab_size, tgt_vocab_size=tokenizer.tgt_vocab_size),
                    decode=DecodeConfig(beam=1, max_len_a=1.0, max_len_b=3))
    torch.manual_seed(0)
    return save_model_dir(root / "model", Transformer(config.model).eval(), config, tokenizer)


def test_explain_prints_the_note_in_order_and_writes_pictures_and_html(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["explain", "我爱你", "--model", str(model_dir), "--out", str(out), "--html"]) == 0
    text = capsys.readouterr().out
    headings = ["Note §1 · tokens → ids", "Note §1 · embeddings", "Note §2 · Q = X·W_Q",
                "Note §3 · scores QKᵀ/√d_k  (head 1 of 4, encoder layer 1 of 2)", "Note §3 · softmax weights",
                "Note §3 · weighted sum", "Note §9 · Concat", "Note §4 · residual + LayerNorm", "Note §5 · FFN",
                "encoder layer 2 of 2", "Note §7 · the decoder", "Note §7–§8 · step 1", "masked self-attention",
                "cross-attention", "Note §8 · logits", "chosen:", "Note §7 · masked self-attention of the whole output",
                "Note §8 · the translation"]
    position = 0
    for heading in headings:  # each one after the one before
        position = text.find(heading, position)
        assert position >= 0, f"{heading!r} missing or out of order"
    assert "我" in text and "你" in text

    for name in ("encoder_self_attention_layer2.png", "decoder_self_attention_layer2.png",
                 "cross_attention_layer2.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "walkthrough.html").read_text(encoding="utf-8")
    assert page.count('src="data:image/png;base64,') == 3
    assert "http://" not in page and "https://" not in page and "<link" not in page and "<script" not in page
    assert "Note §3 · softmax weights" in page and "我" in page


def test_printed_attention_rows_sum_to_one(model_dir):
    loaded = load_model_dir(model_dir)
    trace = explain_sentence(loaded.model, loaded.tokenizer, "我爱你", decode=loaded.config.decode)
    sections = render_sections(trace, View())
    tables = [b for s in sections for b in s.blocks if not isinstance(b, str) and b.shade]
    assert len(tables) > 2 * len(trace.steps)
    for table in tables:
        sigma = table.header.index("Σ")
        for row in table.rows:
            assert row[sigma] == "1.000"
            if "…" not in row:
                assert sum(float(cell) for cell in row[1:sigma]) == pytest.approx(1.0, abs=0.01)
    text = render_text(sections)
    assert text.count("1.000") >= sum(len(t.rows) for t in tables)
    masked = next(t for s in sections if "masked self-attention of the whole output" in s.title
                  for t in s.blocks if not isinstance(t, str))
    for i, row in enumerate(masked.rows):  # zeros above the diagonal, printed as an exact 0
        assert all(cell == "0" for cell in row[i + 2 : masked.header.index("Σ")])
    assert [s.chosen for s in trace.steps][:-1] == trace.output_ids


def test_layer_and_head_choose_what_is_shown(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["explain", "我爱你", "--model", str(model_dir), "--layer", "1", "--head", "3", "--values", "3",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "head 3 of 4, encoder layer 1 of 2" in text and "encoder layer 2 of 2" not in text
    assert "decoder layer 1 of 2" in text and "decoder layer 2 of 2" not in text
    assert sorted(p.name for p in out.iterdir()) == ["cross_attention_layer1.png", "decoder_self_attention_layer1.png",
                                                     "encoder_self_attention_layer1.png"]


def test_pre_norm_is_described_as_pre_norm():
    model = random_model(norm="pre")
    encoder, steps = walk(model, max_len=2)
    trace = Trace("x", "x", model.config, encoder, steps, 2, [], "")
    text = render_text(render_sections(trace, View()))
    assert "y = x + Attention(LayerNorm(x))" in text and "y = LayerNorm(x + Attention(x))" not in text
    assert "X here is LayerNorm(x)" in text


@pytest.mark.parametrize(("args", "message"), [
    (["--model", "{tmp}/missing"], "model directory not found"),
    (["--head", "5"], "--head must be between 1 and 4"),
    (["--layer", "3"], "--layer must be between 1 and 2"),
])
def test_bad_requests_are_one_line_errors(model_dir, tmp_path, capsys, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    full = ["explain", "我爱你", *(["--model", str(model_dir)] if "--model" not in args else []), *args]
    assert main(full) == 2
    assert message in capsys.readouterr().err


def test_an_empty_sentence_is_an_error(model_dir):
    loaded = load_model_dir(model_dir)
    with pytest.raises(ExplainError, match="empty"):
        explain_sentence(loaded.model, loaded.tokenizer, "   ", normalize=str.strip)


# ----------------------------------------------------------------------------- Chinese glyphs, not tofu


def test_chinese_labels_render_with_the_packaged_cjk_font():
    import noto_cjk_sans_otc
    from matplotlib.figure import Figure
    from matplotlib.ft2font import FT2Font

    from zhen.explain.plot import attention_figure, cjk_font_family

    assert "CJK" in cjk_font_family()
    font = FT2Font(str(noto_cjk_sans_otc.FONT_PATH))
    assert all(font.get_char_index(ord(c)) != 0 for c in "我爱你▁")

    def missing_glyph_warnings(draw) -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            draw().savefig(io.BytesIO(), format="png")
        return [str(w.message) for w in caught if "missing from" in str(w.message)]

    weights = torch.full((2, 2, 3), 1 / 3)
    allowed = torch.ones(2, 3, dtype=torch.bool)
    assert missing_glyph_warnings(lambda: attention_figure(weights, allowed, ["▁I", "love"], ["我", "爱", "你"],
                                                           "我爱你")) == []

    def without_cjk_font():  # the control: the same labels in matplotlib's default font are tofu
        fig = Figure()
        fig.text(0.5, 0.5, "我爱你", family="DejaVu Sans")
        return fig

    assert missing_glyph_warnings(without_cjk_font)
