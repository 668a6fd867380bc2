"""Configs: every shipped file loads; unknown keys and bad values are clear errors."""

from pathlib import Path

import pytest

from zhen.config import Config, ConfigError, CorpusConfig, load_config

CONFIGS = sorted(Path("configs").glob("*.toml"))


def test_all_shipped_configs_load():
    assert {p.stem for p in CONFIGS} >= {"tiny", "small", "base", "big"}
    for path in CONFIGS:
        assert isinstance(load_config(path), Config)


def test_paper_sizes():
    base, big = load_config("configs/base.toml").model, load_config("configs/big.toml").model
    assert (base.d_model, base.n_heads, base.d_ff, base.n_encoder_layers, base.n_decoder_layers) == (512, 8, 2048, 6, 6)
    assert (big.d_model, big.n_heads, big.d_ff, big.n_encoder_layers, big.n_decoder_layers) == (1024, 16, 4096, 6, 6)
    assert base.d_head == 64


def write(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[model]\nd_modle = 8\n", r"unknown key\(s\) model\.d_modle"),
        ("[modle]\n", r"unknown key\(s\) modle"),
        ("[model]\nd_model = 'big'\n", r"model\.d_model must be an integer"),
        ("[model]\nd_model = 30\nn_heads = 4\n", "divisible"),
        ("[model]\nnorm = 'middle'\n", "model.norm must be one of post, pre"),
        ("[model]\ndropout = 1.5\n", r"model\.dropout must be in \[0, 1\)"),
        ("[train]\nbetas = [0.9]\n", "train.betas must have 2 values"),
        ("[decode]\nbeam = 0\n", "decode.beam must be at least 1"),
        ("[train]\nmax_minutes = -1\n", "train.max_minutes must be non-negative"),
        ("[data]\ntrain = [{ path = 'x', colour = 1 }]\n", r"data\.train\[0\]\.colour"),
        ("[data]\ntrain = [{ format = 'tsv' }]\n", "needs a path"),
        ("[model\n", "not a valid config file"),
    ],
)
def test_bad_configs_are_clear_errors(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("no/such.toml")


def test_overrides_are_toml_values():
    config = load_config("configs/tiny.toml", ["train.lr=0.5", "model.norm=pre", "train.betas=[0.8, 0.9]"])
    assert config.train.lr == 0.5 and config.model.norm == "pre" and config.train.betas == (0.8, 0.9)
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        load_config("configs/tiny.toml", ["train.lr"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_config("configs/tiny.toml", ["train.learning_rate=1"])


def test_int_accepted_where_float_expected_and_corpora_are_dataclasses(tmp_path):
    config = load_config(write(tmp_path, "[train]\nlr = 1\n[data]\ntrain = [{ path = 'hsk' }]\n"))
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)
    assert config.data.train == (CorpusConfig(path="hsk"),)


def test_json_round_trip(tmp_path):
    config = load_config("configs/small.toml")
    path = tmp_path / "config.json"
    path.write_text(config.to_json(), encoding="utf-8")
    assert load_config(path) == config
