"""`zhen train`: a config in, a run directory of checkpoints out, in four steps.

    1. claim the run directory (`zhen.run_dir`): create it, lock it against other processes, check that it
       may be (re)used; if the run fails before its first checkpoint, a folder it created is removed again
    2. data: the SentencePiece models (trained on the first start only), the token cache, the dev sets
    3. the model, its optimiser and, with --resume, everything the latest checkpoint holds (or, on a first
       start with --init MODEL, MODEL's weights and tokenizer: fine-tuning); this start's
       resolved config is recorded (config.json, config.history.jsonl) and what changed is printed
    4. the loop (`zhen.train_loop`) until a limit or early stopping; the last step is saved

The update itself (the paper's optimisation) is `zhen.trainer`; validation is `zhen.validation`. Every
process of a DDP run (torchrun) runs these steps; only the main one writes to the run directory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from zhen import checkpoint as ckpt
from zhen import device as devices
from zhen.config import Config
from zhen.data import TokenizedCorpus, load_or_build, load_pairs
from zhen.model import Transformer
from zhen.run_dir import (
    RunLog,
    changed_settings,
    check_initialisable,
    check_resumable,
    claimed,
    copy_tokenizer,
    describe_changes,
    record_start,
)
from zhen.text import Normalizer
from zhen.tokenizer import JOINT_FILE, SRC_FILE, Tokenizer
from zhen.train_loop import Setup, TrainingLoop, accumulation
from zhen.trainer import Processes, Trainer, TrainingError, TrainState
from zhen.validation import load_dev_sets

# Imported from here by the benchmarks and older code; their homes are zhen.trainer and zhen.train_loop.
__all__ = ["Processes", "Trainer", "TrainingError", "accumulation", "train"]


def train(
    config: Config,
    out: str | Path,
    *,
    resume: bool = False,
    init: str | Path | None = None,
    on_update: Callable[[TrainState], None] | None = None,
) -> Path:
    """Train `config` into `out` (steps 1–4 above); returns the run directory. `init`: a model directory (or
    a run) whose weights and tokenizer a new run starts from, as fairseq's --finetune-from-model (the
    optimiser and the schedule start afresh; a resumed run ignores it). `on_update(state)` is called
    after every update."""
    out = Path(out)
    init_dir = ckpt.resolve_model_dir(init) if init is not None else None  # checked before anything is made
    processes, device = _processes_and_device(config)
    with claimed(out, resume) if processes.main else contextlib.nullcontext():
        processes.barrier()
        log = RunLog(out, processes.main)
        try:
            loop = TrainingLoop(_set_up(config, out, resume, init_dir, processes, device, log, on_update))
            loop.finish(loop.run())
        finally:
            log.close()
    processes.barrier()
    return out


def _processes_and_device(config: Config) -> tuple[Processes, torch.device]:
    """This process's place among the DDP processes, and its device."""
    processes = Processes.from_environment(config.train.device)
    device = devices.select_device(config.train.device)
    if device.type == "cuda" and processes.world > 1:
        device = torch.device("cuda", processes.local_rank)
        torch.cuda.set_device(device)
    devices.configure(device)
    return processes, device


def _set_up(config: Config, out: Path, resume: bool, init: Path | None, processes: Processes, device: torch.device,
            log: RunLog, on_update: Callable[[TrainState], None] | None) -> Setup:
    """Steps 2 and 3: data, model, optimiser, resumed state, and the record of this start."""
    latest = ckpt.read_pointer(out, "latest") if resume else None
    saved = ckpt.read_config(latest) if latest is not None else None
    if saved is not None:
        check_resumable(saved, config)  # before any work
    if latest is not None and init is not None:
        log.message(f"resuming {out}: --init {init} is ignored (the run's own weights and tokenizer go on)")
        init = None
    if init is not None:
        init_config = ckpt.read_config(init)
        check_initialisable(init_config, config, init)
        config = replace(config, tokenizer=init_config.tokenizer)  # the run's tokenizer is the model's
        if processes.main:
            copy_tokenizer(init, out / "tokenizer")
    normalizer = Normalizer(config.text)
    tokenizer = _tokenizer(config, out, normalizer, processes, log)
    corpus = _corpus(config, out, normalizer, tokenizer, processes, log)
    dev_sets = load_dev_sets(config, normalizer, tokenizer) if processes.main else []
    config = replace(config, model=replace(config.model, src_vocab_size=tokenizer.src_vocab_size,
                                           tgt_vocab_size=tokenizer.tgt_vocab_size))
    trainer = _trainer(config, latest, init, device, processes)
    if init is not None:
        log.message(f"initialised from {init} (weights and tokenizer); optimiser and schedule start afresh")
    if processes.main:
        _record_start(out, config, saved, latest, trainer, len(corpus), log)
    return Setup(out, config, trainer, tokenizer, corpus, dev_sets, log, on_update)


def _tokenizer(config: Config, out: Path, normalizer: Normalizer, processes: Processes, log: RunLog) -> Tokenizer:
    """Step 2: the run's SentencePiece models, trained by the main process on the cleaned training pairs
    when the run has none yet (a resumed run keeps its own)."""
    directory = out / "tokenizer"
    if processes.main and not any((directory / name).is_file() for name in (SRC_FILE, JOINT_FILE)):
        pairs, stats = load_pairs(config.data.train, normalizer, clean=True, data_config=config.data)
        log.message(f"tokenizer training data: {stats.summary()}")
        Tokenizer.train(pairs, config.tokenizer, directory)
    processes.barrier()
    return Tokenizer.load(directory)


def _corpus(config: Config, out: Path, normalizer: Normalizer, tokenizer: Tokenizer, processes: Processes,
            log: RunLog) -> TokenizedCorpus:
    """Step 2: the training pairs as token ids, from the token cache (the main process builds it first)."""
    cache_dir = Path(config.data.cache_dir) if config.data.cache_dir else out / "cache"
    arguments = (config.data.train, normalizer, tokenizer, config.data, cache_dir)
    if processes.main:
        corpus = load_or_build(*arguments, log=log.message)
    processes.barrier()
    if not processes.main:
        corpus = load_or_build(*arguments, log=lambda _: None)
    if len(corpus) == 0:
        raise TrainingError("no training pairs left after cleaning; check data.train and the length limits")
    return corpus


def _trainer(config: Config, latest: Path | None, init: Path | None, device: torch.device,
             processes: Processes) -> Trainer:
    """Step 3: the model (initialised from train.seed, or with --init from that model's weights), its
    optimiser, and with --resume the weights, optimiser, schedule, position in the data and RNG states of
    the latest checkpoint."""
    torch.manual_seed(config.train.seed)
    model = Transformer(config.model).to(device)
    weights = latest if latest is not None else init
    if weights is not None:
        ckpt.load_weights(model, weights / ckpt.MODEL_FILE)
    trainer = Trainer(model, config, device, processes)
    if latest is not None:
        trainer.restore(ckpt.load_train_state(latest))
    return trainer


def _record_start(out: Path, config: Config, saved: Config | None, latest: Path | None, trainer: Trainer,
                  n_pairs: int, log: RunLog) -> None:
    """Step 3, main process: say where the run starts and which settings changed since the checkpoint it
    resumes from, and keep this start's resolved config in the run's history."""
    changes = changed_settings(saved, config) if saved is not None else {}
    if latest is not None:
        log.message(f"resumed from {latest} at step {trainer.state.step}"
                    + (f"; changed since that checkpoint:\n{describe_changes(changes)}" if changes else ""))
    record_start(out, config, trainer.state.step, changes, latest)
    n_params = sum(p.numel() for p in trainer.model.parameters())
    log.message(f"model: {n_params / 1e6:.2f}M parameters; {n_pairs} training pairs; device {trainer.device}, "
                f"{'bf16 autocast' if trainer.dtype == torch.bfloat16 else 'fp32'}; "
                f"{trainer.processes.world} process(es)")
