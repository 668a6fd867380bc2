"""zhen: Chinese→English translation with the Transformer of the note.

    from zhen import Translator
    Translator.load().translate(["我爱你"])
"""

__version__ = "0.1.0"
