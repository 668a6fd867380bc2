"""Translation: the Python API, `zhen translate`, `zhen evaluate`, and bad input that must not crash."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zhen import Translator
from zhen.checkpoint import CheckpointError
from zhen.cli import main
from zhen.search import greedy_search
from zhen.translator import split_long

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir) -> Path:
    return tiny_model_dir


@pytest.fixture(scope="module")
def translator(model_dir) -> Translator:
    return Translator.load(model_dir, device="cpu")


def test_order_is_kept_and_empty_lines_stay_empty(translator):
    sentences = ["我爱你", "", "今天天气很好。", "   ", "我爱你"]
    output = translator.translate(sentences)
    assert len(output) == 5 and output[1] == "" and output[3] == ""
    assert output[0] == output[4]
    assert output == [translator.translate([s])[0] for s in sentences]  # alone = inside a batch


def test_a_sentence_translates_the_same_alone_and_in_any_batch(translator, model_dir):
    sentences = ["我是学生。", "他们明天去北京看朋友。", "好", "这个问题很难回答，但是我们会试试。"]
    alone = [translator.translate([s])[0] for s in sentences]
    assert translator.translate(sentences) == alone
    assert translator.translate(sentences[::-1]) == alone[::-1]
    small_batches = Translator.load(model_dir, device="cpu", batch_tokens=8)  # one sentence per batch
    assert small_batches.translate(sentences) == alone


def test_traditional_input_is_normalised_as_in_training(translator):
    assert translator.translate(["我愛你，這是漢語。"]) == translator.translate(["我爱你,这是汉语。"])
    assert translator.translate(["ｈｅｌｌｏ　１２３"]) == translator.translate(["hello 123"])  # NFKC


def test_nbest_of_empty_line_is_the_empty_translation_and_streams_agree(translator):
    lines = ["我爱你", "", "你好"]
    nbest = translator.translate_nbest(lines, nbest=2)
    assert [(t.text, t.score, t.tokens) for t in nbest[1]] == [("", 0.0, ())]
    streamed = list(translator.translate_nbest_stream([line + "\n" for line in lines], 2, chunk_lines=2))
    # Other batch-mates change the products' shapes, so scores agree to float rounding; texts and tokens exactly.
    assert [[(t.text, t.tokens) for t in hyps] for hyps in streamed] == [[(t.text, t.tokens) for t in hyps]
                                                                         for hyps in nbest]
    assert [t.score for hyps in streamed for t in hyps] == pytest.approx([t.score for hyps in nbest for t in hyps])
    assert translator.translate(lines)[1] == ""


def test_nbest_lists_are_sorted_and_have_scores(translator):
    nbest = translator.translate_nbest(["我们一起去吃饭吧。"], nbest=3)[0]
    assert 1 <= len(nbest) <= 3
    assert [h.score for h in nbest] == sorted((h.score for h in nbest), reverse=True)
    assert nbest[0].text == translator.translate(["我们一起去吃饭吧。"])[0]


def test_beam_one_is_greedy_search(model_dir):
    beam_one = Translator.load(model_dir, device="cpu", beam=1)
    sentences = ["我爱你", "今天天气很好。", "他们明天去北京看朋友。"]
    got = [hyps[0].tokens for hyps in beam_one.translate_nbest(sentences)]
    decode = beam_one.config.decode
    ids = beam_one.tokenizer.encode_src([beam_one.normalizer.zh(s) for s in sentences])
    for sentence_ids, tokens in zip(ids, got, strict=True):
        (hyp,) = greedy_search(beam_one.model, torch.tensor([sentence_ids]), max_len_a=decode.max_len_a,
                               max_len_b=decode.max_len_b)[0]
        assert tuple(hyp.tokens) == tokens
    wide = Translator.load(model_dir, device="cpu", beam=3)  # the comparison can fail: beam 3 differs here
    assert [hyps[0].tokens for hyps in wide.translate_nbest(sentences)] != got


def test_long_lines_are_split_with_a_warning_and_memory_stays_bounded(translator):
    line = "我们今天去公园散步，然后回家吃饭。" * 600  # 10,200 characters
    with pytest.warns(UserWarning, match="translated in .* pieces"):
        output = translator.translate([line, "你好"])
    assert len(output) == 2 and output[0] != ""
    assert all(len(piece) <= 200 for piece in split_long(line, 200))
    assert "".join(split_long(line, 200)) == line


def test_split_long_prefers_sentence_ends():
    text = "第一句话。第二句话！第三句？" + "长" * 30
    pieces = split_long(text, 12)
    assert pieces[0] == "第一句话。第二句话！"
    assert all(len(p) <= 12 for p in pieces) and "".join(pieces) == text
    assert split_long("短句。", 12) == ["短句。"]


@pytest.fixture(scope="module")
def quick(model_dir) -> Translator:
    """Greedy and short outputs: robustness does not need long random translations."""
    return Translator.load(model_dir, device="cpu", beam=1, max_len_a=0.0, max_len_b=6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=60))
def test_random_unicode_never_raises(quick, text):
    output = quick.translate([text])
    assert len(output) == 1 and isinstance(output[0], str)
    assert "\n" not in output[0]


@pytest.mark.parametrize("text", ["😀🎉 我爱你 ❤️", "Hello, world! 你好", "2024年3月15日 15:30",
                                  "\x00\x07控制\x1b字符", "Ελληνικά русский 日本語 한국어", "\u200b\ufeff", "𠀀𪚥"])
def test_odd_input_translates_to_something(quick, text):
    assert isinstance(quick.translate([text])[0], str)


# ----------------------------------------------------------------------------- the CLI


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zhen", *args], input=stdin, capture_output=True, text=True,
                          cwd=ROOT)


def test_translate_arguments_file_and_stdin_agree(model_dir, tmp_path):
    lines = ["我爱你", "", "你好吗？"]
    expected = Translator.load(model_dir, device="cpu").translate(lines)
    source = tmp_path / "in.zh"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert main(["translate", "--model", str(model_dir), "-i", str(source), "-o", str(tmp_path / "out.en")]) == 0
    assert (tmp_path / "out.en").read_text(encoding="utf-8").splitlines() == expected
    result = run_cli("translate", "--model", str(model_dir), stdin="\n".join(lines) + "\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == expected


def test_translate_nbest_output(model_dir, capsys):
    assert main(["translate", "--model", str(model_dir), "--nbest", "2", "我爱你", "", "你好"]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [r[0] for r in rows] == sorted(r[0] for r in rows) and {r[0] for r in rows} == {"0", "1", "2"}
    assert all(len(r) == 3 for r in rows) and all(float(r[1]) <= 0 for r in rows)
    assert [r for r in rows if r[0] == "1"] == [["1", "0.0000", ""]]  # the empty line: one empty translation


def test_evaluate_prints_sacrebleu_scores_and_json(model_dir, tmp_path, capsys):
    src, ref = tmp_path / "dev.zh", tmp_path / "dev.en"
    src.write_text("我爱你\n你好\n", encoding="utf-8")
    ref.write_text("I love you.\nHello.\n", encoding="utf-8")
    assert main(["evaluate", "--model", str(model_dir), "--src", str(src), "--ref", str(ref)]) == 0
    out = capsys.readouterr().out
    assert "BLEU = " in out and "nrefs:1|case:mixed" in out and "chrF = " in out
    assert main(["evaluate", "--model", str(model_dir), "--src", str(src), "--ref", str(ref), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0 <= result["bleu"] <= 100 and 0 <= result["chrf"] <= 100 and result["sentences"] == 2
    assert result["bleu_signature"].startswith("nrefs:1")


def test_evaluate_with_mismatched_files_is_a_clear_error(model_dir, tmp_path, capsys):
    src, ref = tmp_path / "a.zh", tmp_path / "b.en"
    src.write_text("我爱你\n你好\n", encoding="utf-8")
    ref.write_text("I love you.\n", encoding="utf-8")
    assert main(["evaluate", "--model", str(model_dir), "--src", str(src), "--ref", str(ref)]) == 2
    err = capsys.readouterr().err
    assert "has 2 lines" in err and "has 1" in err


@pytest.mark.parametrize("damage", ["missing", "empty", "truncated", "no-config", "no-tokenizer"])
def test_missing_or_corrupt_model_is_a_one_line_error(model_dir, tmp_path, damage):
    import shutil

    broken = tmp_path / "broken"
    if damage != "missing":
        shutil.copytree(model_dir, broken)
    if damage == "empty":
        for f in broken.iterdir():
            f.unlink()
    elif damage == "truncated":
        data = (broken / "model.safetensors").read_bytes()
        (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "no-config":
        (broken / "config.json").unlink()
    elif damage == "no-tokenizer":
        (broken / "src.model").unlink()
    with pytest.raises(CheckpointError):
        Translator.load(broken, device="cpu")
    result = run_cli("translate", "--model", str(broken), "我爱你")
    assert result.returncode == 2
    assert result.stderr.startswith("zhen: error: ") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_undecodable_input_file_is_a_clear_error(model_dir, tmp_path):
    bad = tmp_path / "gbk.zh"
    bad.write_bytes("我爱你\n".encode("gbk"))
    result = run_cli("translate", "--model", str(model_dir), "-i", str(bad))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "gbk.zh, line 1: not valid UTF-8" in result.stderr


def test_tokenize_shows_pieces_and_ids(model_dir, capsys):
    assert main(["tokenize", "--model", str(model_dir), "我愛你"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("我爱你")  # normalised as the model sees it
    ids = [int(i) for i in out[2].split()]
    assert ids[-1] == 3 and len(ids) == len(out[1].split())


def test_help_and_version():
    for args in (["--help"], ["translate", "--help"], ["train", "--help"], ["explain", "--help"]):
        result = run_cli(*args)
        assert result.returncode == 0 and "usage: zhen" in result.stdout
    assert run_cli("--version").stdout.startswith("zhen ")


def test_evaluate_reads_a_corpus_as_configs_do(model_dir, tmp_path, capsys):
    tsv = tmp_path / "dev.tsv"
    tsv.write_text("我爱你\tI love you.\tattribution\n你好\tHello.\tattribution\n", encoding="utf-8")
    assert main(["evaluate", "--model", str(model_dir), "--corpus", str(tsv), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["sentences"] == 2 and result["corpus"] == str(tsv)
    assert main(["evaluate", "--model", str(model_dir)]) == 2
    assert "--src FILE --ref FILE, or --corpus" in capsys.readouterr().err


def test_one_big_call_does_no_more_work_than_many_small_ones(model_dir, monkeypatch):
    """Random Unicode (surrogates, rare planes: long byte-fallback pieces) in one call costs no more decoder
    steps or rows than the same lines in calls of 10, and every batch keeps to the token budget (padding
    included), so one big call is never much slower than many small ones."""
    import random

    import zhen.translator as translator_module

    rng = random.Random(1234)
    lines = ["".join(chr(rng.randint(0, 0x10FFFF)) for _ in range(rng.randint(1, 40))) for _ in range(60)]
    translator = Translator.load(model_dir, device="cpu", batch_tokens=600)
    work = {"steps": 0, "rows": 0}
    shapes: list[tuple[int, int]] = []
    real_step, real_search = translator.model.decode_step, translator_module.search

    def counted_step(tokens, cache):
        work["steps"] += 1
        work["rows"] += tokens.size(0)
        return real_step(tokens, cache)

    def recorded_search(model, src, decode, **kwargs):
        shapes.append(tuple(src.shape))
        return real_search(model, src, decode, **kwargs)

    monkeypatch.setattr(translator.model, "decode_step", counted_step)
    monkeypatch.setattr(translator_module, "search", recorded_search)
    one_call = translator.translate(lines)
    alone = dict(work)
    work.update(steps=0, rows=0)
    small_calls = [text for i in range(0, len(lines), 10) for text in translator.translate(lines[i : i + 10])]
    assert one_call == small_calls
    assert alone["rows"] <= work["rows"] and alone["steps"] <= work["steps"]
    beam = translator.config.decode.beam
    assert all(rows * length * beam <= 600 or rows == 1 for rows, length in shapes)
