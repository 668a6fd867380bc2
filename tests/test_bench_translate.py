"""bench/bench_translate.py: the floor's FLOP count is the work zhen's linear layers actually do."""


import pytest
from bench_scripts import ROOT, load_bench_script

import zhen.linear


@pytest.fixture(scope="module")
def bench():
    yield from load_bench_script("bench_translate")


@pytest.mark.parametrize("beam", [1, 3])
def test_product_flops_counts_what_zhen_multiplies(bench, monkeypatch, beam):
    """Count the multiply-adds of every linear layer in a real search with `steps` forced decoder steps; the
    formula (encoder, cross-attention K/V once, step 1 with one row per sentence) must give the same number."""
    model = bench.build_zhen(ROOT / "configs" / "tiny.toml", seed=0)
    counted = []
    inner = zhen.linear._inference_linear

    def counting(x, weight, bias, packed):
        counted.append(x.numel() // weight.size(1) * weight.numel())
        return inner(x, weight, bias, packed)

    monkeypatch.setattr(zhen.linear, "_inference_linear", counting)
    sentences, src_len, steps = 3, 7, 5
    engine = bench.zhen_engine(model, steps - 1, "fp32")  # zhen decodes the forced tokens and a final EOS
    outputs = engine.translate(bench.random_sources(sentences, src_len, seed=1), beam, 1)
    assert [len(nbest[0]) for nbest in outputs] == [steps - 1] * sentences
    assert 2.0 * sum(counted) == bench.product_flops(model.config, beam, sentences, src_len, steps)


def test_ctranslate2_in_its_own_process_gives_the_forced_tokens_and_zhens_greedy_output(bench, tmp_path, monkeypatch):
    pytest.importorskip("ctranslate2")
    pytest.importorskip("transformers")
    monkeypatch.syspath_prepend(str(ROOT / "bench"))  # the worker process imports bench_translate by name
    model = bench.build_zhen(ROOT / "configs" / "tiny.toml", seed=0)
    path = bench.convert_to_ctranslate2(model, tmp_path / "ct2", "float32")
    sources = bench.random_sources(3, 7, seed=1)
    engine = bench.ct2_engine(path, "float32", 1, n_tokens=4)
    with bench.running(engine):
        beam = engine.translate(sources, 3, 2)
        greedy = engine.translate(sources, 1, 1)
    assert [[len(hypothesis) for hypothesis in nbest] for nbest in beam] == [[4, 4]] * 3
    assert greedy == bench.zhen_engine(model, 4, "fp32").translate(sources, 1, 1)  # the same function
    with pytest.raises(KeyError):  # stopped: the worker process is gone
        engine.translate(sources, 1, 1)
