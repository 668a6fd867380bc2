"""Render a `zhen.explain.Trace` in the order of the note: as terminal text and as one HTML page.

    render_sections(trace, view)           → [Section]  what to show, as data: titles, lines, tables
    render_text(sections)                  → str        aligned tables for an 80–120 column terminal
    render_html(trace, sections, pictures) → str        one self-contained page, pictures embedded

Every section title names the note's step, e.g. "Note §3 · scores QKᵀ/√d_k (head 1 of 4, encoder layer 1 of 6)".
Tables label rows and columns with the tokenizer's pieces; vectors show their first `view.values` numbers.
Chinese characters take two terminal columns, so alignment counts display width, not characters.

Shapes as in `zhen.explain.trace`: S source length, T decoder input length, D width, H heads, Dh = D/H, F = d_ff.
"""

from __future__ import annotations

import base64
import html
import math
import textwrap
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from zhen.explain.trace import AddNormTrace, AttentionTrace, DecoderStep, EncoderLayerTrace, Trace

MAX_COLUMNS = 14  # key columns of an attention table; a longer sentence shows its first ones
MAX_LABEL = 12  # display columns of a row or column label
TEXT_WIDTH = 110  # prose lines wrap here
ACTIVATIONS = {"relu": "ReLU", "gelu": "GELU", "swish": "Swish"}


@dataclass(frozen=True)
class View:
    """What the user asked to see (the command-line options)."""

    layer: int | None = None  # 1-based; None: every layer in the text, the last one in the pictures
    head: int = 1  # 1-based head whose tables are printed
    values: int = 6  # numbers shown per vector
    model: str = ""  # the model directory, for the header


@dataclass
class Table:
    header: list[str]  # header[0] heads the row labels
    rows: list[list[str]]  # each: row label, then the cells, already formatted
    shade: bool = False  # the cells are attention weights in [0, 1]: the HTML page shades them


@dataclass
class Section:
    part: str  # "model" | "encoder" | "decoder" | "output": how the HTML page groups the sections
    title: str
    blocks: list[str | Table] = field(default_factory=list)


# ----------------------------------------------------------------------------- formatting


def display_width(text: str) -> int:
    """Terminal columns: wide (CJK) characters take two, combining marks none."""
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def label(text: str, limit: int = MAX_LABEL) -> str:
    if display_width(text) <= limit:
        return text
    while display_width(text + "…") > limit:
        text = text[:-1]
    return text + "…"


def number(x: float) -> str:
    if x == -math.inf:
        return "-inf"
    return f"{0.0 if abs(x) < 5e-4 else x:+.3f}"  # never "-0.000"


def weight(x: float) -> str:
    return "0" if x == 0 else f"{x:.3f}"  # an exact 0 is a masked cell


def shape(t: Tensor) -> str:
    return "×".join(str(n) for n in t.shape)


def vector_table(pieces: list[str], matrix: Tensor, n: int, extra: dict[str, list[str]] | None = None) -> Table:
    """Rows = tokens (T, ·): optional extra columns, then the first n numbers of each row and "…"."""
    cut = min(n, matrix.size(-1))
    more = ["…"] if matrix.size(-1) > cut else []
    extra = extra or {}
    header = ["piece", *extra, *(str(j) for j in range(cut)), *more]
    rows = [[label(piece), *(column[i] for column in extra.values()), *(number(v) for v in matrix[i, :cut].tolist()),
             *more] for i, piece in enumerate(pieces)]
    return Table(header, rows)


def score_table(row_labels: list[str], col_labels: list[str], scores: Tensor) -> Table:
    """The raw scores QKᵀ/√d_k (Tq, Tk): signed numbers, -inf where masked."""
    cut = min(MAX_COLUMNS, len(col_labels))
    more = ["…"] if cut < len(col_labels) else []
    header = ["query \\ key", *(label(c) for c in col_labels[:cut]), *more]
    rows = [[label(r, 16), *(number(v) for v in scores[i, :cut].tolist()), *more] for i, r in enumerate(row_labels)]
    return Table(header, rows)


def weight_table(row_labels: list[str], col_labels: list[str], weights: Tensor, *, first: str = "query \\ key",
                 strongest: bool = False) -> Table:
    """Attention weights (Tq, Tk); the Σ column shows that each row sums to 1."""
    cut = min(MAX_COLUMNS, len(col_labels))
    more = ["…"] if cut < len(col_labels) else []
    header = [first, *(label(c) for c in col_labels[:cut]), *more, "Σ", *(["strongest"] if strongest else [])]
    rows = []
    for i, row_label in enumerate(row_labels):
        row = weights[i].tolist()
        cells = [weight(v) for v in row[:cut]] + more + [f"{sum(row):.3f}"]
        if strongest:
            cells.append(label(col_labels[max(range(len(row)), key=row.__getitem__)]))
        rows.append([label(row_label, 16), *cells])
    return Table(header, rows, shade=True)


def row_stats(t: Tensor) -> tuple[list[str], list[str]]:
    """Each row's mean and standard deviation (the statistics LayerNorm uses), formatted."""
    return [number(v) for v in t.mean(-1).tolist()], [f"{v:.3f}" for v in t.std(-1, unbiased=False).tolist()]


def stats_table(pieces: list[str], add_norm: AddNormTrace, n: int) -> Table:
    """Per token: mean and std before and after the LayerNorm, then the sub-layer's output y."""
    mean_before, std_before = row_stats(add_norm.norm_input)
    mean_after, std_after = row_stats(add_norm.norm_output)
    extra = {"mean before": mean_before, "std before": std_before, "mean after": mean_after, "std after": std_after}
    return vector_table(pieces, add_norm.out, n, extra=extra)


# ----------------------------------------------------------------------------- the sections, in the order of the note


def render_sections(trace: Trace, view: View) -> list[Section]:
    """Everything to show, in the order of the note: §1 source → §2–§6 encoder → §7–§8 decoder → translation."""
    encoder_layers = trace.encoder.layers if view.layer is None else [trace.encoder.layers[view.layer - 1]]
    sections = [_model_section(trace, view), *_source_sections(trace, view)]
    for layer in encoder_layers:
        sections += _encoder_layer_sections(trace, layer, view)
    sections += _decoder_sections(trace, view)
    sections.append(_output_section(trace))
    return sections


def _norm_words(trace: Trace) -> str:
    if trace.config.norm == "pre":
        return "pre-norm: y = x + F(LayerNorm(x)) (an option; the note is post-norm)"
    return "post-norm: y = LayerNorm(x + F(x)), as in the note"


def _model_section(trace: Trace, view: View) -> Section:
    c = trace.config
    return Section("model", "The model", [
        f"model directory  {view.model or '(in memory)'}",
        f"D = d_model = {c.d_model}; H = {c.n_heads} heads of d_k = {c.d_head}; FFN width F = {c.d_ff} "
        f"({ACTIVATIONS[c.activation]}); {c.n_encoder_layers} encoder + {c.n_decoder_layers} decoder layers",
        f"residual + LayerNorm: {_norm_words(trace)}",
        f"source vocabulary {c.src_vocab_size}, target vocabulary V = {c.tgt_vocab_size}; {c.positions} positions",
    ])


def _source_sections(trace: Trace, view: View) -> list[Section]:
    emb, c, n = trace.encoder.embedding, trace.config, view.values
    lines = [f"input       {trace.text}"]
    if trace.normalized != trace.text:
        lines.append(f"normalised  {trace.normalized}")
    lines += [f"pieces      {'  '.join(emb.pieces)}", f"ids         {'  '.join(str(i) for i in emb.ids)}",
              f"S = {len(emb.ids)} tokens (▁ starts a word; </s> ends the sentence)"]
    ids = {"id": [str(i) for i in emb.ids]}
    positions = {"pos": [str(i) for i in range(len(emb.ids))]}
    pe = {"sinusoidal": "sinusoidal: PE[pos, 2i] = sin(pos / 10000^(2i/D)), PE[pos, 2i+1] = cos(pos / 10000^(2i/D))",
          "learned": "learned position vectors",
          "rotary": "rotary: nothing is added here (PE = 0); self-attention turns each head's Q and K by an angle "
                    "that grows with pos (Note §3), so a score depends on how far apart two tokens are"}[c.positions]
    return [
        Section("model", "Note §1 · tokens → ids (the tokenizer)", lines),
        Section("model", f"Note §1 · embeddings X = E[id]·√D + PE[pos]  (rows = tokens, D = {c.d_model} columns)", [
            f"E[id]: row `id` of the source embedding matrix E ({c.src_vocab_size}×{c.d_model})",
            vector_table(emb.pieces, emb.rows, n, extra=ids),
            f"× √D = √{c.d_model} = {emb.scale:.3f}, so that the positions do not drown the tokens",
            vector_table(emb.pieces, emb.scaled, n),
            f"+ PE[pos], each token's seat number; {pe}",
            vector_table(emb.pieces, emb.positions, n, extra=positions),
            f"= X ({shape(emb.x)}): the note's matrix, one row per token; the input of encoder layer 1",
            vector_table(emb.pieces, emb.x, n),
        ]),
    ]


def _attention_sections(attn: AttentionTrace, where: str, view: View) -> list[Section]:
    """Note §2, §3 and §9 for one attention sub-layer, all its queries."""
    h, n_heads, d_head = view.head - 1, attn.weights.size(0), attn.q_heads.size(-1)
    q_pieces, k_pieces, weights = attn.query_pieces, attn.key_pieces, attn.weights[view.head - 1]
    head = f"head {view.head} of {n_heads}, {where}"
    d = attn.q.size(1)
    strongest = ",  ".join(f"{label(q)}→{label(k_pieces[int(weights[i].argmax())])}" for i, q in enumerate(q_pieces))
    return [
        Section("encoder", f"Note §2 · Q = X·W_Q, K = X·W_K, V = X·W_V  ({where})", [
            f"Q = X·W_Q + b: ({shape(attn.x)})·({d}×{d}) → Q ({shape(attn.q)});  "
            f"likewise K ({shape(attn.k)}) and V ({shape(attn.v)})",
            f"split into H = {n_heads} heads of d_k = {d_head} columns: Q → ({shape(attn.q_heads)}); "
            f"head {view.head} is columns {h * d_head}–{(h + 1) * d_head - 1}",
            f"Q, head {view.head}", vector_table(q_pieces, attn.q_heads[h], view.values),
            f"K, head {view.head}", vector_table(k_pieces, attn.k_heads[h], view.values),
            f"V, head {view.head}", vector_table(k_pieces, attn.v_heads[h], view.values),
        ]),
        Section("encoder", f"Note §3 · scores QKᵀ/√d_k  ({head})", [
            f"row = a query token, column = a key token: score = q·k / √{d_head} = q·k / {math.sqrt(d_head):.3f}",
            score_table(q_pieces, k_pieces, attn.scores[h]),
        ]),
        Section("encoder", f"Note §3 · softmax weights  ({head})", [
            "softmax of each row: rows = queries, columns = keys; every row sums to 1 (Σ)",
            weight_table(q_pieces, k_pieces, weights),
            f"each query's strongest key: {strongest}",
        ]),
        Section("encoder", f"Note §3 · weighted sum: weights·V  ({head})", [
            "out_i = Σ_j weight[i, j]·v_j for every query i at once, in parallel (并行), not one token after another",
            vector_table(q_pieces, attn.heads[h], view.values),
        ]),
        Section("encoder", f"Note §9 · Concat(head_1 … head_{n_heads})·W_O  ({where})", [
            f"the {n_heads} heads side by side: ({shape(attn.concat)});  · W_O ({d}×{d}) + b → "
            f"the attention output ({shape(attn.out)})",
            vector_table(q_pieces, attn.out, view.values),
        ]),
    ]


def _add_norm_section(add_norm: AddNormTrace, pieces: list[str], sublayer: str, where: str, view: View) -> Section:
    if add_norm.pre_norm:
        formula = f"y = x + {sublayer}(LayerNorm(x))"
        words = "pre-norm: the LayerNorm normalises what the sub-layer reads; the residual path x is left as is"
    else:
        formula = f"y = LayerNorm(x + {sublayer}(x))"
        words = "post-norm, as in the note: add the sub-layer's change to its input, then normalise each row"
    return Section("encoder", f"Note §4 · residual + LayerNorm: {formula}  ({where})", [
        f"{words}. before/after = the LayerNorm's input/output (after: × γ + β, learned); then y's first numbers",
        stats_table(pieces, add_norm, view.values),
    ])


def _encoder_layer_sections(trace: Trace, layer: EncoderLayerTrace, view: View) -> list[Section]:
    c, pieces = trace.config, trace.encoder.embedding.pieces
    where = f"encoder layer {layer.index + 1} of {c.n_encoder_layers}"
    sections = _attention_sections(layer.self_attn, where, view)
    if c.norm == "pre":
        sections[0].blocks.insert(0, "X here is LayerNorm(x), the layer's input normalised (pre-norm)")
    sections.append(_add_norm_section(layer.self_attn_norm, pieces, "Attention", where, view))

    ffn, name = layer.ffn, ACTIVATIONS[layer.ffn.activation]
    act = (f"ReLU = max(0, ·) sets {int((ffn.activated == 0).sum())} of the {ffn.activated.numel()} values to 0"
           if ffn.activation == "relu" else {"gelu": "GELU(u) = u·Φ(u), a smooth ReLU",
                                             "swish": "Swish(u) = u·σ(u), a smooth ReLU"}[ffn.activation])
    sections.append(Section("encoder", f"Note §5 · FFN: up-project → {name} → down-project  ({where})", [
        f"W_1 (升维): ({shape(ffn.x)})·({c.d_model}×{c.d_ff}) + b_1 → ({shape(ffn.up)});  {act};  "
        f"W_2 (降维): ({shape(ffn.activated)})·({c.d_ff}×{c.d_model}) + b_2 → ({shape(ffn.out)})",
        f"after {name} ({shape(ffn.activated)})", vector_table(pieces, ffn.activated, view.values),
        f"FFN output ({shape(ffn.out)})", vector_table(pieces, ffn.out, view.values),
    ]))

    section = _add_norm_section(layer.ffn_norm, pieces, "FFN", where, view)
    if layer.index + 1 < c.n_encoder_layers:
        section.blocks.append(f"Note §6 · this ({shape(layer.out)}) is the input of encoder layer {layer.index + 2}")
    else:
        final = " after one final LayerNorm (pre-norm)" if c.norm == "pre" else ""
        section.blocks.append(f"Note §6 · the last layer: this is H_enc ({shape(trace.encoder.memory)}){final}, "
                              "the encoder output; every decoder cross-attention takes its K and V from it")
    sections.append(section)
    return sections


def _decoder_sections(trace: Trace, view: View) -> list[Section]:
    shown = list(range(trace.config.n_decoder_layers)) if view.layer is None else [view.layer - 1]
    memory = shape(trace.encoder.memory)
    intro = Section("decoder", "Note §7 · the decoder: one token at a time", [
        f"H_enc ({memory}) is the source's memory: every decoder layer's cross-attention takes "
        "K = H_enc·W_K and V = H_enc·W_V from it, and Q from the decoder",
        "start from <s>; at each step the decoder reads <s> + the tokens chosen so far and its newest position "
        f"predicts the next token; stop at </s> (forced at the length limit, step {trace.max_len})",
        "choice: greedy, the most probable token (`zhen translate` uses the model's beam search, "
        "so its output can differ)",
    ])
    steps = [_decoder_step_section(trace, step, view, shown) for step in trace.steps]
    return [intro, *steps, *_whole_output_sections(trace, view, shown[-1])]


def _decoder_step_section(trace: Trace, step: DecoderStep, view: View, shown: list[int]) -> Section:
    """Note §7–§8 at one step: the newest token's attention rows in the shown layers, then the logits' top."""
    c, h, memory = trace.config, view.head - 1, shape(trace.encoder.memory)
    names = [f"layer {i + 1}" for i in shown]
    layers, pieces = step.decoder.layers, step.decoder.embedding.pieces
    self_rows = torch.cat([layers[i].self_attn.weights[h, -1:] for i in shown])  # (layers, T)
    cross_rows = torch.cat([layers[i].cross_attn.weights[h, -1:] for i in shown])  # (layers, S)
    top = Table(["rank", "piece", "id", "logit", "p"], [
        [str(r + 1), label(t.piece), str(t.id), number(t.logit), f"{t.prob:.3f}"] for r, t in enumerate(step.top)
    ])
    chosen = f"chosen: {step.chosen_piece} (id {step.chosen})"
    if step.rule:
        chosen += f", not the most probable token: {step.rule}"
    return Section("decoder", f"Note §7–§8 · step {step.step}: input {pieces[-1]} → next token", [
        f"decoder input: {' '.join(pieces)}  (T = {len(pieces)}; position {len(pieces) - 1} is the newest)",
        f"masked self-attention, head {view.head}: the newest token's weights over the tokens so far "
        "(later positions do not exist yet; in the full matrix below they get weight 0)",
        weight_table(names, pieces, self_rows, first="layer \\ key"),
        f"cross-attention, head {view.head}: Q from the decoder (1×{c.d_model}), K and V from H_enc ({memory}); "
        "the weights over the source pieces",
        weight_table(names, trace.source_pieces, cross_rows, first="layer \\ key", strongest=True),
        f"Note §8 · logits = h·W_outᵀ: (1×{c.d_model})·({c.d_model}×{c.tgt_vocab_size}) → {c.tgt_vocab_size} "
        f"scores → softmax → the top {len(step.top)}",
        top,
        chosen,
    ])


def _whole_output_sections(trace: Trace, view: View, index: int) -> list[Section]:
    """Note §7 and §4–§5 over the finished output, in decoder layer `index` (0-based)."""
    c, h = trace.config, view.head - 1
    final, where = trace.final.layers[index], f"decoder layer {index + 1} of {c.n_decoder_layers}"
    pieces = final.self_attn.query_pieces
    arrows = [f"{p} → {s.chosen_piece}" for p, s in zip(pieces, trace.steps, strict=True)]
    newest = [("masked self-attention", final.self_attn_norm), ("cross-attention", final.cross_attn_norm),
              ("FFN", final.ffn_norm)]
    stats = []
    for name, add_norm in newest:
        before, after = row_stats(add_norm.norm_input[-1:]), row_stats(add_norm.norm_output[-1:])
        stats.append([name, before[0][0], before[1][0], after[0][0], after[1][0]])
    return [
        Section("decoder", f"Note §7 · masked self-attention of the whole output  (head {view.head} of {c.n_heads}, "
                           f"{where})", [
            f"all T = {len(pieces)} positions at once, as in training: position i sees positions ≤ i. Cells printed 0 "
            "are masked: score -inf → weight exactly 0, the zeros above the diagonal",
            weight_table(pieces, pieces, final.self_attn.weights[h]),
        ]),
        Section("decoder", f"Note §7 · cross-attention of the whole output  (head average, {where})", [
            "which source pieces each target piece reads: rows = decoder input → the piece it predicted, "
            "columns = source pieces",
            weight_table(arrows, trace.source_pieces, final.cross_attn.weights.mean(0), first="input → output",
                         strongest=True),
        ]),
        Section("decoder", f"Note §4–§5 · residual + LayerNorm and FFN at the newest position  ({where})", [
            f"each of the three sub-layers has its residual + LayerNorm ({_norm_words(trace)}); "
            "before/after = the LayerNorm's input/output at the newest position (after: × γ + β, learned)",
            Table(["sub-layer", "mean before", "std before", "mean after", "std after"], stats),
            f"FFN: ({c.d_model}) → W_1 → ({c.d_ff}) → {ACTIVATIONS[c.activation]} → W_2 → ({c.d_model}), "
            "each position on its own",
        ]),
    ]


def _output_section(trace: Trace) -> Section:
    return Section("output", "Note §8 · the translation", [
        f"generated   {'  '.join(s.chosen_piece for s in trace.steps)}",
        f"ids         {'  '.join(str(s.chosen) for s in trace.steps)}",
        f"{trace.text}  →  {trace.translation or '(empty)'}",
    ])


# ----------------------------------------------------------------------------- text


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return cell == "…"
    return True


def table_lines(table: Table) -> list[str]:
    """The table as aligned lines: labels left, numbers right, a rule under the header."""
    grid = [table.header, *table.rows]
    widths = [max(display_width(row[j]) for row in grid) for j in range(len(table.header))]
    left = [j == 0 or not all(_is_number(row[j]) for row in table.rows) for j in range(len(widths))]

    def line(cells: list[str]) -> str:
        padded = [cell + " " * (widths[j] - display_width(cell)) if left[j]
                  else " " * (widths[j] - display_width(cell)) + cell for j, cell in enumerate(cells)]
        return "  ".join(padded).rstrip()

    return [line(table.header), "  ".join("─" * w for w in widths), *(line(row) for row in table.rows)]


def render_text(sections: list[Section]) -> str:
    out: list[str] = []
    for section in sections:
        out += ["", section.title, "═" * min(display_width(section.title), TEXT_WIDTH)]
        for block in section.blocks:
            if isinstance(block, Table):
                out += ["  " + line for line in table_lines(block)]
            else:
                out += textwrap.wrap(block, TEXT_WIDTH, subsequent_indent="    ", break_on_hyphens=False)
    return "\n".join(out[1:])


# ----------------------------------------------------------------------------- HTML

_CSS = """
body { font-family: "Noto Sans CJK SC", "PingFang SC", "Microsoft YaHei", system-ui, sans-serif;
       max-width: 76rem; margin: 2rem auto; padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.25rem; margin-top: 2.5rem; border-bottom: 2px solid #ccc; }
h3 { font-size: 1rem; margin: 1.6rem 0 .3rem; }
table { border-collapse: collapse; margin: .3rem 0 .8rem; font-variant-numeric: tabular-nums; font-size: .85rem; }
th, td { padding: .15rem .5rem; text-align: right; border-bottom: 1px solid #eee; white-space: nowrap; }
th { background: #f4f4f4; } th:first-child, td:first-child { text-align: left; }
p { margin: .25rem 0; white-space: pre-wrap; }
figure { margin: 1rem 0; } img { max-width: 100%; border: 1px solid #eee; }
nav a { margin-right: 1rem; }
"""
_PARTS = {"model": "Source: tokens and embeddings", "encoder": "Encoder", "decoder": "Decoder", "output": "Translation"}


def _html_cell(cell: str, shade: bool) -> str:
    """A table cell; attention weights get a blue background as strong as the weight."""
    value = float(cell) if shade and _is_number(cell) and cell != "…" else -1.0
    if not 0.0 <= value <= 1.0:
        return f"<td>{html.escape(cell)}</td>"
    color = "#fff" if value > 0.6 else "#222"
    return f'<td style="background: rgba(31, 119, 180, {0.85 * value:.2f}); color: {color}">{html.escape(cell)}</td>'


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    shaded = [table.shade and h not in ("Σ", "strongest") for h in table.header]
    rows = ["<tr><td>" + html.escape(row[0]) + "</td>"
            + "".join(_html_cell(c, shaded[j]) for j, c in enumerate(row) if j > 0) + "</tr>" for row in table.rows]
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def render_html(trace: Trace, sections: list[Section], pictures: dict[str, list[Path]] | None = None) -> str:
    """One self-contained page: the sections grouped by part, each part followed by its pictures (base64 PNG)."""
    pictures = pictures or {}
    title = f"zhen explain · {trace.text} → {trace.translation}"
    body = [f"<h1>{html.escape(title)}</h1>",
            "<p>The learning note's walk through a Transformer, executed on a real model with the model's own "
            "numbers, in the order of the note (§1–§9).</p>",
            "<nav>" + "".join(f'<a href="#{part}">{html.escape(name)}</a>' for part, name in _PARTS.items()) + "</nav>"]
    for part, name in _PARTS.items():
        body.append(f'<h2 id="{part}">{html.escape(name)}</h2>')
        for section in (s for s in sections if s.part == part):
            body.append(f"<section><h3>{html.escape(section.title)}</h3>")
            body += [_html_table(b) if isinstance(b, Table) else f"<p>{html.escape(b)}</p>" for b in section.blocks]
            body.append("</section>")
        for path in pictures.get(part, []):
            body.append(f'<figure><img alt="{html.escape(Path(path).stem)}" src="{_png_data_uri(path)}">'
                        f"<figcaption>{html.escape(Path(path).name)}</figcaption></figure>")
    return ('<!doctype html>\n<html lang="en">\n<head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")
