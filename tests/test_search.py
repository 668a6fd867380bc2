"""Greedy and beam search: the pure beam step, a scripted stub model checked against brute-force enumeration,
and a tiny random Transformer (fp32 CPU) for the KV cache and batching."""

from __future__ import annotations

import itertools
import math
import zlib
from types import SimpleNamespace

import pytest
import torch

from zhen.attention import BeamLayout
from zhen.config import DecodeConfig, ModelConfig
from zhen.model import Transformer
from zhen.search import (
    NEG_INF,
    Hypothesis,
    beam_search,
    beam_step,
    gnmt_lp,
    greedy_search,
    max_output_lengths,
    search,
)
from zhen.tokenizer import BOS_ID, EOS_ID, PAD_ID

INF = float("inf")


# --- a stub model whose log-probabilities are a fixed function of (source, prefix) ------------------------


class StubCache:
    """The decoder cache interface: the prefix of every row stands in for the self-attention K/V and the
    source of every sentence for the cross-attention K/V, one copy per sentence that its `layout.beam` rows
    share (which `reorder` must not move, as in model.py). Every call checks the rows against its layout."""

    def __init__(self, sources: list[tuple[int, ...]], beam: int) -> None:
        self.sources = sources
        self.layout = BeamLayout(len(sources), beam)
        self.prefixes: list[tuple[int, ...]] = [() for _ in sources for _ in range(beam)]

    def reorder(self, parents: torch.Tensor, layout: BeamLayout) -> None:
        layout.check(parents.numel(), len(self.sources), "reorder")
        old = self.layout.beam
        assert all(p // old == r // layout.beam for r, p in enumerate(parents.tolist()))  # within its sentence
        self.prefixes = [self.prefixes[i] for i in parents.tolist()]
        self.layout = layout

    def select(self, rows: torch.Tensor, sentences: torch.Tensor, layout: BeamLayout) -> None:
        layout.check(rows.numel(), sentences.numel(), "select")
        old = self.layout.beam
        assert all(r // old == sentences[i // layout.beam] for i, r in enumerate(rows.tolist()))
        self.prefixes = [self.prefixes[i] for i in rows.tolist()]
        self.sources = [self.sources[i] for i in sentences.tolist()]
        self.layout = layout

    def row_sources(self) -> list[tuple[int, ...]]:
        assert len(self.prefixes) == self.layout.rows and len(self.sources) == self.layout.sentences
        return [source for source in self.sources for _ in range(self.layout.beam)]


class ScriptedModel:
    """log P(v | prefix, source) = log_softmax(z), z pseudo-random but fixed by (source, prefix).

    `eos_bias` is added to the EOS logit: large values make every prefix likely to end.
    `batch_sizes` records the rows of every decode_step, to see sentences leave the batch.
    """

    def __init__(self, vocab_size: int = 6, eos_bias: float = 0.0, max_positions: int = 64) -> None:
        self.vocab_size = vocab_size
        self.eos_bias = eos_bias
        self.config = SimpleNamespace(max_positions=max_positions)
        self.batch_sizes: list[int] = []

    def log_probs(self, source: tuple[int, ...], prefix: tuple[int, ...]) -> torch.Tensor:
        seed = zlib.crc32(repr((source, prefix)).encode())
        logits = 2.0 * torch.randn(self.vocab_size, generator=torch.Generator().manual_seed(seed))
        logits[EOS_ID] += self.eos_bias
        return logits.log_softmax(dim=-1)  # (V,)

    def encode(self, src: torch.Tensor) -> list[tuple[int, ...]]:
        return [tuple(t for t in row if t != PAD_ID) for row in src.tolist()]

    def start_decoding(self, encoded: list[tuple[int, ...]], beam: int = 1) -> StubCache:
        return StubCache(encoded, beam)  # `beam` rows per sentence

    def decode_step(self, tokens: torch.Tensor, cache: StubCache) -> torch.Tensor:
        self.batch_sizes.append(tokens.size(0))
        cache.prefixes = [(*p, t) for p, t in zip(cache.prefixes, tokens[:, 0].tolist(), strict=True)]
        return torch.stack([self.log_probs(s, p) for s, p in zip(cache.row_sources(), cache.prefixes, strict=True)])


def brute_force(model: ScriptedModel, source: tuple[int, ...], *, max_len: int, min_len: int, alpha: float):
    """Every output y with min_len ≤ |y| ≤ max_len (EOS counted), scored s(y) = log P(y|x) / lp(|y|), best first."""
    words = [v for v in range(model.vocab_size) if v not in (PAD_ID, BOS_ID, EOS_ID)]
    outputs = []
    for n_words in range(max(min_len - 1, 0), max_len):
        for ids in itertools.product(words, repeat=n_words):
            full = (BOS_ID, *ids, EOS_ID)
            log_prob = sum(float(model.log_probs(source, full[:t])[full[t]]) for t in range(1, len(full)))
            outputs.append(Hypothesis(list(ids), log_prob / gnmt_lp(n_words + 1, alpha), log_prob))
    return sorted(outputs, key=lambda h: h.score, reverse=True)


def make_batch(sentences: list[list[int]]) -> torch.Tensor:
    """Pad source sentences (each gets EOS) into (B, S)."""
    width = max(len(s) for s in sentences) + 1
    return torch.tensor([s + [EOS_ID] + [PAD_ID] * (width - len(s) - 1) for s in sentences])


STUB_SOURCES = make_batch([[4, 5], [5], [4, 4, 5, 1], [1, 5, 4]])


def token_lists(results: list[list[Hypothesis]]) -> list[list[list[int]]]:
    return [[h.tokens for h in hyps] for hyps in results]


# --- the pure beam step -----------------------------------------------------------------------------------


def test_beam_step_by_hand():
    # Two beams (log P 0 and -1), V = 5. Candidates, best first:
    #   -0.5 beam 0 EOS | -1.0 beam 0 tok 4 | -1.1 beam 1 tok 1 | -2.0 beam 0 tok 1 | -4.0 beam 1 EOS | ...
    log_probs = torch.tensor([[[-INF, -2.0, -INF, -0.5, -1.0], [-INF, -0.1, -INF, -3.0, -4.0]]])
    step = beam_step(log_probs, torch.tensor([[0.0, -1.0]]), eos_id=3)
    assert step.tokens.tolist() == [[4, 1]]  # EOS left the beam; the next two live candidates take over
    assert step.parents.tolist() == [[0, 1]]
    assert step.scores[0].tolist() == pytest.approx([-1.0, -1.1])
    # Beam 0's EOS ranked first: finished. Beam 1's EOS ranked fifth (below K = 2): dropped.
    assert step.finished_scores.tolist() == [[-0.5, NEG_INF]]
    assert step.finished_parents[0, 0].item() == 0


def test_beam_step_never_finishes_dead_beams():
    # Only beam 0 is alive (step 1): dead beams' candidates are -inf and must not count as finished.
    log_probs = torch.log_softmax(torch.randn(2, 3, 4), dim=-1)
    log_probs[..., 3] = 0.0  # EOS certain for every beam
    step = beam_step(log_probs, torch.tensor([[0.0, NEG_INF, NEG_INF]] * 2), eos_id=3)
    assert (step.finished_scores > NEG_INF).sum(dim=1).tolist() == [1, 1]
    assert (step.scores > NEG_INF).sum(dim=1).tolist() == [3, 3]  # V - 1 live continuations of beam 0
    assert (step.tokens != 3).all()
    # A sentence with no live beam at all: whichever -inf candidates topk ranks first, none may finish.
    for eos_id in range(4):
        step = beam_step(log_probs, torch.full((2, 3), NEG_INF), eos_id=eos_id)
        assert (step.finished_scores == NEG_INF).all()


def reference_step(log_probs: torch.Tensor, scores: torch.Tensor, eos_id: int):
    """The same rule with Python lists, one sentence at a time."""
    k, v = log_probs.shape
    candidates = sorted(
        ((scores[p].item() + log_probs[p, t].item(), p, t) for p in range(k) for t in range(v)), reverse=True
    )
    live = [c for c in candidates if c[2] != eos_id][:k]
    ended = [(s, p) for s, p, t in candidates[:k] if t == eos_id and s > NEG_INF]
    return live, ended


@pytest.mark.parametrize("seed", range(20))
def test_beam_step_matches_reference(seed):
    g = torch.Generator().manual_seed(seed)
    b, k, v = 3, 1 + seed % 4, 4 + seed % 3
    log_probs = torch.randn(b, k, v, generator=g).log_softmax(dim=-1)
    log_probs[:, :, 3] += 1.5  # make EOS compete
    scores = -3 * torch.rand(b, k, generator=g)
    step = beam_step(log_probs, scores, eos_id=3)
    for i in range(b):
        live, ended = reference_step(log_probs[i], scores[i], eos_id=3)
        assert step.scores[i].tolist() == pytest.approx([s for s, _, _ in live])
        assert step.parents[i].tolist() == [p for _, p, _ in live]
        assert step.tokens[i].tolist() == [t for _, _, t in live]
        got = [(s, p) for s, p in zip(step.finished_scores[i].tolist(), step.finished_parents[i].tolist(),
                                      strict=True) if s > NEG_INF]
        assert [p for _, p in got] == [p for _, p in ended]
        assert [s for s, _ in got] == pytest.approx([s for s, _ in ended])


# --- search on the scripted stub: brute force, greedy, batching, stopping ----------------------------------


@pytest.mark.parametrize(("alpha", "min_len"), [(0.0, 0), (1.0, 0), (2.0, 0), (1.0, 3)])
def test_beam_search_equals_brute_force(alpha, min_len):
    # V = 6 leaves 3 words besides EOS; with max_len 5 there are at most 27·4 = 108 candidates a step, so a
    # beam of 128 never prunes or stops early and must find the exact n best.
    model = ScriptedModel(eos_bias=1.0)
    results = beam_search(model, STUB_SOURCES, beam=128, nbest=5, length_penalty=alpha,
                          max_len_a=0.0, max_len_b=5, min_len=min_len)
    for source, hyps in zip(model.encode(STUB_SOURCES), results, strict=True):
        expected = brute_force(model, source, max_len=5, min_len=min_len, alpha=alpha)[:5]
        assert [h.tokens for h in hyps] == [h.tokens for h in expected]
        assert [h.score for h in hyps] == pytest.approx([h.score for h in expected], abs=1e-5)
        assert [h.log_prob for h in hyps] == pytest.approx([h.log_prob for h in expected], abs=1e-5)


@pytest.mark.parametrize("eos_bias", [-1.0, 1.0, 3.0])
def test_beam_one_equals_greedy_on_stub(eos_bias):
    model = ScriptedModel(eos_bias=eos_bias)
    kwargs = {"max_len_a": 1.0, "max_len_b": 2, "length_penalty": 1.0}
    greedy, beam = greedy_search(model, STUB_SOURCES, **kwargs), beam_search(model, STUB_SOURCES, beam=1, **kwargs)
    assert token_lists(beam) == token_lists(greedy)
    assert [h[0].score for h in beam] == pytest.approx([h[0].score for h in greedy])
    assert [h[0].log_prob for h in beam] == pytest.approx([h[0].log_prob for h in greedy])


def greedy_by_hand(model: ScriptedModel, source: tuple[int, ...], max_len: int) -> list[int]:
    prefix = (BOS_ID,)
    for step in range(1, max_len + 1):
        log_probs = model.log_probs(source, prefix)
        log_probs[[PAD_ID, BOS_ID]] = NEG_INF
        token = EOS_ID if step == max_len else int(log_probs.argmax())
        if token == EOS_ID:
            return list(prefix[1:])
        prefix += (token,)
    raise AssertionError("unreachable")


def test_greedy_on_stub_follows_argmax():
    model = ScriptedModel(vocab_size=9, eos_bias=-0.5)
    results = greedy_search(model, STUB_SOURCES, max_len_a=1.0, max_len_b=3)
    limits = max_output_lengths(STUB_SOURCES, 1.0, 3, 64, PAD_ID).tolist()
    for source, limit, hyps in zip(model.encode(STUB_SOURCES), limits, results, strict=True):
        assert len(hyps) == 1
        assert hyps[0].tokens == greedy_by_hand(model, source, limit)


@pytest.mark.parametrize("search_fn", [greedy_search, lambda *a, **kw: beam_search(*a, beam=3, nbest=3, **kw)])
def test_stub_sentence_alone_equals_in_batch(search_fn):
    model = ScriptedModel(eos_bias=0.5)
    together = search_fn(model, STUB_SOURCES, max_len_a=1.0, max_len_b=2)
    for i in range(STUB_SOURCES.size(0)):
        alone = search_fn(model, STUB_SOURCES[i : i + 1], max_len_a=1.0, max_len_b=2)
        assert token_lists(alone) == token_lists(together[i : i + 1])


def test_finished_sentences_leave_the_batch():
    # max_len = |x|: the four sentences stop after 3, 2, 5 and 4 steps, whatever the model says.
    model = ScriptedModel(eos_bias=-10.0)
    greedy_search(model, STUB_SOURCES, max_len_a=1.0, max_len_b=0)
    assert model.batch_sizes == [4, 4, 3, 2, 1]
    model.batch_sizes.clear()
    results = beam_search(model, STUB_SOURCES, beam=2, nbest=2, max_len_a=1.0, max_len_b=0)
    assert model.batch_sizes == [4, 8, 6, 4, 2]  # step 1: one row a sentence (its beams share the empty prefix)
    assert [len(h.tokens) for hyps in results for h in hyps] == [2, 2, 1, 1, 4, 4, 3, 3]


def test_beam_search_stops_early_when_all_beams_end():
    # EOS is by far the likeliest token: both beams end within two steps although max_len is 20.
    model = ScriptedModel(eos_bias=20.0)
    results = beam_search(model, STUB_SOURCES, beam=2, nbest=2, max_len_a=0.0, max_len_b=20)
    assert len(model.batch_sizes) == 2
    assert all(len(hyps) == 2 for hyps in results)


def test_nbest_sorted_distinct_and_consistent():
    model = ScriptedModel(vocab_size=8)
    results = beam_search(model, STUB_SOURCES, beam=6, nbest=4, length_penalty=1.0, max_len_a=1.0, max_len_b=3)
    for hyps in results:
        assert len(hyps) == 4
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        assert len({tuple(h.tokens) for h in hyps}) == 4
        for h in hyps:
            assert h.score == pytest.approx(h.log_prob / ((5 + len(h.tokens) + 1) / 6))


def test_max_positions_caps_output_length():
    model = ScriptedModel(eos_bias=-10.0, max_positions=4)
    for results in (greedy_search(model, STUB_SOURCES, max_len_a=2.0, max_len_b=50),
                    beam_search(model, STUB_SOURCES, beam=2, max_len_a=2.0, max_len_b=50)):
        assert [len(hyps[0].tokens) for hyps in results] == [3] * 4  # |y| = 4 with EOS


def test_max_output_lengths():
    src = make_batch([[4, 5, 6], [4]])  # |x| = 4 and 2 with EOS
    assert max_output_lengths(src, 1.3, 1, 100, PAD_ID).tolist() == [6, 3]  # ⌊6.2⌋, ⌊3.6⌋
    assert max_output_lengths(src, 1.3, 1, 5, PAD_ID).tolist() == [5, 3]
    assert max_output_lengths(src, 0.0, 0, 100, PAD_ID).tolist() == [1, 1]


def test_gnmt_lp():
    assert gnmt_lp(1, 1.0) == 1.0
    assert gnmt_lp(7, 0.0) == 1.0
    assert gnmt_lp(13, 0.5) == pytest.approx(math.sqrt(3.0))


# --- a tiny random Transformer: KV cache, batching, lengths ------------------------------------------------

VOCAB = 40


@pytest.fixture(scope="module", params=["sinusoidal", "rotary"])
def model(request):
    """A random model whose outputs depend on source and prefix, some ending early, some at max_len.

    With a tied output layer a random model mostly repeats one token, which would hide a broken cache;
    an untied, sharpened output layer and a louder EOS make the outputs varied.
    """
    torch.manual_seed({"sinusoidal": 2, "rotary": 5}[request.param])  # seeds whose outputs are varied
    config = ModelConfig(src_vocab_size=VOCAB, tgt_vocab_size=VOCAB, d_model=32, n_heads=4, d_ff=64,
                         n_encoder_layers=2, n_decoder_layers=2, dropout=0.0, max_positions=64, tie_output=False,
                         positions=request.param)
    model = Transformer(config).eval()
    with torch.no_grad():
        model.output.weight.mul_(3.0)
        model.output.weight[EOS_ID].mul_(2.0)
    return model


@pytest.fixture(scope="module")
def src():
    g = torch.Generator().manual_seed(1)
    lengths = [5, 9, 2, 7, 12, 1]
    return make_batch([torch.randint(4, VOCAB, (n,), generator=g).tolist() for n in lengths])


def uncached_greedy(model: Transformer, src_row: torch.Tensor, max_len: int) -> list[int]:
    """Greedy decoding the slow way: the whole prefix through `model.decode` at every step, no cache."""
    encoded = model.encode(src_row[None])
    prefix = [BOS_ID]
    for step in range(1, max_len + 1):
        hidden = model.decode(torch.tensor([prefix]), encoded.memory, encoded.src_mask).hidden  # (1, t, D)
        log_probs = model.logits(hidden[0, -1]).log_softmax(dim=-1)  # (V,)
        log_probs[[PAD_ID, BOS_ID]] = NEG_INF
        token = EOS_ID if step == max_len else int(log_probs.argmax())
        if token == EOS_ID:
            return prefix[1:]
        prefix.append(token)
    raise AssertionError("unreachable")


@torch.inference_mode()
def test_cached_equals_uncached(model, src):
    results = greedy_search(model, src, max_len_a=1.0, max_len_b=4)
    limits = max_output_lengths(src, 1.0, 4, 64, PAD_ID).tolist()
    outputs = [hyps[0].tokens for hyps in results]
    assert len({tuple(t) for t in outputs}) >= 4  # the model tells sentences apart,
    assert any(len(t) + 1 < limit for t, limit in zip(outputs, limits, strict=True))  # some end by EOS,
    assert any(len(set(t)) >= 4 for t in outputs)  # and not by repeating one token
    for row, limit, tokens in zip(src, limits, outputs, strict=True):
        assert tokens == uncached_greedy(model, row, limit)


def test_beam_one_equals_greedy_on_model(model, src):
    kwargs = {"max_len_a": 1.5, "max_len_b": 3, "length_penalty": 0.6}
    greedy, beam = greedy_search(model, src, **kwargs), beam_search(model, src, beam=1, **kwargs)
    assert token_lists(beam) == token_lists(greedy)
    assert [h[0].score for h in beam] == pytest.approx([h[0].score for h in greedy], abs=1e-5)


@pytest.mark.parametrize("beam", [1, 4])
def test_sentence_alone_equals_in_batch(model, src, beam):
    together = search(model, src, DecodeConfig(beam=beam, nbest=beam, max_len_a=1.0, max_len_b=5))
    for i in range(src.size(0)):
        row = src[i : i + 1, : int((src[i] != PAD_ID).sum())]  # alone: no padding at all
        alone = search(model, row, DecodeConfig(beam=beam, nbest=beam, max_len_a=1.0, max_len_b=5))
        assert token_lists(alone) == token_lists(together[i : i + 1])
        assert [h.score for h in alone[0]] == pytest.approx([h.score for h in together[i]], abs=1e-4)


@torch.inference_mode()
def test_nbest_scores_match_teacher_forcing(model, src):
    # Every hypothesis's log P(y|x), rescored in one teacher-forced pass without any cache: a beam whose
    # cache rows were not re-indexed by its parents would have been scored against another prefix.
    results = beam_search(model, src, beam=5, nbest=5, length_penalty=1.0, max_len_a=1.0, max_len_b=5)
    for row, hyps in zip(src, results, strict=True):
        assert len(hyps) == 5
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        for h in hyps:
            tgt_in, tgt_out = torch.tensor([[BOS_ID, *h.tokens]]), torch.tensor([[*h.tokens, EOS_ID]])
            log_probs = model(row[None], tgt_in).log_softmax(dim=-1).gather(2, tgt_out[..., None])  # (1, T, 1)
            assert h.log_prob == pytest.approx(log_probs.sum().item(), abs=1e-4)
            assert h.score == pytest.approx(h.log_prob / gnmt_lp(len(h.tokens) + 1, 1.0))


@pytest.mark.parametrize("beam", [1, 3])
def test_outputs_respect_max_len(model, src, beam):
    limits = max_output_lengths(src, 0.5, 2, 64, PAD_ID).tolist()
    results = search(model, src, DecodeConfig(beam=beam, nbest=beam, max_len_a=0.5, max_len_b=2))
    for limit, hyps in zip(limits, results, strict=True):
        assert all(len(h.tokens) + 1 <= limit for h in hyps)


@pytest.mark.parametrize("beam", [1, 3])
def test_min_len_equal_max_len_forces_length(model, src, beam):
    model_eos = ScriptedModel(eos_bias=20.0)  # a model that wants to stop at once is forced on, too
    for m, source in ((model, src), (model_eos, STUB_SOURCES)):
        results = search(m, source, DecodeConfig(beam=beam, nbest=1, max_len_a=0.0, max_len_b=6), min_len=6)
        assert all(len(hyps[0].tokens) == 5 for hyps in results)  # |y| = 6 with EOS


@pytest.mark.parametrize("beam", [1, 3])
def test_max_len_wins_over_min_len(beam):
    # min_len 10 exceeds every max_len (|x| = 3, 2, 5, 4): each sentence runs to its own max_len, and a
    # sentence reaching its limit must not lift the EOS ban of the others.
    model = ScriptedModel(eos_bias=20.0)
    if beam == 1:
        results = greedy_search(model, STUB_SOURCES, max_len_a=1.0, max_len_b=0, min_len=10)
    else:
        results = beam_search(model, STUB_SOURCES, beam=beam, max_len_a=1.0, max_len_b=0, min_len=10)
    assert [len(hyps[0].tokens) for hyps in results] == [2, 1, 4, 3]


def test_search_dispatches_on_beam(model, src):
    kwargs = {"max_len_a": 1.0, "max_len_b": 3, "length_penalty": 1.0}
    assert token_lists(search(model, src, DecodeConfig(beam=1, **kwargs))) == token_lists(
        greedy_search(model, src, **kwargs))
    assert token_lists(search(model, src, DecodeConfig(beam=3, nbest=2, **kwargs))) == token_lists(
        beam_search(model, src, beam=3, nbest=2, **kwargs))


def test_empty_batch(model):
    assert greedy_search(model, torch.zeros(0, 3, dtype=torch.long), max_len_a=1.0, max_len_b=2) == []
    assert beam_search(model, torch.zeros(0, 3, dtype=torch.long), beam=2, max_len_a=1.0, max_len_b=2) == []
