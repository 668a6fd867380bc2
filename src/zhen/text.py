"""Text normalisation, run identically on every sentence in training and in translation.

A model only ever sees normalised text, so translation must apply exactly the normalisation its
training data went through; the settings (`TextConfig`) are saved with the model for that reason.

    Chinese  →  NFKC → invisible characters removed → whitespace collapsed → Traditional → Simplified
    English  →  NFKC → invisible characters removed → whitespace collapsed

    raw line          "  我們\\u3000愛你！\\u200b "
    Normalizer.zh  →  "我们 爱你!"              (NFKC also turns the full-width "！" into "!")

Formats: a "line" is a `str`; `*_many` take a sequence of lines and return a `list[str]` of the same
length, each without "\\n" and without leading or trailing spaces.

Traditional → Simplified uses OpenCC's `t2s`, but only on lines that contain a character `t2s`
converts on its own (愛, 們, 沒 …). Running `t2s` on every line corrupts Simplified text: its phrase
table reads 打坏 ("to break", everyday Simplified) as Traditional for "making adobe bricks" and
returns 打坯. Traditional sentences almost always contain such a character (4,350 of the 4,354
Traditional HSK sentences become exactly their Simplified versions); none of the Simplified ones
does.

Speed matters: training normalises ~2M lines per side. The per-line steps use C-level string methods
with a fast path for clean lines, and the Traditional-character search and OpenCC each run once per
block of lines joined by "\\n" rather than once per line. `zh(text)` is literally `zh_many([text])[0]`,
so the single sentence translated later gets exactly the treatment the training data got.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable, Sequence

from zhen.config import TextConfig
from zhen.errors import ZhenError

# Characters that carry no text: C0/C1 controls that are not whitespace, soft hyphen, zero-width
# spaces and joiners, bidirectional marks, word joiner, byte-order mark, and lone surrogates (which a
# JSON file can produce with "\ud800" and which no UTF-8 encoder, OpenCC's included, accepts).
# Whitespace controls (\t \n \r \x0b \x0c \x1c-\x1f \x85) are left for the whitespace step.
_INVISIBLE = re.compile(
    "[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff\ud800-\udfff]+"
)

# Lines per block: large enough that per-call overheads vanish, small enough to bound memory.
BLOCK_LINES = 100_000

# Code points probed for Traditional characters: CJK Unified Ideographs and extension A,
# compatibility ideographs, and the supplementary ideographic plane.
_PROBED_RANGES = ((0x3400, 0xA000), (0xF900, 0xFB00), (0x20000, 0x2FA20))


class TextError(ZhenError, ValueError):
    """Text that zhen cannot use. The message names the file (and line) it came from; the command
    line prints it without a traceback, as for every `ZhenError`."""


def clean_line(text: str) -> str:
    """Remove invisible characters, collapse every run of whitespace (any Unicode whitespace,
    line breaks included) to one space, and strip both ends."""
    if text.isprintable() and "  " not in text and text[:1] != " " and text[-1:] != " ":
        return text  # the common case, already clean: printable means no whitespace but " "
    return " ".join(_INVISIBLE.sub("", text).split())


@functools.cache
def _traditional_chars() -> tuple[re.Pattern[str], frozenset[str]]:
    """The characters that OpenCC's `t2s` converts on their own (愛, 們, 後 …): a set, and a regex
    that finds them. Built once per process by converting every probed code point in one OpenCC
    call (~70 ms).

    The regex lists the characters of the Basic Multilingual Plane one by one, which `re` compiles
    to a bitmap (~5 ns a character), but admits the whole supplementary plane as one range: listing
    those characters too makes `re` fall back to a linear scan, a thousand times slower. Matches
    there are confirmed against the set."""
    import opencc

    chars = [chr(c) for start, stop in _PROBED_RANGES for c in range(start, stop)]
    converted = opencc.OpenCC("t2s").convert("\n".join(chars)).split("\n")
    traditional = frozenset(c for c, s in zip(chars, converted, strict=True) if s != c)
    bmp = "".join(re.escape(c) for c in sorted(traditional) if ord(c) < 0x10000)
    return re.compile(f"[{bmp}\U00020000-\U0002fa1f]"), traditional


class Normalizer:
    """The normalisation of one `TextConfig`, ready to run. Create it once and reuse it: it holds the
    OpenCC converter, whose dictionaries take a moment to load."""

    def __init__(self, config: TextConfig | None = None) -> None:
        self.config = config or TextConfig()
        self._t2s = None
        if self.config.traditional_to_simplified:
            import opencc  # here, so that text handling without conversion does not need OpenCC

            self._t2s = opencc.OpenCC("t2s")
            self._traditional, self._traditional_set = _traditional_chars()

    def zh(self, text: str) -> str:
        """One Chinese sentence. Same result as `zh_many([text])[0]`."""
        return self.zh_many([text])[0]

    def en(self, text: str) -> str:
        """One English sentence. Same result as `en_many([text])[0]`."""
        return self.en_many([text])[0]

    def zh_many(self, texts: Sequence[str]) -> list[str]:
        """Many Chinese sentences."""
        lines = self._nfkc_and_clean(texts)
        if self._t2s is not None:
            for start in range(0, len(lines), BLOCK_LINES):
                self._to_simplified(lines, start, min(start + BLOCK_LINES, len(lines)))
        return lines

    def en_many(self, texts: Sequence[str]) -> list[str]:
        """Many English sentences."""
        return self._nfkc_and_clean(texts)

    def _nfkc_and_clean(self, texts: Sequence[str]) -> list[str]:
        """The steps both languages share."""
        lines: Iterable[str] = texts
        if self.config.nfkc:
            # Per line: CPython's quick check returns already-normalised lines almost for free,
            # whereas one call on a joined block would rebuild the whole block.
            lines = map(functools.partial(unicodedata.normalize, "NFKC"), texts)
        return [clean_line(line) for line in lines]

    def _to_simplified(self, lines: list[str], start: int, stop: int) -> None:
        """Convert, in place, the lines of lines[start:stop] that contain a Traditional character."""
        block = "\n".join(lines[start:stop])  # the lines are clean: no "\n" inside any of them
        hits: list[int] = []
        line, position = start, 0
        for match in self._traditional.finditer(block):
            if match.group() not in self._traditional_set:  # a supplementary-plane character
                continue
            line += block.count("\n", position, match.start())
            position = match.start()
            if not hits or hits[-1] != line:
                hits.append(line)
        if not hits:
            return
        converted = self._t2s.convert("\n".join(lines[i] for i in hits)).split("\n")
        if len(converted) != len(hits):  # pragma: no cover - OpenCC keeps line breaks; never observed
            converted = [self._t2s.convert(lines[i]) for i in hits]
        for i, text in zip(hits, converted, strict=True):
            lines[i] = text
