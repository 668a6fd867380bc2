"""`zhen explain`: one sentence through the real model, every step of the note kept as data.

    trace.py    the trace: dataclasses of every intermediate, computed by the model's own modules
    render.py   the trace as terminal text and as one HTML page, in the order of the note
    plot.py     the trace's attention maps as PNG heatmaps

The renderers read the trace; the trace imports neither. The command itself (`zhen explain`) lives
with the other commands in `zhen.cli`, and the server (`zhen serve`) reads the same trace.
"""

from zhen.explain.trace import (
    TOP_K,
    AddNormTrace,
    AttentionTrace,
    Candidate,
    DecoderLayerTrace,
    DecoderStep,
    DecoderTrace,
    EmbeddingTrace,
    EncoderLayerTrace,
    EncoderTrace,
    ExplainError,
    FFNTrace,
    Trace,
    check_choice,
    explain_sentence,
    greedy_walk,
    trace_encoder,
)

__all__ = [
    "TOP_K", "AddNormTrace", "AttentionTrace", "Candidate", "DecoderLayerTrace", "DecoderStep", "DecoderTrace",
    "EmbeddingTrace", "EncoderLayerTrace", "EncoderTrace", "ExplainError", "FFNTrace", "Trace", "check_choice",
    "explain_sentence", "greedy_walk", "trace_encoder",
]
