"""bench/bench_batching.py: both engines translate the same sentences in one call and in calls of a few, and
CTranslate2 runs in a process of its own."""

import argparse

import pytest
from bench_scripts import ROOT, load_bench_script

pytest.importorskip("ctranslate2")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def bench():
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(ROOT / "bench"))  # it imports bench_serve; its CTranslate2 worker imports it
        yield from load_bench_script("bench_batching")


def test_both_engines_keep_their_outputs_across_ways_of_calling(bench, tiny_model_dir, tmp_path):
    corpus = tmp_path / "dev.tsv"
    sentences = ["我爱你。", "你好", "今天天气很好。", "他是学生。", "谢谢你的帮助。",
                 "我们明天去北京。", "这本书很有意思。"]
    corpus.write_text("".join(f"{zh}\tx\n" for zh in sentences), encoding="utf-8")
    args = argparse.Namespace(sentences_from=corpus, sentences=7, chunk=3, beam=3, rounds=1)
    engines, agreement = bench.measure(args, tiny_model_dir, tmp_path)
    assert [e.name for e in engines] == ["zhen", "CTranslate2"]
    for engine in engines:
        assert len(engine.one) == len(engine.chunked) == 1 and engine.one[0] > 0 and engine.chunked[0] > 0
    # zhen's outputs are the same both ways (measure asserts it). CTranslate2's length limit is per call, and this
    # random model often runs into it, so its outputs may differ between the ways of calling, and from zhen's.
    assert agreement["sentences"] == 7 and 0 <= agreement["ct2 one = ct2 chunked"] <= 7
    report = bench.report(engines, agreement, args, str(tiny_model_dir))
    assert "| zhen |" in report and "| CTranslate2 |" in report


def test_a_rotary_model_is_refused_with_a_clear_message(bench, tmp_path, monkeypatch):
    from types import SimpleNamespace

    rotary = SimpleNamespace(model=SimpleNamespace(config=SimpleNamespace(positions="rotary")))
    monkeypatch.setattr(bench, "load_model_dir", lambda path: rotary)
    with pytest.raises(SystemExit, match="rotary positions"):
        bench.measure(argparse.Namespace(), tmp_path, tmp_path)


def test_a_revision_without_the_shipped_model_is_refused_with_a_clear_message(bench, tmp_path):
    with pytest.raises(SystemExit, match=r"no src/zhen/models/default/config\.json at 'no-such-revision'"):
        bench.model_from_git("no-such-revision", tmp_path / "model")
