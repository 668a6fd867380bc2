"""BLEU and chrF through sacreBLEU, on detokenized output, with their signatures.

The scores follow sacreBLEU's defaults (13a tokenization for BLEU, character 6-grams and word
2-grams for chrF++ off: plain chrF), so they compare with published numbers; the signatures say
exactly how they were computed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sacrebleu.metrics import BLEU, CHRF


@dataclass(frozen=True)
class Scores:
    bleu: float
    chrf: float
    bleu_signature: str
    chrf_signature: str
    sentences: int

    def to_dict(self) -> dict[str, float | str | int]:
        return asdict(self)

    def __str__(self) -> str:
        return (f"BLEU = {self.bleu:.2f}  ({self.bleu_signature})\n"
                f"chrF = {self.chrf:.2f}  ({self.chrf_signature})")


def score(hypotheses: list[str], references: list[str]) -> Scores:
    """Corpus BLEU and chrF of `hypotheses` against one reference each."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} translations but {len(references)} references; they must match")
    bleu, chrf = BLEU(), CHRF()
    bleu_score = bleu.corpus_score(hypotheses, [references])
    chrf_score = chrf.corpus_score(hypotheses, [references])
    return Scores(bleu_score.score, chrf_score.score, str(bleu.get_signature()), str(chrf.get_signature()),
                  len(hypotheses))
