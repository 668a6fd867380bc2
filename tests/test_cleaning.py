"""zhen.cleaning: every rule drops what it should and keeps real translations; the report and its examples."""

import pytest

from zhen.cleaning import EXAMPLES_KEPT, CleanStats, clean_pairs, drop_repeated_targets, pair_rule
from zhen.config import CorpusConfig, DataConfig, TextConfig
from zhen.data import load_pairs
from zhen.text import Normalizer


@pytest.mark.parametrize(("zh", "en", "rule"), [
    ("", "Hello", "empty"),
    ("你好", "", "empty"),
    ("树在风中摆动。", "placeholder-p1", "placeholder"),
    ("人是活动的主体。", "placeholder", "placeholder"),
    ("他远远超过了别人。", "PH", "placeholder"),
    ("他来了。", "TODO", "placeholder"),
    ("你好,{name}!", "Hello, {name}!", "placeholder"),
    ("价格", "Price: %s", "placeholder"),
    ("Hello world", "hello world", "identical"),
    ("三十五", "35", "no_letters"),
    ("……", "...", "no_letters"),
    ("Two brooms and a wall", "A person climbing a pole.", "wrong_script"),
    ("考试接近了。", "The exam is近.", "wrong_script"),
    ("你好", "こんにちは", "wrong_script"),
])
def test_each_rule_drops_its_non_translations(zh, en, rule):
    assert pair_rule(zh, en) == rule


@pytest.mark.parametrize(("zh", "en"), [
    ("我爱你。", "I love you."),
    ("这个词有两个读音。", "For example, this word has two readings."),
    ("打八折。", "20% off."),
    ("他用 Python 写代码。", "He writes code in Python."),
    ("这是一个例子。", "This is an example placeholders aside."),  # "placeholders" is not the word "placeholder"
    ("我们七点见。", "See you at 7."),
])
def test_real_translations_are_kept(zh, en):
    assert pair_rule(zh, en) is None


def test_repeated_target_drops_a_target_given_for_too_many_sources():
    pairs = [(f"源{i}", "Yes.") for i in range(4)] + [("好", "Good."), ("行", "Good."), ("对", "Right.")]
    stats = CleanStats(sizes=[5, 2])
    kept = drop_repeated_targets(pairs, 3, stats)
    assert kept == [("好", "Good."), ("行", "Good."), ("对", "Right.")]
    assert stats.repeated_target == 4 and stats.sizes == [1, 2]
    assert drop_repeated_targets(pairs, 4, CleanStats()) == pairs
    assert drop_repeated_targets(pairs, 0, CleanStats()) == pairs  # 0: no limit


def test_report_counts_every_rule_and_shows_varied_examples():
    pairs = [(f"句子{i}。", f"placeholder-p{i}") for i in range(30)] + [("他走了。", "PH"), ("好。", "Good.")]
    stats = CleanStats(read=len(pairs))
    assert clean_pairs(pairs, stats) == [("好。", "Good.")]
    stats.kept = 1
    assert stats.placeholder == 31
    # "placeholder-p0" … "placeholder-p29" are one kind of target: the examples show PH too.
    assert stats.examples["placeholder"] == [("句子0。", "placeholder-p0"), ("他走了。", "PH")]
    report = stats.report(examples=2)
    assert "placeholder" in report and "31" in report and "'PH'" in report and "1 kept" in report
    assert len(stats.examples["placeholder"]) <= EXAMPLES_KEPT


def test_hsk_placeholders_are_removed():
    pairs, stats = load_pairs([CorpusConfig(path="hsk")], Normalizer(TextConfig()), clean=True,
                              data_config=DataConfig())
    assert not [p for p in pairs if "placeholder" in p[1].lower() or p[1] == "PH"]
    assert stats.placeholder == 82 and stats.wrong_script == 2
    assert stats.sizes == [len(pairs)]
