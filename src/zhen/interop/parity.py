"""Parity checks: the same sentences through zhen (fp32) and through an exported model, tokens compared.

Every engine runs zhen's search settings: the same beam size, GNMT length penalty α, output limit
max_len = ⌊a·|x| + b⌋ (zhen counts the final EOS, so the others get max_len - 1 tokens), and neither PAD nor
BOS ever generated. Sentences come from any corpus a config can name (default: the built-in hsk corpus),
normalised as the model's training data was.

- CTranslate2 (`ct2_tokens`): greedy and beam search. Its beam search stops as zhen's does (after `beam`
  finished hypotheses, `patience` 1), but ranks them by log P(y|x) / |y|^α (measured: CTranslate2 4.8's
  scores are log P / |y| at α = 1, |y| with EOS), where zhen divides by GNMT's ((5 + |y|)/6)^α; the two find
  the same final beams, and rank them alike only at α = 0, which the beam check therefore uses on both sides.
  Their beam searches also differ in when they stop and how they end at the length limit (zhen stops once
  `beam` hypotheses have finished and makes every live beam end with EOS at the limit; CTranslate2 went on
  in one Tatoeba sentence of 999 and found a hypothesis of higher log P). So a beam difference is a search
  difference, not a model one, when both engines give both hypotheses the same log P(y|x) (within
  SCORE_TOLERANCE, by teacher forcing: zhen's forward pass and CTranslate2's `score_batch`): those are
  counted apart (`search_differences`) and do not fail the check. Greedy tokens must be identical.
- Hugging Face Marian (`marian_tokens`): greedy, with the sources tokenized by `MarianTokenizer` from the
  exported files (so the tokenizer files are checked too). Its beam search normalises scores by |y|^α, not
  GNMT's ((5 + |y|)/6)^α, so beam outputs may rank differently by design and are not compared.

Shapes: N sentences.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from zhen.checkpoint import LoadedModel
from zhen.config import CorpusConfig, DecodeConfig
from zhen.data import read_corpus
from zhen.search import max_output_lengths, search
from zhen.special import BOS_ID, EOS_ID, PAD_ID
from zhen.text import Normalizer

Ids = list[list[int]]  # N token id sequences
BATCH = 32
SCORE_TOLERANCE = 1e-3  # |Δ log P(y|x)| of one output between engines: float rounding, not a model change


@dataclass
class Parity:
    """How many sentences an engine translated to exactly zhen's tokens."""

    engine: str
    search: str
    same: int
    total: int
    differences: list[tuple[str, list[int], list[int]]] = field(default_factory=list)  # (source, zhen, engine)
    search_differences: int = 0  # beam search: differences the two engines score alike (see the module doc)

    @property
    def passed(self) -> bool:
        return self.same + self.search_differences == self.total

    def __str__(self) -> str:
        line = f"{self.engine}, {self.search}: {self.same}/{self.total} sentences with zhen's tokens"
        if self.search_differences:
            line += (f" ({self.search_differences} other(s): a different search result that both engines score "
                     "alike, not a different model)")
        if self.differences:
            source, ours, theirs = self.differences[0]
            line += f"; first difference: {source!r} zhen {ours} vs {theirs}"
        return line


def sentences(loaded: LoadedModel, corpus: str = "hsk", limit: int = 200) -> list[str]:
    """The first `limit` non-empty source sentences of `corpus`, normalised for `loaded`'s model."""
    normalizer = Normalizer(loaded.config.text)
    texts = (normalizer.zh(zh) for zh, _ in read_corpus(CorpusConfig(path=corpus)))
    return list(itertools.islice((t for t in texts if t), limit))


def compare(engine: str, what: str, texts: list[str], ours: Ids, theirs: Ids,
            alike: Callable[[int], bool] | None = None) -> Parity:
    """`alike(i)`: whether sentence i's two outputs get the same scores from both engines (beam search)."""
    differing = [i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b]
    explained = [i for i in differing if alike is not None and alike(i)]
    failing = [(texts[i], ours[i], theirs[i]) for i in differing if i not in explained]
    return Parity(engine, what, len(texts) - len(differing), len(texts), failing[:5], len(explained))


def search_label(beam: int) -> str:
    return "greedy" if beam == 1 else f"beam {beam}"


def padded(sources: Ids) -> torch.Tensor:
    return torch.nn.utils.rnn.pad_sequence([torch.tensor(s) for s in sources], True, padding_value=PAD_ID)  # (N, S)


def max_lengths(loaded: LoadedModel, sources: Ids, decode: DecodeConfig) -> list[int]:
    """zhen's max_len of every sentence (its EOS included)."""
    limit = loaded.model.config.max_positions
    return max_output_lengths(padded(sources), decode.max_len_a, decode.max_len_b, limit, PAD_ID).tolist()


def grouped(sources: Ids, limits: list[int]) -> Iterator[tuple[list[int], int]]:
    """Indices of the sentences with the same max_len, in batches of at most BATCH, and that max_len."""
    by_limit: dict[int, list[int]] = {}
    for i, limit in enumerate(limits):
        by_limit.setdefault(limit, []).append(i)
    for limit, indices in sorted(by_limit.items()):
        for start in range(0, len(indices), BATCH):
            yield indices[start : start + BATCH], limit


def run_grouped(sources: Ids, limits: list[int], translate: Callable[[Ids, int], Ids]) -> Ids:
    """`translate(batch, max_len)` over `grouped` batches, results in input order."""
    out: Ids = [[] for _ in sources]
    for indices, limit in grouped(sources, limits):
        for i, tokens in zip(indices, translate([sources[i] for i in indices], limit), strict=True):
            out[i] = tokens
    return out


def zhen_tokens(loaded: LoadedModel, sources: Ids, decode: DecodeConfig) -> Ids:
    """zhen's best tokens (no EOS) for each source (ids with EOS), fp32, in batches of up to BATCH."""
    model = loaded.model.eval()
    out: Ids = []
    for start in range(0, len(sources), BATCH):
        src = padded(sources[start : start + BATCH])  # (B, S)
        out += [nbest[0].tokens for nbest in search(model, src, replace(decode, nbest=1))]
    return out


@torch.inference_mode()
def zhen_log_probs(loaded: LoadedModel, source: list[int], outputs: Ids) -> list[float]:
    """log P(y|x) of each output y (no EOS) under zhen's model, EOS included, by teacher forcing."""
    src = torch.tensor([source] * len(outputs))  # (N, S)
    decoder_in = padded([[BOS_ID, *y] for y in outputs])  # (N, T)
    targets = padded([[*y, EOS_ID] for y in outputs])  # (N, T)
    log_probs = loaded.model.eval()(src, decoder_in).log_softmax(-1)  # (N, T, V)
    picked = log_probs.gather(-1, targets[..., None])[..., 0].masked_fill(targets == PAD_ID, 0.0)  # (N, T)
    return picked.sum(1).tolist()


def ct2_log_probs(translator: Any, loaded: LoadedModel, source: list[int], outputs: Ids) -> list[float]:
    """log P(y|x) of each output under a CTranslate2 model, EOS included (`score_batch`)."""
    tokenizer = loaded.tokenizer
    pieces = [tokenizer.id_to_src_piece(i) for i in source[:-1]]  # </s> added by the model
    targets = [[tokenizer.id_to_tgt_piece(i) for i in y] for y in outputs]
    return [sum(r.log_probs) for r in translator.score_batch([pieces] * len(outputs), targets)]


def never_pieces(tokenizer: Any) -> list[list[str]]:
    """The target pieces zhen never generates (PAD, BOS), as CTranslate2's `suppress_sequences` takes them."""
    return [[tokenizer.id_to_tgt_piece(PAD_ID)], [tokenizer.id_to_tgt_piece(BOS_ID)]]


def ct2_options(decode: DecodeConfig, limit: int, never: list[list[str]]) -> dict[str, Any]:
    """zhen's search settings as CTranslate2's `translate_batch` takes them (see the module doc): `limit` is
    zhen's max_len of the call (its EOS included), `never` from `never_pieces`."""
    return {"beam_size": decode.beam, "length_penalty": decode.length_penalty, "patience": 1,
            "max_decoding_length": max(1, limit - 1), "min_decoding_length": 0, "max_input_length": 0,
            "suppress_sequences": never}


def ct2_tokens(translator: Any, loaded: LoadedModel, sources: Ids, decode: DecodeConfig, limits: list[int]) -> Ids:
    """A CTranslate2 export's best tokens, zhen's search settings (see the module doc)."""
    tokenizer = loaded.tokenizer
    index = {tokenizer.id_to_tgt_piece(i): i for i in range(tokenizer.tgt_vocab_size)}
    never = never_pieces(tokenizer)

    def translate(batch: Ids, limit: int) -> Ids:
        pieces = [[tokenizer.id_to_src_piece(i) for i in s[:-1]] for s in batch]  # </s> added by the model
        results = translator.translate_batch(pieces, **ct2_options(decode, limit, never))
        return [[index[p] for p in r.hypotheses[0]] for r in results]

    return run_grouped(sources, limits, translate)


def marian_tokens(path: Path, texts: list[str], limits: list[int]) -> tuple[Ids, Ids]:
    """A Marian export's greedy tokens, and its tokenizer's source ids, for normalised `texts`."""
    import warnings

    from transformers import MarianMTModel, MarianTokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenizer = MarianTokenizer.from_pretrained(str(path))
    model = MarianMTModel.from_pretrained(str(path)).eval()
    sources = [tokenizer(t)["input_ids"] for t in texts]

    @torch.inference_mode()
    def translate(batch: Ids, limit: int) -> Ids:
        src = padded(batch)  # (B, S)
        generated = model.generate(input_ids=src, attention_mask=src != PAD_ID, num_beams=1, do_sample=False,
                                   max_new_tokens=max(1, limit - 1), suppress_tokens=[PAD_ID, BOS_ID])
        return [_until_eos(row[1:]) for row in generated.tolist()]  # the decoder start token first

    return run_grouped(sources, limits, translate), sources


def _until_eos(ids: list[int]) -> list[int]:
    return ids[: ids.index(EOS_ID)] if EOS_ID in ids else ids


def scored_alike(translator: Any, loaded: LoadedModel, source: list[int], outputs: Ids) -> bool:
    """Both engines give every output the same log P(y|x), within SCORE_TOLERANCE."""
    ours, theirs = zhen_log_probs(loaded, source, outputs), ct2_log_probs(translator, loaded, source, outputs)
    return all(abs(a - b) <= SCORE_TOLERANCE for a, b in zip(ours, theirs, strict=True))


def check_ctranslate2(loaded: LoadedModel, exported: Path, texts: list[str], beams: tuple[int, ...]) -> list[Parity]:
    import ctranslate2

    translator = ctranslate2.Translator(str(exported), device="cpu")
    sources = loaded.tokenizer.encode_src(texts)
    results = []
    for beam in beams:
        decode = replace(loaded.config.decode, beam=beam, nbest=1)
        if beam > 1:  # the engines' length penalties differ (module doc): compare log P rankings
            decode = replace(decode, length_penalty=0.0)
        limits = max_lengths(loaded, sources, decode)
        ours = zhen_tokens(loaded, sources, decode)
        theirs = ct2_tokens(translator, loaded, sources, decode, limits)
        alike = None if beam == 1 else (
            lambda i, ours=ours, theirs=theirs: scored_alike(translator, loaded, sources[i], [ours[i], theirs[i]]))
        results.append(compare("ctranslate2", search_label(beam), texts, ours, theirs, alike))
    return results


def check_marian(loaded: LoadedModel, exported: Path, texts: list[str]) -> list[Parity]:
    sources = loaded.tokenizer.encode_src(texts)
    decode = replace(loaded.config.decode, beam=1, nbest=1)
    limits = max_lengths(loaded, sources, decode)
    theirs, their_sources = marian_tokens(exported, texts, limits)
    return [compare("MarianTokenizer", "source ids", texts, sources, their_sources),
            compare("marian", "greedy", texts, zhen_tokens(loaded, sources, decode), theirs)]


def check(loaded: LoadedModel, exported: Path, kind: str, texts: list[str], beams: tuple[int, ...] = (1, 5)
          ) -> list[Parity]:
    """Parity of an exported model (`kind`: "ctranslate2" or "marian") with zhen, per search setting."""
    if kind == "ctranslate2":
        return check_ctranslate2(loaded, exported, texts, beams)
    return check_marian(loaded, exported, texts)
