"""zhen: Chinese→English translation with the Transformer of the note.

    from zhen import Translator
    Translator.load().translate(["我爱你"])
"""

__version__ = "0.1.0"
__all__ = ["Translator", "__version__"]


def __getattr__(name: str):
    # Imported on first use, so `zhen --help` and `import zhen.config` stay quick.
    if name == "Translator":
        from zhen.translator import Translator

        return Translator
    raise AttributeError(f"module 'zhen' has no attribute {name!r}")
