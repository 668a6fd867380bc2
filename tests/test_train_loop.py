"""The training loop's decisions: the best checkpoint and early stopping, the epoch limit, accumulation to
train.update_tokens, and pruning that keeps `best` and `latest`."""

import json
import math

import numpy as np
import pytest
import torch
from train_runs import PreparedRuns, tiny_config

from zhen import checkpoint as ckpt
from zhen import train_loop
from zhen.data import TokenizedCorpus, make_batches
from zhen.run_dir import RunLog
from zhen.train import train
from zhen.train_loop import Setup, TrainingLoop, accumulation, updates_per_epoch
from zhen.trainer import Processes, TrainState
from zhen.validation import is_best, record_validation


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return PreparedRuns(tmp_path_factory.mktemp("prepared"))


def records(out, kind):
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


# ----------------------------------------------------------------------------- best checkpoint, early stopping


def test_is_best_wants_a_higher_bleu_and_breaks_ties_by_a_lower_loss():
    state = TrainState(best_bleu=20.0, best_loss=2.5)
    assert is_best({"bleu": 20.1, "loss": 9.0}, state)
    assert is_best({"bleu": 20.0, "loss": 2.4}, state)
    assert not is_best({"bleu": 20.0, "loss": 2.5}, state)
    assert not is_best({"bleu": 19.9, "loss": 0.1}, state)
    assert is_best({"bleu": 0.0, "loss": 50.0}, TrainState())  # the first validation is always the best so far


def test_record_validation_counts_validations_without_improvement():
    state = TrainState()
    decisions = []
    for step, (bleu, loss) in enumerate([(10, 3.0), (9, 2.0), (12, 2.9), (12, 3.0), (11, 2.0)], 1):
        state.step = step
        decisions.append(record_validation(state, {"bleu": bleu, "loss": loss}, patience=2))
    assert decisions == [(True, ""), (False, ""), (True, ""), (False, ""),
                         (False, "no better dev BLEU in 2 validations (early stopping)")]
    assert (state.best_step, state.best_bleu, state.best_loss, state.bad_validations) == (3, 12, 2.9, 2)
    assert record_validation(TrainState(bad_validations=99), {"bleu": 0, "loss": 9}, patience=0)[1] == ""


def test_early_stopping_and_the_checkpoint_best_points_to(runs, tmp_path, monkeypatch):
    """Dev scores scripted for steps 2, 4, … 10: the best is step 6 (same BLEU as step 4, lower loss); two
    validations without improvement stop the run at step 10; pruning to 2 checkpoints keeps step 6."""
    scores = iter([(10.0, 3.0), (20.0, 2.5), (20.0, 2.4), (19.0, 2.0), (20.0, 2.4)])

    def scripted(trainer, tokenizer, dev_sets):
        bleu, loss = next(scores)
        return {"bleu": bleu, "loss": loss, "chrf": 0.0, "ppl": math.exp(loss)}

    monkeypatch.setattr(train_loop, "validate", scripted)
    config = runs.config("train.max_steps=100", "train.valid_every=2", "train.patience=2", "train.keep_last=2",
                         "data.max_tokens=600", "data.dev=[{path='hsk'}]", "data.dev_max_sentences=2")
    out = train(config, runs.new_out(tmp_path / "run"))
    assert [r["step"] for r in records(out, "valid")] == [2, 4, 6, 8, 10]
    assert records(out, "done")[0]["reason"] == "no better dev BLEU in 2 validations (early stopping)"
    assert ckpt.read_pointer(out, "best").name == "step-0000006"
    assert ckpt.read_pointer(out, "latest").name == "step-0000010"
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step-0000006", "step-0000008", "step-0000010"]
    assert ckpt.resolve_model_dir(out).name == "step-0000006"  # what translate and evaluate load


# ----------------------------------------------------------------------------- epochs and accumulation


class ScriptedTrainer:
    """Stands in for `Trainer`: counts updates and records the batches each one got, without a network."""

    def __init__(self) -> None:
        self.state, self.processes, self.device = TrainState(), Processes(), torch.device("cpu")
        self.updates: list[list[int]] = []  # the pairs (indices) of each update

    def update(self, batches):
        self.updates.append([int(row[0]) - 4 for batch in batches for row in batch.src])
        self.state.step += 1
        return {"loss": 1.0, "lr": 1e-3, "grad_norm": 1.0, "tokens": 10.0}


def scripted_loop(tmp_path, *overrides: str) -> tuple[TrainingLoop, TokenizedCorpus]:
    """A loop over 40 pairs whose source starts with the pair's index (+ 4, past the special ids)."""
    rng = np.random.default_rng(0)
    src = [[4 + i, *rng.integers(4, 60, rng.integers(1, 7))] for i in range(40)]
    tgt = [list(rng.integers(4, 60, rng.integers(1, 7))) for _ in range(40)]
    corpus = TokenizedCorpus(*flat(src), *flat(tgt))
    config = tiny_config("data.max_length=16", "data.max_tokens=40", "train.valid_every=1000", *overrides)
    setup = Setup(tmp_path, config, ScriptedTrainer(), None, corpus, [], RunLog(tmp_path, enabled=False))
    loop = TrainingLoop(setup)
    loop.save = lambda: None  # no network to save: checkpoints are tested with real runs
    return loop, corpus


def flat(sequences):
    lengths = [len(s) for s in sequences]
    return np.concatenate(sequences).astype(np.uint16), np.concatenate([[0], np.cumsum(lengths)])


def test_max_epochs_stops_after_that_many_passes_over_the_data(tmp_path):
    loop, corpus = scripted_loop(tmp_path, "train.max_steps=100000", "train.max_epochs=2")
    assert loop.run() == "reached train.max_epochs=2"
    epochs = [make_batches(corpus.src_lengths, corpus.tgt_lengths, 40, 1, epoch) for epoch in (0, 1)]
    assert loop.trainer.updates == [list(b) for b in epochs[0] + epochs[1]]  # every batch once, in order
    assert (loop.state.step, loop.state.epoch, loop.state.batch_index) == (len(epochs[0]) + len(epochs[1]), 2, 0)


def test_accumulation_sizes_updates_to_update_tokens():
    lengths = np.full(8, 9)  # 8 targets of 9 tokens (+ EOS: 10 each)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    corpus = TokenizedCorpus(np.zeros(offsets[-1], np.uint16), offsets, np.zeros(offsets[-1], np.uint16), offsets)
    batches = [np.arange(0, 4), np.arange(4, 8)]  # 40 target tokens each
    assert accumulation(corpus, batches, 0, world=1) == 1  # 0: one batch per update
    assert accumulation(corpus, batches, 100, world=1) == 3  # ⌈100 / 40⌉
    assert accumulation(corpus, batches, 100, world=2) == 2  # two processes share the update
    assert accumulation(corpus, batches, 10, world=1) == 1
    assert updates_per_epoch([np.arange(1)] * 7, per_update=3, world=1) == 3  # 2 full + 1 partial
    assert updates_per_epoch([np.arange(1)] * 7, per_update=4, world=2) == 2  # the partial has 3 ≥ 2 processes
    assert updates_per_epoch([np.arange(1)] * 5, per_update=4, world=2) == 1  # … but not with 1 batch for 2


def test_each_update_takes_the_accumulated_batches_in_order(tmp_path):
    loop, corpus = scripted_loop(tmp_path, "train.max_steps=3", "train.update_tokens=60")
    order = make_batches(corpus.src_lengths, corpus.tgt_lengths, 40, 1, 0)
    assert loop.accum == accumulation(corpus, order, 60, world=1) > 1
    assert loop.run() == "reached train.max_steps=3"
    accum = loop.accum
    assert loop.trainer.updates == [list(np.concatenate(order[i * accum : (i + 1) * accum])) for i in range(3)]
    assert loop.state.batch_index == 3 * accum


# ----------------------------------------------------------------------------- pruning


def fake_checkpoint(run, step):
    directory = run / ckpt.CHECKPOINTS / ckpt.checkpoint_name(step)
    directory.mkdir(parents=True)
    (directory / ckpt.MODEL_FILE).write_bytes(b"")
    return directory


def test_pruning_keeps_the_newest_and_best_and_latest_and_removes_stale_saves(tmp_path):
    run = tmp_path / "run"
    steps = [fake_checkpoint(run, step) for step in (100, 200, 300, 400, 500, 600)]
    ckpt.write_pointer(run, "best", steps[1])
    ckpt.write_pointer(run, "latest", steps[3])  # e.g. resumed from 400 while newer ones are still there
    stale = run / ckpt.CHECKPOINTS / ".step-0000700.tmp-12345"  # a save killed half way
    stale.mkdir()
    ckpt.prune_checkpoints(run, keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(run)] == [
        "step-0000200", "step-0000400", "step-0000500", "step-0000600"]
    assert not stale.exists()
    ckpt.prune_checkpoints(run, keep_last=2)  # nothing more to do
    assert len(ckpt.list_checkpoints(run)) == 4



def test_dev_sets_are_read_once_and_normalised_as_training_data_is(tiny_model_dir, monkeypatch):
    from zhen import data
    from zhen.config import Config, CorpusConfig, DataConfig
    from zhen.text import Normalizer
    from zhen.tokenizer import Tokenizer
    from zhen.validation import load_dev_sets

    reads: list[str] = []
    real = data.read_columns
    monkeypatch.setattr(data, "read_columns", lambda corpus: reads.append(corpus.path) or real(corpus))
    config = Config(data=DataConfig(dev=(CorpusConfig(path="hsk"),), dev_max_sentences=7, max_tokens=4096))
    normalizer, tokenizer = Normalizer(config.text), Tokenizer.load(tiny_model_dir)
    (dev,) = load_dev_sets(config, normalizer, tokenizer)
    assert reads == ["hsk"]  # one read of the corpus, not one for the text and one for the loss
    first = data.load_pairs([CorpusConfig(path="hsk")], normalizer, clean=False)[0][:7]
    assert len(dev.sources) == 7 and dev.sources[0] == real(CorpusConfig(path="hsk")).zh[0]
    expected = data.Batch.from_ids(tokenizer.encode_src([zh for zh, _ in first]),
                                   tokenizer.encode_tgt([en for _, en in first]))
    assert torch.equal(dev.batches[0].src, expected.src) and torch.equal(dev.batches[0].tgt_out, expected.tgt_out)
