"""Where a config's corpus paths point: a config file's relative paths are relative to the file's folder,
`--set` paths to the current directory, built-in names stay names, and the shipped configs find their data."""

import json
from pathlib import Path

import pytest

from zhen.config import load_config
from zhen.data import resolve

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """
[data]
train = [
  { path = "../corpora/train.tsv" },
  { path = "hsk" },
  { path = "/abs/olute.tsv" },
  { path = "sub/pair", format = "pair" },
]
dev = [{ path = "dev.tsv" }]
"""


@pytest.fixture
def config_file(tmp_path, monkeypatch):
    folder = tmp_path / "experiments"
    folder.mkdir()
    (folder / "run.toml").write_text(CONFIG, encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return folder / "run.toml"


def test_relative_corpus_paths_in_a_config_file_are_relative_to_its_folder(config_file, tmp_path):
    data = load_config(Path("../experiments/run.toml")).data
    assert [c.path for c in data.train] == [str(tmp_path / "corpora" / "train.tsv"), "hsk", "/abs/olute.tsv",
                                           str(tmp_path / "experiments" / "sub" / "pair")]
    assert [c.path for c in data.dev] == [str(tmp_path / "experiments" / "dev.tsv")]


def test_corpus_paths_given_with_set_are_relative_to_the_current_directory(config_file, tmp_path):
    data = load_config(config_file, ["data.dev=[{path='mine.tsv'}, {path='hsk'}]"]).data
    assert [c.path for c in data.dev] == [str(tmp_path / "elsewhere" / "mine.tsv"), "hsk"]
    assert data.train[0].path == str(tmp_path / "corpora" / "train.tsv")  # the file's own paths are unchanged


def test_a_model_directory_config_keeps_its_recorded_paths(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"data": {"train": [{"path": "../shared/data/3am/train"}]}}), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert load_config(path).data.train[0].path == "../shared/data/3am/train"


@pytest.mark.skipif(not (ROOT.parent / "shared" / "data" / "tatoeba").is_dir(), reason="needs ../shared/data")
@pytest.mark.parametrize("name", ["small", "base", "big", "full"])
def test_shipped_configs_find_their_corpora_from_any_directory(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = load_config(ROOT / "configs" / f"{name}.toml").data
    for corpus in (*data.train, *data.dev):
        assert all(path.is_file() for path in resolve(corpus).files), corpus.path
