"""Short training runs for the tests: configs/tiny.toml on the built-in hsk corpus, with the SentencePiece
models trained once and the token cache built once, then copied into (or shared by) every new run, so a
run of a few steps takes a second or two instead of retraining the tokenizer."""

import shutil
from pathlib import Path

from zhen.config import Config, load_config
from zhen.data import load_pairs
from zhen.text import Normalizer
from zhen.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.toml"
QUIET = ("data.dev=[]", "train.log_every=1000")


def tiny_config(*overrides: str) -> Config:
    return load_config(TINY, [*QUIET, *overrides])


class PreparedRuns:
    """A tokenizer and a token cache under `root`, for runs of the tiny config."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        config = tiny_config()
        pairs, _ = load_pairs(config.data.train, Normalizer(config.text), clean=True, data_config=config.data)
        Tokenizer.train(pairs, config.tokenizer, self.root / "tokenizer")

    @property
    def overrides(self) -> tuple[str, ...]:
        """What `--set` needs for a run to share the prepared token cache."""
        return (*QUIET, f"data.cache_dir='{self.root / 'cache'}'")

    def config(self, *overrides: str) -> Config:
        return load_config(TINY, [*self.overrides, *overrides])

    def new_out(self, out: Path) -> Path:
        """A run directory that already holds the prepared tokenizer (so the run does not train one)."""
        shutil.copytree(self.root / "tokenizer", Path(out) / "tokenizer")
        return Path(out)
