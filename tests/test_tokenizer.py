"""zhen.tokenizer: SentencePiece training, special ids, encode/decode, saving and loading."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zhen.cli import main
from zhen.config import CorpusConfig, TextConfig, TokenizerConfig
from zhen.data import load_pairs
from zhen.text import Normalizer
from zhen.tokenizer import (
    BOS_ID,
    EOS_ID,
    JOINT_FILE,
    PAD_ID,
    SRC_FILE,
    TGT_FILE,
    UNK_ID,
    Tokenizer,
    TokenizerError,
    show_pieces,
)


@pytest.fixture(scope="module")
def hsk_pairs() -> list[tuple[str, str]]:
    pairs, _ = load_pairs([CorpusConfig(path="hsk")], Normalizer(TextConfig()), clean=True)
    return pairs


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, hsk_pairs: list[tuple[str, str]]) -> tuple[Tokenizer, Path]:
    directory = tmp_path_factory.mktemp("tokenizer")
    messages: list[str] = []
    tokenizer = Tokenizer.train(hsk_pairs, TokenizerConfig(vocab_size=400), directory, log=messages.append)
    # 400 entries cannot hold HSK's ~1,800 Chinese characters: the rarest are spelled as bytes, and said so.
    assert any("spelled as bytes" in m for m in messages)
    return tokenizer, directory


@pytest.fixture(scope="module")
def joint(tmp_path_factory: pytest.TempPathFactory, hsk_pairs: list[tuple[str, str]]) -> Tokenizer:
    return Tokenizer.train(hsk_pairs, TokenizerConfig(vocab_size=500, joint=True), tmp_path_factory.mktemp("joint"))


def test_files_and_special_ids(trained: tuple[Tokenizer, Path]) -> None:
    tokenizer, directory = trained
    assert sorted(p.name for p in directory.iterdir()) == [SRC_FILE, TGT_FILE]
    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)
    assert tokenizer.id_to_src_piece(PAD_ID) == "<pad>" and tokenizer.id_to_tgt_piece(EOS_ID) == "</s>"
    assert tokenizer.src_vocab_size == 400 and tokenizer.tgt_vocab_size <= 400


def test_source_ends_with_eos_target_has_no_specials(trained: tuple[Tokenizer, Path]) -> None:
    tokenizer, _ = trained
    (src,) = tokenizer.encode_src(["我爱你"])
    (tgt,) = tokenizer.encode_tgt(["I love you."])
    assert src[-1] == EOS_ID and BOS_ID not in src
    assert not {BOS_ID, EOS_ID, PAD_ID} & set(tgt)


def test_round_trip(trained: tuple[Tokenizer, Path], hsk_pairs: list[tuple[str, str]]) -> None:
    tokenizer, _ = trained
    english = [en for _, en in hsk_pairs[:500]] + ["Zebra quixotic 😀 ü ß — “quoted”"]
    assert tokenizer.decode_tgt(tokenizer.encode_tgt(english)) == english


def test_joint_model_round_trips_chinese(joint: Tokenizer, hsk_pairs: list[tuple[str, str]]) -> None:
    assert joint.joint and joint.src_vocab_size == joint.tgt_vocab_size
    chinese = [zh for zh, _ in hsk_pairs[:200]] + ["齉龘 𠀀 rare characters"]
    ids = joint.encode_tgt(chinese)
    assert joint.decode_tgt(ids) == chinese
    assert all(UNK_ID not in sequence for sequence in ids)  # byte fallback


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=20))
def test_no_input_becomes_unknown(trained: tuple[Tokenizer, Path], text: str) -> None:
    tokenizer, _ = trained
    assert UNK_ID not in tokenizer.encode_src([text])[0]
    assert UNK_ID not in tokenizer.encode_tgt([text])[0]


def test_decode_stops_at_eos_and_ignores_pad_and_bos(trained: tuple[Tokenizer, Path]) -> None:
    tokenizer, _ = trained
    (ids,) = tokenizer.encode_tgt(["Hello, teacher!"])
    noisy = [BOS_ID, *ids, EOS_ID, 57, 58, PAD_ID]
    assert tokenizer.decode_tgt([noisy, [PAD_ID, PAD_ID]]) == ["Hello, teacher!", ""]


def test_save_and_load(trained: tuple[Tokenizer, Path], tmp_path: Path) -> None:
    tokenizer, directory = trained
    loaded = Tokenizer.load(directory)
    assert loaded.fingerprint() == tokenizer.fingerprint()
    loaded.save(tmp_path / "checkpoint")
    copy = Tokenizer.load(tmp_path / "checkpoint")
    assert copy.encode_src(["我爱你"]) == tokenizer.encode_src(["我爱你"])


def test_load_errors_name_the_files(trained: tuple[Tokenizer, Path], tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match=r"no tokenizer in .*empty"):
        Tokenizer.load(tmp_path / "empty")
    shutil.copy(trained[1] / SRC_FILE, tmp_path / SRC_FILE)
    with pytest.raises(TokenizerError, match=r"expected src\.model and tgt\.model"):
        Tokenizer.load(tmp_path)  # one of the two files is missing
    (tmp_path / JOINT_FILE).write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match=r"joint\.model: not a SentencePiece model"):
        Tokenizer.load(tmp_path)


def test_show_pieces_and_the_tokenize_command(trained: tuple[Tokenizer, Path], capsys: pytest.CaptureFixture) -> None:
    tokenizer, directory = trained
    shown = show_pieces(tokenizer, "我爱你")
    text_line, pieces_line, ids_line = shown.splitlines()
    assert text_line.startswith("我爱你")
    assert pieces_line.split()[-1] == "</s>"
    assert [int(i) for i in ids_line.split()] == tokenizer.encode_src(["我爱你"])[0]

    assert main(["tokenize", "--model", str(directory), "我愛你"]) == 0  # normalised first: Traditional input
    assert capsys.readouterr().out == shown + "\n"
    assert main(["tokenize", "--model", str(directory), "--raw", "--side", "tgt", "I love you."]) == 0
    assert capsys.readouterr().out == show_pieces(tokenizer, "I love you.", "tgt") + "\n"
    assert main(["tokenize", "--model", str(directory / "missing"), "我爱你"]) == 2
    assert capsys.readouterr().err.startswith("zhen: error: model directory not found")


def test_training_on_nothing_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="empty"):
        Tokenizer.train([], TokenizerConfig(), tmp_path)
