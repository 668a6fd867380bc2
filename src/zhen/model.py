"""Note §6–§8: the encoder and decoder stacks, the causal mask, cross-attention and the logits.

    memory = H_enc = Encoder(Embed(src) + PE)                     encode()
    h      = Decoder(Embed(tgt) + PE, memory)                      decode()
    logits = h·W_outᵀ                                              logits()   (Note §8: 词表线性层)

With model.positions = "rotary" there is no PE term: self-attention rotates Q and K instead (`zhen.embedding`).

Shapes: B batch, S source length, T target length, D model width, H heads, V target vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from zhen.attention import BeamLayout, KVCache
from zhen.config import ModelConfig
from zhen.embedding import Embeddings, PositionalEncoding, RotaryPositions, TokenEmbedding
from zhen.layers import DecoderLayer, EncoderLayer
from zhen.linear import Linear
from zhen.special import PAD_ID


@dataclass
class Encoded:
    """The encoder's output H_enc, its padding mask and (on request) its attention maps."""

    memory: Tensor  # (B, S, D)
    src_mask: Tensor  # (B, 1, 1, S), True at real tokens
    self_attention: list[Tensor] = field(default_factory=list)  # per layer (B, H, S, S)


@dataclass
class Decoded:
    """The decoder's last hidden states and (on request) its attention maps."""

    hidden: Tensor  # (B, T, D)
    self_attention: list[Tensor] = field(default_factory=list)  # per layer (B, H, T, T)
    cross_attention: list[Tensor] = field(default_factory=list)  # per layer (B, H, T, S)


@dataclass
class DecoderCache:
    """Everything incremental decoding keeps between steps: per layer the self-attention K/V of the
    tokens so far, and the cross-attention K/V of the source, computed once per sentence.

    `layout` says which target rows belong to which sentence (see `BeamLayout`): the self-attention K/V
    have a row per hypothesis, the source K/V and mask a row per sentence. Beam search changes the layout
    explicitly with every `reorder` and `select`, and each checks the rows it is given against it.
    """

    self_attn: list[KVCache]
    cross_attn: list[KVCache]
    src_mask: Tensor  # (B, 1, 1, S)
    layout: BeamLayout
    length: int = 0  # target tokens decoded so far: the position of the next one

    def reorder(self, parents: Tensor, layout: BeamLayout) -> None:
        """Beam search: target row r continues the prefix of row `parents[r]`, a row of the same sentence, so
        only the self-attention K/V move; afterwards the rows are laid out as `layout` (after the first step,
        one row per sentence becomes K)."""
        layout.check(parents.numel(), self.src_mask.size(0), "DecoderCache.reorder")
        for cache in self.self_attn:
            cache.index_select(parents)
        self.layout = layout

    def select(self, rows: Tensor, sentences: Tensor, layout: BeamLayout) -> None:
        """Keep target `rows` (B'·K,) and source rows `sentences` (B',) (finished sentences leave), laid out
        as `layout` afterwards; the rows of sentence j come from `sentences[j]`'s rows."""
        layout.check(rows.numel(), sentences.numel(), "DecoderCache.select")
        for cache in self.self_attn:
            cache.index_select(rows)
        for cache in self.cross_attn:
            cache.index_select(sentences)
        self.src_mask = self.src_mask.index_select(0, sentences)
        self.layout = layout


class Transformer(nn.Module):
    """The encoder–decoder of the note: `encode(src)`, `decode(tgt, memory)`, `logits(h)`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        pre_norm = c.norm == "pre"
        src_tokens = TokenEmbedding(c.src_vocab_size, c.d_model, PAD_ID)
        tgt_tokens = src_tokens if c.share_embeddings else TokenEmbedding(c.tgt_vocab_size, c.d_model, PAD_ID)
        rotary = RotaryPositions(c.max_positions, c.d_head) if c.positions == "rotary" else None  # in self-attention
        added = rotary is None  # sinusoidal or learned positions: added to the embeddings
        self.src_embed = Embeddings(src_tokens, self._positions(c) if added else None, c.dropout)
        self.tgt_embed = Embeddings(tgt_tokens, self._positions(c) if added else None, c.dropout)
        layer_args = (c.d_model, c.n_heads, c.d_ff, c.dropout, c.attention_dropout, c.activation, pre_norm, rotary)
        self.encoder_layers = nn.ModuleList(EncoderLayer(*layer_args) for _ in range(c.n_encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(*layer_args) for _ in range(c.n_decoder_layers))
        # Pre-norm leaves the residual stream unnormalised, so each stack ends with one LayerNorm.
        self.encoder_norm = nn.LayerNorm(c.d_model) if pre_norm else nn.Identity()
        self.decoder_norm = nn.LayerNorm(c.d_model) if pre_norm else nn.Identity()
        self.output = Linear(c.d_model, c.tgt_vocab_size, bias=c.output_bias)
        if c.tie_output:
            self.output.weight = tgt_tokens.weight  # one matrix for the target embedding and the logits
        else:
            nn.init.normal_(self.output.weight, mean=0.0, std=c.d_model**-0.5)

    @staticmethod
    def _positions(c: ModelConfig) -> PositionalEncoding:
        return PositionalEncoding(c.max_positions, c.d_model, c.positions)

    def source_mask(self, src: Tensor) -> Tensor:
        return (src != PAD_ID)[:, None, None, :]  # (B, S) → (B, 1, 1, S)

    def encode(self, src: Tensor, need_weights: bool = False) -> Encoded:
        """Note §1–§6: source ids (B, S) → H_enc (B, S, D). All positions are computed in parallel."""
        src_mask = self.source_mask(src)
        x = self.src_embed(src)  # (B, S, D)
        maps = []
        for layer in self.encoder_layers:
            x, weights = layer(x, src_mask, need_weights)
            if need_weights:
                maps.append(weights)
        return Encoded(self.encoder_norm(x), src_mask, maps)

    def decode(
        self,
        tgt: Tensor,
        memory: Tensor | None,
        src_mask: Tensor,
        cache: DecoderCache | None = None,
        need_weights: bool = False,
    ) -> Decoded:
        """Note §7: target ids (B, T) and H_enc (B, S, D) → hidden states (B, T, D).

        Training passes the whole shifted target at once; the causal mask keeps position t from
        seeing t+1…  Inference passes only the newest token(s) and a `cache` (see `start_decoding`),
        which supplies the prefix's self-attention K/V and the source's K/V; `memory` may be None.
        """
        offset = cache.length if cache is not None else 0
        y = self.tgt_embed(tgt, offset)  # (B, T, D)
        self_maps, cross_maps = [], []
        for i, layer in enumerate(self.decoder_layers):
            self_cache = cache.self_attn[i] if cache is not None else None
            cross_cache = cache.cross_attn[i] if cache is not None else None
            layout = cache.layout if cache is not None else None
            y, self_weights, cross_weights = layer(y, memory, src_mask, self_cache, cross_cache, need_weights, layout)
            if need_weights:
                self_maps.append(self_weights)
                cross_maps.append(cross_weights)
        if cache is not None:
            cache.length += tgt.size(1)
        return Decoded(self.decoder_norm(y), self_maps, cross_maps)

    def logits(self, hidden: Tensor) -> Tensor:
        """Note §8: the linear layer to the vocabulary. (B, T, D) → (B, T, V)."""
        return self.output(hidden)

    def forward(self, src: Tensor, tgt: Tensor) -> Tensor:
        """Teacher forcing: source (B, S) and decoder input (B, T) → logits (B, T, V)."""
        encoded = self.encode(src)
        return self.logits(self.decode(tgt, encoded.memory, encoded.src_mask).hidden)

    def start_decoding(self, encoded: Encoded, beam: int = 1) -> DecoderCache:
        """Compute every decoder layer's cross-attention K/V (H_enc·W_K, H_enc·W_V) once per sentence.
        `beam`: hypotheses per sentence, decoded as rows i·K … i·K + K - 1 (see `BeamLayout`)."""
        cross = []
        for layer in self.decoder_layers:
            k, v = layer.cross_attn.keys_values(encoded.memory)  # (B, H, S, Dh) each, views of one product
            # Made contiguous once here: as views, every step's Q·Kᵀ and weights·V would copy them again.
            cross.append(KVCache(k.contiguous(), v.contiguous(), static=True))
        layout = BeamLayout(encoded.memory.size(0), beam)
        return DecoderCache([KVCache() for _ in self.decoder_layers], cross, encoded.src_mask, layout)

    def decode_step(self, tokens: Tensor, cache: DecoderCache) -> Tensor:
        """The next-token distribution: newest tokens (B, 1) → log-probabilities (B, V), cache grown by one."""
        hidden = self.decode(tokens, None, cache.src_mask, cache).hidden[:, -1]  # (B, D)
        return self.logits(hidden).float().log_softmax(dim=-1)
