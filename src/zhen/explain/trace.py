"""The note, executed — one sentence through the real model, every step kept as data.

The note (transformer-note.zh.md; DESIGN.md numbers its steps §1–§9) walks 我爱你 through a
Transformer on paper. This module walks a sentence through an actual model, calling the model's own
modules one step at a time, and keeps every intermediate in dataclasses. `zhen.explain.render` prints
them in the order of the note (and writes the HTML page); `zhen.explain.plot` draws the attention maps.
Both read the trace; the trace imports neither.

    §1  ids → E[id]·√D + PE[pos] = X                          trace_embedding
    §2  Q = X·W_Q, K = X·W_K, V = X·W_V, split into heads      trace_attention
    §3  softmax(QKᵀ/√d_k)·V, all positions at once             trace_attention
    §9  Concat(head_1 … head_H)·W_O                            trace_attention
    §4  residual + LayerNorm                                   trace_add_norm
    §5  FFN: W_1 (升维) → ReLU/GELU → W_2 (降维)                 trace_ffn
    §6  encoder layer = self-attention → FFN, stacked           trace_encoder
    §7  decoder layer = masked self-attn → cross-attn → FFN     trace_decoder
    §8  logits → next token, one at a time until </s>          greedy_walk

Nothing here re-implements the network. Every number comes from the model's modules and functions
(`tokens`, `positions`, `w_q`, `split_heads`, `scaled_dot_product_attention`, `merge_heads`, `w_o`,
`AddNorm.before/after`, `ffn.w_1`, `ffn.activation`, `ffn.w_2`, `model.logits`), and the tests check
that the trace ends exactly where `model.encode`, `model.decode` and `model.forward` end. The one table
computed for display only is the raw score table QKᵀ/√d_k, which the model's attention function uses
internally and does not return; a test checks that its row-wise softmax is the model's weights.

The decoder walk is greedy, with the rules of `zhen.search.greedy_search` (a test checks the tokens are
the same): at step t the decoder reads <s> + the t−1 tokens chosen so far, all positions at once under
the causal mask, exactly as `model.decode` does without a cache, and the last row gives the next token.

Tensors in the trace are for one sentence and have no batch dimension. Shapes: S source length,
T decoder input length (<s> + tokens so far), D model width, H heads, Dh = D/H (d_k), F = d_ff,
V target vocabulary; Tq, Tk the query and key lengths of one attention.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from zhen.attention import MultiHeadAttention, causal_mask, scaled_dot_product_attention
from zhen.config import DecodeConfig, ModelConfig
from zhen.embedding import Embeddings
from zhen.errors import ZhenError
from zhen.layers import AddNorm, FeedForward
from zhen.model import Transformer
from zhen.search import apply_length_rules, max_output_lengths
from zhen.special import BOS_ID, EOS_ID, PAD_ID

TOP_K = 5  # next-token candidates shown at every decoder step


class ExplainError(ZhenError, ValueError):
    """An explain request the model cannot answer: an empty sentence, no such layer or head."""


# ----------------------------------------------------------------------------- the trace, as data


@dataclass
class EmbeddingTrace:
    """Note §1: X = E[ids]·√D + PE[positions], the matrix whose rows are the tokens (dropout is off)."""

    ids: list[int]
    pieces: list[str]
    rows: Tensor  # (T, D) rows of the embedding matrix E
    scale: float  # √D
    scaled: Tensor  # (T, D) E[ids]·√D
    positions: Tensor  # (T, D) PE[0 … T-1]: each token's "seat number"
    x: Tensor  # (T, D) their sum, the input of layer 1


@dataclass
class AttentionTrace:
    """Note §2, §3, §9: one multi-head attention sub-layer, all its queries at once.

    Self-attention: Q, K and V all come from the same X. Cross-attention: Q from the decoder,
    K and V from the encoder output H_enc.
    """

    kind: str  # "encoder self-attention" | "decoder masked self-attention" | "cross-attention"
    query_pieces: list[str]  # Tq labels
    key_pieces: list[str]  # Tk labels
    x: Tensor  # (Tq, D) what Q is computed from
    source: Tensor  # (Tk, D) what K and V are computed from (x itself, or H_enc)
    q: Tensor  # (Tq, D) x·W_Q
    k: Tensor  # (Tk, D) source·W_K
    v: Tensor  # (Tk, D) source·W_V
    q_heads: Tensor  # (H, Tq, Dh)
    k_heads: Tensor  # (H, Tk, Dh)
    v_heads: Tensor  # (H, Tk, Dh)
    allowed: Tensor  # (Tq, Tk) bool: False where masked (the future, or padding)
    scores: Tensor  # (H, Tq, Tk) QKᵀ/√d_k, -inf where masked
    weights: Tensor  # (H, Tq, Tk) softmax of each row: rows sum to 1, masked cells are exactly 0
    heads: Tensor  # (H, Tq, Dh) weights·V, one weighted sum per query and head
    concat: Tensor  # (Tq, D) the heads side by side
    out: Tensor  # (Tq, D) concat·W_O


@dataclass
class AddNormTrace:
    """Note §4: residual + LayerNorm around one sub-layer F ("保底通道 + 学增量").

    post-norm (the note, the paper): out = LayerNorm(x + F(x))
    pre-norm (an option):             out = x + F(LayerNorm(x))
    """

    pre_norm: bool
    x: Tensor  # (T, D) the residual path: the sub-layer's input
    f_input: Tensor  # (T, D) what F saw: x (post-norm) or LayerNorm(x) (pre-norm)
    fx: Tensor  # (T, D) F's output
    out: Tensor  # (T, D)

    @property
    def norm_input(self) -> Tensor:
        """(T, D) what the LayerNorm normalised: x + F(x) (post-norm) or x (pre-norm)."""
        return self.x if self.pre_norm else self.x + self.fx

    @property
    def norm_output(self) -> Tensor:
        """(T, D) the LayerNorm's output: out (post-norm) or LayerNorm(x), F's input (pre-norm)."""
        return self.f_input if self.pre_norm else self.out


@dataclass
class FFNTrace:
    """Note §5: up-project to F (升维) → ReLU/GELU → down-project to D (降维), each position alone."""

    activation: str
    x: Tensor  # (T, D)
    up: Tensor  # (T, F) x·W_1 + b_1
    activated: Tensor  # (T, F) act(up)
    out: Tensor  # (T, D) activated·W_2 + b_2


@dataclass
class EncoderLayerTrace:
    """Note §6: one encoder layer = self-attention → FFN, each with residual + LayerNorm."""

    index: int  # 0-based
    x: Tensor  # (S, D) the layer's input
    self_attn: AttentionTrace
    self_attn_norm: AddNormTrace
    ffn: FFNTrace
    ffn_norm: AddNormTrace

    @property
    def out(self) -> Tensor:
        return self.ffn_norm.out  # (S, D)


@dataclass
class DecoderLayerTrace:
    """Note §7: masked self-attention → cross-attention (K/V from H_enc) → FFN, each with Add & Norm."""

    index: int  # 0-based
    y: Tensor  # (T, D) the layer's input
    self_attn: AttentionTrace
    self_attn_norm: AddNormTrace
    cross_attn: AttentionTrace
    cross_attn_norm: AddNormTrace
    ffn: FFNTrace
    ffn_norm: AddNormTrace

    @property
    def out(self) -> Tensor:
        return self.ffn_norm.out  # (T, D)


@dataclass
class EncoderTrace:
    """Note §1–§6: the source through the encoder stack to H_enc (`model.encode`)."""

    embedding: EmbeddingTrace
    layers: list[EncoderLayerTrace]
    memory: Tensor  # (S, D) H_enc; pre-norm adds one final LayerNorm
    src_mask: Tensor  # (1, 1, 1, S) the model's padding mask, as `model.encode` makes it


@dataclass
class DecoderTrace:
    """Note §7: decoder input ids through the decoder stack, all positions at once (`model.decode`)."""

    embedding: EmbeddingTrace
    layers: list[DecoderLayerTrace]
    hidden: Tensor  # (T, D) the last layer's output; pre-norm adds one final LayerNorm


@dataclass
class Candidate:
    """One possible next token."""

    id: int
    piece: str
    logit: float
    prob: float  # softmax(logits)[id]


@dataclass
class DecoderStep:
    """Note §7–§8: one generated token. The decoder reads <s> + the tokens so far; its last row
    gives the logits over the target vocabulary; the greedy choice is the most probable allowed token."""

    step: int  # 1-based: the step-th generated token
    decoder: DecoderTrace  # over the T = step input tokens
    logits: Tensor  # (V,) of the newest position
    probs: Tensor  # (V,) softmax(logits)
    top: list[Candidate]  # the TOP_K most probable, best first
    chosen: int
    chosen_piece: str
    rule: str  # "" or why the choice is not the most probable token (a decoding rule)


@dataclass
class Trace:
    """The whole walk: source → encoder → decoder, one token at a time → translation."""

    text: str  # as typed
    normalized: str  # after the model's text normalisation: what was tokenized
    config: ModelConfig
    encoder: EncoderTrace
    steps: list[DecoderStep]
    max_len: int  # the decoding length limit (as in `zhen.search`): </s> is forced at this step
    output_ids: list[int]  # the generated tokens without </s>
    translation: str

    @property
    def source_pieces(self) -> list[str]:
        return self.encoder.embedding.pieces

    @property
    def final(self) -> DecoderTrace:
        """The decoder over the whole output at once: the T×T causal self-attention of the final sequence."""
        return self.steps[-1].decoder


# ----------------------------------------------------------------------------- tracing, step by step


def trace_embedding(embed: Embeddings, ids: list[int], pieces: list[str]) -> EmbeddingTrace:
    """Note §1 (前置步骤): token vectors, scaled by √D, plus the positional encoding."""
    batch = torch.tensor([ids])  # (1, T)
    rows = embed.tokens.embed(batch)[0]  # (T, D)
    scaled = embed.tokens(batch)[0]  # (T, D): the model's own ×√D
    # (T, D); rotary positions add nothing here: they turn Q and K inside self-attention (trace_attention)
    positions = embed.positions(len(ids)) if embed.positions is not None else torch.zeros_like(scaled)
    scale = math.sqrt(embed.tokens.d_model)
    return EmbeddingTrace(list(ids), list(pieces), rows, scale, scaled, positions, scaled + positions)


def trace_attention(
    attn: MultiHeadAttention,
    x: Tensor,
    memory: Tensor | None,
    *,
    mask: Tensor | None,
    causal: bool,
    kind: str,
    query_pieces: list[str],
    key_pieces: list[str],
) -> AttentionTrace:
    """Note §2 (Q/K/V), §3 (scores → softmax → weighted sum), §9 (heads → W_O), as `attn.forward` does.

    x (Tq, D); memory (Tk, D) for cross-attention, None for self-attention; `mask` and `causal` exactly
    as the layer passes them to `scaled_dot_product_attention`.
    """
    source = x if memory is None else memory
    q, k, v = attn.w_q(x[None]), attn.w_k(source[None]), attn.w_v(source[None])  # (1, Tq|Tk, D)
    q_heads, k_heads, v_heads = attn.split_heads(q), attn.split_heads(k), attn.split_heads(v)  # (1, H, T, Dh)
    if attn.rotary is not None:  # rotary positions (self-attention only): query i and key j turned by i and j
        q_heads, k_heads = attn.rotary(q_heads), attn.rotary(k_heads)
    heads, weights = scaled_dot_product_attention(q_heads, k_heads, v_heads, mask, causal=causal, need_weights=True)
    concat = attn.merge_heads(heads)  # (1, Tq, D)
    out = attn.w_o(concat)  # (1, Tq, D)

    n_queries, n_keys = x.size(0), source.size(0)
    allowed = torch.ones(n_queries, n_keys, dtype=torch.bool)  # (Tq, Tk)
    if mask is not None:
        allowed = allowed & mask[0, 0]  # the padding mask (1, 1, 1, Tk) → (1, Tk)
    if causal:
        allowed = allowed & causal_mask(n_queries, n_keys)
    scores = q_heads[0] @ k_heads[0].transpose(-2, -1) / math.sqrt(attn.d_head)  # (H, Tq, Tk), for display
    return AttentionTrace(
        kind, query_pieces, key_pieces, x, source, q[0], k[0], v[0], q_heads[0], k_heads[0], v_heads[0],
        allowed, scores.masked_fill(~allowed, float("-inf")), weights[0], heads[0], concat[0], out[0],
    )


def trace_add_norm(add_norm: AddNorm, x: Tensor, f_input: Tensor, fx: Tensor) -> AddNormTrace:
    """Note §4: y = LayerNorm(x + F(x)) (post-norm) or x + F(LayerNorm(x)) (pre-norm), via `AddNorm.after`."""
    return AddNormTrace(add_norm.pre_norm, x, f_input, fx, add_norm.after(x, fx))


def trace_ffn(ffn: FeedForward, x: Tensor, activation: str) -> FFNTrace:
    """Note §5: W_1 → activation → W_2, the module's own linear layers and activation."""
    up = ffn.w_1(x)  # (T, F)
    activated = ffn.activation(up)  # (T, F)
    return FFNTrace(activation, x, up, activated, ffn.w_2(activated))


def trace_encoder(model: Transformer, ids: list[int], pieces: list[str]) -> EncoderTrace:
    """Note §1–§6: what `model.encode` does, one sub-layer at a time. The model must be in eval mode."""
    _check_eval(model)
    with torch.no_grad():
        src_mask = model.source_mask(torch.tensor([ids]))  # (1, 1, 1, S)
        embedding = trace_embedding(model.src_embed, ids, pieces)
        x, layers = embedding.x, []
        for index, layer in enumerate(model.encoder_layers):
            f_input = layer.self_attn_norm.before(x)
            attn = trace_attention(layer.self_attn, f_input, None, mask=src_mask, causal=False,
                                   kind="encoder self-attention", query_pieces=pieces, key_pieces=pieces)
            attn_norm = trace_add_norm(layer.self_attn_norm, x, f_input, attn.out)
            f_input = layer.ffn_norm.before(attn_norm.out)
            ffn = trace_ffn(layer.ffn, f_input, model.config.activation)
            ffn_norm = trace_add_norm(layer.ffn_norm, attn_norm.out, f_input, ffn.out)
            layers.append(EncoderLayerTrace(index, x, attn, attn_norm, ffn, ffn_norm))
            x = ffn_norm.out
        return EncoderTrace(embedding, layers, model.encoder_norm(x), src_mask)


def trace_decoder(model: Transformer, encoder: EncoderTrace, ids: list[int], pieces: list[str]) -> DecoderTrace:
    """Note §7: what `model.decode(ids, H_enc)` does (no cache), one sub-layer at a time."""
    _check_eval(model)
    source_pieces = encoder.embedding.pieces
    with torch.no_grad():
        embedding = trace_embedding(model.tgt_embed, ids, pieces)
        y, layers = embedding.x, []
        for index, layer in enumerate(model.decoder_layers):
            f_input = layer.self_attn_norm.before(y)
            self_attn = trace_attention(layer.self_attn, f_input, None, mask=None, causal=True,
                                        kind="decoder masked self-attention", query_pieces=pieces, key_pieces=pieces)
            self_norm = trace_add_norm(layer.self_attn_norm, y, f_input, self_attn.out)
            f_input = layer.cross_attn_norm.before(self_norm.out)
            cross = trace_attention(layer.cross_attn, f_input, encoder.memory, mask=encoder.src_mask, causal=False,
                                    kind="cross-attention", query_pieces=pieces, key_pieces=source_pieces)
            cross_norm = trace_add_norm(layer.cross_attn_norm, self_norm.out, f_input, cross.out)
            f_input = layer.ffn_norm.before(cross_norm.out)
            ffn = trace_ffn(layer.ffn, f_input, model.config.activation)
            ffn_norm = trace_add_norm(layer.ffn_norm, cross_norm.out, f_input, ffn.out)
            layers.append(DecoderLayerTrace(index, y, self_attn, self_norm, cross, cross_norm, ffn, ffn_norm))
            y = ffn_norm.out
        return DecoderTrace(embedding, layers, model.decoder_norm(y))


def greedy_walk(model: Transformer, encoder: EncoderTrace, *, max_len: int,
                piece: Callable[[int], str]) -> list[DecoderStep]:
    """Note §8 (推理选下一个 token): greedy decoding, one token at a time, until </s>.

    The rules are `zhen.search.greedy_search`'s: <pad> and <s> are never generated, and at step
    `max_len` only </s> is allowed. `piece` names a target id (e.g. `tokenizer.id_to_tgt_piece`).
    """
    tokens, steps = [BOS_ID], []
    for step in range(1, max_len + 1):
        decoder = trace_decoder(model, encoder, tokens, [piece(t) for t in tokens])
        with torch.no_grad():
            logits = model.logits(decoder.hidden[-1:])[0].float()  # (V,): Note §8, the vocabulary layer
        log_probs = logits.log_softmax(dim=-1)  # (V,)
        ruled = apply_length_rules(log_probs.clone()[None], step, min_len=0, at_limit=torch.tensor([step >= max_len]),
                                   eos_id=EOS_ID, never=[PAD_ID, BOS_ID])[0]  # (V,)
        chosen = int(ruled.argmax())
        probs = log_probs.exp()
        top_probs, top_ids = probs.topk(min(TOP_K, probs.numel()))
        top = [Candidate(i, piece(i), float(logits[i]), p) for i, p in zip(top_ids.tolist(), top_probs.tolist(),
                                                                           strict=True)]
        rule = ""
        if chosen != top[0].id:
            rule = (f"at the length limit ({max_len}) only </s> is allowed" if step >= max_len
                    else "<pad> and <s> are never generated")
        steps.append(DecoderStep(step, decoder, logits, probs, top, chosen, piece(chosen), rule))
        if chosen == EOS_ID:
            break
        tokens.append(chosen)
    return steps


def explain_sentence(model: Transformer, tokenizer: Any, text: str, *, normalize: Callable[[str], str] | None = None,
                     decode: DecodeConfig | None = None) -> Trace:
    """The whole walk for one sentence: normalise → tokenize → encoder → greedy decoder → translation.

    `tokenizer` is a `zhen.tokenizer.Tokenizer`; `normalize` the model's Chinese normalisation
    (`zhen.text.Normalizer(config.text).zh`); `decode` supplies the length limit (max_len_a, max_len_b).
    """
    decode = decode or DecodeConfig()
    normalized = normalize(text) if normalize else text
    if not normalized:
        raise ExplainError("nothing to explain: the sentence is empty")
    ids = tokenizer.encode_src([normalized])[0]
    if len(ids) > model.config.max_positions:
        raise ExplainError(f"{len(ids)} source tokens exceed the model's {model.config.max_positions} positions")
    model.eval()
    encoder = trace_encoder(model, ids, [tokenizer.id_to_src_piece(i) for i in ids])
    src = torch.tensor([ids])
    max_len = int(max_output_lengths(src, decode.max_len_a, decode.max_len_b, model.config.max_positions, PAD_ID)[0])
    steps = greedy_walk(model, encoder, max_len=max_len, piece=tokenizer.id_to_tgt_piece)
    output = [s.chosen for s in steps if s.chosen != EOS_ID]
    translation = tokenizer.decode_tgt([output])[0]
    return Trace(text, normalized, model.config, encoder, steps, max_len, output, translation)


def _check_eval(model: Transformer) -> None:
    if model.training:
        raise ExplainError("explain needs the model in eval mode (dropout would change every number)")


# ----------------------------------------------------------------------------- a request's choices


def check_choice(config: ModelConfig, layer: int | None, head: int, values: int) -> None:
    """The --layer, --head and --values a user asked for exist in this model."""
    n_layers = min(config.n_encoder_layers, config.n_decoder_layers)
    if layer is not None and not 1 <= layer <= n_layers:
        raise ExplainError(f"--layer must be between 1 and {n_layers} for this model; got {layer}")
    if not 1 <= head <= config.n_heads:
        raise ExplainError(f"--head must be between 1 and {config.n_heads} for this model; got {head}")
    if values < 1:
        raise ExplainError(f"--values must be at least 1; got {values}")
