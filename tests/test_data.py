"""zhen.data: readers, bad input, cleaning, the token cache, batching and the Batch object."""

from __future__ import annotations

import dataclasses
import gzip
import json
import lzma
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from zhen.config import CorpusConfig, DataConfig, TextConfig, TokenizerConfig
from zhen.corpora import clean_gloss, read_cedict
from zhen.data import (
    Batch,
    CleanStats,
    DataError,
    TokenizedCorpus,
    collate,
    encode_corpus,
    epoch_batches,
    epoch_sample,
    load_or_build,
    load_pairs,
    make_batches,
    read_corpus,
    resolve,
)
from zhen.text import Normalizer
from zhen.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer

PAIRS = [
    ("我爱你。", "I love you."),
    ("我們沒有時間", "We have no time"),  # Traditional: normalised to Simplified
    ("你好", "Hello"),
    ("  今天　很热 ", " It's hot\u00a0 today "),  # whitespace to clean
    ("", "An empty Chinese side"),
    ("你好", "Hello"),  # an exact duplicate
    ("谢谢", "Thanks"),
]


def write_text(path: Path, text: str | bytes) -> Path:
    data = text.encode("utf-8") if isinstance(text, str) else text
    if path.suffix == ".gz":
        data = gzip.compress(data)
    elif path.suffix == ".xz":
        data = lzma.compress(data)
    path.write_bytes(data)
    return path


def lines(texts: list[str]) -> str:
    return "".join(t + "\n" for t in texts)


@pytest.fixture(scope="module")
def normalizer() -> Normalizer:
    return Normalizer(TextConfig())


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory, normalizer: Normalizer) -> Tokenizer:
    pairs, _ = load_pairs([CorpusConfig(path="hsk")], normalizer, clean=True)
    return Tokenizer.train(pairs, TokenizerConfig(vocab_size=400), tmp_path_factory.mktemp("tokenizer"))


# ==================================================================== readers


@pytest.mark.parametrize("compression", ["", ".gz", ".xz"])
def test_line_aligned_pair(tmp_path: Path, compression: str) -> None:
    write_text(tmp_path / f"train.zh{compression}", lines([zh for zh, _ in PAIRS]))
    write_text(tmp_path / f"train.en{compression}", lines([en for _, en in PAIRS]))
    assert list(read_corpus(CorpusConfig(path=str(tmp_path / "train")))) == PAIRS
    # Naming one of the two files instead of the prefix works too.
    assert list(read_corpus(CorpusConfig(path=str(tmp_path / f"train.zh{compression}")))) == PAIRS


@pytest.mark.parametrize("compression", ["", ".gz", ".xz"])
def test_tsv_with_chosen_columns(tmp_path: Path, compression: str) -> None:
    rows = [f"{zh}\t{en}\tCC-BY 2.0 (France) Attribution: tatoeba.org #{i}" for i, (zh, en) in enumerate(PAIRS)]
    path = write_text(tmp_path / f"train.tsv{compression}", lines(rows))
    assert list(read_corpus(CorpusConfig(path=str(path)))) == PAIRS
    swapped = write_text(tmp_path / "swapped.tsv", lines([f"x\t{en}\t{zh}" for zh, en in PAIRS]))
    assert list(read_corpus(CorpusConfig(path=str(swapped), src_column=2, tgt_column=1))) == PAIRS


@pytest.mark.parametrize("compression", ["", ".gz", ".xz"])
def test_jsonl_with_chosen_keys(tmp_path: Path, compression: str) -> None:
    records = [json.dumps({"zh": zh, "en": en}, ensure_ascii=False) for zh, en in PAIRS]
    path = write_text(tmp_path / f"train.jsonl{compression}", lines(records) + "\n")  # a blank line is ignored
    assert list(read_corpus(CorpusConfig(path=str(path)))) == PAIRS
    other = write_text(tmp_path / "other.jsonl", lines([json.dumps({"c": zh, "e": en}) for zh, en in PAIRS]))
    assert list(read_corpus(CorpusConfig(path=str(other), src_key="c", tgt_key="e"))) == PAIRS


def test_hsk_builtin() -> None:
    pairs = list(read_corpus(CorpusConfig(path="hsk")))
    assert len(pairs) == 4354
    assert pairs[0] == ("老师，您好！", "Hello, teacher!")
    assert resolve(CorpusConfig(path="hsk")).format == "builtin"


def test_line_ends_bom_and_missing_final_newline(tmp_path: Path) -> None:
    write_text(tmp_path / "c.zh", b"\xef\xbb\xbf\xe4\xbd\xa0\xe5\xa5\xbd\r\n\r\nlast")  # BOM, CRLF, no final newline
    write_text(tmp_path / "c.en", "Hello\n\nlast\n")
    assert list(read_corpus(CorpusConfig(path=str(tmp_path / "c")))) == [("你好", "Hello"), ("", ""), ("last", "last")]


def test_relative_paths_are_relative_to_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_text(tmp_path / "d.tsv", "你好\tHello\n")
    monkeypatch.chdir(tmp_path)
    assert list(read_corpus(CorpusConfig(path="d.tsv"))) == [("你好", "Hello")]


# ==================================================================== bad input


def test_mismatched_line_counts_name_both_files_and_counts(tmp_path: Path) -> None:
    write_text(tmp_path / "m.zh", lines(["一", "二", "三"]))
    write_text(tmp_path / "m.en.gz", lines(["one", "two"]))
    with pytest.raises(DataError) as error:
        list(read_corpus(CorpusConfig(path=str(tmp_path / "m"))))
    message = str(error.value)
    assert f"{tmp_path / 'm.zh'} has 3 lines" in message and f"{tmp_path / 'm.en.gz'} has 2" in message


def test_undecodable_bytes_raise_with_file_and_line(tmp_path: Path) -> None:
    write_text(tmp_path / "u.zh", "一\n二\n".encode() + b"\xff\xfe bad\n" + "四\n".encode())
    write_text(tmp_path / "u.en", lines(["one", "two", "three", "four"]))
    with pytest.raises(DataError, match=rf"{tmp_path / 'u.zh'}, line 3: not UTF-8 .*on_decode_error"):
        list(read_corpus(CorpusConfig(path=str(tmp_path / "u"))))


def test_undecodable_lines_can_be_skipped_and_counted(tmp_path: Path, normalizer: Normalizer) -> None:
    write_text(tmp_path / "u.zh", "一\n二\n".encode() + b"\xff\xfe bad\n" + "四\n".encode())
    write_text(tmp_path / "u.en", b"one\n\xc3(\nthree\nfour\n")  # a bad line on each side
    corpus = CorpusConfig(path=str(tmp_path / "u"), on_decode_error="skip")
    assert list(read_corpus(corpus)) == [("一", "one"), ("四", "four")]  # still aligned
    pairs, stats = load_pairs([corpus], normalizer, clean=True)
    assert pairs == [("一", "one"), ("四", "four")]
    assert (stats.read, stats.undecodable, stats.kept) == (4, 2, 2)
    assert "2 undecodable" in stats.summary()

    tsv = write_text(tmp_path / "u.tsv", "一\tone\n".encode() + b"\xff\tbad\n")
    assert list(read_corpus(CorpusConfig(path=str(tsv), on_decode_error="skip"))) == [("一", "one")]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("nowhere.tsv", "corpus file not found: nowhere.tsv"),
        ("nowhere.jsonl.gz", "corpus file not found: nowhere.jsonl.gz"),
        ("hks", r"corpus 'hks' not found: no hks.zh and hks.en .* built-in corpus \(hsk, cedict\)"),
    ],
)
def test_missing_files_and_unknown_corpora(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=message):
        resolve(CorpusConfig(path=path))


def test_unknown_builtin_and_half_a_pair(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown built-in corpus 'wmt'; built-in corpora: hsk"):
        resolve(CorpusConfig(path="wmt", format="builtin"))
    write_text(tmp_path / "half.zh", "你好\n")
    with pytest.raises(DataError, match=r"found .*half\.zh but not .*half\.en"):
        resolve(CorpusConfig(path=str(tmp_path / "half")))
    write_text(tmp_path / "corpus.txt", "你好\tHello\n")
    with pytest.raises(DataError, match="it is a file: set format = 'tsv'"):
        resolve(CorpusConfig(path=str(tmp_path / "corpus.txt")))
    assert list(read_corpus(CorpusConfig(path=str(tmp_path / "corpus.txt"), format="tsv"))) == [("你好", "Hello")]


def test_malformed_tsv_jsonl_and_compressed_files(tmp_path: Path) -> None:
    tsv = write_text(tmp_path / "bad.tsv", "你好\tHello\n只有一列\n")
    with pytest.raises(DataError, match=r"bad\.tsv, line 2: 1 tab-separated column\(s\)"):
        list(read_corpus(CorpusConfig(path=str(tsv))))
    jsonl = write_text(tmp_path / "bad.jsonl", '{"zh": "你好", "en": "Hello"}\n{"zh": "你好"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl, line 2: needs a string field 'en'"):
        list(read_corpus(CorpusConfig(path=str(jsonl))))
    broken = write_text(tmp_path / "broken.jsonl", '{"zh": "你好", \n')
    with pytest.raises(DataError, match=r"broken\.jsonl, line 1: not JSON"):
        list(read_corpus(CorpusConfig(path=str(broken))))
    (tmp_path / "fake.tsv.gz").write_bytes(b"this is not gzip")
    with pytest.raises(DataError, match=r"fake\.tsv\.gz: not a valid gz file"):
        list(read_corpus(CorpusConfig(path=str(tmp_path / "fake.tsv.gz"))))


def test_data_errors_reach_the_command_line_as_messages(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from zhen.cli import main

    tsv = write_text(tmp_path / "bad.tsv", "你好\tHello\n只有一列\n")
    assert main(["evaluate", "--corpus", str(tsv)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("zhen: error:") and "bad.tsv, line 2" in err and "Traceback" not in err
    assert main(["tokenize", "--model", str(tmp_path), "你好"]) == 2  # no model, no tokenizer there
    assert capsys.readouterr().err.startswith("zhen: error:")


# ==================================================================== normalising and cleaning


def pair_corpus(tmp_path: Path, name: str, pairs: list[tuple[str, str]]) -> CorpusConfig:
    write_text(tmp_path / f"{name}.zh", lines([zh for zh, _ in pairs]))
    write_text(tmp_path / f"{name}.en", lines([en for _, en in pairs]))
    return CorpusConfig(path=str(tmp_path / name))


def test_load_pairs_cleans_training_data(tmp_path: Path, normalizer: Normalizer) -> None:
    first = pair_corpus(tmp_path, "first", PAIRS)
    second = pair_corpus(tmp_path, "second", [("谢谢", "Thanks"), ("再见", "Goodbye")])
    pairs, stats = load_pairs([first, second], normalizer, clean=True, data_config=DataConfig())
    assert pairs == [
        ("我爱你。", "I love you."),
        ("我们没有时间", "We have no time"),
        ("你好", "Hello"),
        ("今天 很热", "It's hot today"),
        ("谢谢", "Thanks"),
        ("再见", "Goodbye"),
    ]
    assert (stats.read, stats.empty, stats.duplicate, stats.kept) == (9, 1, 2, 6)  # duplicates across corpora too
    assert stats.summary() == "9 pairs read; dropped 1 empty, 2 duplicate; 6 kept (66.7%)"

    kept, stats = load_pairs([first], normalizer, clean=True, data_config=DataConfig(deduplicate=False))
    assert len(kept) == 6 and stats.duplicate == 0


def test_load_pairs_keeps_dev_sets_whole_and_in_order(tmp_path: Path, normalizer: Normalizer) -> None:
    pairs, stats = load_pairs([pair_corpus(tmp_path, "dev", PAIRS)], normalizer, clean=False)
    assert len(pairs) == len(PAIRS) and pairs[4] == ("", "An empty Chinese side") and pairs[2] == pairs[5]
    assert stats.summary() == "7 pairs read; nothing dropped; 7 kept (100.0%)"


def test_clean_stats_combine() -> None:
    read = CleanStats(read=10, empty=1, duplicate=2, kept=7)
    encoded = CleanStats(read=7, too_long=1, ratio=1, kept=5)
    assert read.then(encoded) == CleanStats(read=10, empty=1, duplicate=2, too_long=1, ratio=1, kept=5)


# ==================================================================== token ids and the cache


def test_encode_corpus_applies_length_rules(tokenizer: Tokenizer) -> None:
    pairs = [
        ("你好", "Hello"),
        ("你好" * 40, "Hello " * 40),  # too long on both sides
        ("好", "a b c d e f g h i j k l m n o p"),  # a lopsided pair
        ("我爱你", "I love you"),
    ]
    corpus, stats = encode_corpus(
        pairs, tokenizer, DataConfig(max_length=48, max_length_ratio=3.0, ratio_min_length=10)
    )
    assert (stats.read, stats.too_long, stats.ratio, stats.kept) == (4, 1, 1, 2)
    assert len(corpus) == 2 and corpus.src_ids.dtype == np.uint16
    src, tgt = corpus.pair(1)
    assert src.tolist() == tokenizer.encode_src(["我爱你"])[0]
    assert tgt.tolist() == tokenizer.encode_tgt(["I love you"])[0]
    kept_zh, kept_en = ["你好", "我爱你"], ["Hello", "I love you"]  # lengths from the tokenizer, not the offsets
    assert corpus.src_lengths.tolist() == [len(ids) for ids in tokenizer.encode_src(kept_zh)]
    assert corpus.tgt_lengths.tolist() == [len(ids) for ids in tokenizer.encode_tgt(kept_en)]


def test_token_cache_builds_once_then_reloads(tmp_path: Path, normalizer: Normalizer, tokenizer: Tokenizer) -> None:
    corpora = [CorpusConfig(path="hsk"), pair_corpus(tmp_path, "extra", PAIRS)]
    config = DataConfig(max_length=64, max_tokens=512)
    messages: list[str] = []
    built = load_or_build(corpora, normalizer, tokenizer, config, tmp_path / "cache", log=messages.append)
    assert any(m.startswith("token cache: building") for m in messages)
    assert any(m.startswith("cleaning: 4,361 pairs read") for m in messages)

    messages_built = list(messages)
    messages.clear()
    loaded = load_or_build(corpora, normalizer, tokenizer, config, tmp_path / "cache", log=messages.append)
    assert any("pairs loaded" in m for m in messages) and not any("building" in m for m in messages)
    assert any("placeholder" in m and "'placeholder-p1'" in m for m in messages_built)  # the report, with examples
    for name in ("src_ids", "src_offsets", "tgt_ids", "tgt_offsets", "corpus_offsets"):
        assert np.array_equal(getattr(built, name), getattr(loaded, name))
    assert sum(built.corpus_sizes()) == len(built) and len(built.corpus_sizes()) == 2
    pairs, _ = load_pairs(corpora, normalizer, clean=True, data_config=config)
    direct, _ = encode_corpus(pairs, tokenizer, config)
    assert np.array_equal(direct.tgt_ids, loaded.tgt_ids)
    assert [p.name.startswith("tokens-") for p in (tmp_path / "cache").iterdir()] == [True]  # no temporary left


def test_token_cache_key_follows_files_and_settings(
    tmp_path: Path, normalizer: Normalizer, tokenizer: Tokenizer
) -> None:
    corpora = [pair_corpus(tmp_path, "c", PAIRS)]
    config = DataConfig(max_length=64, max_tokens=512)

    def builds(corpora: list[CorpusConfig], config: DataConfig) -> bool:
        messages: list[str] = []
        load_or_build(corpora, normalizer, tokenizer, config, tmp_path / "cache", log=messages.append)
        return any("building" in m for m in messages)

    assert builds(corpora, config)
    assert not builds(corpora, config)
    assert builds(corpora, DataConfig(max_length=32, max_tokens=512))  # a cleaning setting
    assert not builds([dataclasses.replace(corpora[0], weight=0.5)], config)  # weights act per epoch, not in the cache
    write_text(tmp_path / "c.en", lines([en for _, en in PAIRS[:-1]] + ["Thank you"]))
    os.utime(tmp_path / "c.en", ns=(1, 1))  # changed content and time
    assert builds(corpora, config)


def test_unreadable_cache_is_rebuilt(tmp_path: Path, normalizer: Normalizer, tokenizer: Tokenizer) -> None:
    corpora, config = [pair_corpus(tmp_path, "c", PAIRS)], DataConfig(max_length=64, max_tokens=512)
    load_or_build(corpora, normalizer, tokenizer, config, tmp_path / "cache", log=lambda _: None)
    (cache,) = (tmp_path / "cache").iterdir()
    (cache / "tgt_ids.npy").write_bytes(b"garbage")
    messages: list[str] = []
    corpus = load_or_build(corpora, normalizer, tokenizer, config, tmp_path / "cache", log=messages.append)
    assert any("unreadable" in m for m in messages) and len(corpus) == 5


def test_a_corpus_that_cleans_to_nothing_is_an_error(
    tmp_path: Path, normalizer: Normalizer, tokenizer: Tokenizer
) -> None:
    corpora = [pair_corpus(tmp_path, "empty", [("", "nothing"), (" ", "")])]
    with pytest.raises(DataError, match="no training pairs left after cleaning"):
        load_or_build(corpora, normalizer, tokenizer, DataConfig(), tmp_path / "cache", log=lambda _: None)


# ==================================================================== batches

LENGTHS = st.lists(st.tuples(st.integers(1, 60), st.integers(0, 60)), min_size=1, max_size=300)


@settings(max_examples=200, deadline=None)
@given(LENGTHS, st.integers(8, 1024), st.integers(0, 2**31), st.integers(0, 100))
def test_batches_cover_every_pair_once_within_budget(
    lengths: list[tuple[int, int]], max_tokens: int, seed: int, epoch: int
) -> None:
    src = np.array([s for s, _ in lengths])
    tgt = np.array([t for _, t in lengths])
    batches = make_batches(src, tgt, max_tokens, seed, epoch)
    indices = np.concatenate(batches)
    assert sorted(indices.tolist()) == list(range(len(lengths)))  # every pair exactly once
    for batch in batches:
        padded = len(batch) * max(src[batch].max(), tgt[batch].max() + 1)
        assert padded <= max_tokens or len(batch) == 1  # only a single over-long pair may exceed
    again = make_batches(src, tgt, max_tokens, seed, epoch)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))  # deterministic


def test_batches_change_with_the_epoch_and_group_similar_lengths() -> None:
    rng = np.random.default_rng(0)
    src, tgt = rng.integers(1, 100, 5000), rng.integers(0, 100, 5000)
    first, second = make_batches(src, tgt, 2048, seed=1, epoch=0), make_batches(src, tgt, 2048, seed=1, epoch=1)
    assert [b.tolist() for b in first] != [b.tolist() for b in second]
    width = np.maximum(src, tgt + 1)
    real = sum(int(width[b].sum()) for b in first)
    padded = sum(len(b) * int(width[b].max()) for b in first)
    assert real / padded > 0.95  # bucketing by length wastes little on padding


def test_batch_builds_shifted_targets_and_masks() -> None:
    batch = Batch.from_ids([[5, 6, EOS_ID], [7, EOS_ID]], [[8, 9, 10], []])
    assert batch.src.tolist() == [[5, 6, EOS_ID], [7, EOS_ID, PAD_ID]]
    assert batch.tgt_in.tolist() == [[BOS_ID, 8, 9, 10], [BOS_ID, PAD_ID, PAD_ID, PAD_ID]]
    assert batch.tgt_out.tolist() == [[8, 9, 10, EOS_ID], [EOS_ID, PAD_ID, PAD_ID, PAD_ID]]
    assert batch.src.dtype == batch.tgt_in.dtype == batch.tgt_out.dtype == torch.int64
    assert (batch.n_tgt_tokens, len(batch)) == (5, 2)
    moved = batch.to("cpu").pin_memory()  # pinning is a no-op without an accelerator
    assert torch.equal(moved.tgt_out, batch.tgt_out)
    with pytest.raises(ValueError, match="as many targets as sources"):
        Batch.from_ids([[5, EOS_ID]], [])


def test_collate_uses_the_corpus_pairs(tokenizer: Tokenizer) -> None:
    pairs = [("你好", "Hello"), ("我爱你", "I love you"), ("谢谢", "Thanks")]
    corpus, _ = encode_corpus(pairs, tokenizer, DataConfig())
    batch = collate(corpus, np.array([2, 0]))
    src, tgt = corpus.pair(2)
    assert batch.src[0, : len(src)].tolist() == src.tolist()
    assert batch.tgt_out[0, : len(tgt) + 1].tolist() == [*tgt.tolist(), EOS_ID]
    assert tokenizer.decode_tgt(batch.tgt_out.tolist()) == ["Thanks", "Hello"]


# ==================================================================== corpus weights


def test_epoch_sample_repeats_and_subsamples_each_corpus() -> None:
    offsets = np.array([0, 10, 110, 114])  # three corpora: 10, 100 and 4 pairs
    chosen = epoch_sample(offsets, [1.0, 0.3, 2.0], seed=1, epoch=0)
    counts = np.bincount(chosen, minlength=114)
    assert (counts[:10] == 1).all()  # weight 1: every pair once
    assert np.count_nonzero(counts[10:110]) == 30 and counts[10:110].max() == 1  # 0.3: a random 30%, no repeats
    assert (counts[110:] == 2).all()  # weight 2: every pair twice
    again, other = epoch_sample(offsets, [1.0, 0.3, 2.0], 1, 0), epoch_sample(offsets, [1.0, 0.3, 2.0], 1, 1)
    assert np.array_equal(chosen, again) and not np.array_equal(chosen, other)  # fresh each epoch, reproducible


def test_epoch_batches_follow_weights_and_equal_make_batches_without_them() -> None:
    lengths = np.arange(1, 21, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ids = np.zeros(offsets[-1], np.uint16)
    corpus = TokenizedCorpus(ids, offsets, ids, offsets, corpus_offsets=np.array([0, 5, 20]))
    assert corpus.corpus_sizes() == [5, 15]
    plain = make_batches(corpus.src_lengths, corpus.tgt_lengths, 64, 1, 0)
    same = epoch_batches(corpus, [1.0, 1.0], 64, 1, 0)
    assert all(np.array_equal(a, b) for a, b in zip(plain, same, strict=True))
    weighted = np.concatenate(epoch_batches(corpus, [3.0, 0.2], 64, 1, 0))
    assert np.bincount(weighted, minlength=20)[:5].tolist() == [3] * 5 and np.count_nonzero(weighted >= 5) == 3
    with pytest.raises(DataError, match="3 corpus weights"):
        epoch_batches(corpus, [1.0, 2.0, 1.0], 64, 1, 0)


# ==================================================================== CC-CEDICT


@pytest.mark.parametrize(("sense", "gloss"), [
    ("to love (sb); to be fond of", "to love"),
    ("surname Wang", None),
    ("variant of 冗詞|冗词[rong3 ci2]", None),
    ("old variant of 個|个[ge4]", None),
    ("see 什麼|什么[shen2 me5]", None),
    ("CL:個|个[ge4]", None),
    ("classifier for people", None),
    ("abbr. for 北京大學|北京大学[Bei3 jing1 Da4 xue2]", None),
    ("lit. one stone, two birds (idiom); fig. to kill two birds with one stone", "to kill two birds with one stone"),
    ("Syr Darya, Central Asian river", "Syr Darya"),
    ("(millet)", None),
])
def test_cedict_gloss_cleaning(sense: str, gloss: str | None) -> None:
    assert clean_gloss(sense) == gloss


def test_cedict_entries_become_headword_gloss_pairs(tmp_path: Path) -> None:
    text = "# comment\n" + "".join(line + "\n" for line in [
        "張 张 [Zhang1] /surname Zhang/",
        "張 张 [zhang1] /to open up/to spread/CL:個|个[ge4]/",
        "個 个 [ge4] /classifier for people or objects in general/individual/",
        "北京 北京 [Bei3 jing1] /Beijing, capital of the People's Republic of China/",
        "冗辭 冗辞 [rong3 ci2] /variant of 冗詞|冗词[rong3 ci2]/",
    ])
    path = write_text(tmp_path / "cedict.txt.gz", text)
    assert read_cedict(path) == (["张", "个", "北京"], ["to open up", "individual", "Beijing"])
    two = (["张", "张", "个", "北京"], ["to open up", "to spread", "individual", "Beijing"])
    assert read_cedict(path, senses=2) == two
    assert read_cedict(path, proper_nouns=False)[0] == ["张", "个"]


def test_builtin_cedict_corpus_reads_the_package() -> None:
    pairs = read_corpus(CorpusConfig(path="cedict"))
    assert 100_000 < len(pairs) < 122_143 and ("北京", "Beijing") in pairs and ("爱", "to love") in pairs
    with pytest.raises(ValueError, match="cedict"):
        CorpusConfig(path="hsk", senses=2)
