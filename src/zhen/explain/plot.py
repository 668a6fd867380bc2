"""Attention heatmaps for `zhen explain`: one PNG per attention kind, every head and the head average.

    encoder_self_attention_layerL.png   Note §3: S×S, rows = query pieces, columns = key pieces
    decoder_self_attention_layerL.png   Note §7: T×T of the final sequence; grey cells are masked (weight 0)
    cross_attention_layerL.png          Note §7: T×S, target pieces (rows) reading source pieces (columns)

Chinese labels need a font with CJK glyphs: the Noto Sans CJK collection from the `noto-cjk-sans-otc`
package is registered with matplotlib and used by name, so no system font is needed and no label renders
as tofu boxes. Drawing uses matplotlib's Agg canvas through `Figure` (no pyplot, no global state, no display).

Shapes: H heads, Tq query length, Tk key length.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import TYPE_CHECKING

from torch import Tensor

from zhen.explain.trace import AttentionTrace, Trace

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ANNOTATE_UP_TO = 12  # print the weight in every cell when both sides are at most this long


@functools.cache
def cjk_font_family() -> str:
    """Register the packaged Noto Sans CJK font with matplotlib and return its family name."""
    import noto_cjk_sans_otc
    from matplotlib import font_manager

    path = str(noto_cjk_sans_otc.FONT_PATH)
    font_manager.fontManager.addfont(path)
    return font_manager.FontProperties(fname=path).get_name()


def attention_figure(weights: Tensor, allowed: Tensor, row_labels: list[str], col_labels: list[str],
                     title: str) -> Figure:
    """A grid of heatmaps: each head's weights (H, Tq, Tk), then their average. Masked cells are grey."""
    import matplotlib
    import numpy as np
    from matplotlib.figure import Figure

    n_heads, n_rows, n_cols = weights.shape
    panels = [(f"head {i + 1}", weights[i]) for i in range(n_heads)] + [("average of the heads", weights.mean(0))]
    grid_cols = math.ceil(math.sqrt(len(panels)))
    grid_rows = math.ceil(len(panels) / grid_cols)
    cell = 0.42 if max(n_rows, n_cols) <= 16 else 0.25
    panel_w, panel_h = max(3.2, 1.6 + cell * n_cols), max(2.8, 1.4 + cell * n_rows)
    tick_size = 9 if max(n_rows, n_cols) <= 16 else 6
    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="#d9d9d9")
    hidden = ~allowed.numpy()  # (Tq, Tk)

    with matplotlib.rc_context({"font.family": [cjk_font_family(), "DejaVu Sans"], "axes.unicode_minus": False}):
        fig = Figure(figsize=(grid_cols * panel_w + 1.0, grid_rows * panel_h + 0.8), dpi=110, layout="constrained")
        axes = fig.subplots(grid_rows, grid_cols, squeeze=False)
        image = None
        for ax, (name, matrix) in zip(axes.flat, panels, strict=False):
            values = np.ma.masked_array(matrix.numpy(), mask=hidden)
            image = ax.imshow(values, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
            ax.set_title(name, fontsize=10)
            ax.set_xticks(range(n_cols), col_labels, rotation=90 if n_cols > 6 else 0, fontsize=tick_size)
            ax.set_yticks(range(n_rows), row_labels, fontsize=tick_size)
            if max(n_rows, n_cols) <= ANNOTATE_UP_TO:
                for i in range(n_rows):
                    for j in range(n_cols):
                        value = float(matrix[i, j])
                        ax.text(j, i, "0" if hidden[i, j] else f"{value:.2f}", ha="center", va="center", fontsize=7,
                                color="white" if value > 0.6 else "#333")
        for ax in list(axes.flat)[len(panels):]:
            ax.set_visible(False)
        fig.colorbar(image, ax=axes, shrink=0.6, label="attention weight")
        fig.suptitle(title, fontsize=12)
    return fig


def _figure(attn: AttentionTrace, title: str, row_labels: list[str] | None = None) -> Figure:
    return attention_figure(attn.weights, attn.allowed, row_labels or attn.query_pieces, attn.key_pieces, title)


def write_heatmaps(trace: Trace, out: Path, layer: int | None = None) -> dict[str, list[Path]]:
    """Write the three PNGs for `layer` (1-based; default: the last) into `out`, grouped by the part of the walk."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    enc_index = (layer or len(trace.encoder.layers)) - 1
    dec_index = (layer or len(trace.final.layers)) - 1
    encoder = trace.encoder.layers[enc_index].self_attn
    decoder = trace.final.layers[dec_index]
    outputs = [s.chosen_piece for s in trace.steps]
    arrows = [f"{p} → {o}" for p, o in zip(decoder.cross_attn.query_pieces, outputs, strict=True)]
    jobs = [
        ("encoder", f"encoder_self_attention_layer{enc_index + 1}.png",
         _figure(encoder, f"Encoder self-attention · layer {enc_index + 1} · rows = queries, columns = keys")),
        ("decoder", f"decoder_self_attention_layer{dec_index + 1}.png",
         _figure(decoder.self_attn, f"Decoder masked self-attention · layer {dec_index + 1} · "
                                    "grey = masked (future), weight 0")),
        ("decoder", f"cross_attention_layer{dec_index + 1}.png",
         _figure(decoder.cross_attn, f"Cross-attention · layer {dec_index + 1} · rows = decoder input → "
                                     "predicted piece, columns = source pieces", row_labels=arrows)),
    ]
    written: dict[str, list[Path]] = {}
    for part, name, fig in jobs:
        path = out / name
        fig.savefig(path)
        written.setdefault(part, []).append(path)
    return written
