"""Translate with a model directory: normalise → tokenize → batch by tokens → search → detokenize.

    from zhen import Translator
    Translator.load().translate(["我爱你"])          # the model shipped inside the package
    Translator.load("runs/base").translate([...])     # a model directory or a training run

Input is normalised exactly as the training data was (the settings come from the model's
config.json), so Traditional characters, full-width forms and stray control characters work.
Output order always equals input order; empty lines give empty outputs in place. Lines too long
for the model are split at sentence ends (and, if still too long, cut) with a warning, so memory
stays bounded whatever the input.
"""

from __future__ import annotations

import itertools
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from zhen import device as devices
from zhen.checkpoint import DEFAULT_MODEL, load_model_dir
from zhen.config import Config, DecodeConfig
from zhen.model import Transformer
from zhen.quantize import quantize
from zhen.search import search
from zhen.special import PAD_ID
from zhen.text import Normalizer
from zhen.tokenizer import Tokenizer

# Split after sentence-final punctuation (Chinese and Western), keeping the punctuation.
_SENTENCE_END = re.compile(r"(?<=[。！？；!?;…])")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@dataclass(frozen=True)
class Translation:
    text: str
    score: float  # length-normalised log-probability (higher is better)
    tokens: tuple[int, ...]


Progress = Callable[[int, int], None]  # (pieces translated so far, pieces in all)

EMPTY = Translation("", 0.0, ())  # what an empty input translates to: nothing, with certainty (log P = 0)


def _chunks(lines: Iterable[str], size: int) -> Iterator[list[str]]:
    """Lists of up to `size` lines, line ends stripped, read lazily."""
    iterator = iter(lines)
    while chunk := [line.rstrip("\r\n") for line in itertools.islice(iterator, size)]:
        yield chunk


def one_line(text: str) -> str:
    """Output is one line per input: byte pieces can decode to newlines or control characters."""
    return " ".join(_CONTROL.sub(" ", text).split())


def split_long(text: str, max_chars: int) -> list[str]:
    """Pieces of at most `max_chars` characters: whole sentences where possible, then hard cuts."""
    if len(text) <= max_chars:
        return [text]
    pieces: list[str] = []
    for sentence in filter(None, (s.strip() for s in _SENTENCE_END.split(text))):
        for start in range(0, len(sentence), max_chars):
            part = sentence[start : start + max_chars]
            if pieces and len(pieces[-1]) + len(part) + 1 <= max_chars:
                pieces[-1] += part
            else:
                pieces.append(part)
    return pieces


class Translator:
    """A model, its tokenizer and normalisation, and the decode settings, ready to translate."""

    def __init__(
        self,
        model: Transformer,
        tokenizer: Tokenizer,
        config: Config,
        *,
        device: torch.device | None = None,
        precision: str | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.device = device or next(model.parameters()).device
        self.dtype = devices.compute_dtype(self.device, precision or config.decode.precision)
        devices.configure(self.device)
        if self.dtype == torch.int8:  # int8 linear layers, on a copy that shares the weights
            self.model = quantize(self.model)
        self.normalizer = Normalizer(config.text)

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        *,
        device: str = "auto",
        precision: str | None = None,
        **decode: int | float | str,
    ) -> Translator:
        """Load a model directory (or a training run's best checkpoint); None: the shipped model.
        `device` as `zhen.device.select_device` takes it; `precision` None: the model's decode.precision.
        Keyword arguments override the model's decode settings, e.g. `beam=1`."""
        target = devices.select_device(device)
        loaded = load_model_dir(DEFAULT_MODEL if path is None else path, device=target)
        config = replace(loaded.config, decode=replace(loaded.config.decode, **decode)) if decode else loaded.config
        return cls(loaded.model, loaded.tokenizer, config, device=target, precision=precision)

    # ------------------------------------------------------------------ public API

    def translate(self, sentences: Sequence[str], progress: Progress | None = None) -> list[str]:
        """One English string per input sentence, in input order. `progress(done, total)` is called after
        every batch (counts of pieces: a line longer than text.max_chars is several)."""
        return [nbest[0].text for nbest in self.translate_nbest(sentences, nbest=1, progress=progress)]

    def translate_nbest(
        self, sentences: Sequence[str], nbest: int | None = None, progress: Progress | None = None
    ) -> list[list[Translation]]:
        """The `nbest` best translations of each sentence with their scores, best first (an empty sentence
        has one: the empty translation, score 0)."""
        nbest = nbest or self.config.decode.nbest
        decode = replace(self.config.decode, nbest=nbest, beam=max(self.config.decode.beam, nbest))
        # Long lines become several pieces, translated like separate sentences and joined again.
        pieces, owners = [], []
        for i, sentence in enumerate(sentences):
            text = self.normalizer.zh(sentence)
            parts = split_long(text, self.config.text.max_chars)
            if len(parts) > 1:
                self._warn(f"line {i + 1}: {len(text)} characters, translated in {len(parts)} pieces")
            pieces += parts
            owners += [i] * len(parts)
        translated = self._translate_pieces(pieces, decode, progress)
        results: list[list[Translation]] = [[] for _ in sentences]
        for owner, group in itertools.groupby(zip(owners, translated, strict=True), key=lambda x: x[0]):
            parts = [hyps for _, hyps in group]
            if len(parts) == 1:
                results[owner] = parts[0]
            else:  # one joined translation for a split line: the best of every piece
                best = [p[0] for p in parts]
                text = " ".join(b.text for b in best if b.text)
                score = sum(b.score for b in best) / len(best)
                results[owner] = [Translation(text, score, tuple(t for b in best for t in b.tokens))]
        return results

    def translate_stream(self, lines: Iterable[str], chunk_lines: int = 256) -> Iterator[str]:
        """Translate an iterable of lines lazily, `chunk_lines` at a time, in order."""
        for chunk in _chunks(lines, chunk_lines):
            yield from self.translate(chunk)

    def translate_nbest_stream(
        self, lines: Iterable[str], nbest: int | None = None, chunk_lines: int = 256
    ) -> Iterator[list[Translation]]:
        """`translate_nbest` over an iterable of lines, lazily, `chunk_lines` at a time, in order."""
        for chunk in _chunks(lines, chunk_lines):
            yield from self.translate_nbest(chunk, nbest)

    # ------------------------------------------------------------------ internals

    def _warn(self, message: str) -> None:
        warnings.warn(message, stacklevel=3)  # kept nowhere: a long-lived process (zhen serve) logs them

    def _translate_pieces(
        self, texts: list[str], decode: DecodeConfig, progress: Progress | None = None
    ) -> list[list[Translation]]:
        """Normalised texts → n-best lists. Sorted by length and batched under decode.batch_tokens."""
        results: list[list[Translation]] = [[EMPTY] for _ in texts]
        wanted = [i for i, t in enumerate(texts) if t]  # empty input → the empty translation, no model call
        if not wanted:
            return results
        limit = self.model.config.max_positions
        ids = self.tokenizer.encode_src([texts[i] for i in wanted])
        for n, seq in enumerate(ids):
            if len(seq) > limit:
                self._warn(f"a piece of {len(seq)} tokens was cut to the model's {limit} positions")
                ids[n] = seq[: limit - 1] + seq[-1:]  # keep the EOS
        order = sorted(range(len(wanted)), key=lambda n: len(ids[n]), reverse=True)
        beam = decode.beam
        with devices.inference(self.model), devices.autocast(self.device, self.dtype):
            start = 0
            while start < len(order):
                longest = len(ids[order[start]])
                size = max(1, decode.batch_tokens // (longest * beam))
                batch = order[start : start + size]
                src = torch.full((len(batch), longest), PAD_ID, dtype=torch.long)
                for row, n in enumerate(batch):
                    src[row, : len(ids[n])] = torch.tensor(ids[n])
                hypotheses = search(self.model, src.to(self.device), decode)
                for n, hyps in zip(batch, hypotheses, strict=True):
                    texts_out = [one_line(t) for t in self.tokenizer.decode_tgt([h.tokens for h in hyps])]
                    results[wanted[n]] = [Translation(t, h.score, tuple(h.tokens))
                                          for t, h in zip(texts_out, hyps, strict=True)]
                start += size
                if progress is not None:
                    progress(min(start, len(order)), len(order))
        return results
