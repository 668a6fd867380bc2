// zhen's page: translate as you type (POST /translate, LibreTranslate's API) and explain one sentence
// (POST /api/explain): tokens, attention heatmaps per layer and head, and the next-token choices.
// Plain browser JavaScript, no libraries, no build step, nothing fetched from elsewhere.
"use strict";

(() => {
  const DEBOUNCE_MS = 300;
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);
  const state = { settings: null, pending: null, timer: 0, shown: null, explained: null };

  // ------------------------------------------------------------------ talking to the server

  async function post(path, fields, signal) {
    const key = $("api-key").value.trim();
    const body = key ? { ...fields, api_key: key } : fields;
    const response = await fetch(path, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal,
    });
    const data = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
    if (!response.ok) throw new Error(data.error || `${response.status} ${response.statusText}`);
    return data;
  }

  async function loadSettings() {
    try {
      const response = await fetch("/frontend/settings");
      state.settings = await response.json();
    } catch (error) {
      state.settings = { charLimit: 5000, keyRequired: false, zhen: { maxAlternatives: 0, beam: 1 } };
    }
    $("key-row").hidden = !state.settings.keyRequired;
    const zhen = state.settings.zhen || {};
    $("model-name").textContent = zhen.model ? `model: ${zhen.model}, beam ${zhen.beam}` : "";
    updateCount();
  }

  // ------------------------------------------------------------------ translating

  function alternativesWanted() {
    // As many as the beam already finds: asking for more would make the search itself wider and slower.
    const zhen = state.settings.zhen || {};
    return Math.max(0, Math.min(zhen.maxAlternatives || 0, (zhen.beam || 1) - 1));
  }

  async function translateNow() {
    clearTimeout(state.timer);
    const text = $("source").value;
    if (!text.trim()) {
      showTranslation(null);
      return;
    }
    if (state.shown === text) return;
    if (state.pending) state.pending.abort(); // only the newest text matters
    const controller = new AbortController();
    state.pending = controller;
    setStatus("Translating…");
    try {
      const fields = { q: text, source: "zh", target: "en", format: "text", alternatives: alternativesWanted(),
                       scores: true };
      const data = await post("/translate", fields, controller.signal);
      if (state.pending !== controller) return;
      state.shown = text;
      showTranslation(data);
      setStatus("");
    } catch (error) {
      if (error.name !== "AbortError") setStatus(error.message, true);
    }
  }

  function showTranslation(data) {
    $("target").textContent = data ? data.translatedText : "";
    const list = $("alternatives");
    list.replaceChildren();
    if (!data) {
      $("alternatives-box").hidden = true;
      state.shown = null;
      return;
    }
    const texts = [data.translatedText, ...(data.alternatives || [])];
    texts.forEach((text, i) => {
      const item = document.createElement("li");
      const score = data.scores && data.scores[i] !== undefined ? data.scores[i].toFixed(3) : "";
      item.append(element("span", "alt-text", text), element("span", "alt-score", score));
      list.append(item);
    });
    $("alternatives-box").hidden = false;
  }

  function setStatus(message, isError = false) {
    $("status").textContent = message;
    $("status").classList.toggle("error", isError);
  }

  function updateCount() {
    const limit = state.settings ? state.settings.charLimit : 0;
    $("count").textContent = limit > 0 ? `${$("source").value.length} / ${limit} characters.` : "";
  }

  function onInput() {
    updateCount();
    clearTimeout(state.timer);
    state.timer = setTimeout(translateNow, DEBOUNCE_MS);
  }

  function onKey(event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault(); // Enter translates; Shift+Enter is a new line; Enter that ends IME input is the IME's
      translateNow();
      if (!$("explain").hidden) explainNow();
    }
  }

  // ------------------------------------------------------------------ explaining

  async function explainNow() {
    const text = $("source").value.trim() || $("source").placeholder;
    const button = $("explain-button");
    button.disabled = true;
    setStatus("Explaining…");
    try {
      const trace = await post("/api/explain", { q: text });
      state.explained = text;
      showTrace(trace);
      setStatus("");
      $("explain").hidden = false;
    } catch (error) {
      setStatus(error.message, true);
    } finally {
      button.disabled = false;
    }
  }

  function showTrace(trace) {
    $("explain-text").textContent = trace.text;
    const m = trace.model;
    $("explain-summary").textContent =
      `D = ${m.d_model}, ${m.n_heads} heads of d_k = ${m.d_head}, ${m.n_encoder_layers} encoder and ` +
      `${m.n_decoder_layers} decoder layers, FFN ${m.d_ff} (${m.activation}), ${m.norm}-norm. ` +
      `The walk below decodes greedily (the most probable token each step) and writes “${trace.translation}”; ` +
      "the translation above comes from beam search and can differ.";
    showTokens($("source-tokens"), trace.source);
    showTokens($("target-tokens"), trace.target);
    for (const attention of trace.attention) showAttention($(`attention-${attention.name}`), attention);
    showSteps($("next-steps"), trace.steps, trace.target.pieces);
  }

  function showTokens(box, tokens) {
    box.replaceChildren(...tokens.pieces.map((piece, i) => {
      const chip = element("span", "token");
      chip.append(element("span", "piece", piece), element("span", "id", String(tokens.ids[i])));
      return chip;
    }));
  }

  // ------------------------------------------------------------------ attention heatmaps

  function showAttention(box, attention) {
    const layers = attention.layers.length;
    const picker = element("div", "layer-picker");
    picker.setAttribute("role", "group");
    picker.setAttribute("aria-label", `${attention.kind}: layer`);
    const maps = element("div", "maps");
    const choose = (layer) => {
      picker.querySelectorAll("button").forEach((b, i) => b.setAttribute("aria-pressed", String(i === layer)));
      maps.replaceChildren(...attention.layers[layer].map((weights, head) =>
        heatmapFigure(attention, weights, layer, head)));
    };
    for (let layer = 0; layer < layers; layer++) {
      const button = element("button", "", `Layer ${layer + 1}`);
      button.type = "button";
      button.addEventListener("click", () => choose(layer));
      picker.append(button);
    }
    box.replaceChildren(picker, maps);
    choose(0); // layer 1 first, where the note starts
  }

  function heatmapFigure(attention, weights, layer, head) {
    const figure = element("figure", "heatmap");
    figure.dataset.layer = String(layer + 1);
    figure.dataset.head = String(head + 1);
    const readout = element("p", "readout", "Hover, tap or use the arrow keys for a weight.");
    readout.setAttribute("aria-live", "polite");
    const svg = heatmapSvg(attention, weights, readout);
    svg.setAttribute("aria-label", `${attention.kind}, layer ${layer + 1}, head ${head + 1}`);
    figure.append(element("figcaption", "", `Layer ${layer + 1} · head ${head + 1}`), svg, readout);
    return figure;
  }

  function textWidth(text, size) {
    let width = 0;
    for (const ch of text) width += ch.codePointAt(0) > 0x2e80 ? size : size * 0.62;
    return width;
  }

  function heatmapSvg(attention, weights, readout) {
    const { queries, keys, allowed } = attention;
    const font = 12;
    const cell = Math.max(16, Math.min(34, Math.floor(360 / Math.max(queries.length, keys.length))));
    const left = Math.ceil(Math.max(...queries.map((q) => textWidth(q, font)))) + 8;
    const top = Math.ceil(Math.max(...keys.map((k) => textWidth(k, font))) * 0.75) + 12;
    const width = left + keys.length * cell + 4, height = top + queries.length * cell + 4;
    const svg = svgElement("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img", tabindex: 0 });
    queries.forEach((q, i) => svg.append(svgText(q, left - 6, top + i * cell + cell / 2, "query", "end")));
    keys.forEach((k, j) => {
      const label = svgText(k, 0, 0, "key", "start");
      label.setAttribute("transform", `translate(${left + j * cell + cell / 2 + 3},${top - 6}) rotate(-50)`);
      svg.append(label);
    });
    const cells = [];
    queries.forEach((q, i) => keys.forEach((k, j) => {
      const masked = !allowed[i][j];
      const w = weights[i][j];
      const rect = svgElement("rect", { x: left + j * cell, y: top + i * cell, width: cell - 1, height: cell - 1,
                                        fill: masked ? "#d9d9d9" : color(w), class: masked ? "cell masked" : "cell" });
      rect.dataset.weight = String(w);
      rect.addEventListener("pointerenter", () => select(i, j));
      svg.append(rect);
      cells.push(rect);
      if (queries.length <= 10 && keys.length <= 10 && !masked) {
        const value = svgText(w.toFixed(2), left + j * cell + cell / 2, top + i * cell + cell / 2, "value", "middle");
        value.setAttribute("fill", w > 0.55 ? "#fff" : "#1b1b1b");
        svg.append(value);
      }
    }));
    let active = [0, 0];
    const select = (i, j) => {
      active = [i, j];
      cells.forEach((c) => c.classList.remove("active"));
      cells[i * keys.length + j].classList.add("active");
      readout.textContent = allowed[i][j]
        ? `row “${queries[i]}” → column “${keys[j]}”: ${weights[i][j].toFixed(4)}`
        : `row “${queries[i]}” → column “${keys[j]}”: masked (the future), 0`;
    };
    svg.addEventListener("keydown", (event) => moveWithKeys(event, active, queries.length, keys.length, select));
    svg.addEventListener("focus", () => select(...active));
    return svg;
  }

  function moveWithKeys(event, [i, j], rows, cols, select) {
    const moves = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
    const move = moves[event.key];
    if (!move) return;
    event.preventDefault();
    select(Math.min(rows - 1, Math.max(0, i + move[0])), Math.min(cols - 1, Math.max(0, j + move[1])));
  }

  function color(weight) {
    // One hue, lightness from paper white (weight 0) to deep blue (weight 1): readable in print and for
    // most colour-vision deficiencies.
    const lightness = 97 - 67 * Math.sqrt(Math.max(0, Math.min(1, weight)));
    return `hsl(214, 72%, ${lightness.toFixed(1)}%)`;
  }

  // ------------------------------------------------------------------ next-token choices

  function showSteps(box, steps, pieces) {
    box.replaceChildren(...steps.map((step) => {
      const row = element("div", "step");
      const read = pieces.slice(0, step.step).join(" ");
      row.append(element("p", "step-title", `Step ${step.step}: reads ${read} → writes ${step.chosen.piece}`));
      const bars = element("ol", "choices");
      for (const choice of step.top) {
        const item = element("li", choice.id === step.chosen.id ? "choice chosen" : "choice");
        const bar = element("span", "bar");
        bar.style.width = `${(100 * choice.prob).toFixed(1)}%`;
        item.append(element("span", "choice-piece", choice.piece), element("span", "bar-track"),
                    element("span", "choice-prob", `${(100 * choice.prob).toFixed(1)}%`));
        item.querySelector(".bar-track").append(bar);
        bars.append(item);
      }
      row.append(bars);
      if (step.rule) row.append(element("p", "hint", `Rule: ${step.rule}.`));
      return row;
    }));
  }

  // ------------------------------------------------------------------ small helpers

  function element(tag, className = "", text = "") {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text) node.textContent = text;
    return node;
  }

  function svgElement(tag, attributes) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
    return node;
  }

  function svgText(text, x, y, className, anchor) {
    const node = svgElement("text", { x, y, class: className, "text-anchor": anchor, "dominant-baseline": "central" });
    node.textContent = text;
    return node;
  }

  document.addEventListener("DOMContentLoaded", () => {
    const source = $("source");
    source.addEventListener("input", onInput);
    source.addEventListener("keydown", onKey);
    $("explain-button").addEventListener("click", explainNow);
    loadSettings();
    source.focus();
  });
})();
