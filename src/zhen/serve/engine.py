"""What the server asks of a `zhen.translator.Translator`: n-best translations, token counts, explain traces.

Every method runs on the batcher's one worker thread, never on the event loop. The server reaches the model
only through the translator and `zhen.explain`, never the network's modules directly.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch

from zhen.explain import explain_sentence
from zhen.serve.trace_json import trace_to_json

log = logging.getLogger("zhen.serve")


class Engine:
    def __init__(self, translator: Any, threads: int | None = None) -> None:
        self.translator = translator
        self.threads = threads  # the model's CPU threads, set on the worker thread (see `on_worker_start`)
        self._cpu_model: torch.nn.Module | None = None

    def on_worker_start(self) -> None:
        """Give the worker thread its CPU threads. OpenMP keeps the thread count, and a team of threads, per
        calling thread: a worker that inherits them from a main thread which already ran parallel work gets a
        second team on the same cores, whose threads then sleep between operators instead of spinning
        (measured: small element-wise ops 11x slower, batches of 32 sentences no faster with 2 threads than
        with 1). So `zhen serve` keeps its main thread at one thread and the worker takes them all."""
        if self.threads:
            torch.set_num_threads(self.threads)

    @property
    def beam(self) -> int:
        return self.translator.config.decode.beam

    def translate_nbest(self, lines: list[str], nbest: int) -> list[list[Any]]:
        """Each line's `nbest` best `Translation`s, best first."""
        return self.translator.translate_nbest(lines, nbest)  # its warnings reach the log (see command.run)

    def cost(self, line: str) -> int:
        """Source tokens of a line, as the translator will see it (after the model's normalisation)."""
        text = self.translator.normalizer.zh(line)
        return len(self.translator.tokenizer.encode_src([text])[0]) if text else 0

    def explain(self, text: str) -> dict[str, Any]:
        """The explain trace of one sentence (greedy decoding, fp32) as JSON for the page."""
        trace = explain_sentence(self._explain_model(), self.translator.tokenizer, text,
                                 normalize=self.translator.normalizer.zh, decode=self.translator.config.decode)
        return trace_to_json(trace)

    def _explain_model(self) -> torch.nn.Module:
        """The model on the CPU: the trace builds its tensors there. A model on another device is copied once."""
        model = self.translator.model
        if next(model.parameters()).device.type == "cpu":
            return model
        if self._cpu_model is None:
            self._cpu_model = copy.deepcopy(model).float().cpu().eval()
        return self._cpu_model
