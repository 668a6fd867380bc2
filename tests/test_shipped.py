"""The model shipped inside the package: present, small enough, and translating right after install."""

import subprocess
import sys

import pytest

from zhen import Translator
from zhen.checkpoint import CONFIG_FILE, MODEL_FILE
from zhen.translator import DEFAULT_MODEL

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
