"""The run directory: one process at a time (the lock), no folder left by a run that fails at start,
the config history of resumed runs, which runs may resume, and checkpoint pruning."""

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from train_runs import TINY, PreparedRuns

from zhen import checkpoint as ckpt
from zhen.cli import main
from zhen.config import Config, CorpusConfig, DataConfig, ModelConfig, TextConfig, TokenizerConfig, TrainConfig
from zhen.run_dir import LOCK_FILE, changed_settings, check_resumable, claimed, describe_changes
from zhen.train import train
from zhen.trainer import TrainingError


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return PreparedRuns(tmp_path_factory.mktemp("prepared"))


def sets(*overrides: str) -> list[str]:
    return [arg for override in overrides for arg in ("--set", override)]


# ----------------------------------------------------------------------------- one process per run directory

HOLD_LOCK = """
import fcntl, os, sys, time
lock = open(sys.argv[1], "a+")
fcntl.flock(lock, fcntl.LOCK_EX)
lock.truncate(0)
lock.write(f"{os.getpid()}\\n")
lock.flush()
print("locked", flush=True)
time.sleep(600)
"""


def test_a_second_process_on_the_same_run_directory_is_refused_until_the_first_dies(runs, tmp_path, capsys):
    out = runs.new_out(tmp_path / "run")
    args = ["train", str(TINY), "--out", str(out), *sets(*runs.overrides, "train.max_steps=2")]
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        assert main(args) == 2
        assert main([*args, "--resume"]) == 2
        err = capsys.readouterr().err
        assert err.count(f"zhen: error: {out} is in use by another training run (process {holder.pid})") == 2
        assert not (out / "metrics.jsonl").exists()
    finally:
        holder.kill()  # SIGKILL: no chance to unlock; the kernel drops the lock with the process
        holder.wait()
    assert main(args) == 0
    assert [json.loads(line)["kind"] for line in (out / "metrics.jsonl").read_text().splitlines()] == ["train", "done"]


# ----------------------------------------------------------------------------- a failed start leaves nothing


def test_a_run_that_fails_at_start_leaves_no_new_folder(tmp_path, capsys):
    out = tmp_path / "runs" / "new"
    assert main(["train", str(TINY), "--out", str(out), "--set", "data.train=[{path='no/such.tsv'}]"]) == 2
    assert "no/such.tsv" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_run_that_fails_at_start_leaves_a_folder_that_was_there_as_it_was(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["train", str(TINY), "--out", str(out), "--set", "data.max_length=2"]) == 2
    assert "no training pairs left after cleaning" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [".lock", "notes.txt"]  # no half-made tokenizer or cache
    assert (out / "notes.txt").read_text() == "keep me"


# ----------------------------------------------------------------------------- resuming with other settings


def test_resume_with_changed_settings_says_what_changed_and_keeps_every_start(runs, tmp_path, capsys):
    extra = tmp_path / "extra.tsv"
    extra.write_text("你好。\tHello.\n谢谢。\tThank you.\n", encoding="utf-8")
    out = runs.new_out(tmp_path / "run")
    train(runs.config("train.max_steps=3"), out)
    capsys.readouterr()
    changed = ("train.max_steps=5", "train.lr=1e-3", "data.max_tokens=1000", "train.seed=7",
               f"data.train=[{{path='hsk'}}, {{path='{extra}'}}]")
    train(runs.config(*changed), out, resume=True)
    printed = capsys.readouterr().out
    for line in ("train.max_steps: 3 → 5", "train.lr: 0.003 → 0.001", "data.max_tokens: 2048 → 1000",
                 "train.seed: 1 → 7", f"data.train: [hsk] → [hsk, {extra}]"):
        assert line in printed
    assert "warmup_steps" not in printed  # only what changed
    history = [json.loads(line) for line in (out / "config.history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [0, 3]
    assert [h["config"]["train"]["lr"] for h in history] == [0.003, 0.001]
    assert history[0]["changed"] == {} and history[1]["changed"]["train.lr"] == [0.003, 0.001]
    assert json.loads((out / "config.json").read_text())["train"]["max_steps"] == 5
    assert ckpt.resolve_model_dir(out).name == "step-0000005"  # no dev sets: the last checkpoint, not step 3


def test_resume_with_another_network_is_refused(runs, tmp_path):
    out = runs.new_out(tmp_path / "run")
    train(runs.config("train.max_steps=2"), out)
    with pytest.raises(TrainingError, match=r"cannot resume: \[model\] differs"):
        train(runs.config("model.d_ff=128"), out, resume=True)


# ----------------------------------------------------------------------------- the pieces


def test_a_claimed_directory_holds_the_pid_and_refuses_a_second_claim(tmp_path):
    out = tmp_path / "run"
    with claimed(out, resume=False):
        assert (out / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        refused = rf"in use by another training run \(process {os.getpid()}\)"
        with pytest.raises(TrainingError, match=refused), claimed(out, resume=True):
            pass  # pragma: no cover
        assert out.is_dir()  # the refused claim removed nothing
    with claimed(out, resume=True):  # released when the block ended
        pass


def test_a_failed_claim_removes_only_what_it_created(tmp_path):
    out = tmp_path / "a" / "b" / "run"
    with pytest.raises(RuntimeError), claimed(out, resume=False):
        (out / "tokenizer").mkdir()
        raise RuntimeError("the corpus is bad")
    assert not (tmp_path / "a").exists()
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError), claimed(out, resume=False):
        (out / "tokenizer").mkdir()
        (out / "metrics.jsonl").write_text("")
        raise RuntimeError("the corpus is bad")
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE, "notes.txt"]


def test_a_run_with_a_checkpoint_is_kept_when_it_fails_later(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(OSError), claimed(out, resume=False):
        directory = out / ckpt.CHECKPOINTS / ckpt.checkpoint_name(5)
        directory.mkdir(parents=True)
        (directory / ckpt.MODEL_FILE).write_bytes(b"")
        raise OSError("disk full")
    assert ckpt.list_checkpoints(out)
    with pytest.raises(TrainingError, match="--resume"), claimed(out, resume=False):
        pass  # pragma: no cover


def test_check_resumable_allows_training_settings_only():
    saved = Config(model=ModelConfig(src_vocab_size=400, tgt_vocab_size=410, d_model=32, n_heads=4, d_ff=64))
    same_network = replace(saved, model=replace(saved.model, src_vocab_size=8000, tgt_vocab_size=8000))
    check_resumable(saved, same_network)  # the vocabulary sizes come from the run's tokenizer
    check_resumable(saved, replace(saved, train=TrainConfig(lr=1e-4, max_steps=7), data=DataConfig(max_tokens=999)))
    with pytest.raises(TrainingError, match=r"\[model\] differs"):
        check_resumable(saved, replace(saved, model=replace(saved.model, d_ff=128)))
    with pytest.raises(TrainingError, match=r"\[tokenizer\] differs"):
        check_resumable(saved, replace(saved, tokenizer=TokenizerConfig(vocab_size=500)))
    with pytest.raises(TrainingError, match=r"\[text\] differs"):
        check_resumable(saved, replace(saved, text=TextConfig(nfkc=False)))


def test_changed_settings_are_listed_old_to_new():
    saved = Config(data=DataConfig(train=(CorpusConfig("hsk"),)))
    config = replace(saved, train=TrainConfig(lr=1e-4), data=DataConfig(train=(CorpusConfig("hsk", src_column=2),)))
    changes = changed_settings(saved, config)
    assert list(changes) == ["data.train", "train.lr"]
    assert changes["train.lr"] == (TrainConfig().lr, 1e-4)
    shown = describe_changes(changes).splitlines()
    assert shown[0].startswith('  data.train: [{"path": "hsk"') and '"src_column": 2' in shown[0]  # not just paths
    assert shown[1] == f"  train.lr: {TrainConfig().lr} → 0.0001"
    assert changed_settings(saved, saved) == {}


# ----------------------------------------------------------------------------- starting from a model (--init)


def _weights(directory):
    from safetensors.torch import load_file
    return load_file(ckpt.resolve_model_dir(directory) / ckpt.MODEL_FILE)


def test_init_starts_from_the_models_weights_and_tokenizer_with_a_fresh_schedule(runs, tmp_path, capsys):
    first = runs.new_out(tmp_path / "first")
    train(runs.config("train.max_steps=3"), first)
    model = ckpt.resolve_model_dir(first)
    out = tmp_path / "tuned"  # no tokenizer of its own: it gets the model's
    main(["train", str(TINY), "--out", str(out), "--init", str(model),
          *sets(*runs.overrides, "train.max_steps=1", "train.lr=1e-9", "model.dropout=0.3")])
    assert f"initialised from {model}" in capsys.readouterr().out
    for name in ("src.model", "tgt.model"):
        assert (out / "tokenizer" / name).read_bytes() == (model / name).read_bytes()
    tuned, start = _weights(out), _weights(model)
    assert ckpt.resolve_model_dir(out).name == "step-0000001"  # the schedule starts afresh
    # one step at lr 1e-9 (warm-up: 1e-9 / warmup_steps) moves no weight visibly: the run began at the model
    assert all(torch.allclose(tuned[name], start[name], atol=1e-6) for name in start)
    fresh = tmp_path / "fresh"
    train(runs.config("train.max_steps=1", "train.lr=1e-9"), runs.new_out(fresh))
    assert not all(torch.allclose(_weights(fresh)[name], start[name], atol=1e-6) for name in start)  # the test can fail


def test_init_refuses_another_network_before_making_anything(runs, tmp_path):
    first = runs.new_out(tmp_path / "first")
    train(runs.config("train.max_steps=2"), first)
    out = tmp_path / "tuned"
    with pytest.raises(TrainingError, match=r"different network: model\.d_ff 128 \(model: "):
        train(runs.config("model.d_ff=128"), out, init=first)
    assert not out.exists()


def test_init_is_ignored_when_resuming(runs, tmp_path, capsys):
    first = runs.new_out(tmp_path / "first")
    train(runs.config("train.max_steps=2"), first)
    out = runs.new_out(tmp_path / "run")
    train(runs.config("train.max_steps=2"), out)
    capsys.readouterr()
    train(runs.config("train.max_steps=3"), out, resume=True, init=first)
    assert "--init" in capsys.readouterr().out and ckpt.resolve_model_dir(out).name == "step-0000003"


def test_init_from_a_model_without_a_tokenizer_is_refused_before_making_anything(runs, tmp_path):
    import shutil

    from zhen.errors import ZhenError

    first = runs.new_out(tmp_path / "first")
    train(runs.config("train.max_steps=1"), first)
    model = tmp_path / "model"
    shutil.copytree(ckpt.resolve_model_dir(first), model)
    for name in ("src.model", "tgt.model"):
        (model / name).unlink()
    out = tmp_path / "tuned"
    with pytest.raises(ZhenError, match="no tokenizer in"):
        train(runs.config("train.max_steps=1"), out, init=model)
    assert not out.exists()
