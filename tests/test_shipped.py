"""The model shipped inside the package: present, small enough, and translating right after install."""

import subprocess
import sys

import pytest
import torch

from zhen import Translator
from zhen.checkpoint import CONFIG_FILE, DEFAULT_MODEL, MODEL_FILE
from zhen.config import CorpusConfig
from zhen.data import read_corpus
from zhen.device import cpu_has_fast_bf16
from zhen.evaluate import score

MAX_BYTES = 30 * 1024 * 1024


def test_the_default_model_and_its_notices_are_in_the_package():
    for name in (MODEL_FILE, CONFIG_FILE):
        assert (DEFAULT_MODEL / name).is_file(), f"{DEFAULT_MODEL / name} is missing"
    assert (DEFAULT_MODEL.parent.parent / "NOTICE.md").is_file()
    size = sum(p.stat().st_size for p in DEFAULT_MODEL.rglob("*") if p.is_file())
    assert size <= MAX_BYTES, f"the shipped model takes {size / 2**20:.1f} MiB, more than 30"


@pytest.fixture(scope="module")
def shipped() -> Translator:
    return Translator.load()


def test_shipped_model_translates_i_love_you(shipped):
    assert shipped.translate(["我爱你", "我愛你"]) == ["I love you.", "I love you."]  # Traditional input too


def test_shipped_model_translates_other_sentences_to_english(shipped):
    for text in shipped.translate(["今天天气很好。", "你叫什么名字？"]):
        assert text and text.isascii() and any(c.isalpha() for c in text)


def test_cli_uses_the_shipped_model_by_default():
    result = subprocess.run([sys.executable, "-m", "zhen", "translate", "我爱你"], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "I love you.\n"


BF16_MARGIN = 2.0  # BLEU points bf16 translation may lose against fp32 on the sample below


@pytest.mark.skipif(not cpu_has_fast_bf16(), reason="this CPU has no native bf16 units: bf16 would fall back to fp32")
def test_bf16_translation_scores_within_a_margin_of_fp32(shipped):
    """bf16 autocast changes some tokens, but not the quality: BLEU within BF16_MARGIN of fp32 on 60 HSK pairs."""
    pairs = read_corpus(CorpusConfig(path="hsk"))[::70][:60]
    sources, references = [zh for zh, _ in pairs], [en for _, en in pairs]
    bf16 = Translator.load(precision="bf16", beam=2)
    assert bf16.dtype == torch.bfloat16
    fp32_output = Translator.load(precision="fp32", beam=2).translate(sources)
    bf16_output = bf16.translate(sources)
    fp32_bleu, bf16_bleu = score(fp32_output, references).bleu, score(bf16_output, references).bleu
    assert bf16_bleu >= fp32_bleu - BF16_MARGIN, (fp32_bleu, bf16_bleu)
    assert sum(a == b for a, b in zip(fp32_output, bf16_output, strict=True)) >= len(sources) // 2
