"""Training throughput: zhen against `torch.nn.Transformer` and Hugging Face `MarianMTModel`.

    python bench/bench_train.py                                    # GPU: every system, shape, config, mode
    python bench/bench_train.py --compile eager --configs base --shapes 512x64
    python bench/bench_train.py --smoke                            # tiny shapes on the CPU: checks the script
    python bench/bench_train.py --merge a.json b.json --out bench/results/train_h100_2026-11-26.md
    python bench/bench_train.py --real-data configs/base.toml --corpus ../shared/data/tvsub/train --steps 200

What one *training step* is, for every system alike: synthetic random ids of a fixed shape (no padding)
→ forward with teacher forcing (decoder input = BOS + target, shifted) under bf16 autocast on CUDA
(fp32 on the CPU) → label-smoothed cross-entropy (ε 0.1, pad ignored, `zhen.loss`) divided by the
number of target tokens → backward → clip the gradient norm to 1 → AdamW (β 0.9/0.98, ε 1e-9,
fused on CUDA) step → zero the gradients. Systems:

    zhen       `zhen.train.Trainer.update([batch])`: the real training step of `zhen train` (the batch
               lives on the host and is pinned and copied each step; the step reads the loss and the
               gradient norm back to the host: two device syncs a step, counted below on CUDA)
    zhen-step  the same `zhen.model.Transformer` in the bare loop the anchors use (no host syncs):
               the model's speed without the trainer's bookkeeping
    torch      `torch.nn.Transformer` (batch_first, post-norm, ReLU) + source and target `nn.Embedding`
               ×√D + sinusoidal positions + an output projection tied to the target embedding; causal
               mask from `generate_square_subsequent_mask` with `tgt_is_causal=True` (SDPA's causal path)
    hf         `transformers.MarianMTModel` from a `MarianConfig` of the same shape (SDPA attention,
               one embedding shared by source, target and output); loss computed from its logits as above

Dropout is 0.1 on the embeddings and on every sub-layer output in all three. nn.Transformer would also
drop out attention weights and the FFN's hidden activations with the same p; both are set to 0 here,
as zhen (attention_dropout 0) and Marian (attention_dropout = activation_dropout = 0) have them.
Each system runs eagerly and under `torch.compile(model)` (the loss, backward and optimiser outside
the compiled graph, as `zhen train --set train.compile=true` runs it).

Reported per run: ms/step (CUDA events around `--steps` steps after `--warmup` steps), tokens/s =
(B·S + B·T)·steps / time (source + target tokens, padding-free), peak memory
(`torch.cuda.max_memory_allocated`, reset before each run), achieved model TFLOP/s and MFU.

Model FLOPs of one training step (forward + backward = 3 × forward; a matmul of an n-vector with an
n×m weight is 2·n·m FLOPs forward, so 6·n·m per token per step), with D = d_model, F = d_ff,
V = target vocabulary, L_e / L_d encoder / decoder layers, B batch, S source and T target length:

    N_src = L_e·(4D² + 2DF) + L_d·2D²       matmul weights each source token passes through: every
                                            encoder layer's W_Q W_K W_V W_O W_1 W_2, and every decoder
                                            layer's cross-attention W_K W_V (applied to H_enc)
    N_tgt = L_d·(6D² + 2DF) + D·V           each target token: decoder self-attention W_Q W_K W_V W_O,
                                            cross-attention W_Q W_O, FFN W_1 W_2, and the output projection
    matmul    = 6·(N_src·B·S + N_tgt·B·T)
    attention = 6·2·D·B·(L_e·S·S + L_d·T·T + L_d·T·S)
                (Q·Kᵀ and weights·V, 2·Lq·Lk·D FLOPs forward each; the causal decoder self-attention
                 is counted in full, T·T, as the PaLM paper's MFU does, not T·T/2)
    model FLOPs / step = matmul + attention
    MFU = model FLOPs / step ÷ (seconds / step) ÷ peak dense bf16 FLOP/s of the card

Not counted: embedding look-ups, biases, LayerNorm, softmax, dropout, the loss, the optimiser, and any
recomputation. Peaks (dense bf16, no sparsity, from NVIDIA's data sheets), chosen by
`torch.cuda.get_device_name()`: H100 SXM 989 TFLOP/s, H100 NVL 835, H100 PCIe 756, H200 989,
A100 312; `--peak-tflops` overrides. A bf16 8192³ matmul is also timed on the card and reported,
as the practically reachable ceiling (about 800 TFLOP/s was seen on this workplace's H100).

`--real-data CONFIG` measures the training loop of `zhen train` on a real corpus (part 3 of the
benchmark): the same calls as `zhen.train.train` — `make_batches`, `collate` (the data loading, on
the host, synchronously, as `zhen train` does it) and `Trainer.update` — minus validation and
checkpoints, and next to it the same trainer on synthetic batches of the real run's mean shape.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import importlib.metadata
import json
import math
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from zhen import device as devices
from zhen.config import Config, ModelConfig, TrainConfig
from zhen.data import Batch
from zhen.loss import label_smoothed_cross_entropy, reference_cross_entropy
from zhen.model import Transformer
from zhen.special import PAD_ID
from zhen.train import Processes, Trainer

REPO = Path(__file__).resolve().parent.parent
SYSTEMS = ("zhen", "zhen-step", "torch", "hf")
ANCHORS = ("torch", "hf")
FIRST_ID = 4  # ids 0-3 are pad, unk, bos, eos: synthetic tokens never use them
LABEL_SMOOTHING = 0.1
CLIP_NORM = 1.0
LR = 1e-4  # the anchors' constant learning rate; zhen's trainer follows its own schedule (same cost)
BETAS = (0.9, 0.98)
EPS = 1e-9
GIB = 1024**3

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity), matched in order against the device name.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100", 989.0),  # SXM: "NVIDIA H100 80GB HBM3"
    ("H800", 989.0),
    ("A100", 312.0),
    ("A800", 312.0),
)


# ==================================================================== model shapes, FLOPs, parameters


@dataclass(frozen=True)
class ModelShape:
    name: str
    d_model: int
    n_heads: int
    d_ff: int
    n_encoder_layers: int
    n_decoder_layers: int
    src_vocab: int
    tgt_vocab: int
    dropout: float = 0.1
    max_positions: int = 1024

    def with_vocab(self, vocab: int) -> ModelShape:
        return replace(self, src_vocab=vocab, tgt_vocab=vocab)


CONFIGS = {
    "base": ModelShape("base", 512, 8, 2048, 6, 6, 32000, 32000),
    "big": ModelShape("big", 1024, 16, 4096, 6, 6, 32000, 32000),
    "small": ModelShape("small", 256, 4, 1024, 4, 4, 8000, 8000, dropout=0.2),  # configs/small.toml, the shipped model
}
SMOKE = ModelShape("smoke", 64, 4, 256, 2, 2, 1000, 1000, max_positions=128)


def matmul_weights_per_token(shape: ModelShape) -> tuple[int, int]:
    """(N_src, N_tgt): matmul weights one source / one target token passes through (module docstring)."""
    d, f = shape.d_model, shape.d_ff
    n_src = shape.n_encoder_layers * (4 * d * d + 2 * d * f) + shape.n_decoder_layers * 2 * d * d
    n_tgt = shape.n_decoder_layers * (6 * d * d + 2 * d * f) + d * shape.tgt_vocab
    return n_src, n_tgt


def model_flops(shape: ModelShape, batch: int, src_len: int, tgt_len: int) -> dict[str, float]:
    """Model FLOPs of one training step (forward + backward) on a (batch × src_len, batch × tgt_len) batch."""
    n_src, n_tgt = matmul_weights_per_token(shape)
    matmul = 6.0 * (n_src * batch * src_len + n_tgt * batch * tgt_len)
    pairs = (shape.n_encoder_layers * src_len * src_len + shape.n_decoder_layers * tgt_len * tgt_len
             + shape.n_decoder_layers * tgt_len * src_len)
    attention = 6.0 * 2 * shape.d_model * batch * pairs
    return {"matmul": matmul, "attention": attention, "total": matmul + attention}


def analytic_params(shape: ModelShape, system: str) -> dict[str, int]:
    """Trainable parameters of each system, from the shape alone (checked against the built models).

    `matmul` counts the weight matrices of the layers (what N_src and N_tgt are made of; the output
    projection is tied to an embedding, so it is no extra parameter)."""
    d, f = shape.d_model, shape.d_ff
    enc_layer = 4 * (d * d + d) + (d * f + f) + (f * d + d) + 2 * 2 * d  # attention, FFN, 2 LayerNorms
    dec_layer = 8 * (d * d + d) + (d * f + f) + (f * d + d) + 3 * 2 * d  # 2 attentions, FFN, 3 LayerNorms
    layers = shape.n_encoder_layers * enc_layer + shape.n_decoder_layers * dec_layer
    matmul = shape.n_encoder_layers * (4 * d * d + 2 * d * f) + shape.n_decoder_layers * (8 * d * d + 2 * d * f)
    if system in ("zhen", "zhen-step"):  # separate source / target embeddings, output tied to the target one
        embeddings = (shape.src_vocab + shape.tgt_vocab) * d
    elif system == "torch":  # the same, plus nn.Transformer's final encoder and decoder LayerNorms
        embeddings = (shape.src_vocab + shape.tgt_vocab) * d + 2 * 2 * d
    elif system == "hf":  # one shared embedding; its sinusoidal position tables are frozen
        embeddings = shape.tgt_vocab * d
    else:
        raise ValueError(system)
    return {"total": layers + embeddings, "matmul": matmul}


def counted_params(model: nn.Module) -> dict[str, int]:
    """Trainable parameters of a built model; `matmul`: its 2-D ones that are no embedding table."""
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    params = [p for p in model.parameters() if p.requires_grad]
    matmul = sum(p.numel() for p in params if p.dim() == 2 and id(p) not in tables)
    return {"total": sum(p.numel() for p in params), "matmul": matmul}


# ==================================================================== the systems


def sinusoidal_positions(n_positions: int, d_model: int) -> Tensor:
    position = torch.arange(n_positions, dtype=torch.float32)[:, None]
    inv_freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(n_positions, d_model)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq)
    return table  # (P, D)


class TorchSeq2Seq(nn.Module):
    """`torch.nn.Transformer` with what it lacks for translation: embeddings, positions, output layer."""

    def __init__(self, shape: ModelShape) -> None:
        super().__init__()
        d = shape.d_model
        self.scale = math.sqrt(d)
        self.src_embed = nn.Embedding(shape.src_vocab, d, padding_idx=PAD_ID)
        self.tgt_embed = nn.Embedding(shape.tgt_vocab, d, padding_idx=PAD_ID)
        for embedding in (self.src_embed, self.tgt_embed):
            nn.init.normal_(embedding.weight, std=d**-0.5)
        self.register_buffer("positions", sinusoidal_positions(shape.max_positions, d), persistent=False)
        self.dropout = nn.Dropout(shape.dropout)
        self.transformer = nn.Transformer(
            d, shape.n_heads, shape.n_encoder_layers, shape.n_decoder_layers, shape.d_ff, shape.dropout,
            activation="relu", batch_first=True, norm_first=False,
        )
        # nn.Transformer's `dropout` also drops attention weights and FFN hidden activations; zhen and
        # Marian (attention_dropout = activation_dropout = 0) do neither, so neither does this one.
        for layer in [*self.transformer.encoder.layers, *self.transformer.decoder.layers]:
            layer.self_attn.dropout = 0.0
            if hasattr(layer, "multihead_attn"):
                layer.multihead_attn.dropout = 0.0
            layer.dropout = nn.Dropout(0.0)
        self.output = nn.Linear(d, shape.tgt_vocab, bias=False)
        self.output.weight = self.tgt_embed.weight

    def forward(self, src: Tensor, tgt: Tensor) -> Tensor:
        x = self.dropout(self.src_embed(src) * self.scale + self.positions[: src.size(1)])  # (B, S, D)
        y = self.dropout(self.tgt_embed(tgt) * self.scale + self.positions[: tgt.size(1)])  # (B, T, D)
        mask = nn.Transformer.generate_square_subsequent_mask(tgt.size(1), device=tgt.device)  # (T, T)
        h = self.transformer(x, y, tgt_mask=mask, tgt_is_causal=True)  # (B, T, D)
        return self.output(h)  # (B, T, V)


def build_marian(shape: ModelShape) -> nn.Module:
    from transformers import MarianConfig, MarianMTModel

    if shape.src_vocab != shape.tgt_vocab:
        raise ValueError("the Marian anchor shares one vocabulary")
    config = MarianConfig(
        vocab_size=shape.tgt_vocab, d_model=shape.d_model,
        encoder_layers=shape.n_encoder_layers, decoder_layers=shape.n_decoder_layers,
        encoder_attention_heads=shape.n_heads, decoder_attention_heads=shape.n_heads,
        encoder_ffn_dim=shape.d_ff, decoder_ffn_dim=shape.d_ff,
        max_position_embeddings=shape.max_positions, activation_function="relu",
        dropout=shape.dropout, attention_dropout=0.0, activation_dropout=0.0, scale_embedding=True,
        share_encoder_decoder_embeddings=True, pad_token_id=PAD_ID, decoder_start_token_id=2,
        eos_token_id=3, forced_eos_token_id=3,
    )
    try:
        model = MarianMTModel._from_config(config, attn_implementation="sdpa")
    except (AttributeError, TypeError):  # an older or newer transformers without this private helper
        config._attn_implementation = "sdpa"
        model = MarianMTModel(config)
    return model


def zhen_config(shape: ModelShape, device: torch.device, compile_: bool, precision: str = "auto") -> Config:
    model = ModelConfig(
        src_vocab_size=shape.src_vocab, tgt_vocab_size=shape.tgt_vocab, d_model=shape.d_model,
        n_heads=shape.n_heads, d_ff=shape.d_ff, n_encoder_layers=shape.n_encoder_layers,
        n_decoder_layers=shape.n_decoder_layers, dropout=shape.dropout, max_positions=shape.max_positions,
    )
    train = TrainConfig(label_smoothing=LABEL_SMOOTHING, clip_norm=CLIP_NORM, betas=BETAS, eps=EPS,
                        weight_decay=0.0, compile=compile_, device=str(device),
                        precision=precision_of(device, precision))
    return Config(model=model, train=train)


def precision_of(device: torch.device, precision: str) -> str:
    """auto: bf16 autocast on CUDA, fp32 on the CPU (the GPU benchmark's choice); else as given."""
    return ("bf16" if device.type == "cuda" else "fp32") if precision == "auto" else precision


@dataclass
class Options:
    device: torch.device
    compile: bool
    backend: str = "inductor"
    compile_mode: str = "default"
    precision: str = "auto"  # auto | fp32 | bf16 (autocast)

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if precision_of(self.device, self.precision) == "bf16" else torch.float32

    def compiled(self, model: nn.Module) -> nn.Module:
        if not self.compile:
            return model
        mode = None if self.compile_mode == "default" else self.compile_mode
        return torch.compile(model, backend=self.backend, mode=mode)


@dataclass
class Runner:
    """One system ready to train: `step()` runs one training step and returns what `loss_of` reads."""

    model: nn.Module
    step: Callable[[], Any]
    loss_of: Callable[[Any], float]
    note: str = ""


def zhen_trainer_runner(shape: ModelShape, batch: Batch, opts: Options) -> Runner:
    config = zhen_config(shape, opts.device, opts.compile, opts.precision)
    model = Transformer(config.model).to(opts.device)
    trainer = Trainer(model, config, opts.device, Processes())
    if opts.compile and (opts.backend != "inductor" or opts.compile_mode != "default"):
        trainer.network = opts.compiled(model)  # what `maybe_compile` does, with a non-default backend/mode
    host = [batch]  # on the host, as `zhen train` hands batches over; update() pins and copies it

    def step() -> dict[str, float] | None:
        return trainer.update(host)

    return Runner(model, step, lambda stats: stats["loss"] if stats else math.nan,
                  "Trainer.update: reads the loss and gradient norm back each step")


def loop_runner(model: nn.Module, forward: Callable[[nn.Module, Tensor, Tensor], Tensor], batch: Batch,
                opts: Options, note: str = "", loss_fn: Callable[..., Tensor] = reference_cross_entropy) -> Runner:
    """The bare training step every anchor gets (and zhen-step): no host syncs. The anchors' loss is PyTorch's
    cross-entropy (what their users call); zhen-step passes zhen's."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    fused = {"fused": True} if opts.device.type in ("cuda", "cpu") else {}  # the strongest anchors: fused AdamW
    optimizer = torch.optim.AdamW(params, lr=LR, betas=BETAS, eps=EPS, weight_decay=0.0, **fused)
    network = opts.compiled(model)
    b = batch.to(opts.device)
    n_tokens = b.tgt_out.numel()  # no padding: every target position counts (known on the host)

    def step() -> Tensor:
        with devices.autocast(opts.device, opts.dtype):
            logits = forward(network, b.src, b.tgt_in)  # (B, T, V)
        loss = loss_fn(logits, b.tgt_out, LABEL_SMOOTHING, PAD_ID) / n_tokens
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return Runner(model, step, lambda loss: float(loss), note)


def build_runner(system: str, shape: ModelShape, batch: Batch, opts: Options) -> Runner:
    if system == "zhen":
        return zhen_trainer_runner(shape, batch, opts)
    if system == "zhen-step":
        model = Transformer(zhen_config(shape, opts.device, False).model).to(opts.device)
        return loop_runner(model, lambda net, src, tgt: net(src, tgt), batch, opts,
                           loss_fn=label_smoothed_cross_entropy)
    if system == "torch":
        return loop_runner(TorchSeq2Seq(shape).to(opts.device), lambda net, src, tgt: net(src, tgt), batch, opts)
    if system == "hf":
        model = build_marian(shape).to(opts.device)
        note = f"attn_implementation={model.config._attn_implementation}"
        return loop_runner(model, lambda net, src, tgt: net(input_ids=src, decoder_input_ids=tgt,
                                                             use_cache=False).logits, batch, opts, note)
    raise ValueError(f"unknown system {system!r}; known: {', '.join(SYSTEMS)}")


# ==================================================================== measuring


def synthetic_batch(shape: ModelShape, batch: int, src_len: int, tgt_len: int, seed: int = 0) -> Batch:
    """Random ids, no padding: src (B, S), and tgt_in = BOS + y, tgt_out = y + EOS, both (B, T)."""
    rng = np.random.default_rng(seed)
    src = rng.integers(FIRST_ID, shape.src_vocab, size=(batch, src_len))
    tgt = rng.integers(FIRST_ID, shape.tgt_vocab, size=(batch, tgt_len - 1))
    return Batch.from_ids(src.tolist(), tgt.tolist())


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cleanup(device: torch.device) -> None:
    gc.collect()
    with contextlib.suppress(Exception):
        torch._dynamo.reset()  # or compiled graphs pile up and recompile limits are reached
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def time_steps(runner: Runner, device: torch.device, warmup: int, steps: int) -> dict[str, float]:
    """Warm up (the first step compiles), then time `steps` back-to-back steps."""
    start = time.perf_counter()
    out = runner.step()
    synchronize(device)
    first_step_s = time.perf_counter() - start
    for _ in range(warmup - 1):
        out = runner.step()
    synchronize(device)
    warmup_s = time.perf_counter() - start
    if device.type == "cuda":
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
    wall = time.perf_counter()
    for _ in range(steps):
        out = runner.step()
    if device.type == "cuda":
        end.record()
    synchronize(device)
    wall = time.perf_counter() - wall
    seconds = begin.elapsed_time(end) / 1000 if device.type == "cuda" else wall
    return {"seconds": seconds, "wall_seconds": wall, "first_step_s": first_step_s, "warmup_s": warmup_s,
            "loss": runner.loss_of(out)}


def host_syncs(runner: Runner, device: torch.device) -> dict[str, int] | None:
    """The synchronizing CUDA operations of one step, by the Python line that caused them
    (`torch.cuda.set_sync_debug_mode`); None off CUDA or where that does not work."""
    if device.type != "cuda":
        return None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                runner.step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        synchronize(device)
    except Exception as error:  # the count is a diagnostic: never fail a run for it
        return {f"(count failed: {type(error).__name__})": -1}
    where = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))
    return dict(where)


def peak_tflops(device: torch.device, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, "--peak-tflops"
    if device.type != "cuda":
        return None, "no peak for this device (pass --peak-tflops)"
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in name:
            return tflops, f"data sheet, {key} dense bf16"
    return None, f"unknown card {name!r} (pass --peak-tflops)"


def measured_matmul_tflops(device: torch.device, n: int = 8192, repeats: int = 10) -> float | None:
    """bf16 n×n×n matrix products on random data: the card's practically reachable ceiling."""
    if device.type != "cuda":
        return None
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(repeats):
        a @ b
    end.record()
    torch.cuda.synchronize(device)
    seconds = begin.elapsed_time(end) / 1000
    del a, b
    torch.cuda.empty_cache()
    return 2 * n**3 * repeats / seconds / 1e12


def run_one(system: str, mode: str, shape: ModelShape, dims: tuple[int, int, int], opts: Options,
            warmup: int, steps: int, peak: float | None) -> dict[str, Any]:
    batch_size, src_len, tgt_len = dims
    row: dict[str, Any] = {"system": system, "mode": mode, "config": shape.name,
                           "shape": shape_name(dims), "batch": batch_size, "src_len": src_len, "tgt_len": tgt_len,
                           "status": "ok"}
    device = opts.device
    cleanup(device)
    runner = None
    try:
        torch.manual_seed(0)
        batch = synthetic_batch(shape, batch_size, src_len, tgt_len)
        runner = build_runner(system, shape, batch, opts)
        counted, analytic = counted_params(runner.model), analytic_params(shape, system)
        row.update(params=counted["total"], params_matmul=counted["matmul"],
                   params_analytic=analytic["total"], params_matmul_analytic=analytic["matmul"], note=runner.note)
        timing = time_steps(runner, device, warmup, steps)
        tokens = batch_size * (src_len + tgt_len)
        flops = model_flops(shape, batch_size, src_len, tgt_len)
        per_step = timing["seconds"] / steps
        row.update(
            ms_per_step=1000 * per_step, tokens_per_s=tokens / per_step, tokens_per_step=tokens,
            model_tflops_per_step=flops["total"] / 1e12, attention_share=flops["attention"] / flops["total"],
            achieved_tflops=flops["total"] / per_step / 1e12,
            mfu=flops["total"] / per_step / (peak * 1e12) if peak else None,
            first_step_s=timing["first_step_s"], warmup_s=timing["warmup_s"],
            wall_seconds=timing["wall_seconds"], loss=timing["loss"],
        )
        if device.type == "cuda":
            row["peak_gib"] = torch.cuda.max_memory_allocated(device) / GIB
        row["host_syncs_per_step"] = host_syncs(runner, device)
    except Exception as error:  # one failure (OOM, compile error, missing package) must not end the run
        first_line = (str(error).strip().splitlines() or [""])[0][:300]
        row["status"] = f"error: {type(error).__name__}: {first_line}"
        traceback.print_exc()
    finally:
        runner = None
        cleanup(device)
    return row


# ==================================================================== reporting


def shape_name(dims: tuple[int, int, int]) -> str:
    b, s, t = dims
    return f"{b}x{s}" if s == t else f"{b}x{s}x{t}"


def parse_shape(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in text.lower().split("x")]
    if len(parts) == 2:
        return parts[0], parts[1], parts[1]
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    raise argparse.ArgumentTypeError(f"a shape is BxL or BxSxT, e.g. 128x64; got {text!r}")


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """ratio = tokens/s ÷ the faster anchor's (either mode) at the same config and shape."""
    best: dict[tuple[str, str], float] = {}
    for row in rows:
        if row["system"] in ANCHORS and row.get("tokens_per_s"):
            key = (row["config"], row["shape"])
            best[key] = max(best.get(key, 0.0), row["tokens_per_s"])
    for row in rows:
        anchor = best.get((row["config"], row["shape"]))
        row["ratio_to_best_anchor"] = row["tokens_per_s"] / anchor if anchor and row.get("tokens_per_s") else None


def tflops_text(value: float) -> str:
    return f"{value:.1f}" if value >= 10 else f"{value:.3g}"


def fmt(value: Any, spec: str, missing: str = "–") -> str:
    return missing if value is None else format(value, spec)


def environment(device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    def git(*command: str) -> str:
        try:
            return subprocess.run(["git", *command], cwd=REPO, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    meta: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "python": platform.python_version(), "platform": platform.platform(),
        "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": version("transformers"),
        "zhen_commit": git("rev-parse", "--short", "HEAD").strip() or "unknown (no git here: see the note)",
        "device": str(device), "threads": torch.get_num_threads(), "note": args.note,
    }
    if not meta["zhen_commit"].startswith("unknown"):
        meta["zhen_dirty"] = bool(git("status", "--porcelain", "--untracked-files=no", "src").strip())
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        meta.update(card=props.name, multiprocessors=props.multi_processor_count,
                    memory_gib=round(props.total_memory / GIB, 1), capability=f"{props.major}.{props.minor}",
                    cudnn=torch.backends.cudnn.version())
    else:
        meta["card"] = cpu_name()
    return meta


def cpu_name() -> str:
    """The CPU's model name and its matrix units (AMX, AVX-512 bf16), from /proc/cpuinfo where there is one."""
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or "CPU"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "CPU")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    units = [unit for unit in ("amx_bf16", "avx512_bf16") if unit in flags]
    return f"{name} ({', '.join(units) or 'no bf16 units'})"


FORMULA = """\
Model FLOPs of one training step (forward + backward = 3 × forward), D = d_model, F = d_ff,
V = target vocabulary, L_e / L_d = encoder / decoder layers, B batch, S source and T target length:

    N_src = L_e·(4D² + 2DF) + L_d·2D²        (encoder layers; the decoder's cross-attention W_K, W_V on H_enc)
    N_tgt = L_d·(6D² + 2DF) + D·V            (decoder self-attn 4D², cross-attn W_Q W_O 2D², FFN 2DF; output)
    FLOPs = 6·(N_src·B·S + N_tgt·B·T) + 6·2·D·B·(L_e·S² + L_d·T² + L_d·T·S)
    MFU   = FLOPs ÷ (seconds per step) ÷ (dense bf16 peak of the card)

The causal T² term is counted in full (not halved), as in the PaLM paper's MFU. Not counted: embedding
look-ups, biases, LayerNorm, softmax, dropout, the loss, the optimiser. Base 512×64 is 184.8 MFLOP
per token (src + tgt), big 512×64 is 634 MFLOP per token."""


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]], real: list[dict[str, Any]]) -> str:
    add_ratios(rows)
    lines = ["# Training throughput: zhen vs torch.nn.Transformer vs Hugging Face Marian", ""]
    metas = meta if isinstance(meta, list) else [meta]
    first = metas[0]
    lines += [f"- card: {first.get('card')} ({first.get('device')}); peak used for MFU: "
              f"{fmt(first.get('peak_tflops'), '.0f')} TFLOP/s ({first.get('peak_source')}); measured bf16 "
              f"8192³ matmul: {fmt(first.get('matmul_tflops'), '.0f')} TFLOP/s",
              f"- torch {first.get('torch')} (CUDA {first.get('cuda')}), transformers {first.get('transformers')}, "
              f"Python {first.get('python')}, zhen {first.get('zhen_commit')}"
              f"{' + uncommitted changes in src/' if first.get('zhen_dirty') else ''}"]
    for m in metas:
        lines.append(f"- {m.get('date')}: `{m.get('command')}`" + (f" — {m['note']}" if m.get("note") else ""))
    lines += ["", "Each step: forward (bf16 autocast on CUDA, fp32 on CPU) → label-smoothed CE (0.1) → backward → "
              "clip 1.0 → AdamW (fused). Synthetic ids, no padding; tokens = source + target. "
              "`ratio` = tokens/s ÷ the faster anchor (torch or hf, either mode) at the same config and shape.", "",
              "| system | mode | config | shape | ms/step | tokens/s | peak GiB | TFLOP/s | MFU | ratio to best anchor "
              "| first step s |",
              "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['system']} | {r['mode']} | {r['config']} | {r['shape']} | {r['status']} "
                         "| | | | | | |")
            continue
        lines.append(
            f"| {r['system']} | {r['mode']} | {r['config']} | {r['shape']} | {r['ms_per_step']:.1f} "
            f"| {r['tokens_per_s']:,.0f} | {fmt(r.get('peak_gib'), '.2f')} | {tflops_text(r['achieved_tflops'])} "
            f"| {fmt(r.get('mfu') and 100 * r['mfu'], '.1f')}{'%' if r.get('mfu') else ''} "
            f"| {fmt(r.get('ratio_to_best_anchor'), '.2f')}{'×' if r.get('ratio_to_best_anchor') else ''} "
            f"| {r['first_step_s']:.1f} |")
    lines += ["", "## Model FLOPs and MFU", "", "```", FORMULA, "```", ""]
    checks = {(r["system"], r["config"]): r for r in rows if "params" in r}
    if checks:
        lines += ["## Parameter counts (built model vs the formula of `analytic_params`)", "",
                  "| system | config | trainable | formula | matmul weights | formula | match |",
                  "|---|---|---:|---:|---:|---:|---|"]
        for (system, config), r in checks.items():
            ok = r["params"] == r["params_analytic"] and r["params_matmul"] == r["params_matmul_analytic"]
            lines.append(f"| {system} | {config} | {r['params']:,} | {r['params_analytic']:,} | {r['params_matmul']:,} "
                         f"| {r['params_matmul_analytic']:,} | {'yes' if ok else '**NO**'} |")
        lines.append("")
    syncs = [r for r in rows if r.get("host_syncs_per_step") is not None]
    if syncs:
        lines += ["## Host syncs per step (`torch.cuda.set_sync_debug_mode`, one extra step after timing)", ""]
        for r in syncs:
            where = r["host_syncs_per_step"]
            detail = ", ".join(f"{k} ×{v}" for k, v in where.items()) if where else "none"
            lines.append(f"- {r['system']} {r['mode']} {r['config']} {r['shape']}: "
                         f"{sum(v for v in where.values() if v > 0)} ({detail})")
        lines.append("")
    notes = [r for r in rows if r.get("note")]
    if notes:
        lines += ["## Notes", "", *sorted({f"- {r['system']}: {r['note']}" for r in notes}), ""]
    for result in real:
        lines += real_data_markdown(result)
    return "\n".join(lines) + "\n"


def write_outputs(out: Path | None, meta: Any, rows: list[dict[str, Any]], real: list[dict[str, Any]]) -> None:
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(meta, rows, real)
    out.write_text(text, encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": rows, "real_data": real}, indent=2,
                                                   default=str) + "\n", encoding="utf-8")


def print_table(rows: list[dict[str, Any]]) -> None:
    add_ratios(rows)
    print("\n| system | mode | config | shape | ms/step | tokens/s | peak GiB | MFU | ratio to best anchor |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        if r["status"] != "ok":
            print(f"| {r['system']} | {r['mode']} | {r['config']} | {r['shape']} | {r['status']} | | | | |")
            continue
        print(f"| {r['system']} | {r['mode']} | {r['config']} | {r['shape']} | {r['ms_per_step']:.1f} "
              f"| {r['tokens_per_s']:,.0f} | {fmt(r.get('peak_gib'), '.2f')} "
              f"| {fmt(r.get('mfu') and 100 * r['mfu'], '.1f')} | {fmt(r.get('ratio_to_best_anchor'), '.2f')} |")


# ==================================================================== real data (part 3)


def run_real_data(args: argparse.Namespace, device: torch.device, opts: Options, peak: float | None) -> dict[str, Any]:
    """`zhen train`'s loop (make_batches → collate → Trainer.update) on a real corpus, minus validation
    and checkpoints, timed over `--steps` updates after `--warmup`; then the same trainer on synthetic
    batches of the run's mean shape. Tokens: real (non-pad) source + target tokens, as the loss sees them."""
    from zhen.config import load_config
    from zhen.data import collate, load_or_build, load_pairs, make_batches
    from zhen.text import Normalizer
    from zhen.tokenizer import JOINT_FILE, SRC_FILE, Tokenizer
    from zhen.train import accumulation

    overrides = ["data.dev=[]", f"train.compile={'true' if opts.compile else 'false'}", f"train.device=\"{device}\""]
    if args.corpus:
        overrides.append(f"data.train=[{{path={json.dumps(str(args.corpus))}}}]")
    config = load_config(args.real_data, overrides + list(args.set))
    work = Path(args.work)  # main() makes a temporary one when none is given: shared by both modes
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"config_file": str(args.real_data), "corpus": [c.path for c in config.data.train],
                              "mode": "compile" if opts.compile else "eager", "overrides": overrides + list(args.set),
                              "work": str(work)}
    normalizer = Normalizer(config.text)
    tokenizer_dir = Path(args.tokenizer) if args.tokenizer else work / "tokenizer"
    start = time.perf_counter()
    if not any((tokenizer_dir / f).is_file() for f in (SRC_FILE, JOINT_FILE)):
        pairs, stats = load_pairs(config.data.train, normalizer, clean=True, data_config=config.data)
        print(f"tokenizer training data: {stats.summary()}", flush=True)
        Tokenizer.train(pairs, config.tokenizer, tokenizer_dir)
        del pairs
        result["tokenizer_train_s"] = time.perf_counter() - start
    tokenizer = Tokenizer.load(tokenizer_dir)
    result["tokenizer"] = str(tokenizer_dir)
    start = time.perf_counter()
    corpus = load_or_build(config.data.train, normalizer, tokenizer, config.data, work / "cache", log=print)
    result["cache_s"] = time.perf_counter() - start
    result["pairs"] = len(corpus)
    if args.prepare_only:
        print(f"prepared tokenizer {tokenizer_dir} and token cache {work / 'cache'}")
        return result

    config = replace(config, model=replace(config.model, src_vocab_size=tokenizer.src_vocab_size,
                                           tgt_vocab_size=tokenizer.tgt_vocab_size))
    mc = config.model
    shape = ModelShape(Path(args.real_data).stem, mc.d_model, mc.n_heads, mc.d_ff, mc.n_encoder_layers,
                       mc.n_decoder_layers, mc.src_vocab_size, mc.tgt_vocab_size, mc.dropout, mc.max_positions)
    cleanup(device)
    torch.manual_seed(config.train.seed)
    model = Transformer(config.model).to(device)
    trainer = Trainer(model, config, device, Processes())
    t = config.train
    epoch = 0
    batches = make_batches(corpus.src_lengths, corpus.tgt_lengths, config.data.max_tokens, t.seed, epoch)
    accum = accumulation(corpus, batches, t.update_tokens, 1)
    src_lengths, tgt_lengths = corpus.src_lengths, corpus.tgt_lengths
    position = 0
    totals = Counter()
    shapes: list[tuple[int, int, int]] = []

    def one_update(record: bool) -> None:
        nonlocal position, epoch, batches
        if position + accum > len(batches):
            epoch, position = epoch + 1, 0
            batches = make_batches(corpus.src_lengths, corpus.tgt_lengths, config.data.max_tokens, t.seed, epoch)
        window = batches[position : position + accum]
        position += accum
        begin = time.perf_counter()
        host = [collate(corpus, b) for b in window]  # the data loading of `zhen train`
        collate_s = time.perf_counter() - begin
        trainer.update(host)
        if record:
            totals["collate_s"] += collate_s
            for indices, b in zip(window, host, strict=True):
                totals["src_tokens"] += int(src_lengths[indices].sum())
                totals["tgt_tokens"] += int(tgt_lengths[indices].sum()) + len(indices)  # + EOS
                totals["src_slots"] += b.src.numel()
                totals["tgt_slots"] += b.tgt_in.numel()
                totals["sentences"] += len(indices)
                totals["flops"] += model_flops(shape, *b.src.shape, b.tgt_in.size(1))["total"]
                shapes.append((b.src.size(0), b.src.size(1), b.tgt_in.size(1)))

    start = time.perf_counter()
    for _ in range(args.warmup):
        one_update(False)
    synchronize(device)
    result["warmup_s"] = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        one_update(True)
    synchronize(device)
    seconds = time.perf_counter() - start
    real_tokens = totals["src_tokens"] + totals["tgt_tokens"]
    result.update(
        updates=args.steps, accumulation=accum, max_tokens=config.data.max_tokens, seconds=seconds,
        ms_per_update=1000 * seconds / args.steps, tokens_per_s=real_tokens / seconds,
        target_tokens_per_s=totals["tgt_tokens"] / seconds,
        slots_per_s=(totals["src_slots"] + totals["tgt_slots"]) / seconds,
        padding=1 - real_tokens / max(totals["src_slots"] + totals["tgt_slots"], 1),
        collate_share=totals["collate_s"] / seconds, achieved_tflops=totals["flops"] / seconds / 1e12,
        mfu=totals["flops"] / seconds / (peak * 1e12) if peak else None,
        peak_gib=torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None,
        distinct_batch_shapes=len(set(shapes)), model=asdict(mc),
    )
    mean = mean_shape(shapes)
    result["mean_batch_shape"] = mean
    trainer = model = None  # free the GPU memory before the synthetic comparison
    cleanup(device)

    # The same trainer on synthetic batches of the mean shape: what the data and the varying shapes cost.
    result["synthetic_same_shape"] = synthetic_same_shape(config, shape, mean, accum, device, args)
    return result


def mean_shape(shapes: Sequence[tuple[int, int, int]]) -> list[int]:
    """B × S × T of the synthetic comparison: the mean source and target lengths, and the batch size that gives
    the mean token slots of the real batches. (The mean batch size times the mean lengths would be larger than
    any real batch: short sentences come in large batches under a token budget, long ones in small.)"""
    src_len, tgt_len = (float(np.mean([shape[i] for shape in shapes])) for i in (1, 2))
    slots = float(np.mean([b * (s + t) for b, s, t in shapes]))
    return [round(slots / (src_len + tgt_len)), round(src_len), round(tgt_len)]


def synthetic_same_shape(config: Config, shape: ModelShape, mean: Sequence[int], accum: int, device: torch.device,
                         args: argparse.Namespace) -> dict[str, Any]:
    """The real run's model and trainer on `accum` fixed synthetic batches of the mean shape per update."""
    cleanup(device)
    try:
        torch.manual_seed(0)
        model = Transformer(config.model).to(device)
        trainer = Trainer(model, config, device, Processes())
        host = [synthetic_batch(shape, *mean, seed=i) for i in range(accum)]
        runner = Runner(model, lambda: trainer.update(host), lambda stats: stats["loss"] if stats else math.nan)
        timing = time_steps(runner, device, max(args.warmup, 1), args.steps)
        b, s, t = mean
        per_update = timing["seconds"] / args.steps
        flops = accum * model_flops(shape, b, s, t)["total"]
        return {"shape": list(mean), "accumulation": accum, "ms_per_update": 1000 * per_update,
                "tokens_per_s": accum * b * (s + t) / per_update, "achieved_tflops": flops / per_update / 1e12}
    except Exception as error:
        traceback.print_exc()
        return {"status": f"error: {type(error).__name__}: {error}"}
    finally:
        cleanup(device)


def real_data_markdown(r: dict[str, Any]) -> list[str]:
    lines = [f"## Real data: the `zhen train` loop on {', '.join(r['corpus'])} ({r['mode']})", ""]
    if "tokens_per_s" not in r:
        return [*lines, f"- not measured: {r.get('status', 'prepare only')}", ""]
    lines += [
        f"- config `{r['config_file']}` with {', '.join(f'`{o}`' for o in r['overrides'])}; {r['pairs']:,} pairs; "
        f"tokenizer {r['tokenizer']}; token cache {r['cache_s']:.1f} s (not in the throughput)",
        f"- {r['updates']} updates timed after {r.get('warmup_s', 0):.1f} s of warm-up; {r['accumulation']} batch(es) "
        f"of ≤ {r['max_tokens']:,} padded tokens per update; {r['distinct_batch_shapes']} distinct batch shapes; "
        f"mean shape {' × '.join(map(str, r['mean_batch_shape']))} (B × S × T: the mean lengths, and the batch "
        "size that gives the mean token slots per batch)",
        f"- padding {100 * r['padding']:.1f}% of the token slots; `collate` (data loading, on the host between "
        f"updates) {100 * r['collate_share']:.1f}% of the time; TFLOP/s and MFU count the padded batches' FLOPs", "",
        "| run | ms/update | tokens/s (src + tgt, no pad) | target tokens/s | TFLOP/s | MFU | peak GiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| real data, data loading included | {r['ms_per_update']:.1f} | {r['tokens_per_s']:,.0f} "
        f"| {r['target_tokens_per_s']:,.0f} | {tflops_text(r['achieved_tflops'])} | "
        f"{fmt(r.get('mfu') and 100 * r['mfu'], '.1f')} | {fmt(r.get('peak_gib'), '.2f')} |",
    ]
    syn = r.get("synthetic_same_shape", {})
    if "tokens_per_s" in syn:
        lines.append(f"| synthetic, {accum_text(syn)} of the mean shape | {syn['ms_per_update']:.1f} "
                     f"| {syn['tokens_per_s']:,.0f} | | {tflops_text(syn['achieved_tflops'])} | | |")
    elif syn:
        lines.append(f"| synthetic of the mean shape | {syn.get('status')} | | | | | |")
    return [*lines, ""]


def accum_text(syn: dict[str, Any]) -> str:
    n = syn["accumulation"]
    return f"{n} batch{'es' if n > 1 else ''} {'×'.join(map(str, syn['shape']))}"


def device_slug(device: torch.device) -> str:
    if device.type != "cuda":
        return device.type
    name = torch.cuda.get_device_name(device).lower()
    for key in ("h100", "h200", "h800", "a100", "a800", "l40s", "l4"):
        if key in name:
            return key
    return "cuda"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="zhen,torch,hf", help=f"comma-separated, of {', '.join(SYSTEMS)}")
    p.add_argument("--shapes", default=None, help="BxL or BxSxT, comma-separated (default 128x64,512x64)")
    p.add_argument("--configs", default="base,big", help=f"of {', '.join(CONFIGS)}")
    p.add_argument("--compile", choices=("eager", "compile", "both"), default=None, help="default both")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20; smoke 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first, ≥ 1 (default 5; smoke 1)")
    p.add_argument("--device", default="auto")
    p.add_argument("--vocab", type=int, default=None, help="source = target vocabulary (default 32000)")
    p.add_argument("--out", default=None, help="markdown report; a .json beside it (default bench/results/...)")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the card, for MFU")
    p.add_argument("--backend", default="inductor", help="torch.compile backend")
    p.add_argument("--compile-mode", default="default", help="torch.compile mode, e.g. max-autotune-no-cudagraphs")
    p.add_argument("--time-budget", type=float, default=0.0,
                   help="seconds: start no new run after this much time (the report is written after every run)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny model and batch (d_model 64, 2+2 layers, 4x16, vocab 1000)")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="combine earlier reports into --out")
    p.add_argument("--note", default="", help="free text for the report, e.g. the zhen commit the tree was at")
    real = p.add_argument_group("real data (part 3): the zhen train loop on a corpus")
    real.add_argument("--real-data", metavar="CONFIG", help="a zhen config, e.g. configs/base.toml")
    real.add_argument("--corpus", help="replaces data.train, e.g. ../shared/data/tvsub/train")
    real.add_argument("--tokenizer", help="an existing tokenizer directory (else one is trained into --work)")
    real.add_argument("--work", help="directory for the tokenizer and the token cache (default: a temp dir)")
    real.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="config overrides")
    real.add_argument("--prepare-only", action="store_true", help="train the tokenizer, build the cache, stop")
    args = p.parse_args(argv)
    args.shapes = args.shapes or ("4x16" if args.smoke else "128x64,512x64")
    args.compile = args.compile or ("eager" if args.smoke else "both")
    args.steps = args.steps or (3 if args.smoke else 20)
    args.warmup = max(1, args.warmup if args.warmup is not None else (1 if args.smoke else 5))
    args.vocab = args.vocab or (SMOKE.tgt_vocab if args.smoke else 32000)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.merge:
        if not args.out:
            raise SystemExit("--merge needs --out")
        loaded = [json.loads(Path(f).read_text(encoding="utf-8")) for f in args.merge]
        metas = [m for d in loaded for m in (d["meta"] if isinstance(d["meta"], list) else [d["meta"]])]
        rows = [r for d in loaded for r in d["results"]]
        real = [r for d in loaded for r in d.get("real_data", [])]
        write_outputs(Path(args.out), metas, rows, real)
        print_table(rows)
        print(f"\nwrote {args.out} and {Path(args.out).with_suffix('.json')}")
        return 0

    device = devices.select_device(args.device)
    devices.configure(device)
    modes = ["eager", "compile"] if args.compile == "both" else [args.compile]
    peak, peak_source = peak_tflops(device, args.peak_tflops)
    meta = environment(device, args)
    meta.update(peak_tflops=peak, peak_source=peak_source, matmul_tflops=measured_matmul_tflops(device),
                steps=args.steps, warmup=args.warmup)
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d-%H%M")
    kind = "real" if args.real_data else "train"
    if args.out:
        out: Path | None = Path(args.out)
    elif args.smoke:
        out = Path(tempfile.mkdtemp(prefix="zhen-bench-train-")) / f"{kind}_smoke_{device.type}.md"
    else:
        out = REPO / "bench" / "results" / f"{kind}_{device_slug(device)}_{date}.md"
    print(f"device {meta.get('card')}; peak {peak} TFLOP/s ({peak_source}); measured matmul "
          f"{fmt(meta['matmul_tflops'], '.0f')} TFLOP/s; torch {torch.__version__}", flush=True)

    rows: list[dict[str, Any]] = []
    real: list[dict[str, Any]] = []
    if args.real_data:
        args.work = args.work or tempfile.mkdtemp(prefix="zhen-bench-train-")
        for mode in modes:
            opts = Options(device, mode == "compile", args.backend, args.compile_mode)
            try:
                result = run_real_data(args, device, opts, peak)
            except Exception as error:
                traceback.print_exc()
                result = {"config_file": args.real_data, "corpus": [str(args.corpus)], "mode": mode,
                          "status": f"error: {type(error).__name__}: {error}"}
            real.append(result)
            write_outputs(out, meta, rows, real)
            if args.prepare_only:
                break
        for line in (line for r in real for line in real_data_markdown(r)):
            print(line)
        print(f"wrote {out} and {out.with_suffix('.json')}")
        return 0

    systems = [s.strip() for s in args.models.split(",") if s.strip()]
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown:
        raise SystemExit(f"unknown system(s) {', '.join(unknown)}; known: {', '.join(SYSTEMS)}")
    shapes = [SMOKE.with_vocab(args.vocab)] if args.smoke else [
        CONFIGS[c.strip()].with_vocab(args.vocab) for c in args.configs.split(",") if c.strip()]
    dims_list = [parse_shape(s) for s in args.shapes.split(",") if s.strip()]
    plan = [(shape, dims, mode, system)
            for shape in shapes for dims in dims_list for mode in modes for system in systems]
    started = time.perf_counter()
    for i, (shape, dims, mode, system) in enumerate(plan, 1):
        label = f"[{i}/{len(plan)}] {system} {mode} {shape.name} {shape_name(dims)}"
        if args.time_budget and time.perf_counter() - started > args.time_budget:
            rows.append({"system": system, "mode": mode, "config": shape.name, "shape": shape_name(dims),
                         "status": f"skipped: --time-budget {args.time_budget:.0f} s spent"})
            print(f"{label}: skipped (time budget)", flush=True)
            continue
        opts = Options(device, mode == "compile", args.backend, args.compile_mode)
        row = run_one(system, mode, shape, dims, opts, args.warmup, args.steps, peak)
        rows.append(row)
        summary = (f"{row['ms_per_step']:.1f} ms/step, {row['tokens_per_s']:,.0f} tokens/s, first step "
                   f"{row['first_step_s']:.1f} s, loss {row['loss']:.3f}" if row["status"] == "ok" else row["status"])
        print(f"{label}: {summary}", flush=True)
        write_outputs(out, meta, rows, real)
    print_table(rows)
    mismatched = [r for r in rows if "params" in r and (r["params"], r["params_matmul"])
                  != (r["params_analytic"], r["params_matmul_analytic"])]
    for r in mismatched:
        print(f"warning: {r['system']} {r['config']}: {r['params']:,} parameters ({r['params_matmul']:,} matmul) "
              f"but the formula gives {r['params_analytic']:,} ({r['params_matmul_analytic']:,})", file=sys.stderr)
    print(f"\nparameter counts match the formulas: {'yes' if not mismatched else 'NO'}")
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
