"""Fixtures shared by several test files."""

from pathlib import Path

import pytest
import torch

from zhen.checkpoint import save_model_dir
from zhen.config import Config, CorpusConfig, DecodeConfig, ModelConfig, TextConfig, TokenizerConfig
from zhen.data import load_pairs
from zhen.model import Transformer
from zhen.text import Normalizer
from zhen.tokenizer import Tokenizer


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny model directory with a real tokenizer (trained on the built-in hsk corpus)."""
    root = tmp_path_factory.mktemp("tiny-model")
    text = TextConfig(max_chars=200)
    pairs, _ = load_pairs([CorpusConfig(path="hsk")], Normalizer(text), clean=True, data_config=None)
    tokenizer = Tokenizer.train(pairs, TokenizerConfig(vocab_size=400), root / "tok")
    model_config = ModelConfig(src_vocab_size=tokenizer.src_vocab_size, tgt_vocab_size=tokenizer.tgt_vocab_size,
                               d_model=32, n_heads=4, d_ff=64, n_encoder_layers=2, n_decoder_layers=2,
                               dropout=0.0, max_positions=256, tie_output=False)
    torch.manual_seed(0)
    model = Transformer(model_config)
    with torch.no_grad():  # a sharper output layer, so the random model says varied things
        model.output.weight.mul_(8)
    config = Config(model=model_config, text=text, decode=DecodeConfig(beam=3, max_len_a=1.0, max_len_b=5))
    return save_model_dir(root / "model", model, config, tokenizer)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from a second thread, and on a shared, busy machine two OpenMP threads that
    wait for each other made some tests up to 7× slower (35 s against 5 s for one test)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
