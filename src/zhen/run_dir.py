"""A training run's directory: one process at a time, nothing left behind by a start that fails, the
config of every start, and the metrics log.

    out/.lock                  locked (flock) by the one process training into `out`; holds its pid
    out/config.json            the resolved config of the latest start
    out/config.history.jsonl   one line per start: its step, the settings changed since the checkpoint it
                               resumed from, and its whole resolved config
    out/metrics.jsonl          train / valid / done records (and out/tensorboard/ when TensorBoard is installed)
    out/tokenizer/ out/cache/ out/checkpoints/ out/latest out/best   (see `zhen.checkpoint`)

The lock is `fcntl.flock`: the kernel drops it when its process ends, however it ends (SIGKILL too), so a
lock file left behind never blocks a later run, and two processes can never train into one directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from zhen import checkpoint as ckpt
from zhen.config import Config
from zhen.textio import atomic_directory, write_atomic
from zhen.tokenizer import Tokenizer
from zhen.trainer import TrainingError

try:
    import fcntl
except ImportError:  # Windows: no run-directory lock
    fcntl = None

LOCK_FILE = ".lock"
HISTORY_FILE = "config.history.jsonl"
METRICS_FILE = "metrics.jsonl"


# ----------------------------------------------------------------------------- claiming the directory


@contextlib.contextmanager
def claimed(out: Path, resume: bool) -> Iterator[None]:
    """Step 1 of a run: create `out` (and missing parents), lock it for this process, and check that it may
    be trained into. If the run fails before its first checkpoint, what it wrote is removed again: the
    folders this created, or in a folder that was there before, the files and folders new in it (a half-made
    tokenizer must not be picked up by the next run)."""
    created = _make_dirs(out)
    with _locked(out):
        before = {entry.name for entry in out.iterdir()}
        try:
            if not resume and ckpt.list_checkpoints(out):
                raise TrainingError(f"{out} already holds a training run; pass --resume to continue it "
                                    "or choose another --out")
            yield
        except BaseException:
            if not ckpt.list_checkpoints(out):  # nothing to resume from: leave no trace
                if created:
                    _remove(created)
                else:
                    _remove_new_entries(out, before)
            raise


def _make_dirs(out: Path) -> list[Path]:
    """Create `out` and its missing parents; returns the folders this call created, outermost first."""
    created: list[Path] = []
    try:
        for directory in reversed([p for p in (out, *out.parents) if not p.exists()]):
            try:
                directory.mkdir()
                created.append(directory)
            except FileExistsError:  # another process made it meanwhile: not ours to remove
                if not directory.is_dir():
                    raise
    except OSError as error:
        _remove(created)
        raise TrainingError(f"cannot write to the output directory {out}: {error.strerror or error}") from error
    return created


def _remove(created: list[Path]) -> None:
    """Undo `_make_dirs`: the innermost folder with all it holds, then each parent made, if still empty."""
    if created:
        shutil.rmtree(created[-1], ignore_errors=True)
    for parent in reversed(created[:-1]):
        with contextlib.suppress(OSError):
            parent.rmdir()


def _remove_new_entries(out: Path, before: set[str]) -> None:
    for entry in out.iterdir():
        if entry.name in before:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Hold the lock on out/.lock for the block, or refuse naming the process that holds it."""
    try:
        handle = (out / LOCK_FILE).open("a+", encoding="utf-8")
    except OSError as error:
        raise TrainingError(f"cannot write to the output directory {out}: {error.strerror or error}") from error
    with handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                raise TrainingError(f"{out} is in use by another training run (process {holder}); wait for it "
                                    "to end or choose another --out") from None
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield


# ----------------------------------------------------------------------------- the config of each start


def check_resumable(saved: Config, config: Config) -> None:
    """A resumed run may change training settings, but not the network, tokenizer or normalisation."""
    for section in ("text", "tokenizer"):
        if getattr(saved, section) != getattr(config, section):
            raise TrainingError(f"cannot resume: [{section}] differs from the run's saved config.json")
    sizes = {"src_vocab_size": saved.model.src_vocab_size, "tgt_vocab_size": saved.model.tgt_vocab_size}
    if replace(config.model, **sizes) != saved.model:
        raise TrainingError("cannot resume: [model] differs from the run's saved config.json")


TRAINING_ONLY = ("src_vocab_size", "tgt_vocab_size", "dropout", "attention_dropout")  # free to differ with --init


def check_initialisable(model_config: Config, config: Config, model_dir: Path) -> None:
    """A run started from a model's weights (--init) must build that model: the same network (dropout may
    differ; the vocabularies are the model's tokenizer's) and the same text normalisation."""
    if model_config.text != config.text:
        raise TrainingError(f"cannot start from {model_dir}: its [text] normalisation differs from the config's")
    theirs, ours = json.loads(model_config.to_json())["model"], json.loads(config.to_json())["model"]
    differ = [f"model.{key} {ours[key]!r} (model: {theirs.get(key)!r})" for key in ours
              if key not in TRAINING_ONLY and theirs.get(key) != ours[key]]
    if differ:
        raise TrainingError(f"cannot start from {model_dir}: the config builds a different network: "
                            + ", ".join(differ))


def copy_tokenizer(model_dir: Path, directory: Path) -> None:
    """The SentencePiece models of `model_dir` as the run's tokenizer (kept if the run already has one)."""
    if directory.is_dir():
        return
    tokenizer = Tokenizer.load(model_dir)  # a model without one is refused here, before anything is written
    with atomic_directory(directory, TrainingError) as tmp:
        tokenizer.save(tmp)


def changed_settings(saved: Config, config: Config) -> dict[str, tuple[Any, Any]]:
    """`section.key` → (old, new) for every setting that differs, values as config.json writes them."""
    old, new = json.loads(saved.to_json()), json.loads(config.to_json())
    return {f"{section}.{key}": (old.get(section, {}).get(key), value)
            for section, table in new.items() for key, value in table.items()
            if old.get(section, {}).get(key) != value}


def describe_changes(changes: dict[str, tuple[Any, Any]]) -> str:
    """One line per changed setting, `  train.lr: 0.003 → 0.001`; corpus lists as their paths."""
    lines = []
    for key, (old, new) in changes.items():
        before, after = _short(old), _short(new)
        if before == after:  # the corpora differ in something other than their paths
            before, after = json.dumps(old, ensure_ascii=False), json.dumps(new, ensure_ascii=False)
        lines.append(f"  {key}: {before} → {after}")
    return "\n".join(lines)


def _short(value: Any) -> str:
    if isinstance(value, list) and value and all(isinstance(v, dict) and "path" in v for v in value):
        return "[" + ", ".join(v["path"] for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def record_start(out: Path, config: Config, step: int, changes: dict[str, tuple[Any, Any]],
                 resumed_from: Path | None) -> None:
    """Step 3 of every start: config.json becomes this start's resolved config, and config.history.jsonl
    gains a line with the step it starts at, what changed, and the whole config, so no start is lost."""
    write_atomic(out / ckpt.CONFIG_FILE, config.to_json())
    record = {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "step": step,
        "resumed_from": resumed_from.relative_to(out).as_posix() if resumed_from is not None else None,
        "changed": {key: list(values) for key, values in changes.items()},
        "config": config.to_dict(),
    }
    with (out / HISTORY_FILE).open("a", encoding="utf-8") as history:
        history.write(json.dumps(record, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------- the metrics log


class RunLog:
    """metrics.jsonl always, TensorBoard when installed; only the main process writes. The files are
    opened at the first record, so a run that fails before one leaves none."""

    def __init__(self, out: Path, enabled: bool) -> None:
        self.out = out
        self.enabled = enabled
        self.file = None
        self.tensorboard = None

    def write(self, kind: str, step: int, **values: float | int | str) -> None:
        if not self.enabled:
            return
        if self.file is None:
            self._open()
        self.file.write(json.dumps({"kind": kind, "step": step, "time": round(time.time(), 3), **values}) + "\n")
        self.file.flush()
        if self.tensorboard is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(f"{kind}/{key}", value, step)

    def _open(self) -> None:
        self.file = (self.out / METRICS_FILE).open("a", encoding="utf-8")
        with contextlib.suppress(ImportError):
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(self.out / "tensorboard"))

    def message(self, text: str, error: bool = False) -> None:
        if self.enabled:
            tqdm.write(text, file=sys.stderr if error else sys.stdout)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
