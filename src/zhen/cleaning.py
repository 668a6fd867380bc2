"""Cleaning rules: which training pairs are not translations, and a report of what each rule removed.

A pair is dropped, after normalisation, when it cannot teach translation:

    empty           a side is empty
    placeholder     a side is a placeholder or template string ("placeholder-p3", "PH", "TODO", "{name}", "%s")
    identical       the target is the source, copied (case aside)
    no letters      the target has no letter at all ("...", "123")
    wrong script    the source has no Chinese character, or the target has Chinese, Japanese or Korean script
    duplicate       the same pair seen before                                      (data.deduplicate)
    repeated target one target given for more than data.max_target_sources different sources
    too long        a side longer than data.max_length tokens                      (after encoding)
    length ratio    token lengths more than data.max_length_ratio apart            (after encoding)

`CleanStats` counts each rule's drops and keeps a few examples of each, for the report printed when the
token cache is built and by `zhen data-check`. Each pair is counted under the first rule that drops it,
in the order above. Dev and test sets are never cleaned: their references must stay aligned.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar

EXAMPLES_KEPT = 20  # examples remembered per rule

# A whole side that is a placeholder, or a template slot anywhere in it.
_PLACEHOLDER = re.compile(
    r"\bplaceholder\b|\blorem ipsum\b|^\W*(?:(?-i:PH)|todo|tbd|fixme|xxx+|n/a)\W*$"
    r"|\{\{?\s*\w*\s*\}\}?|\$\{\w+\}|%(?:\(\w+\))?[sd]\b|<(?:translation|placeholder|blank|unk|missing)>",
    re.IGNORECASE,
)
_LETTER = re.compile(r"[^\W\d_]")  # any letter of any script
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff]")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0002ffff]")


def pair_rule(zh: str, en: str) -> str | None:
    """The first per-pair rule that drops a normalised (Chinese, English) pair, or None to keep it."""
    if not zh or not en:
        return "empty"
    if _PLACEHOLDER.search(en) or _PLACEHOLDER.search(zh):
        return "placeholder"
    if en.casefold() == zh.casefold():
        return "identical"
    if not _LETTER.search(en):
        return "no_letters"
    if not _HAN.search(zh) or _CJK.search(en):
        return "wrong_script"
    return None


@dataclass
class CleanStats:
    """How many pairs were read, how many each cleaning rule dropped, and a few examples of each."""

    read: int = 0
    undecodable: int = 0  # skipped for bytes that are not UTF-8 (on_decode_error = "skip")
    empty: int = 0
    placeholder: int = 0
    identical: int = 0
    no_letters: int = 0
    wrong_script: int = 0
    duplicate: int = 0
    repeated_target: int = 0
    too_long: int = 0
    ratio: int = 0
    kept: int = 0
    examples: dict[str, list[tuple[str, str]]] = field(default_factory=dict, compare=False, repr=False)
    sizes: list[int] = field(default_factory=list, compare=False, repr=False)  # kept pairs per corpus, in order

    DROPS: ClassVar[dict[str, str]] = {
        "undecodable": "undecodable",
        "empty": "empty",
        "placeholder": "placeholder",
        "identical": "identical",
        "no_letters": "no letters",
        "wrong_script": "wrong script",
        "duplicate": "duplicate",
        "repeated_target": "repeated target",
        "too_long": "too long",
        "ratio": "length ratio",
    }
    RULES: ClassVar[dict[str, str]] = {
        "undecodable": "bytes that are not UTF-8 (on_decode_error = \"skip\")",
        "empty": "a side empty after normalisation",
        "placeholder": "a placeholder or template string instead of a sentence",
        "identical": "the target is a copy of the source",
        "no_letters": "a target without a single letter",
        "wrong_script": "a source without Chinese characters, or a target with Chinese/Japanese/Korean script",
        "duplicate": "the same pair seen before (data.deduplicate)",
        "repeated_target": "one target for more than data.max_target_sources different sources",
        "too_long": "a side longer than data.max_length tokens",
        "ratio": "token lengths more than data.max_length_ratio apart",
    }

    def drop(self, rule: str, pair: tuple[str, str], count: int = 1) -> None:
        """Count `count` drops by `rule`, remembering `pair` as an example while there is room."""
        setattr(self, rule, getattr(self, rule) + count)
        examples = self.examples.setdefault(rule, [])
        # One example per kind of target ("placeholder-p1" … "placeholder-p80" are one kind): varied examples.
        if len(examples) < EXAMPLES_KEPT and all(_kind(pair[1]) != _kind(en) for _, en in examples):
            examples.append(pair)

    def then(self, later: CleanStats) -> CleanStats:
        """Counts of this stage followed by a `later` one that received this stage's kept pairs."""
        drops = {name: getattr(self, name) + getattr(later, name) for name in self.DROPS}
        examples = {rule: self.examples.get(rule, []) + later.examples.get(rule, [])
                    for rule in {*self.examples, *later.examples}}
        return CleanStats(read=self.read, kept=later.kept, examples=examples, sizes=later.sizes, **drops)

    def summary(self) -> str:
        """One line, e.g. '1,790,775 pairs read; dropped 12 empty, 3,218 too long; 1,787,545 kept (99.8%)'."""
        drops = [f"{getattr(self, name):,} {label}" for name, label in self.DROPS.items() if getattr(self, name)]
        share = f" ({100 * self.kept / self.read:.1f}%)" if self.read else ""
        dropped = f"dropped {', '.join(drops)}" if drops else "nothing dropped"
        return f"{self.read:,} pairs read; {dropped}; {self.kept:,} kept{share}"

    def report(self, examples: int = 3) -> str:
        """Every rule with its count and what it means, then up to `examples` dropped pairs of each."""
        lines = [f"cleaning: {self.summary()}"]
        for name, label in self.DROPS.items():
            count = getattr(self, name)
            share = f" ({100 * count / self.read:.2f}%)" if self.read else ""
            lines.append(f"  {label:<16} {count:>10,}{share:<9}  {self.RULES[name]}")
            for zh, en in self.examples.get(name, [])[:examples] if count else []:
                lines.append(f"      {_quote(zh)}  →  {_quote(en)}")
        return "\n".join(lines)


def _kind(text: str) -> str:
    return re.sub(r"\d+", "0", text.casefold())


def _quote(text: str, width: int = 60) -> str:
    return repr(text if len(text) <= width else text[: width - 1] + "…")


def clean_pairs(pairs: Iterable[tuple[str, str]], stats: CleanStats) -> list[tuple[str, str]]:
    """The pairs no per-pair rule drops (see `pair_rule`), in order; drops counted in `stats`."""
    kept = []
    for pair in pairs:
        rule = pair_rule(*pair)
        if rule is None:
            kept.append(pair)
        else:
            stats.drop(rule, pair)
    return kept


def drop_repeated_targets(pairs: list[tuple[str, str]], max_sources: int, stats: CleanStats) -> list[tuple[str, str]]:
    """Drop every pair whose target is given for more than `max_sources` different sources (0: keep all):
    one English line cannot translate that many different sentences. Order is kept, and `stats.sizes`
    (pairs per corpus, corpus after corpus) is updated."""
    if max_sources <= 0:
        return pairs
    sources = Counter(en for _, en in set(pairs))  # distinct sources per target
    repeated = {en for en, n in sources.items() if n > max_sources}
    if not repeated:
        return pairs
    kept, start = [], 0
    for c, size in enumerate(stats.sizes or [len(pairs)]):
        before = len(kept)
        for pair in pairs[start : start + size]:
            if pair[1] in repeated:
                stats.drop("repeated_target", pair)
            else:
                kept.append(pair)
        start += size
        if stats.sizes:
            stats.sizes[c] = len(kept) - before
    return kept
