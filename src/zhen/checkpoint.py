"""Model directories and training checkpoints.

A model directory holds everything needed to translate, and nothing that needs training code::

    model.safetensors   the weights (safetensors: loading never runs pickled code)
    config.json         the full resolved config (model, text normalisation, tokenizer, decode)
    src.model, tgt.model  (or joint.model)  the SentencePiece models
    train_state.pt      only in training checkpoints: optimiser, schedule position, RNG states

A training run's directory holds immutable checkpoints `checkpoints/step-NNNNNNN/` and two
pointer files, `latest` and `best`. Every directory is written under a temporary name and renamed
when complete, and pointers are replaced with one atomic rename, so a crash during a save never
leaves a broken latest checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from zhen.config import Config, ConfigError, from_dict
from zhen.errors import ZhenError
from zhen.model import Transformer
from zhen.special import PAD_ID
from zhen.textio import atomic_directory, write_atomic
from zhen.tokenizer import Tokenizer

DEFAULT_MODEL = Path(__file__).parent / "models" / "default"  # the model shipped inside the package
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "train_state.pt"
CHECKPOINTS = "checkpoints"


class CheckpointError(ZhenError, RuntimeError):
    """A model or checkpoint directory that is missing, incomplete or corrupt."""


@dataclass
class LoadedModel:
    model: Transformer
    config: Config
    tokenizer: Tokenizer
    directory: Path


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _stored_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each tied tensor once, under its first name (the output projection is
    the target embedding, and with shared embeddings the source embedding too)."""
    state, seen = {}, set()
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            state[name] = tensor
    return state


def unique_state_dict(model: torch.nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """What model.safetensors stores: tied tensors once, on the CPU, optionally cast (e.g. fp16)."""
    state = {}
    for name, tensor in _stored_tensors(model).items():
        tensor = tensor.detach()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        state[name] = tensor.contiguous().cpu()
    return state


def save_model_dir(
    directory: Path,
    model: torch.nn.Module,
    config: Config,
    tokenizer: Tokenizer,
    *,
    train_state: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write a complete model directory atomically (under a temporary name, then renamed)."""
    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    with atomic_directory(directory, CheckpointError) as tmp:
        save_file(unique_state_dict(model, dtype), tmp / MODEL_FILE, metadata={"format": "pt", **(metadata or {})})
        (tmp / CONFIG_FILE).write_text(config.to_json(), encoding="utf-8")
        tokenizer.save(tmp)
        if train_state is not None:
            torch.save(train_state, tmp / STATE_FILE)
        for file in tmp.iterdir():
            _fsync(file)
    return Path(directory)


def read_config(directory: Path) -> Config:
    path = Path(directory) / CONFIG_FILE
    try:
        return from_dict(Config, _upgrade(json.loads(path.read_text(encoding="utf-8"))))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, ConfigError) as error:
        raise CheckpointError(f"{path} is missing or not a valid zhen config: {error}") from error


def _upgrade(table: dict[str, Any]) -> dict[str, Any]:
    """Configs saved by zhen 0.1 named the padding id `model.pad_id`; it is now `zhen.special.PAD_ID`, always."""
    model = table.get("model")
    if isinstance(model, dict) and "pad_id" in model:
        if model["pad_id"] != PAD_ID:
            raise ConfigError(f"model.pad_id is {model['pad_id']}; zhen models pad with id {PAD_ID}")
        table["model"] = {k: v for k, v in model.items() if k != "pad_id"}
    return table


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load safetensors weights into `model`, accepting the tied aliases that were stored once."""
    try:
        state = load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path} is corrupt or truncated ({error}); re-export or re-download it") from error
    expected = _stored_tensors(model)
    unexpected = sorted(set(state) - set(expected))
    missing = sorted(set(expected) - set(state))
    wrong = [f"{n}: {tuple(state[n].shape)} vs {tuple(t.shape)}" for n, t in expected.items()
             if n in state and state[n].shape != t.shape]
    if unexpected or missing or wrong:
        raise CheckpointError(
            f"{path} does not match its config.json: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"wrong shapes {wrong[:5]}"
        )
    broken = [n for n, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if broken:
        raise CheckpointError(f"{path} holds NaN or infinite values (in {', '.join(broken[:3])}); "
                              "the model diverged or the file is damaged: use an earlier checkpoint")
    model.load_state_dict({n: t.float() if t.is_floating_point() else t for n, t in state.items()}, strict=False)


def resolve_model_dir(path: str | Path) -> Path:
    """A model directory, or a training run's directory (its best checkpoint, else its latest)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"model directory not found: {path}")
    if (path / MODEL_FILE).is_file():
        return path
    for pointer in ("best", "latest"):
        target = read_pointer(path, pointer)
        if target is not None:
            return target
    raise CheckpointError(
        f"{path} is not a zhen model directory (no {MODEL_FILE}) nor a training run (no best/latest checkpoint)"
    )


def load_model_dir(path: str | Path, device: torch.device | str = "cpu") -> LoadedModel:
    """Everything needed to translate, from a model directory or a training run's directory."""
    directory = resolve_model_dir(path)
    for name in (MODEL_FILE, CONFIG_FILE):
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory} is incomplete: {name} is missing")
    config = read_config(directory)
    try:
        tokenizer = Tokenizer.load(directory)
    except Exception as error:
        raise CheckpointError(f"{directory}: cannot load the tokenizer: {error}") from error
    model = Transformer(config.model)
    load_weights(model, directory / MODEL_FILE)
    return LoadedModel(model.to(device).eval(), config, tokenizer, directory)


def load_train_state(directory: Path) -> dict[str, Any]:
    path = Path(directory) / STATE_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"cannot resume from {path}: {error}") from error


# ----------------------------------------------------------------------------- training runs


def checkpoint_name(step: int) -> str:
    return f"step-{step:07d}"


def write_pointer(run_dir: Path, name: str, checkpoint: Path) -> None:
    write_atomic(Path(run_dir) / name, checkpoint.relative_to(run_dir).as_posix() + "\n")


def read_pointer(run_dir: Path, name: str) -> Path | None:
    """The checkpoint a pointer file names, if it is complete; None otherwise."""
    try:
        target = Path(run_dir) / (Path(run_dir) / name).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return target if (target / MODEL_FILE).is_file() else None


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories of interrupted saves are skipped)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith("step-") and (p / MODEL_FILE).is_file())


def prune_checkpoints(run_dir: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` checkpoints, never the ones `best` or `latest` name."""
    protected = {read_pointer(run_dir, "best"), read_pointer(run_dir, "latest")}
    for old in list_checkpoints(run_dir)[:-keep_last]:
        if old not in protected:
            shutil.rmtree(old, ignore_errors=True)
    for stale in (Path(run_dir) / CHECKPOINTS).glob(".step-*.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def average_checkpoints(directories: list[Path]) -> dict[str, torch.Tensor]:
    """The element-wise mean of several checkpoints' weights (Vaswani et al. average the last 5)."""
    if not directories:
        raise CheckpointError("no checkpoints to average")
    total: dict[str, torch.Tensor] = {}
    for directory in directories:
        try:
            state = load_file(Path(directory) / MODEL_FILE)
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"{directory}/{MODEL_FILE}: {error}") from error
        if total and set(state) != set(total):
            raise CheckpointError(f"{directory} has different tensors from {directories[0]}; cannot average")
        for name, tensor in state.items():
            total[name] = total.get(name, 0) + tensor.double()
    return {name: (tensor / len(directories)).float() for name, tensor in total.items()}


def export_model(source: Path | list[Path], out: Path, dtype: torch.dtype | None = None) -> Path:
    """A clean model directory (no training state) from one checkpoint or the average of several."""
    sources = source if isinstance(source, list) else [source]
    loaded = load_model_dir(sources[0])
    if len(sources) > 1:
        loaded.model.load_state_dict(average_checkpoints(sources), strict=False)
    metadata = {"averaged": ",".join(p.name for p in sources)}
    return save_model_dir(Path(out), loaded.model, loaded.config, loaded.tokenizer, dtype=dtype, metadata=metadata)
