"""zhen ⇄ Hugging Face Marian (`MarianMTModel`, the opus-mt architecture): configs and tensors.

Both are the Transformer of the note — post-norm, ReLU or GELU, token embeddings ×√D plus fixed sinusoids,
output layer tied to the target embedding — with different names and four real differences:

1. The sinusoid layout. zhen interleaves, PE[p, 2i] = sin(p·ω_i), PE[p, 2i+1] = cos(p·ω_i) (embedding.py);
   Marian concatenates, PE[p, i] = sin(p·ω_i), PE[p, D/2 + i] = cos(p·ω_i), with the same ω_i, and does not
   store its table (it is recomputed on load). Marian's table is zhen's with the model dimension permuted:
   PE_marian = PE_zhen[:, π] with π = (0, 2, 4, …, 1, 3, 5, …). Permuting every vector of the residual stream
   by π changes nothing a Transformer computes if every tensor that touches the stream is permuted with it:
   the columns of what reads the stream (embeddings, W_Q, W_K, W_V, W_1, the output layer), the rows and
   biases of what writes it (W_O, W_2), and LayerNorm's gain and bias (its mean and variance ignore order).
   So an export permutes those tensors by π, an import by π⁻¹, and both models compute the same function.
2. `final_logits_bias`: Marian adds a bias to the logits; zhen's output layer has one with
   `model.output_bias` (imports), and exports a zero bias otherwise.
3. Vocabularies: Marian often shares one vocabulary (and one embedding) between source and target, with its
   own special ids (opus-mt: </s> 0, <unk> 1, <pad> last, the decoder starting from <pad>). An import
   renumbers rows to zhen's special ids (pad 0, unk 1, bos 2, eos 3; see `vocab_order`).
4. Scaled embeddings: zhen always multiplies by √D. A Marian model without `scale_embedding` is imported
   with its embeddings divided by √D and the output layer untied (it keeps the unscaled matrix).

What zhen cannot represent is refused with a message (`InteropError`): pre-norm or learned positions (on
export: Marian has neither); on import, activations other than ReLU, GELU and Swish (opus-mt's), different
encoder/decoder widths or head counts, LayerNorms on the embeddings or after the stacks.

Shapes: D model width, V vocabulary, P positions.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from zhen.config import ModelConfig
from zhen.embedding import sinusoidal_table
from zhen.interop import InteropError
from zhen.special import BOS_ID, EOS_ID, PAD_ID

READS, WRITES = 1, 0  # the axis of a weight that meets the residual stream: input columns, or output rows
NEVER = -6e4  # a logit bias no token overcomes: exp() of it is 0, and fp16, bf16 and fp32 hold it
# Hugging Face's "gelu" is the exact (erf) GELU, as torch's F.gelu; "swish" (opus-mt's) is x·σ(x), F.silu
ACTIVATIONS = ("relu", "gelu", "swish")


def residual_permutation(d_model: int) -> Tensor:
    """π (D,): Marian's sinusoid table is zhen's with its columns taken in this order, PE_zhen[:, π]."""
    if d_model % 2:
        raise InteropError(f"d_model {d_model} is odd: the two sinusoid layouts differ by more than an order")
    return torch.cat([torch.arange(0, d_model, 2), torch.arange(1, d_model, 2)])  # (D,)


@dataclass(frozen=True)
class Place:
    """One tensor of a layer in both models; `axis` meets the residual stream (None: a bias inside a head)."""

    zhen: str
    marian: str
    axis: int | None


def layer_places(n_encoder_layers: int, n_decoder_layers: int) -> Iterator[Place]:
    """Every tensor of every encoder and decoder layer (embeddings and output layer: see `to_marian_state`)."""
    for stack, count in (("encoder", n_encoder_layers), ("decoder", n_decoder_layers)):
        for i in range(count):
            z, m = f"{stack}_layers.{i}", f"model.{stack}.layers.{i}"
            parts = [("self_attn", "self_attn", "self_attn_norm", "self_attn_layer_norm")]
            if stack == "decoder":
                parts.append(("cross_attn", "encoder_attn", "cross_attn_norm", "encoder_attn_layer_norm"))
            for z_attn, m_attn, z_norm, m_norm in parts:
                for ours, theirs in (("w_q", "q_proj"), ("w_k", "k_proj"), ("w_v", "v_proj")):
                    yield Place(f"{z}.{z_attn}.{ours}.weight", f"{m}.{m_attn}.{theirs}.weight", READS)
                    yield Place(f"{z}.{z_attn}.{ours}.bias", f"{m}.{m_attn}.{theirs}.bias", None)
                yield from _writer(f"{z}.{z_attn}.w_o", f"{m}.{m_attn}.out_proj")
                yield from _norm(f"{z}.{z_norm}.norm", f"{m}.{m_norm}")
            yield Place(f"{z}.ffn.w_1.weight", f"{m}.fc1.weight", READS)
            yield Place(f"{z}.ffn.w_1.bias", f"{m}.fc1.bias", None)
            yield from _writer(f"{z}.ffn.w_2", f"{m}.fc2")
            yield from _norm(f"{z}.ffn_norm.norm", f"{m}.final_layer_norm")


def _writer(zhen: str, marian: str) -> Iterator[Place]:
    yield Place(f"{zhen}.weight", f"{marian}.weight", WRITES)
    yield Place(f"{zhen}.bias", f"{marian}.bias", WRITES)


def _norm(zhen: str, marian: str) -> Iterator[Place]:
    yield Place(f"{zhen}.weight", f"{marian}.weight", WRITES)
    yield Place(f"{zhen}.bias", f"{marian}.bias", WRITES)


# ------------------------------------------------------------------------------------------- zhen → Marian


def check_exportable(c: ModelConfig) -> None:
    if c.norm != "post":
        raise InteropError("Marian has no pre-norm: only post-norm zhen models (model.norm = 'post') export to it")
    if c.positions != "sinusoidal":
        raise InteropError(f"Marian has only sinusoidal positions (recomputed on load): {c.positions} positions "
                           "cannot be exported")
    residual_permutation(c.d_model)


def to_marian_state(model: Any) -> dict[str, Tensor]:
    """zhen's `Transformer` → the state dict of a `MarianMTModel` computing the same function (module doc, 1.).

    The position tables are zhen's own, permuted (exactly what zhen adds); a saved Marian model drops them."""
    c = model.config
    check_exportable(c)
    pi = residual_permutation(c.d_model)
    ours = {name: t.detach().float() for name, t in model.state_dict().items()}
    state = {p.marian: ours[p.zhen] if p.axis is None else ours[p.zhen].index_select(p.axis, pi)
             for p in layer_places(c.n_encoder_layers, c.n_decoder_layers)}
    src = model.src_embed.tokens.weight.detach().float()[:, pi]  # (V_src, D)
    tgt = model.tgt_embed.tokens.weight.detach().float()[:, pi]  # (V_tgt, D)
    state["model.encoder.embed_tokens.weight"], state["model.decoder.embed_tokens.weight"] = src, tgt
    if c.share_embeddings:
        state["model.shared.weight"] = src
    state["lm_head.weight"] = model.output.weight.detach().float()[:, pi]
    bias = model.output.bias
    state["final_logits_bias"] = (torch.zeros(c.tgt_vocab_size) if bias is None else bias.detach().float())[None]
    table = sinusoidal_table(c.max_positions, c.d_model)[:, pi]  # (P, D)
    state["model.encoder.embed_positions.weight"] = state["model.decoder.embed_positions.weight"] = table
    return state


def marian_config(c: ModelConfig) -> Any:
    """The `MarianConfig` of a zhen model: zhen's special ids, the decoder starting from BOS."""
    from transformers import MarianConfig

    check_exportable(c)
    return MarianConfig(
        vocab_size=c.src_vocab_size, decoder_vocab_size=c.tgt_vocab_size, max_position_embeddings=c.max_positions,
        d_model=c.d_model, encoder_layers=c.n_encoder_layers, decoder_layers=c.n_decoder_layers,
        encoder_attention_heads=c.n_heads, decoder_attention_heads=c.n_heads,
        encoder_ffn_dim=c.d_ff, decoder_ffn_dim=c.d_ff, activation_function=c.activation,
        dropout=c.dropout, attention_dropout=c.attention_dropout, activation_dropout=0.0, scale_embedding=True,
        share_encoder_decoder_embeddings=c.share_embeddings, tie_word_embeddings=c.tie_output,
        pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID, decoder_start_token_id=BOS_ID,
        forced_eos_token_id=None,
    )


# ------------------------------------------------------------------------------------------- Marian → zhen


def zhen_model_config(hf: Any, src_vocab_size: int, tgt_vocab_size: int, *, shared: bool, bias: bool) -> ModelConfig:
    """The `ModelConfig` of a Marian config, or InteropError naming what zhen cannot represent. `shared`: one
    embedding for both sides (Marian's shared vocabulary, when both sides number it alike)."""
    refusals = [
        (hf.activation_function not in ACTIVATIONS,
         f"activation {hf.activation_function!r} (zhen: {', '.join(ACTIVATIONS)})"),
        (hf.encoder_attention_heads != hf.decoder_attention_heads,
         f"{hf.encoder_attention_heads} encoder heads but {hf.decoder_attention_heads} decoder heads"),
        (hf.encoder_ffn_dim != hf.decoder_ffn_dim, f"FFN width {hf.encoder_ffn_dim} (encoder) ≠ {hf.decoder_ffn_dim}"),
        (getattr(hf, "normalize_before", False), "pre-norm layers"),
        (getattr(hf, "normalize_embedding", False), "a LayerNorm on the embeddings"),
        (getattr(hf, "add_final_layer_norm", False), "a final LayerNorm after each stack"),
    ]
    wrong = [what for bad, what in refusals if bad]
    if wrong:
        raise InteropError(f"zhen cannot represent this Marian model: {'; '.join(wrong)}")
    residual_permutation(hf.d_model)
    return ModelConfig(
        src_vocab_size=src_vocab_size, tgt_vocab_size=tgt_vocab_size, d_model=hf.d_model,
        n_heads=hf.encoder_attention_heads, d_ff=hf.encoder_ffn_dim, n_encoder_layers=hf.encoder_layers,
        n_decoder_layers=hf.decoder_layers, dropout=float(hf.dropout), attention_dropout=float(hf.attention_dropout),
        activation=hf.activation_function, norm="post", positions="sinusoidal",
        max_positions=hf.max_position_embeddings, tie_output=bool(hf.tie_word_embeddings) and hf.scale_embedding,
        share_embeddings=shared, output_bias=bias,
    )


def from_marian_state(state: dict[str, Tensor], hf: Any, c: ModelConfig, src_order: list[int],
                      tgt_order: list[int]) -> dict[str, Tensor]:
    """A Marian state dict → zhen's, for `c` (from `zhen_model_config`). Row i of zhen's source (target)
    vocabulary is row `src_order[i]` (`tgt_order[i]`) of Marian's (see `vocab_order`)."""
    inverse = torch.argsort(residual_permutation(c.d_model))
    ours = {p.zhen: state[p.marian] if p.axis is None else state[p.marian].index_select(p.axis, inverse)
            for p in layer_places(c.n_encoder_layers, c.n_decoder_layers)}
    scale = 1.0 if hf.scale_embedding else 1.0 / math.sqrt(c.d_model)  # zhen multiplies by √D in any case
    src = state["model.encoder.embed_tokens.weight"][torch.tensor(src_order)][:, inverse]  # (V_src, D)
    tgt = state["model.decoder.embed_tokens.weight"][torch.tensor(tgt_order)][:, inverse]  # (V_tgt, D)
    ours["src_embed.tokens.embed.weight"] = src * scale
    if not c.share_embeddings:
        ours["tgt_embed.tokens.embed.weight"] = tgt * scale
    if not c.tie_output:
        ours["output.weight"] = state["lm_head.weight"][torch.tensor(tgt_order)][:, inverse]
    if c.output_bias:
        bias = state["final_logits_bias"][0][torch.tensor(tgt_order)].clone()  # (V_tgt,)
        bias[repeated(tgt_order)] = NEVER  # a row twice (PAD and BOS, see vocab_order): its probability once
        ours["output.bias"] = bias
    return ours


def repeated(order: list[int]) -> list[int]:
    """Positions of `order` whose value occurs earlier in it."""
    seen: set[int] = set()
    return [i for i, row in enumerate(order) if row in seen or seen.add(row)]


def vocab_order(size: int, pad: int, unk: int, start: int, eos: int) -> list[int]:
    """Marian's ids in zhen's order: zhen's PAD, UNK, BOS, EOS are Marian's pad, unk, decoder start and eos,
    then every other id in Marian's order. Where the decoder starts from <pad> (opus-mt), zhen's PAD and BOS
    are both that row: zhen has one row more (never predicted; its logit bias is NEVER, so that the row's
    probability counts once, as in Marian)."""
    specials = [pad, unk, start, eos]
    return specials + [i for i in range(size) if i not in set(specials)]
