"""zhen.interop: exports to CTranslate2 and Hugging Face Marian translate to zhen's tokens; Marian checkpoints
(opus-mt style: shared vocabulary, its own special ids, a logits bias) import into zhen and translate alike;
what zhen or Marian cannot represent is refused; a missing optional package names its extra.

Everything is built here from random weights and tokenizers trained on the built-in hsk corpus: nothing is
downloaded."""

from __future__ import annotations

import io
import json
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

pytest.importorskip("transformers")
pytest.importorskip("ctranslate2")

from transformers import MarianConfig, MarianMTModel, MarianTokenizer
from transformers.models.marian.modeling_marian import MarianSinusoidalPositionalEmbedding

from zhen.checkpoint import load_model_dir, save_model_dir
from zhen.cli import main
from zhen.config import Config, CorpusConfig, DecodeConfig, ModelConfig, TextConfig, TokenizerConfig
from zhen.data import load_pairs
from zhen.embedding import sinusoidal_table
from zhen.interop import InteropError, parity
from zhen.interop.ct2 import export_ctranslate2
from zhen.interop.marian import residual_permutation, to_marian_state
from zhen.interop.marian_export import export_marian
from zhen.interop.marian_import import import_marian
from zhen.model import Transformer
from zhen.special import EOS_ID
from zhen.text import Normalizer
from zhen.tokenizer import Tokenizer
from zhen.translator import Translator, one_line

SIZES = {"d_model": 32, "n_heads": 4, "d_ff": 64, "n_encoder_layers": 2, "n_decoder_layers": 2}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def hsk() -> list[tuple[str, str]]:
    pairs, _ = load_pairs([CorpusConfig(path="hsk")], Normalizer(TextConfig()), clean=True)
    return pairs


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory, hsk) -> Tokenizer:
    return Tokenizer.train(hsk, TokenizerConfig(vocab_size=400), tmp_path_factory.mktemp("tok"))


def sharpen(model: torch.nn.Module) -> None:
    """Random weights, but outputs that vary from token to token (see bench_translate.build_zhen), and random
    biases and LayerNorm gains, so that a tensor mapped to the wrong place shows."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") and "final_logits" not in name:
                parameter.normal_(0.0, 0.1)
            elif "norm" in name and name.endswith("weight"):
                parameter.normal_(1.0, 0.5)
            elif name.endswith(("w_q.weight", "w_k.weight", "q_proj.weight", "k_proj.weight")):
                parameter.mul_(2.0)


def zhen_model(root: Path, tokenizer: Tokenizer, **model: object) -> Path:
    config = ModelConfig(src_vocab_size=tokenizer.src_vocab_size, tgt_vocab_size=tokenizer.tgt_vocab_size,
                         dropout=0.0, max_positions=128, **{**SIZES, **model})
    torch.manual_seed(0)
    network = Transformer(config)
    sharpen(network)
    with torch.no_grad():
        network.output.weight.mul_(3.0)
        if config.output_bias:  # EOS likely enough that some hypotheses end before the length limit
            network.output.bias[EOS_ID] = 6.0
    decode = DecodeConfig(beam=5, max_len_a=1.0, max_len_b=8)
    return save_model_dir(root, network, Config(model=config, text=TextConfig(max_chars=200), decode=decode), tokenizer)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer) -> Path:
    return zhen_model(tmp_path_factory.mktemp("zhen") / "model", tokenizer, output_bias=True)


@pytest.fixture(scope="module")
def texts(model_dir) -> list[str]:
    return parity.sentences(load_model_dir(model_dir), "hsk", 24)


# ------------------------------------------------------------------------------------------ the layouts


def test_marian_sinusoids_are_zhens_with_the_model_dimension_permuted():
    marian = MarianSinusoidalPositionalEmbedding(64, 16).create_weight()
    assert torch.allclose(sinusoidal_table(64, 16)[:, residual_permutation(16)], marian, atol=1e-5)


def test_export_refuses_what_marian_cannot_represent(tmp_path, tokenizer):
    for setting, message in (({"norm": "pre"}, "pre-norm"), ({"positions": "learned"}, "learned positions")):
        directory = zhen_model(tmp_path / setting["norm" if "norm" in setting else "positions"], tokenizer, **setting)
        with pytest.raises(InteropError, match=message):
            to_marian_state(load_model_dir(directory).model)


# ------------------------------------------------------------------------------------------ zhen → Marian → zhen


@pytest.fixture(scope="module")
def marian_dir(tmp_path_factory, model_dir) -> Path:
    return export_marian(model_dir, tmp_path_factory.mktemp("hf") / "marian")


def test_marian_export_loads_with_from_pretrained_and_translates_to_zhens_tokens(model_dir, marian_dir, texts):
    results = parity.check(load_model_dir(model_dir), marian_dir, "marian", texts)
    assert [r.search for r in results] == ["source ids", "greedy"]
    assert all(r.passed for r in results), [str(r) for r in results]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenizer = MarianTokenizer.from_pretrained(marian_dir)
    model = MarianMTModel.from_pretrained(marian_dir).eval()
    zhen = Translator.load(model_dir, device="cpu", beam=1, max_len_a=0.0, max_len_b=9)  # ≤ 8 tokens, then EOS
    with torch.inference_mode():
        out = model.generate(**tokenizer(texts[:4], return_tensors="pt", padding=True), num_beams=1, max_new_tokens=8)
    # zhen prints one line per input (one_line: control characters that random byte pieces make become spaces)
    assert [one_line(t) for t in tokenizer.batch_decode(out, skip_special_tokens=True)] == zhen.translate(texts[:4])


def test_marian_round_trip_gives_back_the_same_model(tmp_path, model_dir, marian_dir, texts):
    back = load_model_dir(import_marian(marian_dir, tmp_path / "back"))
    original = load_model_dir(model_dir)
    assert back.config.model == original.config.model
    ours, theirs = original.model.state_dict(), back.model.state_dict()
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)
    assert back.tokenizer.encode_src(texts) == original.tokenizer.encode_src(texts)
    same_search = {"max_len_a": 1.0, "max_len_b": 8}  # Marian's generation config keeps the beam size only
    translated = Translator.load(tmp_path / "back", **same_search).translate(texts)
    assert translated == Translator.load(model_dir).translate(texts)


# ------------------------------------------------------------------------------------------ CTranslate2


@pytest.fixture(scope="module")
def ct2_dir(tmp_path_factory, model_dir) -> Path:
    return export_ctranslate2(model_dir, tmp_path_factory.mktemp("ct2") / "float32")


def test_ctranslate2_export_translates_to_zhens_tokens_greedy_and_beam_5(model_dir, ct2_dir, texts):
    results = parity.check(load_model_dir(model_dir), ct2_dir, "ctranslate2", texts)
    assert [r.search for r in results] == ["greedy", "beam 5"]
    assert all(r.passed for r in results), [str(r) for r in results]
    assert results[0].same == len(texts) and results[1].same >= 6  # a random model often runs to the limit


def test_ctranslate2_export_as_the_readme_uses_it(model_dir, ct2_dir, texts):
    import ctranslate2

    translator = ctranslate2.Translator(str(ct2_dir))
    sp_src = spm.SentencePieceProcessor(model_file=str(ct2_dir / "src.model"))
    sp_tgt = spm.SentencePieceProcessor(model_file=str(ct2_dir / "tgt.model"))
    results = translator.translate_batch(sp_src.encode(texts[:6], out_type=str), beam_size=1, max_decoding_length=9)
    zhen = Translator.load(model_dir, beam=1, max_len_a=0.0, max_len_b=10)  # 9 tokens and EOS at most
    assert [one_line(sp_tgt.decode(r.hypotheses[0])) for r in results] == zhen.translate(texts[:6])


def test_ctranslate2_int8_export_and_the_cli_check(tmp_path, model_dir, capsys):
    assert main(["export", str(model_dir), "--format", "ctranslate2", "--quantization", "int8", "-o",
                 str(tmp_path / "int8"), "--check", "--check-limit", "10"]) == 0
    out = capsys.readouterr().out
    assert "CTranslate2, int8" in out and "ctranslate2, greedy:" in out and "/10 sentences" in out
    config = json.loads((tmp_path / "int8" / "config.json").read_text())
    assert config["add_source_eos"] and config["decoder_start_token"] == "<s>"


def test_existing_output_and_bad_options_are_refused(model_dir, ct2_dir, capsys):
    assert main(["export", str(model_dir), "--format", "ctranslate2", "-o", str(ct2_dir)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["export", str(model_dir), "--format", "marian", "--quantization", "int8", "-o", "x"]) == 2
    assert "--quantization is for --format ctranslate2" in capsys.readouterr().err


def test_a_missing_extra_names_what_to_install(tmp_path, model_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # import ctranslate2 now raises ImportError
    assert main(["export", str(model_dir), "--format", "ctranslate2", "-o", str(tmp_path / "x")]) == 2
    assert "zhen: error: " in (err := capsys.readouterr().err) and "pip install 'zhen[ct2]'" in err
    monkeypatch.setitem(sys.modules, "transformers", None)
    assert main(["import-marian", str(tmp_path), "-o", str(tmp_path / "y")]) == 2
    assert "pip install 'zhen[hf]'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ opus-mt style imports


def marian_spm(sentences: list[str], size: int) -> bytes:
    """A SentencePiece model as Marian's are: <unk> 0, <s> 1, </s> 2, no <pad>, no byte fallback."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=model, vocab_size=size,
                                   hard_vocab_limit=False, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2,
                                   pad_id=-1, minloglevel=2)
    return model.getvalue()


def opus_style(directory: Path, hsk: list[tuple[str, str]], unlisted: str = "", **config: object) -> Path:
    """A random Marian checkpoint as opus-mt ships them: one vocabulary for both sides (</s> 0, <unk> 1, the
    pieces of both SentencePiece models, <pad> last), the decoder starting from <pad>, a logits bias, Swish.
    `unlisted`: a text whose source pieces the vocabulary leaves out (Marian's tokenizer maps them to <unk>)."""
    directory.mkdir(parents=True)
    source = marian_spm([zh for zh, _ in hsk[:200]], 400)  # 293 characters: all fit, as in a real vocabulary
    target = marian_spm([en for _, en in hsk], 300)
    (directory / "source.spm").write_bytes(source)
    (directory / "target.spm").write_bytes(target)
    names = ["</s>", "<unk>"]
    for model in (source, target):
        processor = spm.SentencePieceProcessor(model_proto=model)
        names += [p for p in map(processor.id_to_piece, range(processor.get_piece_size()))
                  if p not in names and not p.startswith("<")]
    names.append("<pad>")
    left_out = set(spm.SentencePieceProcessor(model_proto=source).encode(unlisted, out_type=str)) - {"▁"}
    names = [p for p in names if p not in left_out]
    (directory / "vocab.json").write_text(json.dumps({p: i for i, p in enumerate(names)}), encoding="utf-8")
    pad = len(names) - 1
    settings = {"vocab_size": len(names), "d_model": 32, "encoder_layers": 2, "decoder_layers": 2,
                "encoder_attention_heads": 4, "decoder_attention_heads": 4, "encoder_ffn_dim": 64,
                "decoder_ffn_dim": 64, "max_position_embeddings": 128, "activation_function": "swish",
                "scale_embedding": True, "share_encoder_decoder_embeddings": True, "pad_token_id": pad,
                "eos_token_id": 0, "decoder_start_token_id": pad, "forced_eos_token_id": None,
                "dropout": 0.0, **config}
    torch.manual_seed(1)
    model = MarianMTModel(MarianConfig(**settings)).eval()
    sharpen(model)
    with torch.no_grad():
        model.final_logits_bias.normal_(0.0, 1.0)
        model.lm_head.weight.mul_(1.0 if settings["scale_embedding"] else 8.0)
    model.save_pretrained(directory)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        MarianTokenizer(str(directory / "source.spm"), str(directory / "target.spm"), str(directory / "vocab.json"),
                        source_lang="zh", target_lang="en").save_pretrained(directory)
    return directory


def marian_greedy(directory: Path, texts: list[str], max_new_tokens: int) -> list[str]:
    """Marian's own greedy translations: what opus-mt users get (PAD never generated)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenizer = MarianTokenizer.from_pretrained(directory)
    model = MarianMTModel.from_pretrained(directory).eval()
    config = model.config
    out = []
    with torch.inference_mode():
        for text in texts:
            ids = model.generate(**tokenizer([text], return_tensors="pt"), num_beams=1, max_new_tokens=max_new_tokens,
                                 suppress_tokens=[config.pad_token_id], eos_token_id=config.eos_token_id)
            out.append(one_line(tokenizer.decode(ids[0], skip_special_tokens=True)))
    return out


@pytest.mark.parametrize("settings", [{}, {"scale_embedding": False}, {"unlisted": "请问,你叫什么名字?"}],
                         ids=["opus-mt", "unscaled", "pieces-not-in-vocab"])
def test_opus_style_marian_imports_and_translates_as_marian_does(tmp_path, hsk, texts, settings):
    hf_dir = opus_style(tmp_path / "opus", hsk, **settings)
    zhen_dir = import_marian(hf_dir, tmp_path / "zhen")
    c = load_model_dir(zhen_dir).config.model
    assert c.output_bias and c.tie_output == ("scale_embedding" not in settings)
    extra = c.src_vocab_size - MarianConfig.from_pretrained(hf_dir).vocab_size - 1  # rows for unlisted pieces
    assert c.share_embeddings == (extra == 0) and (extra > 0) == ("unlisted" in settings)
    zhen = Translator.load(zhen_dir, beam=1, max_len_a=0.0, max_len_b=9)  # ≤ 8 tokens, then EOS
    assert zhen.translate(texts) == marian_greedy(hf_dir, texts, max_new_tokens=8)


def test_import_refuses_what_zhen_cannot_represent(tmp_path, hsk):
    hf_dir = opus_style(tmp_path / "tanh-gelu", hsk, activation_function="gelu_new")
    with pytest.raises(InteropError, match="activation 'gelu_new'"):
        import_marian(hf_dir, tmp_path / "zhen")
    config = json.loads((hf_dir / "config.json").read_text())
    (hf_dir / "config.json").write_text(json.dumps({**config, "model_type": "bart"}))
    with pytest.raises(InteropError, match="not a Marian one"):
        import_marian(hf_dir, tmp_path / "zhen")
    with pytest.raises(InteropError, match=r"no config\.json"):
        import_marian(tmp_path, tmp_path / "zhen")


def test_cli_imports_and_the_import_translates_and_explains(tmp_path, marian_dir, capsys):
    assert main(["import-marian", str(marian_dir), "-o", str(tmp_path / "m")]) == 0
    assert "imported" in capsys.readouterr().out
    assert main(["translate", "--model", str(tmp_path / "m"), "--beam", "1", "我爱你"]) == 0
    assert capsys.readouterr().out.strip()
    assert main(["explain", "--model", str(tmp_path / "m"), "我爱你"]) == 0
    assert "我爱你" in capsys.readouterr().out


def test_decode_settings_survive_the_round_trip(tmp_path, marian_dir):
    back = load_model_dir(import_marian(marian_dir, tmp_path / "b"))
    assert back.config.decode == replace(DecodeConfig(), beam=5)  # the export's generation_config num_beams
