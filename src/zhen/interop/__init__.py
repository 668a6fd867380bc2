"""zhen models in other engines' formats, and back, with parity checks.

    marian.py         zhen ⇄ Hugging Face `MarianMTModel`: configs and tensors (layouts, vocabularies, refusals)
    marian_export.py  zhen → a Marian directory (model, generation config, MarianTokenizer files)
    marian_import.py  a Marian checkpoint on disk → a zhen model directory
    spm_vocab.py      SentencePiece models renumbered so that piece ids are a model's token ids (import)
    ct2.py            zhen → CTranslate2, through CTranslate2's own Transformers loader, optionally quantized
    parity.py         the same sentences through zhen and another engine, tokens compared
    command.py        `zhen export --format …` and `zhen import-marian` (the CLI's side)

The engines' packages are optional (`pip install 'zhen[hf]'`, `'zhen[ct2]'`): `require` imports one or
says which extra to install, as a one-line `zhen: error: …` in the CLI.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from zhen.errors import ZhenError

FORMATS = ("zhen", "ctranslate2", "marian")  # what `zhen export --format` writes
QUANTIZATIONS = ("float32", "int8", "int8_float32", "int8_bfloat16", "bfloat16")  # CTranslate2's weight types


class InteropError(ZhenError, ValueError):
    """A model that the other format cannot represent (or zhen cannot), or a failed parity check."""


class MissingExtra(ZhenError, ImportError):
    """An optional dependency that is not installed."""


def require(module: str, purpose: str, extra: str) -> ModuleType:
    """Import `module` or raise MissingExtra: `purpose` needs it, `pip install 'zhen[extra]'` installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package = {"google.protobuf": "protobuf"}.get(module, module)
        raise MissingExtra(f"{purpose} needs the optional package {package}: pip install 'zhen[{extra}]'") from None
