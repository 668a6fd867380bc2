"""`zhen serve`'s parts on their own: the batcher, the limits, the LibreTranslate protocol, the trace as JSON.

No model and no HTTP here (except the trace test's tiny random model): a scripted translate function stands in,
so the batching rules (who shares a model call, the token budget, the wait for company, the queue limit, a
failing request) are checked exactly and in milliseconds.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

import pytest

pytest.importorskip("starlette")

from zhen.serve.batcher import Batcher, BatcherClosed, QueueFull
from zhen.serve.errors import ApiError
from zhen.serve.limits import ApiKeys, RateLimiter, check_sizes
from zhen.serve.protocol import (
    detect_languages,
    parse_translate,
    split_lines,
    translate_answer,
)
from zhen.serve.settings import ServeError, ServeSettings


@dataclass(frozen=True)
class Hyp:
    text: str
    score: float


class Scripted:
    """A stand-in model: 'en(line)#k' for the k-th best, and a record of every call (lines, nbest)."""

    def __init__(self, delay: float = 0.0, fail_on: str | None = None) -> None:
        self.calls: list[tuple[list[str], int]] = []
        self.delay = delay
        self.fail_on = fail_on

    def __call__(self, lines: list[str], nbest: int) -> list[list[Hyp]]:
        self.calls.append((list(lines), nbest))
        if self.fail_on is not None and self.fail_on in lines:
            raise RuntimeError("scripted failure")
        time.sleep(self.delay)
        return [[Hyp(f"en({line})#{k}", -float(k)) for k in range(nbest)] for line in lines]


def batcher(model: Scripted, **options) -> Batcher:
    settings = {"beam": 5, "batch_tokens": 1000, "max_wait": 0.05, "max_queue": 100, **options}
    return Batcher(model, lambda line: len(line), **settings)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=20))


# ----------------------------------------------------------------------------- batcher


def test_concurrent_requests_share_one_model_call_and_each_gets_its_own_answer():
    model, seen = Scripted(), []
    b = batcher(model, on_batch=lambda lines, seconds: seen.append(lines))
    b.start()

    async def main():
        return await asyncio.gather(*(b.translate([f"s{i}", f"t{i}"]) for i in range(8)))

    answers = run(main())
    b.close()
    assert len(model.calls) == 1 and len(model.calls[0][0]) == 16
    assert seen == [16]
    for i, answer in enumerate(answers):
        assert [hyps[0].text for hyps in answer] == [f"en(s{i})#0", f"en(t{i})#0"]


def test_the_worker_gets_its_cpu_threads_before_its_first_batch_and_the_main_thread_keeps_its_own():
    """zhen serve keeps its main thread at 1 thread and gives the model's worker --threads (Engine.on_worker_start):
    OpenMP keeps thread counts per thread, and a second team on the same cores would sleep between operators."""
    import torch

    from zhen.serve.engine import Engine

    seen = []
    engine = Engine(translator=None, threads=2)
    model = Scripted()

    def translate(lines, nbest):
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        return model(lines, nbest)

    main_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        b = Batcher(translate, len, beam=5, batch_tokens=1000, max_wait=0.01, max_queue=100,
                    on_start=engine.on_worker_start)
        b.start()
        run(b.translate(["s"]))
        b.close()
        assert seen == [("zhen-serve-model", 2)]
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(main_threads)


def test_a_lone_request_waits_at_most_max_wait():
    model = Scripted()
    b = batcher(model, max_wait=0.02)
    b.start()
    start = time.perf_counter()
    run(b.translate(["one"]))
    elapsed = time.perf_counter() - start
    b.close()
    assert elapsed < 0.5  # 20 ms of waiting for company, plus scheduling


def test_clients_coming_back_after_their_answers_stay_in_one_batch():
    """16 closed-loop clients: half are back 2 ms after their answer, half after 20 ms, longer than max_wait
    (10 ms). Starting on whoever is back would split them into two halves taking turns; the worker waits for
    the slower half (up to COMEBACK · max_wait), so batches stay whole."""
    model, sizes = Scripted(delay=0.03), []
    b = batcher(model, max_wait=0.01, on_batch=lambda lines, seconds: sizes.append(lines))
    b.start()

    async def client(i: int) -> None:
        for _ in range(6):
            await b.translate([f"c{i}"])
            await asyncio.sleep(0.002 if i % 2 else 0.02)

    async def main():
        await asyncio.gather(*(client(i) for i in range(16)))

    run(main())
    b.close()
    assert sum(sizes) == 96
    assert sum(sizes) / len(sizes) >= 12, sizes  # halves taking turns would average 8


def test_the_token_budget_splits_batches_but_a_large_job_still_runs():
    model = Scripted(delay=0.05)
    b = batcher(model, batch_tokens=10, max_wait=0.05)
    b.start()

    async def main():
        big = asyncio.create_task(b.translate(["x" * 25]))  # 25 tokens > budget: runs alone
        await asyncio.sleep(0.01)
        small = [asyncio.create_task(b.translate(["abcd"])) for _ in range(5)]  # 4 tokens each: 2 per batch
        return await asyncio.gather(big, *small)

    answers = run(main())
    b.close()
    sizes = [len(lines) for lines, _ in model.calls]
    assert sizes[0] == 1 and sum(sizes) == 6 and max(sizes[1:]) <= 2
    assert [a[0][0].text for a in answers] == ["en(" + "x" * 25 + ")#0"] + ["en(abcd)#0"] * 5


def test_nbest_requests_share_a_call_with_the_same_beam_and_are_cut_to_their_own_n():
    model = Scripted()
    b = batcher(model, beam=5)
    b.start()

    async def main():
        return await asyncio.gather(b.translate(["a"], 1), b.translate(["b"], 3), b.translate(["c"], 7))

    one, three, seven = run(main())
    b.close()
    # nbest 1 and 3 keep beam 5 and share a call (made for 3); nbest 7 widens the beam: its own call.
    assert sorted((len(lines), n) for lines, n in model.calls) == [(1, 7), (2, 3)]
    assert [len(one[0]), len(three[0]), len(seven[0])] == [1, 3, 7]


def test_a_full_queue_refuses_new_work_and_a_failing_request_fails_alone():
    model = Scripted(delay=0.2, fail_on="bad")
    b = batcher(model, max_queue=3, max_wait=0.0)
    b.start()

    async def main():
        first = asyncio.create_task(b.translate(["busy"]))  # the worker takes it and is busy for 0.2 s
        await asyncio.sleep(0.05)
        waiting = [asyncio.create_task(b.translate([w])) for w in ("ok", "bad", "fine")]
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull):
            await b.translate(["one too many"])
        return await asyncio.gather(first, *waiting, return_exceptions=True)

    busy, ok, bad, fine = run(main())
    b.close()
    assert isinstance(bad, RuntimeError)
    assert [busy[0][0].text, ok[0][0].text, fine[0][0].text] == ["en(busy)#0", "en(ok)#0", "en(fine)#0"]


def test_calls_run_beside_translations_and_close_finishes_queued_work():
    model = Scripted(delay=0.05)
    b = batcher(model, max_calls=1)
    b.start()
    release = threading.Event()

    async def main():
        jobs = [asyncio.create_task(b.translate([f"s{i}"])) for i in range(3)]
        slow_call = asyncio.create_task(b.call(lambda: release.wait(10) and threading.current_thread().name))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull, match="explain requests"):
            await b.call(lambda: None)
        answers = await asyncio.gather(*jobs)  # translated while the call is still running
        release.set()
        thread = await slow_call
        queued = asyncio.create_task(b.translate(["queued before close"]))
        await asyncio.sleep(0)  # the task runs up to its wait: the job is in the queue
        await asyncio.get_running_loop().run_in_executor(None, b.close)
        with pytest.raises(BatcherClosed):
            await b.translate(["late"])
        return thread, answers, await queued

    thread, answers, queued = run(main())
    assert thread.startswith("zhen-serve-calls")
    assert [a[0][0].text for a in answers] == ["en(s0)#0", "en(s1)#0", "en(s2)#0"]
    assert queued[0][0].text == "en(queued before close)#0"  # close finished the queued work
    assert not b.alive


# ----------------------------------------------------------------------------- limits


def test_api_keys_match_exactly(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# operators' keys\nalpha-123\n\n  beta-456  \n", encoding="utf-8")
    keys = ApiKeys.load(path)
    assert len(keys) == 2
    assert keys.valid("alpha-123") and keys.valid("beta-456")
    for wrong in ("alpha-12", "alpha-1234", "", None, "# operators' keys", "\ud800"):
        assert not keys.valid(wrong)
    (tmp_path / "empty").write_text("# none\n", encoding="utf-8")
    with pytest.raises(ServeError, match="holds no keys"):
        ApiKeys.load(tmp_path / "empty")
    with pytest.raises(ServeError, match="cannot read"):
        ApiKeys.load(tmp_path / "missing")


def test_rate_limiter_is_a_token_bucket_per_client():
    now = [0.0]
    limiter = RateLimiter(6, clock=lambda: now[0])  # 6 a minute: one every 10 s, bursts of 6
    assert [limiter.retry_after("a") for _ in range(6)] == [0.0] * 6
    assert limiter.retry_after("a") == pytest.approx(10.0)
    assert limiter.retry_after("b") == 0.0  # another client has its own bucket
    now[0] = 10.0
    assert limiter.retry_after("a") == 0.0
    assert limiter.retry_after("a") > 0


def test_rate_limiter_memory_stays_bounded():
    now = [0.0]
    limiter = RateLimiter(60, clock=lambda: now[0], max_clients=100)
    for i in range(1000):
        now[0] = i * 1.0  # each client makes one request, a second apart: old buckets refill and are dropped
        limiter.retry_after(f"client-{i}")
    assert len(limiter._buckets) <= 101


@pytest.mark.parametrize(("texts", "message"), [
    (["x"] * 5, "5 texts"),
    (["x" * 30, "y" * 31], "61 characters"),
    (["short\n" + "z" * 11], "line 2 of q"),
])
def test_size_limits_are_413(texts, message):
    settings = ServeSettings(max_texts=4, max_chars=60, max_line_chars=10)
    with pytest.raises(ApiError, match=message) as error:
        check_sizes(texts, True, settings)
    assert error.value.status == 413
    check_sizes(["x" * 10, "y" * 10 + "\n" + "z" * 10], True, settings)


def test_settings_are_checked():
    with pytest.raises(ServeError, match="max-line-chars"):
        ServeSettings(max_chars=10, max_line_chars=20)
    with pytest.raises(ServeError, match="--max-queue"):
        ServeSettings(max_queue=0)


# ----------------------------------------------------------------------------- protocol


@pytest.mark.parametrize(("fields", "message"), [
    ({"source": "zh", "target": "en"}, "missing q"),
    ({"q": "", "source": "zh", "target": "en"}, "missing q"),
    ({"q": [], "source": "zh", "target": "en"}, "missing q"),
    ({"q": 5, "source": "zh", "target": "en"}, "string or a list"),
    ({"q": ["a", 5], "source": "zh", "target": "en"}, r"q\[1\] is not a string"),
    ({"q": "a", "target": "en"}, "missing source"),
    ({"q": "a", "source": "ja", "target": "en"}, "ja is not supported"),
    ({"q": "a", "source": "zh", "target": "de"}, "de is not supported"),
    ({"q": "a", "source": ["zh"], "target": "en"}, "source must be a string"),
    ({"q": "a", "source": "zh", "target": "en", "format": "html"}, "html format"),
    ({"q": "a", "source": "zh", "target": "en", "alternatives": "two"}, "not a number"),
    ({"q": "a", "source": "zh", "target": "en", "alternatives": True}, "not a number"),
    ({"q": "a", "source": "zh", "target": "en", "alternatives": 9}, "must be <= 4"),
])
def test_bad_translate_fields_are_400(fields, message):
    with pytest.raises(ApiError, match=message) as error:
        parse_translate(fields, max_alternatives=4)
    assert error.value.status == 400


def test_lines_are_translated_separately_and_joined_with_their_alternatives():
    query = parse_translate({"q": ["一\n二", ""], "source": "zh-Hant", "target": "en", "alternatives": "1",
                             "scores": "true"}, max_alternatives=4)
    lines, counts = split_lines(query.texts)
    assert (lines, counts) == (["一", "二", ""], [2, 1])
    results = [[Hyp("one", -0.5), Hyp("One", -1.0)], [Hyp("two", -0.25)], [Hyp("", 0.0)]]
    answer = translate_answer(query, counts, results)
    assert answer == {"translatedText": ["one\ntwo", ""], "alternatives": [["One\ntwo"], []],
                      "scores": [[-0.375, -0.625], [0.0]]}


def test_auto_reports_chinese_and_duplicate_alternatives_are_dropped():
    query = parse_translate({"q": "我爱你", "source": "auto", "target": "EN", "alternatives": 3}, max_alternatives=4)
    results = [[Hyp("I love you.", -0.1), Hyp("I love you.", -0.2), Hyp("Love you.", -0.3)]]
    answer = translate_answer(query, [1], results)
    assert answer == {"translatedText": "I love you.", "alternatives": ["Love you."],
                      "detectedLanguage": {"confidence": 100.0, "language": "zh"}}


def test_detect_goes_by_script():
    assert detect_languages("我爱你")[0] == {"confidence": 100.0, "language": "zh"}
    assert detect_languages("I love you")[0]["language"] == "en"
    assert detect_languages("123")[0] == {"confidence": 0.0, "language": "zh"}


# ----------------------------------------------------------------------------- the trace as JSON


def test_trace_json_has_every_map_with_its_labels_and_rows_sum_to_one():
    import json

    import torch

    from zhen.config import DecodeConfig, ModelConfig
    from zhen.explain import explain_sentence
    from zhen.model import Transformer
    from zhen.serve.trace_json import trace_to_json

    class Pieces:  # a tokenizer stand-in: one id per character
        def encode_src(self, texts):
            return [[5 + ord(c) % 30 for c in text] + [3] for text in texts]

        def id_to_src_piece(self, i):
            return f"s{i}"

        def id_to_tgt_piece(self, i):
            return f"t{i}"

        def decode_tgt(self, ids):
            return [" ".join(f"t{i}" for i in seq) for seq in ids]

    torch.manual_seed(0)
    config = ModelConfig(src_vocab_size=40, tgt_vocab_size=30, d_model=16, n_heads=2, d_ff=32, n_encoder_layers=2,
                         n_decoder_layers=3, dropout=0.0, max_positions=32)
    decode = DecodeConfig(max_len_a=0.0, max_len_b=4)  # at most 4 steps: a random model rarely stops by itself
    trace = explain_sentence(Transformer(config).eval(), Pieces(), "我爱你", decode=decode)
    data = json.loads(json.dumps(trace_to_json(trace)))
    s, t = len(data["source"]["pieces"]), len(data["target"]["pieces"])
    assert s == 4 and data["target"]["pieces"][0] == "t2"  # <s> is id 2
    shapes = {a["name"]: (len(a["layers"]), len(a["layers"][0]), len(a["queries"]), len(a["keys"]))
              for a in data["attention"]}
    assert shapes == {"encoder": (2, 2, s, s), "decoder": (3, 2, t, t), "cross": (3, 2, t, s)}
    for attention in data["attention"]:
        for head in (h for layer in attention["layers"] for h in layer):
            assert all(abs(sum(row) - 1) < 1e-3 for row in head)
    decoder = data["attention"][1]
    assert decoder["allowed"] == [[int(k <= q) for k in range(t)] for q in range(t)]
    assert len(data["steps"]) == len(trace.steps) and all(len(step["top"]) == 5 for step in data["steps"])


# ----------------------------------------------------------------------------- the load benchmark's arithmetic


def test_bench_serve_percentiles_and_report():
    from bench_scripts import load_bench_script

    for bench in load_bench_script("bench_serve"):
        assert bench.percentile([0.3, 0.1, 0.2, 0.4], 50) == 0.2
        assert bench.percentile([float(i) for i in range(1, 201)], 99) == 198.0  # nearest rank: ceil(0.99·200)
        idle = bench.Phase(seconds=2.0, latencies=[0.05] * 199 + [0.2], sentences=200)
        rounds = [  # offline 20/s and 10/s; served 9.9/s and 12/s: the best served is 60% of the best offline
            bench.Round(bench.Offline(5.0, 9.0, 100), bench.Offline(8.0, 9.0, 100),
                        bench.Phase(10.0, [0.3] * 100, 99, ["你好: 'x' != 'Hello.'"]), cpu=9.9, calls=10),
            bench.Round(bench.Offline(10.0, 9.5, 100), bench.Offline(10.0, 9.5, 100),
                        bench.Phase(10.0, [0.2] * 120, 120), cpu=10.0, calls=12),
        ]
        run = bench.Run("python bench/bench_serve.py", "2026-12-02 00:00", 32, idle, rounds, memory=(400.0, 410.0),
                        exit_status=0, load=(("0.1 / 0.1 / 0.1", ""), ("0.2 / 0.2 / 0.2", "")))
        rows = {measure: (result, target) for measure, result, target in bench.rows(run)}
        served = "served: 32 concurrent clients, one sentence a request, sentences/s (each round)"
        assert rows[served] == ("9.9 / 12.0; best 12.0 = 60% of the best offline", ">= 70%: **not met**")
        assert rows["served / offline within each round"] == ("50% / 120% (sorted)", "")
        chunked = "offline in calls of 32 sentences (the largest batches 32 clients can give), sentences/s (each round)"
        assert rows[chunked] == ("12.5 / 10.0; best 12.5 = 62% of the best offline", "")
        assert rows["answers wrong / lost"] == ("1 / 0", "0 / 0: **not met**")
        assert rows["sentences per model call when served (server metrics)"] == ("10.0 (22 calls)", "")  # 219 / 22
        assert "你好: 'x' != 'Hello.'" in bench.report(run)


def test_bench_serve_fits_the_fixed_cost_of_a_decoder_step():
    """One call: 60 steps for 1,000 rows in 2 s; calls of 32: 160 steps for the same rows in 3 s. So a step costs
    10 ms by itself and a row 1.4 ms."""
    from bench_scripts import load_bench_script

    for bench in load_bench_script("bench_serve"):
        rounds = [bench.Round(bench.Offline(1.0, 1.0, 50, steps=30, rows=500),
                              bench.Offline(1.5, 1.0, 50, steps=80, rows=500), bench.Phase(1.0), cpu=1.0, calls=2)
                  for _ in range(2)]
        run = bench.Run("python bench/bench_serve.py", "2026-12-06 00:00", 32, bench.Phase(1.0), rounds,
                        memory=(1.0, 1.0), exit_status=0, load=(("", ""), ("", "")))
        measure, text, _ = bench.step_cost_row(run)
        assert measure.startswith("decoder steps and rows, offline: one call / calls of 32")
        assert text == "60 / 160 steps for 1000 / 1000 rows; seconds = 10.00 ms a step + 1.400 ms a row"


def test_bench_serve_reports_how_busy_the_model_was_while_served():
    from bench_scripts import load_bench_script

    for bench in load_bench_script("bench_serve"):
        served = bench.Phase(10.0, [0.2] * 50, 50)
        rounds = [bench.Round(bench.Offline(1.0, 1.0, 50), bench.Offline(1.5, 1.0, 50), served, cpu=1.0, calls=2,
                              model_seconds=seconds) for seconds in (9.4, 8.0)]
        run = bench.Run("python bench/bench_serve.py", "2026-12-06 00:00", 32, bench.Phase(1.0, [0.05], 1), rounds,
                        memory=(1.0, 1.0), exit_status=0, load=(("", ""), ("", "")))
        rows = {measure: result for measure, result, _ in bench.rows(run)}
        assert rows["model busy while served: its calls' time / the wall clock (each round)"] == "94% / 80%"
