"""Training: the schedule, resume after SIGKILL, DDP equivalence, bad states, and the tiny run end to end."""

import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from train_runs import TINY, PreparedRuns, tiny_config

from zhen import checkpoint as ckpt
from zhen.cli import main
from zhen.config import Config, ModelConfig, load_config
from zhen.data import Batch
from zhen.model import Transformer
from zhen.train import train
from zhen.trainer import Processes, Trainer, TrainingError, inverse_sqrt_lr
from zhen.translator import Translator

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tokenizer and token cache for the short runs below (the tiny run trains its own, as a user's would)."""
    return PreparedRuns(tmp_path_factory.mktemp("prepared"))


def weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(directory / ckpt.MODEL_FILE)


# ----------------------------------------------------------------------------- schedule


def test_inverse_sqrt_schedule():
    peak, warmup = 1e-3, 100
    assert inverse_sqrt_lr(0, peak, warmup) == 0.0
    assert inverse_sqrt_lr(1, peak, warmup) == pytest.approx(peak / 100)
    assert inverse_sqrt_lr(50, peak, warmup) == pytest.approx(peak / 2)  # linear warmup
    assert inverse_sqrt_lr(100, peak, warmup) == pytest.approx(peak)  # the peak at the end of warmup
    assert inverse_sqrt_lr(400, peak, warmup) == pytest.approx(peak / 2)  # then ∝ 1/√step
    assert inverse_sqrt_lr(10_000, peak, warmup) == pytest.approx(peak / 10)
    lrs = [inverse_sqrt_lr(s, peak, warmup) for s in range(1, 1000)]
    assert max(lrs) == pytest.approx(peak) and lrs.index(max(lrs)) == warmup - 1
    # the paper's form: d^-0.5 · min(step^-0.5, step · warmup^-1.5) is the same curve, peak-normalised
    d, w = 512, 4000
    for step in (1, 1000, 4000, 20000):
        paper = d**-0.5 * min(step**-0.5, step * w**-1.5)
        assert inverse_sqrt_lr(step, d**-0.5 * w**-0.5, w) == pytest.approx(paper)
    assert inverse_sqrt_lr(5, peak, 0) == peak


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """`zhen train configs/tiny.toml` on the built-in hsk corpus, as a user runs it (shortened)."""
    out = tmp_path_factory.mktemp("run")
    code = main(["train", str(TINY), "--out", str(out), "--set", "train.max_steps=60",
                 "--set", "train.valid_every=30", "--set", "data.dev=[{path='hsk'}]",
                 "--set", "data.dev_max_sentences=20"])
    assert code == 0
    return out


def test_tiny_run_produces_a_model_translate_can_load(tiny_run, capsys):
    assert (tiny_run / "config.json").is_file() and (tiny_run / "tokenizer").is_dir()
    names = [p.name for p in ckpt.list_checkpoints(tiny_run)]
    assert names == ["step-0000030", "step-0000060"]
    assert ckpt.read_pointer(tiny_run, "latest").name == "step-0000060"
    assert ckpt.read_pointer(tiny_run, "best") is not None
    records = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in records if r["kind"] == "valid"]
    assert [r["step"] for r in valid] == [30, 60]
    assert all(0 <= r["bleu"] <= 100 and 0 <= r["chrf"] <= 100 and r["loss"] > 0 for r in valid)
    assert valid[1]["loss"] < valid[0]["loss"]  # it learns
    output = Translator.load(tiny_run, beam=2).translate(["我爱你", ""])
    assert len(output) == 2 and output[1] == ""
    capsys.readouterr()
    assert main(["translate", "--model", str(tiny_run), "我是学生", "你好"]) == 0
    assert capsys.readouterr().out.count("\n") == 2  # one line per input (60 steps teach little else)


def test_training_loss_falls(tiny_run):
    records = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert losses[-1] < losses[0] - 1.0


def test_existing_run_needs_resume(tiny_run):
    with pytest.raises(TrainingError, match="--resume"):
        train(tiny_config(), tiny_run)


def test_unwritable_output_fails_before_training(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["train", str(TINY), "--out", str(blocker / "run")]) == 2
    assert "cannot write to the output directory" in capsys.readouterr().err


def test_averaging_checkpoints_is_the_mean(tiny_run, tmp_path):
    a, b = ckpt.list_checkpoints(tiny_run)
    out = ckpt.export_model([a, b], tmp_path / "avg")
    averaged, wa, wb = weights(out), weights(a), weights(b)
    for name in wa:
        torch.testing.assert_close(averaged[name], (wa[name] + wb[name]) / 2)
    assert not (out / ckpt.STATE_FILE).exists()  # a clean model directory
    reference = Translator.load(a)  # the same tokenizer and settings, the mean weights put in by hand
    reference.model.load_state_dict(ckpt.average_checkpoints([a, b]), strict=False)
    sentences = ["你好", "我爱你", "今天天气很好。"]
    assert Translator.load(out).translate(sentences) == reference.translate(sentences)


def test_average_and_export_commands(tiny_run, tmp_path, capsys):
    assert main(["average", str(tiny_run), "--last", "2", "-o", str(tmp_path / "avg")]) == 0
    assert "averaged 2 checkpoints" in capsys.readouterr().out
    torch.testing.assert_close(weights(tmp_path / "avg"), weights(ckpt.export_model(
        ckpt.list_checkpoints(tiny_run)[-2:], tmp_path / "avg-api")))
    assert main(["export", str(tmp_path / "avg"), "-o", str(tmp_path / "half"), "--dtype", "float16"]) == 0
    assert all(w.dtype == torch.float16 for w in weights(tmp_path / "half").values())
    assert main(["average", str(tmp_path / "half"), "-o", str(tmp_path / "none")]) == 2
    assert "no checkpoints" in capsys.readouterr().err


# ----------------------------------------------------------------------------- resume after SIGKILL

KILLED_RUN = """
import os, signal, sys
from zhen.config import load_config
from zhen.train import train

config = load_config(sys.argv[1], sys.argv[4:])
kill_at = int(sys.argv[3])

def die(state):
    if state.step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)  # no chance to save or clean up

train(config, sys.argv[2], on_update=die)
"""


def test_resume_after_sigkill_gives_bitwise_identical_weights(runs, tmp_path):
    overrides = [*runs.overrides, "train.max_steps=20", "train.valid_every=5", "data.max_tokens=600",
                 "train.log_every=1000", "data.max_length=48"]
    config = load_config(TINY, overrides)
    reference = train(config, runs.new_out(tmp_path / "reference"))

    killed = runs.new_out(tmp_path / "killed")
    result = subprocess.run([sys.executable, "-c", KILLED_RUN, str(TINY), str(killed), "13", *overrides],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == -9, result.stderr  # really killed
    assert ckpt.read_pointer(killed, "latest").name == "step-0000010"
    with pytest.raises(TrainingError):
        train(config, killed)  # without --resume: refuses to clobber
    train(config, killed, resume=True)

    final_reference = weights(ckpt.read_pointer(reference, "latest"))
    final_resumed = weights(ckpt.read_pointer(killed, "latest"))
    assert ckpt.read_pointer(killed, "latest").name == "step-0000020"
    assert final_reference.keys() == final_resumed.keys()
    for name in final_reference:
        assert torch.equal(final_reference[name], final_resumed[name]), name
    # and dropout really was on, so the RNG state had to be restored for this to hold
    assert config.model.dropout > 0


def test_crash_during_save_keeps_the_previous_checkpoint(runs, tmp_path, monkeypatch):
    config = runs.config("train.max_steps=10", "train.valid_every=5", "data.max_tokens=600")

    def crash(*args, **kwargs):
        if "step-0000010" in str(args[0]):
            raise OSError("disk full (simulated)")
        return real_save(*args, **kwargs)

    real_save = ckpt.save_model_dir
    monkeypatch.setattr(ckpt, "save_model_dir", crash)
    with pytest.raises(OSError, match="disk full"):
        train(config, runs.new_out(tmp_path / "run"))
    assert ckpt.read_pointer(tmp_path / "run", "latest").name == "step-0000005"
    assert ckpt.resolve_model_dir(tmp_path / "run").name == "step-0000005"


# ----------------------------------------------------------------------------- bad states


def test_nan_loss_is_reported_with_its_step(runs, tmp_path, monkeypatch):
    import zhen.trainer as train_module

    real = train_module.label_smoothed_cross_entropy
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(train_module, "label_smoothed_cross_entropy", poisoned)
    with pytest.raises(TrainingError, match="non-finite loss or gradient at step 3"):
        train(runs.config("train.max_steps=6"), runs.new_out(tmp_path / "stop"))
    calls["n"] = 0
    out = train(runs.config("train.max_steps=6", "train.on_nan='skip'"), runs.new_out(tmp_path / "skip"))
    assert ckpt.read_pointer(out, "latest").name == "step-0000006"  # the bad update was skipped, not counted


def test_wall_clock_limit_makes_the_current_step_the_last(runs, tmp_path, capsys):
    """train.max_minutes stops a run that max_steps would let go on, with a checkpoint of the last step."""
    out = train(runs.config("train.max_steps=100000", "train.max_minutes=1e-6"), runs.new_out(tmp_path / "run"))
    assert ckpt.read_pointer(out, "latest").name == "step-0000001"  # the deadline passed during the first step
    done = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert done["kind"] == "done" and done["reason"] == "reached train.max_minutes=1e-06"
    assert "stopped: reached train.max_minutes=1e-06" in capsys.readouterr().out


def test_out_of_memory_batch_is_split_and_training_continues(runs, tmp_path, monkeypatch, capsys):
    real_forward = Transformer.forward

    def limited(self, src, tgt):
        if src.size(0) > 8:
            raise torch.OutOfMemoryError("simulated: batch too large")
        return real_forward(self, src, tgt)

    monkeypatch.setattr(Transformer, "forward", limited)
    out = train(runs.config("train.max_steps=3"), runs.new_out(tmp_path / "oom"))
    assert ckpt.read_pointer(out, "latest").name == "step-0000003"
    err = capsys.readouterr().err
    assert "out of memory on batches of src (" in err and "pieces" in err


def test_split_update_equals_whole_update():
    """Splitting a batch (the out-of-memory fallback) leaves the update unchanged."""
    config = tiny_config(*EXACT)
    batches = random_batches(2, seed=1)
    a, b = make_trainer(config), make_trainer(config)
    b.splits = 4
    a.update(batches)
    b.update(batches)
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- DDP


# Adam's first step is lr·g/(|g| + ε): with ε = 1e-9 it amplifies the rounding noise of gradients that
# are zero in exact arithmetic (the key bias cancels in the softmax) to full-size steps. A larger ε
# keeps the comparison about the gradients the update computes, not about rounding.
EXACT = ("model.dropout=0.0", "train.eps=1e-3")


def random_batches(n: int, seed: int) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        rows = int(torch.randint(2, 6, (1,), generator=g))
        src = [[*torch.randint(4, 50, (int(torch.randint(2, 9, (1,), generator=g)),), generator=g).tolist(), 3]
               for _ in range(rows)]
        tgt = [torch.randint(4, 60, (int(torch.randint(1, 8, (1,), generator=g)),), generator=g).tolist()
               for _ in range(rows)]
        batches.append(Batch.from_ids(src, tgt))
    return batches


def make_trainer(config: Config, processes: Processes | None = None) -> Trainer:
    model_config = ModelConfig(**{**config.model.__dict__, "src_vocab_size": 50, "tgt_vocab_size": 60})
    config = Config(model=model_config, train=config.train)
    torch.manual_seed(0)
    return Trainer(Transformer(model_config), config, torch.device("cpu"), processes or Processes())


def _ddp_worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    trainer = make_trainer(tiny_config(*EXACT), Processes(rank, world, 0))
    stats = trainer.update(random_batches(4, seed=7)[rank::world])
    if rank == 0:
        torch.save({"params": [p.detach() for p in trainer.model.parameters()], "loss": stats["loss"]}, out_file)
    dist.destroy_process_group()


def test_ddp_update_equals_single_process_update_on_the_same_global_batch():
    with tempfile.TemporaryDirectory() as tmp:
        out_file = os.path.join(tmp, "ddp.pt")
        mp.spawn(_ddp_worker, args=(2, os.path.join(tmp, "init"), out_file), nprocs=2, join=True)
        ddp = torch.load(out_file)
    single = make_trainer(tiny_config(*EXACT))
    stats = single.update(random_batches(4, seed=7))
    assert math.isclose(stats["loss"], ddp["loss"], rel_tol=1e-5)
    for p, q in zip(single.model.parameters(), ddp["params"], strict=True):
        torch.testing.assert_close(p.detach(), q, rtol=1e-5, atol=1e-6)
    # and the update did something: parameters moved from their initial values
    initial = make_trainer(tiny_config(*EXACT)).model
    assert any(not torch.equal(p, q) for p, q in zip(initial.parameters(), ddp["params"], strict=True))


def test_inference_after_an_update_sees_the_updated_weights():
    """The fused AdamW writes the weights behind autograd's back; validation right after a step must still run on
    the new weights, not on the stacked and packed copies `zhen.linear` derived from the old ones."""
    config = tiny_config("train.device=cpu", "train.precision=fp32", "train.lr=1e-2", "train.warmup_steps=0")
    torch.manual_seed(0)
    model = Transformer(config.model)
    trainer = Trainer(model, config, torch.device("cpu"), Processes())
    assert trainer.optimizer.defaults["fused"]
    batch = Batch.from_ids([[5, 6, 7, 3], [8, 9, 3]], [[10, 11, 12], [13]])

    def infer(network):
        network.eval()
        with torch.no_grad():
            return network(batch.src, batch.tgt_in)  # (B, T, V), through the derived copies

    before = infer(model)  # builds the derived copies
    model.train()
    trainer.update([batch])
    fresh = Transformer(config.model)
    fresh.load_state_dict(model.state_dict())
    after = infer(model)
    assert not torch.allclose(after, before, atol=1e-4)
    torch.testing.assert_close(after, infer(fresh), rtol=1e-5, atol=1e-5)
