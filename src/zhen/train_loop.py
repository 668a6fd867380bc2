"""The training loop (step 4 of `zhen train`): updates until a limit, with logging, validation and checkpoints.

Each turn of `TrainingLoop.run` is one of:

    epoch over     advance to the next epoch's batch order (stop first if train.max_epochs are done)
    one update     this process's share of the next `accum × world` batches → Trainer.update, then in order:
                   log (every train.log_every) → is this the last step (train.max_steps, train.max_minutes)
                   → validate (every train.valid_every and at the last step) → checkpoint (every
                   train.save_every, with each validation, at the last step) → prune → early stopping

Under DDP every process runs the same turns; the main process alone validates, saves and reads the
clock, and broadcasts what it decided (out of time, stop early) so that all stop at the same step.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from zhen import checkpoint as ckpt
from zhen.config import Config
from zhen.data import TokenizedCorpus, collate, epoch_batches
from zhen.run_dir import RunLog
from zhen.tokenizer import Tokenizer
from zhen.trainer import Trainer, TrainState
from zhen.validation import DevSet, record_validation, validate


def updates_per_epoch(batches: list[np.ndarray], per_update: int, world: int) -> int:
    """Full updates in an epoch; a final partial update needs at least one batch per process."""
    full, rest = divmod(len(batches), per_update)
    return full + (1 if rest >= world else 0)


def accumulation(corpus: TokenizedCorpus, batches: list[np.ndarray], update_tokens: int, world: int) -> int:
    """Batches per process per update so that an update holds about `update_tokens` target tokens."""
    if update_tokens == 0:
        return 1
    mean_tokens = float(np.mean([corpus.tgt_lengths[b].sum() + len(b) for b in batches]))
    return max(1, math.ceil(update_tokens / (mean_tokens * world)))


@dataclass
class Setup:
    """What the loop works with, as `zhen.train.train` set it up."""

    out: Path
    config: Config
    trainer: Trainer
    tokenizer: Tokenizer
    corpus: TokenizedCorpus
    dev_sets: list[DevSet]  # empty on all but the main process
    log: RunLog
    on_update: Callable[[TrainState], None] | None = None  # called after every update (tests, tools)


@dataclass
class Meter:
    """Training loss and target tokens since the last log line."""

    loss: float = 0.0  # Σ loss over target tokens
    tokens: float = 0.0
    start: float = field(default_factory=time.perf_counter)

    def add(self, stats: dict[str, float]) -> None:
        self.loss += stats["loss"] * stats["tokens"]
        self.tokens += stats["tokens"]

    def read(self) -> tuple[float, float]:
        """(mean loss per target token, target tokens per second)."""
        return self.loss / max(self.tokens, 1), self.tokens / max(time.perf_counter() - self.start, 1e-9)


class TrainingLoop:
    """Batches → updates → log, validate, save, stop. `run()` returns why it stopped; `finish()` saves."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.trainer, self.state, self.t = setup.trainer, setup.trainer.state, setup.config.train  # t: [train]
        self.processes = setup.trainer.processes
        self.order = (0, self._make_batches(0))  # (epoch, its batch order)
        self.accum = accumulation(setup.corpus, self.order[1], self.t.update_tokens, self.processes.world)
        self.per_update = self.accum * self.processes.world
        self.save_every = self.t.save_every or self.t.valid_every
        self.deadline = time.perf_counter() + 60 * self.t.max_minutes if self.t.max_minutes else math.inf
        self.meter = Meter()
        self.bar: tqdm | None = None
        if self.accum > 1:
            setup.log.message(f"accumulating {self.accum} batches per process per update "
                              f"(train.update_tokens={self.t.update_tokens})")

    def run(self) -> str:
        """Updates until a limit or early stopping; returns the reason. The bar closes however it ends."""
        self.bar = tqdm(total=self.t.max_steps, initial=self.state.step, desc="train", unit="step", file=sys.stderr,
                        disable=not (self.processes.main and sys.stderr.isatty()), dynamic_ncols=True,
                        mininterval=1.0)
        try:
            while True:
                if self.t.max_epochs and self.state.epoch >= self.t.max_epochs:
                    return f"reached train.max_epochs={self.t.max_epochs}"
                window = self.next_window()
                if window is None:
                    self.state.epoch, self.state.batch_index = self.state.epoch + 1, 0
                    continue
                reason = self.step(window)
                if reason:
                    return reason
        finally:
            self.bar.close()

    # ------------------------------------------------------------------ the batches

    def _make_batches(self, epoch: int) -> list[np.ndarray]:
        corpus, data = self.setup.corpus, self.setup.config.data
        weights = [c.weight for c in data.train]  # per-corpus sampling (corpus `weight`)
        return epoch_batches(corpus, weights, data.max_tokens, self.t.seed, epoch)

    def next_window(self) -> list[np.ndarray] | None:
        """The next update's `accum × world` batches of this epoch's order; None when the epoch is over."""
        if self.order[0] != self.state.epoch:
            self.order = (self.state.epoch, self._make_batches(self.state.epoch))
        batches = self.order[1]
        end = min(updates_per_epoch(batches, self.per_update, self.processes.world) * self.per_update, len(batches))
        if self.state.batch_index >= end:
            return None
        return batches[self.state.batch_index : self.state.batch_index + self.per_update]

    # ------------------------------------------------------------------ one update and what follows it

    def step(self, window: list[np.ndarray]) -> str:
        """One update, then log, validate, save; returns why to stop after it, or ""."""
        rank, world = self.processes.rank, self.processes.world
        stats = self.trainer.update([collate(self.setup.corpus, b) for b in window[rank::world]])
        self.state.batch_index += self.per_update
        if stats is None:
            self.setup.log.message(f"warning: skipped step {self.state.step + 1}: non-finite loss", error=True)
            return ""
        self.meter.add(stats)
        self.bar.update(1)
        if self.state.step % self.t.log_every == 0 or self.state.step == self.t.max_steps:
            self.log_training(stats)
        limit = self.limit_reached()
        stop = self.agree(self.validate_and_save(last=bool(limit)))
        if self.setup.on_update is not None:
            self.setup.on_update(self.state)
        return stop or (f"reached train.{limit}" if limit else "")

    def log_training(self, stats: dict[str, float]) -> None:
        loss, tokens_per_s = self.meter.read()
        self.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{stats['lr']:.2e}", tok_s=f"{tokens_per_s:,.0f}")
        self.setup.log.write("train", self.state.step, loss=loss, lr=stats["lr"], grad_norm=stats["grad_norm"],
                            target_tokens_per_s=tokens_per_s, epoch=self.state.epoch)
        self.meter = Meter()

    def limit_reached(self) -> str:
        """'max_steps=N' or 'max_minutes=M' when this step is the last, else ''. The step that reaches a
        limit is validated and saved like any last step."""
        out_of_time = self.broadcast(time.perf_counter() >= self.deadline) if self.t.max_minutes else False
        if self.state.step >= self.t.max_steps:
            return f"max_steps={self.t.max_steps}"
        return f"max_minutes={self.t.max_minutes:g}" if out_of_time else ""

    def validate_and_save(self, last: bool) -> str:
        """Validate (main process, with dev sets) every valid_every steps and at the last; save with each
        validation, every save_every steps and at the last; prune every save_every. Returns an early-stop
        reason or ""."""
        step = self.state.step
        validating = bool(self.setup.dev_sets) and (step % self.t.valid_every == 0 or last)
        best, stop = self.validate() if validating else (False, "")
        if validating or last or step % self.save_every == 0:
            directory = self.save()
            if best and directory is not None:
                ckpt.write_pointer(self.setup.out, "best", directory)
        if self.processes.main and step % self.save_every == 0:
            ckpt.prune_checkpoints(self.setup.out, self.t.keep_last)
        return stop

    def validate(self) -> tuple[bool, str]:
        """Dev scores, logged; (is this the best checkpoint so far, early-stop reason or "")."""
        results = validate(self.trainer, self.setup.tokenizer, self.setup.dev_sets)
        best, stop = record_validation(self.state, results, self.t.patience)
        self.setup.log.write("valid", self.state.step, **results)
        self.setup.log.message(f"step {self.state.step}: dev loss {results['loss']:.3f} BLEU {results['bleu']:.2f} "
                              f"chrF {results['chrf']:.2f}" + (" (best)" if best else ""))
        return best, stop

    def agree(self, stop: str) -> str:
        """Under DDP the main process decided (only it validates); every process learns whether to stop."""
        stopping = self.broadcast(bool(stop))  # a collective: every process must call it, every step
        return stop or ("early stopping" if stopping else "")

    def broadcast(self, flag: bool) -> bool:
        """The main process's `flag`, on every process."""
        if self.processes.world == 1:
            return flag
        tensor = torch.tensor([1.0 if flag else 0.0], device=self.trainer.device)
        dist.broadcast(tensor, 0)
        return bool(tensor.item())

    # ------------------------------------------------------------------ checkpoints

    def save(self) -> Path | None:
        """The checkpoint of this step (main process only; kept if it exists), and `latest` pointing to it."""
        if not self.processes.main:
            return None
        setup, trainer = self.setup, self.trainer
        directory = setup.out / ckpt.CHECKPOINTS / ckpt.checkpoint_name(self.state.step)
        if not directory.exists():
            ckpt.save_model_dir(directory, trainer.model, setup.config, setup.tokenizer,
                                train_state=trainer.train_state())
        ckpt.write_pointer(setup.out, "latest", directory)
        return directory

    def finish(self, reason: str) -> None:
        """After the last update: save it, prune, make sure `best` exists, and say why the run stopped."""
        final = self.save()
        if not self.processes.main:
            return
        out, state = self.setup.out, self.state
        ckpt.prune_checkpoints(out, self.t.keep_last)
        if state.best_bleu < 0 and final is not None:  # never validated (no dev sets): the last is the best
            ckpt.write_pointer(out, "best", final)
        best = f"; best dev BLEU {state.best_bleu:.2f} at step {state.best_step}" if state.best_bleu >= 0 else ""
        self.setup.log.message(f"stopped: {reason}{best}. Model: {ckpt.resolve_model_dir(out)}")
        self.setup.log.write("done", state.step, reason=reason)
