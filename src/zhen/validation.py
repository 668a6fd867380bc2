"""Validation, every `train.valid_every` steps and at the last step: the dev loss (teacher forcing, as in
training) and the dev BLEU / chrF of decoded sentences (sacreBLEU), overall and per dev set; then what the
numbers decide, as small functions the loop only calls (Joey NMT's `is_best`):

    is_best            higher dev BLEU than the best so far; equal BLEU with a lower dev loss
    record_validation  keeps the best so far in the TrainState, counts validations without improvement,
                       and says when `train.patience` of them in a row stop the run (early stopping)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from zhen import device as devices
from zhen.config import Config
from zhen.data import Batch, read_corpus
from zhen.evaluate import score
from zhen.loss import negative_log_likelihood
from zhen.special import PAD_ID
from zhen.text import Normalizer
from zhen.textio import progress
from zhen.tokenizer import Tokenizer
from zhen.trainer import Trainer, TrainState
from zhen.translator import Translator

if TYPE_CHECKING:
    from tqdm import tqdm


@dataclass
class DevSet:
    name: str
    sources: list[str]  # raw Chinese, as a user would type it
    references: list[str]  # raw English
    batches: list[Batch]  # for the dev loss


def load_dev_sets(config: Config, normalizer: Normalizer, tokenizer: Tokenizer) -> list[DevSet]:
    """The first `data.dev_max_sentences` pairs of each dev corpus: raw for BLEU, encoded for the loss."""
    dev_sets = []
    for corpus in config.data.dev:
        raw = read_corpus(corpus)[: config.data.dev_max_sentences]  # read once; normalised as load_pairs does
        sources, references = [zh for zh, _ in raw], [en for _, en in raw]
        src = [ids[: config.data.max_length] for ids in tokenizer.encode_src(normalizer.zh_many(sources))]
        tgt = [ids[: config.data.max_length - 1] for ids in tokenizer.encode_tgt(normalizer.en_many(references))]
        step = max(1, config.data.max_tokens // (config.data.max_length + 1))
        batches = [Batch.from_ids(src[i : i + step], tgt[i : i + step]) for i in range(0, len(src), step)]
        dev_sets.append(DevSet(corpus.path, sources, references, batches))
    return dev_sets


def validate(trainer: Trainer, tokenizer: Tokenizer, dev_sets: list[DevSet]) -> dict[str, float]:
    """Dev loss, BLEU and chrF, overall and per set (`NAME/bleu`…); a bar on a terminal while decoding."""
    config = trainer.config
    decode = replace(config.decode, beam=config.train.valid_beam, nbest=1)
    translator = Translator(trainer.model, tokenizer, replace(config, decode=decode), device=trainer.device,
                            precision=config.train.precision)
    results: dict[str, float] = {}
    nll, tokens, hypotheses, references = 0.0, 0, [], []
    with devices.inference(trainer.model), progress(sum(len(d.sources) for d in dev_sets), "validate") as bar:
        for dev in dev_sets:
            set_nll, set_tokens = dev_loss(trainer, dev.batches)
            output = translate_with_bar(translator, dev.sources, bar)
            scores = score(output, dev.references)
            results[f"{dev.name}/bleu"], results[f"{dev.name}/chrf"] = scores.bleu, scores.chrf
            results[f"{dev.name}/loss"] = set_nll / max(set_tokens, 1)
            nll, tokens = nll + set_nll, tokens + set_tokens
            hypotheses += output
            references += dev.references
    overall = score(hypotheses, references)
    results.update(loss=nll / max(tokens, 1), ppl=math.exp(min(nll / max(tokens, 1), 50)),
                   bleu=overall.bleu, chrf=overall.chrf)
    return results


def dev_loss(trainer: Trainer, batches: list[Batch]) -> tuple[float, int]:
    """(Σ −log p(reference token), reference tokens) by teacher forcing, as in training but without smoothing."""
    total, tokens = 0.0, 0
    for batch in batches:
        batch = batch.to(trainer.device)
        with devices.autocast(trainer.device, trainer.dtype):
            logits = trainer.model(batch.src, batch.tgt_in)  # (B, T, V)
        total += float(negative_log_likelihood(logits, batch.tgt_out, PAD_ID))
        tokens += batch.n_tgt_tokens
    return total, tokens


def translate_with_bar(translator: Translator, sources: list[str], bar: tqdm) -> list[str]:
    """`translator.translate`, moving `bar` from where it is by len(sources) as batches finish."""
    start = bar.n

    def advance(done: int, total: int) -> None:  # counts pieces: a long line may be several
        bar.update(start + len(sources) * done // max(total, 1) - bar.n)

    output = translator.translate(sources, progress=advance)
    bar.update(start + len(sources) - bar.n)
    return output


def is_best(results: dict[str, float], state: TrainState) -> bool:
    """Joey NMT's is_best: a higher dev BLEU than the best so far, or the same BLEU with a lower dev loss."""
    return (results["bleu"], -results["loss"]) > (state.best_bleu, -state.best_loss)


def record_validation(state: TrainState, results: dict[str, float], patience: int) -> tuple[bool, str]:
    """After each validation: (is this step the best so far, why to stop or ""). Updates the best so far
    and the count of validations without improvement in `state`; `patience` 0 never stops."""
    best = is_best(results, state)
    if best:
        state.best_bleu, state.best_loss = results["bleu"], results["loss"]
        state.best_step, state.bad_validations = state.step, 0
    else:
        state.bad_validations += 1
    if patience and state.bad_validations >= patience:
        return best, f"no better dev BLEU in {patience} validations (early stopping)"
    return best, ""
