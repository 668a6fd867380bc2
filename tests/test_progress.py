"""Progress of the long steps of a run (building the token cache, training, validation): a bar on standard
error when it is a terminal, with sentences/s and the time left; nothing when it is not (a log file, a
pipe); never anything extra on standard output."""

import io
import re
import sys

import pytest
from train_runs import PreparedRuns, tiny_config

from zhen.data import load_or_build
from zhen.text import Normalizer
from zhen.tokenizer import Tokenizer
from zhen.train import train

RATE = r"(sent/s|s/sent)"


class Terminal(io.StringIO):
    """What a bar is drawn on: standard error of a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return PreparedRuns(tmp_path_factory.mktemp("prepared"))


def build_cache(runs: PreparedRuns, cache_dir) -> None:
    config = tiny_config()
    tokenizer = Tokenizer.load(runs.root / "tokenizer")
    load_or_build(config.data.train, Normalizer(config.text), tokenizer, config.data, cache_dir, log=lambda _: None)


def test_building_the_token_cache_shows_a_bar_on_a_terminal_only(runs, tmp_path, monkeypatch, capsys):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    build_cache(runs, tmp_path / "a")
    assert re.search(rf"token cache.* (\d+)/\1 \[\d\d:\d\d<00:00, +[\d.]+{RATE}\]", terminal.getvalue())
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file or a pipe
    build_cache(runs, tmp_path / "b")
    assert sys.stderr.getvalue() == ""


VALIDATED = ("train.max_steps=2", "train.valid_every=2", "data.dev=[{path='hsk'}]", "data.dev_max_sentences=10")


def test_training_and_validation_show_bars_on_a_terminal_and_nothing_on_standard_output(
        runs, tmp_path, monkeypatch, capsys):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    train(runs.config(*VALIDATED), runs.new_out(tmp_path / "run"))
    shown = terminal.getvalue()
    assert re.search(rf"validate.* 10/10 \[\d\d:\d\d<00:00, +[\d.]+{RATE}\]", shown)
    assert re.search(r"train.* 2/2 \[", shown)
    printed = capsys.readouterr().out
    assert "step 2: dev loss" in printed
    assert "\r" not in printed and "|" not in printed


def test_no_bars_when_standard_error_is_not_a_terminal(runs, tmp_path, capsys):
    train(runs.config(*VALIDATED), runs.new_out(tmp_path / "run"))
    assert capsys.readouterr().err == ""
