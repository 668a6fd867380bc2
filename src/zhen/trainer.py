"""One training update (the paper's optimisation), on one CPU, one GPU, or many processes (DDP).

    lr(step) = lr_peak · min(step / warmup, √(warmup / step))        linear warmup, then 1/√step
    Adam(β1 = 0.9, β2 = 0.98, ε = 1e-9); label-smoothed cross-entropy (ε_ls = 0.1)

One *update* is: this process's share of `accum × world` batches → forward / backward each
(teacher forcing: the decoder reads BOS + y and predicts y + EOS) → gradients divided by the
number of target tokens of the whole update across all processes → clip → AdamW step.

`TrainState` is where a run is; with the optimiser and the RNG states it is in every checkpoint, so a
run killed at any moment and resumed ends with the same weights as one that was never interrupted.
The loop around the update is `zhen.train_loop`; `zhen.train.train` sets it all up.

Shapes: B batch, S source length, T target length, V target vocabulary.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from zhen import device as devices
from zhen.config import Config
from zhen.data import Batch
from zhen.errors import ZhenError
from zhen.loss import label_smoothed_cross_entropy
from zhen.model import Transformer
from zhen.special import PAD_ID


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


def split_batch(batch: Batch, parts: int) -> list[Batch]:
    """The same sentences in `parts` smaller batches (after an out-of-memory error)."""
    if parts == 1 or batch.src.size(0) == 1:
        return [batch]
    chunks = zip(batch.src.tensor_split(parts), batch.tgt_in.tensor_split(parts),
                 batch.tgt_out.tensor_split(parts), strict=True)
    return [Batch(src, tgt_in, tgt_out) for src, tgt_in, tgt_out in chunks if src.size(0)]


class Trainer:
    """One model, its optimiser and the update step. The loop around it is `zhen.train_loop.TrainingLoop`."""

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
        # PyTorch's fused AdamW: one pass over each parameter instead of a dozen elementwise ops (CPU and CUDA)
        self.fused = device.type in ("cuda", "cpu")
        self.params = list(model.parameters())
        self.optimizer = torch.optim.AdamW(
            self.params, lr=0.0, betas=t.betas, eps=t.eps, weight_decay=t.weight_decay, fused=self.fused
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
        loss_total, tokens_total, grad_norm = self._gradients(batches)
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
        if self.fused:  # the fused kernel writes the weights without telling autograd: say it, or the copies
            torch.autograd.graph.increment_version(self.params)  # derived from them (zhen.linear) go stale
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step = step
        self.state.target_tokens += int(tokens_total)
        return {"loss": loss_total / max(tokens_total, 1.0), "lr": lr, "grad_norm": grad_norm,
                "tokens": tokens_total}

    def _gradients(self, batches: list[Batch]) -> tuple[float, float, float]:
        """Σ∇loss / (target tokens of the update on all processes), clipped; (Σ loss, tokens, norm before clipping)."""
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
        return loss_total, tokens_total, grad_norm

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
