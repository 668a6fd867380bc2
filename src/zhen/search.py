"""Note §8, the last step: pick the next token. Greedy and beam search over the incremental KV cache.

    step t:   log P(v | y_<t, x)  for every vocabulary entry v            model.decode_step
    greedy:   y_t = argmax_v log P(v | y_<t, x)                            one hypothesis per sentence
    beam:     keep the K prefixes with the highest log P(y_≤t | x) = Σ_{i≤t} log P(y_i | y_<i, x)
    score:    s(y) = log P(y | x) / lp(y),   lp(y) = ((5 + |y|) / 6)^α     GNMT length penalty, α = 0: none

One convention for every length in this module:
    |y|      the generated tokens including the final EOS (BOS is not generated): the number of decoder steps.
    max_len  min(⌊a·|x| + b⌋, max_positions), |x| = source tokens without padding, its EOS included.
             At step max_len only EOS is allowed, so |y| ≤ max_len and every hypothesis ends with EOS.
    min_len  EOS is forbidden before step min_len, so |y| ≥ min_len; min_len = max_len = N forces N steps.
PAD and BOS are never generated: training never asks the model to predict them.

Both searches feed the decoder only the newest token. `model.start_decoding` computes the source's
cross-attention K/V once; each `model.decode_step` appends the new token's self-attention K/V to the cache.
Beam search is a pure step (`beam_step`: log-probs and scores in; tokens and parent beams out) inside a loop
that re-indexes every cache by parent beam. Sentences that are done leave the batch (`cache.select`), so the
batch shrinks as it goes and a long sentence does not make the short ones pay for its extra steps.

Shapes: B batch (sentences still being decoded), K beam size, S source length, T target length, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from zhen.attention import BeamLayout
from zhen.config import DecodeConfig
from zhen.special import BOS_ID, EOS_ID, PAD_ID

NEG_INF = float("-inf")


@dataclass
class Hypothesis:
    """One translation: target ids (no BOS, no EOS), its length-penalised score and log P(y | x)."""

    tokens: list[int]
    score: float  # log_prob / lp(|y|), what hypotheses are ranked by
    log_prob: float  # Σ_t log P(y_t | y_<t, x), EOS included


def gnmt_lp(length: int, alpha: float) -> float:
    """The GNMT length penalty (Wu et al. 2016, eq. 14): lp(y) = ((5 + |y|) / 6)^α.

    log P(y | x) only falls as y grows, so unnormalised scores favour short output; dividing by lp(y)
    (≥ 1 and growing with |y|) removes that bias. α = 0 turns it off; lp is 1 for a one-token output.
    """
    return ((5 + length) / 6) ** alpha


def max_output_lengths(src: Tensor, max_len_a: float, max_len_b: int, max_positions: int, pad_id: int) -> Tensor:
    """Per sentence max_len = min(⌊a·|x| + b⌋, max_positions), at least 1: (B, S) → (B,) on the CPU.

    Capped by max_positions because the decoder input at step t sits at position t - 1.
    """
    src_lengths = (src != pad_id).sum(dim=1).cpu().double()  # (B,)
    return torch.floor(max_len_a * src_lengths + max_len_b).long().clamp(1, max_positions)  # (B,)


def apply_length_rules(
    log_probs: Tensor, step: int, *, min_len: int, at_limit: Tensor | None, eos_id: int, never: list[int]
) -> Tensor:
    """Restrict log P(v | y_<t, x) (N, V), in place: ids in `never` get -inf; EOS gets -inf before step
    `min_len`; rows `at_limit` (N,) reached their max_len, so EOS is their only choice (it wins over min_len)."""
    eos = log_probs[:, eos_id].clone() if at_limit is not None else None  # (N,)
    log_probs[:, never] = NEG_INF
    if step < min_len:
        log_probs[:, eos_id] = NEG_INF
    if at_limit is not None:
        log_probs.masked_fill_(at_limit[:, None], NEG_INF)
        log_probs[:, eos_id] = torch.where(at_limit, eos, log_probs[:, eos_id])
    return log_probs


class BeamStep(NamedTuple):
    """What one step of beam search keeps: K live prefixes per sentence and the hypotheses that ended."""

    scores: Tensor  # (B, K) log P of each live prefix, best first
    tokens: Tensor  # (B, K) its newest token (never EOS)
    parents: Tensor  # (B, K) the beam (0…K-1) whose prefix it extends
    finished_scores: Tensor  # (B, K) log P of each hypothesis that ended with EOS here; -inf where none did
    finished_parents: Tensor  # (B, K) the beam each of those ended


def beam_step(log_probs: Tensor, scores: Tensor, *, eos_id: int = EOS_ID) -> BeamStep:
    """One step of beam search, a pure function: K prefixes × V next tokens → the K best prefixes.

    log_probs (B, K, V): log P(v | prefix_k); scores (B, K): log P(prefix_k). Every candidate is scored

        cand(k, v) = scores[k] + log_probs[k, v] = log P(prefix_k · v)

    and the 2K best are ranked. At most K of them end in EOS (one per parent beam), so at least K do not:

    - the K best candidates that do not end in EOS are the new live beams (scores, tokens, parents);
    - a candidate ending in EOS that ranks among the K best overall is a finished hypothesis: it leaves the
      beam (the loop length-normalises and stores it) and a live candidate takes its place, so the beam
      always holds K unfinished prefixes. Its score sits in `finished_scores` at its rank, -inf elsewhere.
      An EOS candidate ranked below K is dropped, as in fairseq: the beam would not have kept it.

    A beam with score -inf (the K-1 copies of the empty prefix at step 1, or a sentence with fewer than K
    possible prefixes) only makes -inf candidates; those are never reported as finished.
    """
    b, k, v = log_probs.shape
    # Each beam contributes at most 2K of the 2K best, and those are its own 2K best tokens: rank those only.
    n = min(2 * k, v)
    best, best_tokens = log_probs.topk(n, dim=-1)  # (B, K, n) each
    candidates = (scores.unsqueeze(-1) + best).view(b, k * n)  # (B, K·n)
    top_scores, top_index = candidates.topk(2 * k, dim=-1)  # (B, 2K), best first
    top_parents, top_tokens = top_index // n, best_tokens.view(b, k * n).gather(1, top_index)  # (B, 2K) each
    ends = top_tokens == eos_id  # (B, 2K)
    # An EOS among the K best finishes; -inf marks "none" (so an EOS candidate of a dead beam finishes nothing).
    finished_scores = top_scores[:, :k].masked_fill(~ends[:, :k], NEG_INF)  # (B, K)
    # A stable sort on "ends in EOS" moves the live candidates to the front and keeps their ranking.
    live = torch.sort(ends.to(torch.uint8), dim=1, stable=True).indices[:, :k]  # (B, K)
    return BeamStep(
        top_scores.gather(1, live), top_tokens.gather(1, live), top_parents.gather(1, live),
        finished_scores, top_parents[:, :k],
    )


@torch.inference_mode()
def greedy_search(
    model: Any,
    src: Tensor,
    *,
    max_len_a: float,
    max_len_b: int,
    min_len: int = 0,
    length_penalty: float = 1.0,
    bos_id: int = BOS_ID,
    eos_id: int = EOS_ID,
    pad_id: int = PAD_ID,
) -> list[list[Hypothesis]]:
    """Translate a batch (B, S) by taking the most probable token at every step: y_t = argmax_v log P(v | y_<t, x).

    Returns one one-element list per sentence, in input order (the shape of `beam_search`'s n-best lists).
    A sentence that emits EOS leaves the batch at once. `length_penalty` (α) only sets the reported score.
    The model must be in eval mode (dropout off).
    """
    n = src.size(0)
    if n == 0:
        return []
    max_lens = max_output_lengths(src, max_len_a, max_len_b, model.config.max_positions, pad_id)  # (B,)
    shortest, longest = int(max_lens.min()), int(max_lens.max())
    cache = model.start_decoding(model.encode(src))
    rows = torch.arange(n, device=src.device)  # (B,) input index of each sentence still being decoded
    row_limits = max_lens.to(src.device)  # (B,)
    output = torch.full((n, longest), pad_id, device=src.device)  # (B, T), rows in input order
    log_prob = torch.zeros(n, device=src.device)  # (B,)
    tokens = torch.full((n, 1), bos_id, device=src.device)  # (B, 1)
    for step in range(1, longest + 1):
        log_probs = model.decode_step(tokens, cache)  # (B, V)
        at_limit = row_limits <= step if step >= shortest else None  # (B,)
        apply_length_rules(log_probs, step, min_len=min_len, at_limit=at_limit, eos_id=eos_id, never=[pad_id, bos_id])
        best_log_prob, best = log_probs.max(dim=-1)  # (B,), (B,)
        output[rows, step - 1] = best
        log_prob.index_add_(0, rows, best_log_prob)
        running = (best != eos_id).nonzero().squeeze(1)  # (B',) the one host sync of a step
        if running.numel() == 0:
            break
        if running.numel() < rows.numel():  # finished sentences leave the batch
            cache.select(running, running, BeamLayout(running.numel()))
            rows, row_limits, best = rows[running], row_limits[running], best[running]
        tokens = best[:, None]  # (B, 1)

    hypotheses = []
    for ids, total in zip(output.tolist(), log_prob.tolist(), strict=True):
        length = ids.index(eos_id) + 1  # |y|, EOS included; forced at max_len, so always present
        hypotheses.append([Hypothesis(ids[: length - 1], total / gnmt_lp(length, length_penalty), total)])
    return hypotheses


@torch.inference_mode()
def beam_search(
    model: Any,
    src: Tensor,
    *,
    beam: int,
    nbest: int = 1,
    length_penalty: float = 1.0,
    max_len_a: float,
    max_len_b: int,
    min_len: int = 0,
    bos_id: int = BOS_ID,
    eos_id: int = EOS_ID,
    pad_id: int = PAD_ID,
) -> list[list[Hypothesis]]:
    """Translate a batch (B, S) keeping the K = `beam` most probable prefixes of each sentence.

    Returns per sentence, in input order, its `nbest` best finished hypotheses by s(y) = log P(y|x) / lp(y),
    best first (fewer only if fewer than `nbest` outputs exist at all).

    Stopping (fairseq's criterion): a sentence is done once K hypotheses have finished, or at its max_len,
    where every live beam is made to end; the search stops when every sentence is done. With α > 0 a live
    prefix could still, in principle, overtake the finished ones after that; the exact test (compare with
    best live score / lp(max_len)) would almost never stop early, so we follow fairseq.

    Layout: sentence i owns rows i·K … i·K + K - 1 of every decoder tensor (at step 1 only row i: its K beams
    are still the same empty prefix, decoded once, not K times). Each step, `beam_step` picks the
    parents; the loop re-indexes the token prefixes and the self-attention cache by them (the cross-attention
    K/V, one copy per sentence that its K beams share, stay), and done sentences' rows leave the batch.
    The model must be in eval mode (dropout off).
    """
    if not 1 <= nbest <= beam:
        raise ValueError(f"nbest must be between 1 and beam ({beam}); got {nbest}")
    n, k = src.size(0), beam
    if n == 0:
        return []
    max_lens = max_output_lengths(src, max_len_a, max_len_b, model.config.max_positions, pad_id)  # (B,)
    shortest, longest = int(max_lens.min()), int(max_lens.max())
    # Step 1 decodes one row per sentence: its K beams all start as the same empty prefix. Its K best tokens
    # then become the K beams (rows i·K … i·K + K - 1 of sentence i), which re-indexing the cache creates.
    cache = model.start_decoding(model.encode(src))
    state = _BeamState.start(n, k, bos_id, src.device)
    for step in range(1, longest + 1):
        b, r = state.sentences.numel(), cache.layout.beam  # r: rows a sentence now (1 at step 1, then K)
        log_probs = model.decode_step(state.prefixes[:, -1:], cache)  # (B·R, V)
        at_limit = (max_lens[state.sentences] <= step).to(src.device).repeat_interleave(r) if step >= shortest else None
        apply_length_rules(log_probs, step, min_len=min_len, at_limit=at_limit, eos_id=eos_id, never=[pad_id, bos_id])
        chosen = beam_step(log_probs.view(b, r, -1).expand(b, k, -1), state.scores, eos_id=eos_id)  # (B, K, V) a view
        first_row = torch.arange(b, device=src.device)[:, None] * r  # (B, 1) each sentence's first row
        # At step 1 every beam's parent is its sentence's one row.
        parents, finished_parents = (chosen.parents, chosen.finished_parents) if r == k else (0, 0)
        state.collect_ended(chosen.finished_scores, (first_row + finished_parents).expand(b, k), step,
                            gnmt_lp(step, length_penalty))
        done = (state.n_finished[state.sentences] >= k) | (max_lens[state.sentences] <= step)  # (B,) on the host
        if done.all():
            break
        state.advance(chosen, (first_row + parents).expand(b, k), done, cache)
    return [sorted(hypotheses, key=lambda h: h.score, reverse=True)[:nbest] for hypotheses in state.finished]


@dataclass
class _BeamState:
    """What beam search carries from step to step for the B sentences still being decoded."""

    sentences: Tensor  # (B,) on the host: the input index of each
    scores: Tensor  # (B, K) log P of each live prefix
    prefixes: Tensor  # (B·R, t) BOS + the tokens so far, R rows a sentence (the cache's layout)
    finished: list[list[Hypothesis]]  # per input sentence, the hypotheses that ended
    n_finished: Tensor  # (N,) on the host, in input order

    @classmethod
    def start(cls, n: int, k: int, bos_id: int, device: torch.device) -> _BeamState:
        scores = torch.full((n, k), NEG_INF, device=device)  # (B, K)
        scores[:, 0] = 0.0  # one live beam at step 1, or all K would pick alike
        return cls(torch.arange(n), scores, torch.full((n, 1), bos_id, device=device), [[] for _ in range(n)],
                   torch.zeros(n, dtype=torch.long))

    def collect_ended(self, ended_scores: Tensor, rows: Tensor, step: int, lp: float) -> None:
        """Hypotheses that ended at this step, log P `ended_scores` (B, K) (-inf: none), continuing the prefixes
        in `rows` (B, K), leave the beam with their score s(y) = log P(y|x) / lp(|y|), |y| = step."""
        ended_scores = ended_scores.cpu()  # (B, K), the one host sync of a step
        if not ended_scores.gt(NEG_INF).any():
            return
        sentence, rank = ended_scores.gt(NEG_INF).nonzero(as_tuple=True)  # (F,) each
        words = self.prefixes[rows.cpu()[sentence, rank].to(self.prefixes.device), 1:].tolist()  # (F, step - 1)
        for i, ids, total in zip(self.sentences[sentence].tolist(), words, ended_scores[sentence, rank].tolist(),
                                 strict=True):
            self.finished[i].append(Hypothesis(ids, total / lp, total))
        self.n_finished.index_add_(0, self.sentences[sentence], torch.ones_like(sentence))

    def advance(self, chosen: BeamStep, parent_rows: Tensor, done: Tensor, cache: Any) -> None:
        """Every live beam continues its parent's prefix (rows `parent_rows` (B, K)); sentences that are `done`
        (B,) leave the batch. The cache follows, told the new layout: K rows for each sentence that stays."""
        scores, tokens, k = chosen.scores, chosen.tokens, chosen.scores.size(1)  # (B, K) each
        if done.any():
            keep = (~done).nonzero().squeeze(1)  # (B',)
            self.sentences = self.sentences[keep]
            keep = keep.to(scores.device)
            scores, tokens, parent_rows = scores[keep], tokens[keep], parent_rows[keep]  # (B', K) each
            cache.select(parent_rows.reshape(-1), keep, BeamLayout(keep.numel(), k))  # self K/V by parent
        else:
            cache.reorder(parent_rows.reshape(-1), BeamLayout(parent_rows.size(0), k))
        self.scores = scores
        self.prefixes = torch.cat([self.prefixes[parent_rows.reshape(-1)], tokens.view(-1, 1)], dim=1)  # (B·K, t+1)


def search(model: Any, src: Tensor, config: DecodeConfig, *, min_len: int = 0) -> list[list[Hypothesis]]:
    """Translate src (B, S) as `config` says: greedy when config.beam is 1, beam search otherwise."""
    lengths = {"max_len_a": config.max_len_a, "max_len_b": config.max_len_b, "min_len": min_len}
    if config.beam == 1:
        return greedy_search(model, src, length_penalty=config.length_penalty, **lengths)
    return beam_search(
        model, src, beam=config.beam, nbest=config.nbest, length_penalty=config.length_penalty, **lengths
    )
