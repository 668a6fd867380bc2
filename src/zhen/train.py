"""`zhen train`: the paper's optimisation, on one CPU, one GPU, or many processes (DDP).

    lr(step) = lr_peak · min(step / warmup, √(warmup / step))        linear warmup, then 1/√step
    Adam(β1 = 0.9, β2 = 0.98, ε = 1e-9); label-smoothed cross-entropy (ε_ls = 0.1)

One *update* is: this process's share of `accum × world` batches → forward / backward each
(teacher forcing: the decoder reads BOS + y and predicts y + EOS) → gradients divided by the
number of target tokens of the whole update across all processes → clip → AdamW step.

Everything a resumed run needs is in each checkpoint (weights, optimiser, step, epoch, position in
the epoch's batch order, RNG states), so a run killed at any moment and resumed with `--resume`
ends with the same weights as one that was never interrupted.

Shapes: B batch, S source length, T target length, V target vocabulary.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from zhen import checkpoint as ckpt
from zhen import device as devices
from zhen.config import Config
from zhen.data import Batch, TokenizedCorpus, collate, load_or_build, load_pairs, make_batches, read_corpus
from zhen.errors import ZhenError
from zhen.evaluate import score
from zhen.loss import label_smoothed_cross_entropy, negative_log_likelihood
from zhen.model import Transformer
from zhen.text import Normalizer
from zhen.tokenizer import JOINT_FILE, PAD_ID, SRC_FILE, Tokenizer
from zhen.translator import Translator


class TrainingError(ZhenError, RuntimeError):
    """Training cannot go on (bad output directory, non-finite loss, out of memory under DDP…)."""


def inverse_sqrt_lr(step: int, peak: float, warmup: int) -> float:
    """Linear warmup to `peak` at step `warmup`, then decay ∝ 1/√step (paper §5.3, peak-normalised)."""
    if step <= 0:
        return 0.0
    if warmup == 0:
        return peak
    return peak * min(step / warmup, math.sqrt(warmup / step))


@dataclass
class TrainState:
    """Where the run is: saved with every checkpoint, restored by --resume."""

    step: int = 0
    epoch: int = 0
    batch_index: int = 0  # next global batch of this epoch's order
    target_tokens: int = 0
    best_bleu: float = -1.0
    best_loss: float = math.inf  # dev loss of the best checkpoint: breaks ties in BLEU
    best_step: int = 0
    bad_validations: int = 0


@dataclass(frozen=True)
class Processes:
    """This process's place among the data-parallel processes (torchrun sets RANK/WORLD_SIZE)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    @classmethod
    def from_environment(cls, device_name: str) -> Processes:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        if not dist.is_initialized():
            use_cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
            dist.init_process_group("nccl" if use_cuda else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def check_output_dir(out: Path, resume: bool) -> None:
    """Fail before any work if the output directory cannot be written or would be clobbered."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("ok", encoding="utf-8")
        probe.unlink()
    except OSError as error:
        raise TrainingError(f"cannot write to the output directory {out}: {error.strerror or error}") from error
    if not resume and ckpt.list_checkpoints(out):
        raise TrainingError(f"{out} already holds a training run; pass --resume to continue it or choose another --out")


def check_resumable(saved: Config, config: Config) -> None:
    """A resumed run may change training settings, but not the network, tokenizer or normalisation."""
    for section in ("text", "tokenizer"):
        if getattr(saved, section) != getattr(config, section):
            raise TrainingError(f"cannot resume: [{section}] differs from the run's saved config.json")
    sizes = {"src_vocab_size": saved.model.src_vocab_size, "tgt_vocab_size": saved.model.tgt_vocab_size}
    if replace(config.model, **sizes) != saved.model:
        raise TrainingError("cannot resume: [model] differs from the run's saved config.json")


class RunLog:
    """metrics.jsonl always, TensorBoard when installed; only the main process writes."""

    def __init__(self, out: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.file = (out / "metrics.jsonl").open("a", encoding="utf-8") if enabled else None
        self.tensorboard = None
        if enabled:
            with contextlib.suppress(ImportError):
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(str(out / "tensorboard"))

    def write(self, kind: str, step: int, **values: float | int | str) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"kind": kind, "step": step, "time": round(time.time(), 3), **values}) + "\n")
        self.file.flush()
        if self.tensorboard is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(f"{kind}/{key}", value, step)

    def message(self, text: str, error: bool = False) -> None:
        if self.enabled:
            tqdm.write(text, file=sys.stderr if error else sys.stdout)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def split_batch(batch: Batch, parts: int) -> list[Batch]:
    """The same sentences in `parts` smaller batches (after an out-of-memory error)."""
    if parts == 1 or batch.src.size(0) == 1:
        return [batch]
    chunks = zip(batch.src.tensor_split(parts), batch.tgt_in.tensor_split(parts),
                 batch.tgt_out.tensor_split(parts), strict=True)
    return [Batch(src, tgt_in, tgt_out) for src, tgt_in, tgt_out in chunks if src.size(0)]


class Trainer:
    """One model, its optimiser and the update step. The loop and the I/O live in `train()`."""

    def __init__(self, model: Transformer, config: Config, device: torch.device, processes: Processes) -> None:
        self.config = config
        self.device = device
        self.processes = processes
        self.dtype = devices.compute_dtype(device, config.train.precision)
        self.model = model  # the plain module: checkpoints, validation
        wrapped: nn.Module = model
        if processes.world > 1:
            ids = [device.index] if device.type == "cuda" else None
            wrapped = DistributedDataParallel(model, device_ids=ids)
        self.network = devices.maybe_compile(wrapped, config.train.compile)  # what the update runs
        t = config.train
        fused = {"fused": True} if device.type == "cuda" else {}
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=0.0, betas=t.betas, eps=t.eps, weight_decay=t.weight_decay, **fused
        )
        self.splits = 1  # >1 after an out-of-memory error: each batch runs in this many pieces
        self.state = TrainState()

    def lr(self, step: int) -> float:
        return inverse_sqrt_lr(step, self.config.train.lr, self.config.train.warmup_steps)

    def forward_backward(self, batch: Batch, sync: bool) -> torch.Tensor:
        """Σ loss over the batch's target tokens; gradients accumulate (all-reduced only if `sync`)."""
        no_sync = getattr(self.network, "no_sync", None)
        ctx = no_sync() if (no_sync is not None and not sync) else contextlib.nullcontext()
        with ctx:
            with devices.autocast(self.device, self.dtype):
                logits = self.network(batch.src, batch.tgt_in)  # (B, T, V)
            loss = label_smoothed_cross_entropy(logits, batch.tgt_out, self.config.train.label_smoothing, PAD_ID)
            loss.backward()
        return loss.detach()

    def update(self, batches: list[Batch]) -> dict[str, float] | None:
        """One optimiser step over this process's batches (on the host; copied to the device here).
        Returns the step's statistics, or None when the step was skipped (non-finite loss with
        train.on_nan = skip)."""
        n_tokens = sum(b.n_tgt_tokens for b in batches)  # counted on the host: no device sync
        if self.device.type == "cuda":
            batches = [b.pin_memory() for b in batches]
        batches = [b.to(self.device, non_blocking=True) for b in batches]
        while True:
            try:
                loss_sum = self._accumulate(batches)
                break
            except torch.OutOfMemoryError as error:
                self._recover_from_oom(batches, error)
        totals = torch.stack([loss_sum.float(), torch.tensor(float(n_tokens), device=self.device)])
        if self.processes.world > 1:
            dist.all_reduce(totals)
        loss_total, tokens_total = totals.tolist()
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        # DDP averaged the gradients over processes; this makes them Σ∇loss / (all target tokens).
        torch._foreach_mul_(grads, self.processes.world / max(tokens_total, 1.0))
        clip = self.config.train.clip_norm or float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
        step = self.state.step + 1
        if not (math.isfinite(loss_total) and math.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            shapes = ", ".join(f"{tuple(b.src.shape)}→{tuple(b.tgt_in.shape)}" for b in batches)
            message = f"non-finite loss or gradient at step {step} (loss {loss_total}, batches {shapes})"
            if self.config.train.on_nan == "stop":
                raise TrainingError(message + "; lower train.lr or set train.on_nan=skip")
            return None
        lr = self.lr(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step = step
        self.state.target_tokens += int(tokens_total)
        return {"loss": loss_total / max(tokens_total, 1.0), "lr": lr, "grad_norm": grad_norm,
                "tokens": tokens_total}

    def _accumulate(self, batches: list[Batch]) -> torch.Tensor:
        pieces = [piece for batch in batches for piece in split_batch(batch, self.splits)]
        loss_sum = torch.zeros((), device=self.device)
        for i, piece in enumerate(pieces):
            loss_sum += self.forward_backward(piece, sync=i == len(pieces) - 1)
        return loss_sum

    def _recover_from_oom(self, batches: list[Batch], error: BaseException) -> None:
        shapes = ", ".join(f"src {tuple(b.src.shape)} tgt {tuple(b.tgt_in.shape)}" for b in batches)
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if self.processes.world > 1 or all(b.src.size(0) <= self.splits for b in batches):
            raise TrainingError(
                f"out of memory at step {self.state.step + 1} on batches of {shapes}; "
                f"resume with a smaller budget, e.g. --resume --set data.max_tokens=N"
            ) from error
        self.splits *= 2
        tqdm.write(f"warning: out of memory on batches of {shapes}; continuing with each batch "
                   f"in {self.splits} pieces (same update, smaller budget)", file=sys.stderr)

    # ------------------------------------------------------------------ checkpoints

    def train_state(self) -> dict:
        rng = {"torch": torch.get_rng_state()}  # dropout is the only randomness in an update
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {"trainer": asdict(self.state), "optimizer": self.optimizer.state_dict(), "rng": rng}

    def restore(self, saved: dict) -> None:
        self.state = TrainState(**saved["trainer"])
        self.optimizer.load_state_dict(saved["optimizer"])
        rng = saved["rng"]
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)


@dataclass
class DevSet:
    name: str
    sources: list[str]  # raw Chinese, as a user would type it
    references: list[str]  # raw English
    batches: list[Batch]  # for the dev loss


def load_dev_sets(config: Config, normalizer: Normalizer, tokenizer: Tokenizer) -> list[DevSet]:
    dev_sets = []
    for corpus in config.data.dev:
        raw = []
        for pair in read_corpus(corpus):
            raw.append(pair)
            if len(raw) == config.data.dev_max_sentences:
                break
        normalised, _ = load_pairs([corpus], normalizer, clean=False, data_config=config.data)
        normalised = normalised[: len(raw)]
        src = [ids[: config.data.max_length] for ids in tokenizer.encode_src([zh for zh, _ in normalised])]
        tgt = [ids[: config.data.max_length - 1] for ids in tokenizer.encode_tgt([en for _, en in normalised])]
        step = max(1, config.data.max_tokens // (config.data.max_length + 1))
        batches = [Batch.from_ids(src[i : i + step], tgt[i : i + step]) for i in range(0, len(src), step)]
        dev_sets.append(DevSet(corpus.path, [zh for zh, _ in raw], [en for _, en in raw], batches))
    return dev_sets


def validate(trainer: Trainer, tokenizer: Tokenizer, dev_sets: list[DevSet]) -> dict[str, float]:
    """Dev loss (teacher forcing) and dev BLEU / chrF of decoded sentences, overall and per set."""
    model, device = trainer.model, trainer.device
    config = trainer.config
    decode = replace(config.decode, beam=config.train.valid_beam, nbest=1)
    translator = Translator(model, tokenizer, replace(config, decode=decode), device=device,
                            precision=config.train.precision)
    results: dict[str, float] = {}
    nll, tokens, hypotheses, references = 0.0, 0, [], []
    with devices.inference(model):
        for dev in dev_sets:
            set_nll = set_tokens = 0
            for batch in dev.batches:
                batch = batch.to(device)
                with devices.autocast(device, trainer.dtype):
                    logits = model(batch.src, batch.tgt_in)
                set_nll += float(negative_log_likelihood(logits, batch.tgt_out, PAD_ID))
                set_tokens += batch.n_tgt_tokens
            output = translator.translate(dev.sources)
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


def train(
    config: Config,
    out: str | Path,
    *,
    resume: bool = False,
    on_update: Callable[[TrainState], None] | None = None,
) -> Path:
    """Train `config` into `out`; returns the run directory. `on_update` is called after every update."""
    out = Path(out)
    processes = Processes.from_environment(config.train.device)
    device = devices.select_device(config.train.device)
    if device.type == "cuda" and processes.world > 1:
        device = torch.device("cuda", processes.local_rank)
        torch.cuda.set_device(device)
    devices.configure(device)
    if processes.main:
        check_output_dir(out, resume)
    processes.barrier()
    log = RunLog(out, processes.main)
    latest = ckpt.read_pointer(out, "latest") if resume else None
    if latest is not None:
        check_resumable(ckpt.read_config(latest), config)

    # ---- data: tokenizer (trained once per run), token cache, dev sets
    normalizer = Normalizer(config.text)
    tokenizer_dir = out / "tokenizer"
    if processes.main and not any((tokenizer_dir / f).is_file() for f in (SRC_FILE, JOINT_FILE)):
        pairs, stats = load_pairs(config.data.train, normalizer, clean=True, data_config=config.data)
        log.message(f"tokenizer training data: {stats.summary()}")
        Tokenizer.train(pairs, config.tokenizer, tokenizer_dir)
        del pairs
    processes.barrier()
    tokenizer = Tokenizer.load(tokenizer_dir)
    cache_dir = Path(config.data.cache_dir) if config.data.cache_dir else out / "cache"
    if processes.main:
        corpus = load_or_build(config.data.train, normalizer, tokenizer, config.data, cache_dir, log=log.message)
    processes.barrier()
    if not processes.main:
        corpus = load_or_build(config.data.train, normalizer, tokenizer, config.data, cache_dir, log=lambda _: None)
    if len(corpus) == 0:
        raise TrainingError("no training pairs left after cleaning; check data.train and the length limits")
    dev_sets = load_dev_sets(config, normalizer, tokenizer) if processes.main else []

    # ---- model, optimiser, resumed state
    config = replace(config, model=replace(config.model, src_vocab_size=tokenizer.src_vocab_size,
                                           tgt_vocab_size=tokenizer.tgt_vocab_size, pad_id=PAD_ID))
    torch.manual_seed(config.train.seed)
    model = Transformer(config.model).to(device)
    if latest is not None:
        ckpt.load_weights(model, latest / ckpt.MODEL_FILE)
    trainer = Trainer(model, config, device, processes)
    if latest is not None:
        trainer.restore(ckpt.load_train_state(latest))
        log.message(f"resumed from {latest} at step {trainer.state.step}")
    if processes.main:
        (out / "config.json").write_text(config.to_json(), encoding="utf-8")
        n_params = sum(p.numel() for p in model.parameters())
        log.message(f"model: {n_params / 1e6:.2f}M parameters; {len(corpus)} training pairs; device {device}, "
                    f"{'bf16 autocast' if trainer.dtype == torch.bfloat16 else 'fp32'}; {processes.world} process(es)")

    def save_checkpoint() -> Path | None:
        if not processes.main:
            return None
        directory = out / ckpt.CHECKPOINTS / ckpt.checkpoint_name(trainer.state.step)
        if not directory.exists():
            ckpt.save_model_dir(directory, model, config, tokenizer, train_state=trainer.train_state())
        ckpt.write_pointer(out, "latest", directory)
        return directory

    # ---- the loop
    state, t = trainer.state, config.train
    first = make_batches(corpus.src_lengths, corpus.tgt_lengths, config.data.max_tokens, t.seed, 0)
    accum = accumulation(corpus, first, t.update_tokens, processes.world)
    per_update = accum * processes.world
    if processes.main and accum > 1:
        log.message(f"accumulating {accum} batches per process per update (train.update_tokens={t.update_tokens})")
    bar = tqdm(total=t.max_steps, initial=state.step, disable=not processes.main, dynamic_ncols=True,
               desc="train", mininterval=1.0)
    window = {"loss": 0.0, "tokens": 0.0, "start": time.perf_counter(), "updates": 0}
    save_every = t.save_every or t.valid_every
    stop_reason = ""
    deadline = time.perf_counter() + 60 * t.max_minutes if t.max_minutes else math.inf
    try:
        while not stop_reason:
            if t.max_epochs and state.epoch >= t.max_epochs:
                stop_reason = f"reached train.max_epochs={t.max_epochs}"
                break
            batches = first if state.epoch == 0 else make_batches(
                corpus.src_lengths, corpus.tgt_lengths, config.data.max_tokens, t.seed, state.epoch)
            n_updates = updates_per_epoch(batches, per_update, processes.world)
            while state.batch_index < n_updates * per_update and state.batch_index < len(batches):
                window_batches = batches[state.batch_index : state.batch_index + per_update]
                stats = trainer.update([collate(corpus, b) for b in window_batches[processes.rank :: processes.world]])
                state.batch_index += per_update
                if stats is None:
                    log.message(f"warning: skipped step {state.step + 1}: non-finite loss", error=True)
                    continue
                window["loss"] += stats["loss"] * stats["tokens"]
                window["tokens"] += stats["tokens"]
                window["updates"] += 1
                bar.update(1)
                if state.step % t.log_every == 0 or state.step == t.max_steps:
                    elapsed = time.perf_counter() - window["start"]
                    loss = window["loss"] / max(window["tokens"], 1)
                    tokens_per_s = window["tokens"] / max(elapsed, 1e-9)
                    bar.set_postfix(loss=f"{loss:.3f}", lr=f"{stats['lr']:.2e}", tok_s=f"{tokens_per_s:,.0f}")
                    log.write("train", state.step, loss=loss, lr=stats["lr"], grad_norm=stats["grad_norm"],
                              target_tokens_per_s=tokens_per_s, epoch=state.epoch)
                    window = {"loss": 0.0, "tokens": 0.0, "start": time.perf_counter(), "updates": 0}
                out_of_time = time.perf_counter() >= deadline
                if t.max_minutes and processes.world > 1:  # the main process's clock decides for everyone
                    flag = torch.tensor([1.0 if out_of_time else 0.0], device=device)
                    dist.broadcast(flag, 0)
                    out_of_time = bool(flag.item())
                limit = (f"max_steps={t.max_steps}" if state.step >= t.max_steps
                         else f"max_minutes={t.max_minutes:g}" if out_of_time else "")
                is_last = bool(limit)  # the step that reached a limit is validated and saved like any last step
                if state.step % t.valid_every == 0 or is_last:
                    if processes.main and dev_sets:
                        results = validate(trainer, tokenizer, dev_sets)
                        improved = (results["bleu"], -results["loss"]) > (state.best_bleu, -state.best_loss)
                        if improved:
                            state.best_bleu, state.best_loss = results["bleu"], results["loss"]
                            state.best_step, state.bad_validations = state.step, 0
                        else:
                            state.bad_validations += 1
                        log.write("valid", state.step, **results)
                        log.message(f"step {state.step}: dev loss {results['loss']:.3f} BLEU {results['bleu']:.2f} "
                                    f"chrF {results['chrf']:.2f}" + (" (best)" if improved else ""))
                        directory = save_checkpoint()
                        if improved:
                            ckpt.write_pointer(out, "best", directory)
                        if t.patience and state.bad_validations >= t.patience:
                            stop_reason = f"no better dev BLEU in {t.patience} validations (early stopping)"
                    elif state.step % save_every == 0 or is_last:
                        save_checkpoint()
                elif state.step % save_every == 0:
                    save_checkpoint()
                if processes.main and state.step % save_every == 0:
                    ckpt.prune_checkpoints(out, t.keep_last)
                if processes.world > 1:  # every process learns whether the main one decided to stop
                    flag = torch.tensor([1.0 if stop_reason else 0.0], device=device)
                    dist.broadcast(flag, 0)
                    stop_reason = stop_reason or ("early stopping" if flag.item() else "")
                if on_update is not None:
                    on_update(state)
                if is_last:
                    stop_reason = stop_reason or f"reached train.{limit}"
                if stop_reason:
                    break
            else:
                state.epoch += 1
                state.batch_index = 0
    finally:
        bar.close()
    final = save_checkpoint()
    if processes.main:
        ckpt.prune_checkpoints(out, t.keep_last)
        if ckpt.read_pointer(out, "best") is None and final is not None:
            ckpt.write_pointer(out, "best", final)
        best = f"; best dev BLEU {state.best_bleu:.2f} at step {state.best_step}" if state.best_bleu >= 0 else ""
        log.message(f"stopped: {stop_reason}{best}. Model: {ckpt.resolve_model_dir(out)}")
        log.write("done", state.step, reason=stop_reason)
    log.close()
    if processes.world > 1:
        dist.barrier()
    return out
