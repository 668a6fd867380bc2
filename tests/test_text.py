"""zhen.text: the normalisation shared by training and translation."""

from __future__ import annotations

import json
from importlib.resources import files

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zhen.config import TextConfig
from zhen.text import Normalizer, clean_line


@pytest.fixture(scope="module")
def normalizer() -> Normalizer:
    return Normalizer(TextConfig())


def test_traditional_input_gives_the_simplified_form(normalizer: Normalizer) -> None:
    assert normalizer.zh("我愛你") == "我爱你"
    assert normalizer.zh("這是一個測試。") == "这是一个测试。"
    assert normalizer.zh_many(["我們沒有時間", "你好"]) == ["我们没有时间", "你好"]


def test_simplified_text_is_left_alone(normalizer: Normalizer) -> None:
    # OpenCC's phrase table would turn 打坏 ("to break") into 打坯 if t2s ran on every line.
    for text in ("他打坏了车", "别打坏它", "哪吒闹海", "乾隆皇帝", "我爱你"):
        assert normalizer.zh(text) == text


def test_hsk_traditional_sentences_become_their_simplified_versions() -> None:
    records = json.loads((files("hsk_sentences_audio") / "data" / "sentences.json").read_text(encoding="utf-8"))
    converting, keeping = Normalizer(TextConfig()), Normalizer(TextConfig(traditional_to_simplified=False))
    simplified = keeping.zh_many([r["chinese"] for r in records])
    from_traditional = converting.zh_many([r["traditional"] for r in records])
    agree = sum(a == b for a, b in zip(from_traditional, simplified, strict=True))
    assert agree >= 0.995 * len(records)  # 4,350 of 4,354: the rest differ by phrase-only forms (瞭解, 想像)
    assert converting.zh_many([r["chinese"] for r in records]) == simplified  # no Simplified line is touched


def test_nfkc_whitespace_and_invisible_characters(normalizer: Normalizer) -> None:
    assert normalizer.zh("  我們\u3000愛你！\u200b ") == "我们 爱你!"
    assert normalizer.en("ＡＢＣ １２３！") == "ABC 123!"  # full-width forms
    assert normalizer.en("ﬁne") == "fine"  # compatibility ligature
    assert normalizer.en(" a \t b\r\n\u00a0c  d\x00e\ufeff ") == "a b c de"
    assert normalizer.en("left\u202eright\u200d") == "leftright"  # bidi override, zero-width joiner
    assert normalizer.en("") == ""
    assert normalizer.zh_many([]) == []


def test_english_side_is_not_converted(normalizer: Normalizer) -> None:
    assert normalizer.en("愛") == "愛"


def test_settings_switch_steps_off() -> None:
    plain = Normalizer(TextConfig(nfkc=False, traditional_to_simplified=False))
    assert plain.zh("我愛你！") == "我愛你！"
    assert plain.zh(" a  b ") == "a b"  # whitespace cleanup always runs


def test_clean_line_fast_path_returns_the_same_object() -> None:
    text = "already clean text"
    assert clean_line(text) is text


LINE_TEXT = st.text(
    alphabet=st.one_of(
        st.sampled_from(list("我們愛你這打坏后後乾隆 \t\n\r\u3000\u00a0\u200b\x00\ufeff！ＡﬁaZ.,")),
        st.characters(),  # anything, lone surrogates and unassigned code points included
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(LINE_TEXT, max_size=8))
def test_many_equals_one_by_one(texts: list[str]) -> None:
    """Block processing (lines joined by "\\n") must give exactly the per-sentence result."""
    normalizer = Normalizer(TextConfig())
    zh = normalizer.zh_many(texts)
    assert zh == [normalizer.zh(t) for t in texts]
    assert normalizer.en_many(texts) == [normalizer.en(t) for t in texts]
    for line in zh:
        assert "\n" not in line and "  " not in line and line == line.strip()
