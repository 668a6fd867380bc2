"""The explain trace (`zhen.explain.Trace`) as JSON for the page: tokens, attention maps, next-token choices.

Of the trace's many tensors the page shows the ones the note draws:

- the source and target tokens (SentencePiece pieces and ids);
- per layer and head the attention weights softmax(QKᵀ/√d_k) of encoder self-attention (Note §3, §6), decoder
  masked self-attention and cross-attention (§7). The decoder maps are those of the last step, which reads
  <s> + the whole output at once: under the causal mask row t is exactly what step t + 1 computed;
- at every step the most probable next tokens and the one chosen (§8).

Weights are rounded to 4 decimals: enough for a heatmap and its hover readout, and a quarter of the bytes.
Shapes: S source tokens, T decoder input tokens (<s> + output), H heads, L layers.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

DIGITS = 4


def _rounded(weights: Tensor) -> list:
    """(…) tensor → nested lists of floats rounded to DIGITS (rounded in Python: exact shortest decimals)."""
    values = weights.detach().float().tolist()

    def walk(value: Any) -> Any:
        return [walk(v) for v in value] if isinstance(value, list) else round(value, DIGITS)

    return walk(values)


def _attention(name: str, note: str, traces: list[Any]) -> dict[str, Any]:
    """One kind of attention over all layers: traces[l] is an `AttentionTrace` with weights (H, Tq, Tk)."""
    first = traces[0]
    return {
        "name": name,
        "kind": first.kind,
        "note": note,
        "queries": list(first.query_pieces),  # Tq row labels
        "keys": list(first.key_pieces),  # Tk column labels
        "allowed": first.allowed.int().tolist(),  # (Tq, Tk) 0 where masked: the same in every layer and head
        "layers": [_rounded(trace.weights) for trace in traces],  # (L, H, Tq, Tk)
    }


def trace_to_json(trace: Any) -> dict[str, Any]:
    """A `zhen.explain.Trace` → a JSON-ready dict (see the module doc)."""
    config = trace.config
    final = trace.final  # the decoder over <s> + the whole output
    steps = [{
        "step": step.step,
        "chosen": {"id": step.chosen, "piece": step.chosen_piece},
        "rule": step.rule,
        "top": [{"id": c.id, "piece": c.piece, "prob": round(c.prob, DIGITS), "logit": round(c.logit, 3)}
                for c in step.top],
    } for step in trace.steps]
    return {
        "text": trace.text,
        "normalized": trace.normalized,
        "translation": trace.translation,
        "decoding": "greedy",
        "max_len": trace.max_len,
        "model": {
            "d_model": config.d_model, "n_heads": config.n_heads, "d_head": config.d_model // config.n_heads,
            "n_encoder_layers": config.n_encoder_layers, "n_decoder_layers": config.n_decoder_layers,
            "d_ff": config.d_ff, "norm": config.norm, "activation": config.activation, "positions": config.positions,
        },
        "source": {"pieces": list(trace.source_pieces), "ids": list(trace.encoder.embedding.ids)},
        "target": {"pieces": list(final.embedding.pieces), "ids": list(final.embedding.ids)},
        "attention": [
            _attention("encoder", "§3 §6", [layer.self_attn for layer in trace.encoder.layers]),
            _attention("decoder", "§7", [layer.self_attn for layer in final.layers]),
            _attention("cross", "§7", [layer.cross_attn for layer in final.layers]),
        ],
        "steps": steps,
    }
