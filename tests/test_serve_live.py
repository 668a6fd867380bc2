"""`zhen serve` with the shipped model over real HTTP: LibreTranslate clients, batching, explain, SIGTERM.

One uvicorn server runs in a thread of this process on 127.0.0.1 (a free port) for most tests; the SIGTERM
test starts a real `zhen serve` process. Every loop here is bounded in count and time.
"""

from __future__ import annotations

import json
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("uvicorn")
libretranslatepy = pytest.importorskip("libretranslatepy")

import uvicorn  # noqa: E402
from serve_support import start_server, stop_server  # noqa: E402

from zhen.serve.app import create_app  # noqa: E402
from zhen.serve.limits import ApiKeys  # noqa: E402
from zhen.serve.settings import ServeSettings  # noqa: E402
from zhen.translator import Translator  # noqa: E402

SENTENCES = ["我爱你", "今天天气很好。", "你叫什么名字？", "我们走吧。", "他在学习中文。", "这本书很有意思。",
             "我饿了。", "你会说英语吗？", "谢谢你的帮助。", "我明天去北京。", "猫在桌子上。", "请再说一遍。"]


def post(url: str, fields: dict, timeout: float = 60) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    request = urllib.request.Request(url, data=json.dumps(fields).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


class ThreadServer:
    """uvicorn serving `app` on 127.0.0.1:<free port> in a thread of this process."""

    def __init__(self, app) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


@pytest.fixture(scope="module")
def translator() -> Translator:
    return Translator.load(device="cpu")


@pytest.fixture(scope="module")
def served(translator):
    with ThreadServer(create_app(translator, ServeSettings(), model_name="shipped")) as server:
        yield server


def test_libretranslatepy_works_unchanged(served):
    client = libretranslatepy.LibreTranslateAPI(served.url)
    assert client.translate("我爱你", "zh", "en") == "I love you."
    assert client.translate("我爱你", "auto", "en") == "I love you."
    assert {"code": "zh", "name": "Chinese", "targets": ["en"]} in client.languages()
    assert client.detect("我爱你")[0]["language"] == "zh"
    with pytest.raises(urllib.error.HTTPError) as error:
        client.translate("我爱你", "en", "es")  # the library's own defaults: a pair this server does not have
    assert error.value.code == 400 and "en is not supported" in json.loads(error.value.read())["error"]


def test_libretranslatepy_with_an_api_key(translator, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("secret-key-1\n", encoding="utf-8")
    app = create_app(translator, ServeSettings(), api_keys=ApiKeys.load(keys))
    with ThreadServer(app) as server:
        assert libretranslatepy.LibreTranslateAPI(server.url, "secret-key-1").translate("我爱你", "zh", "en") \
            == "I love you."
        with pytest.raises(urllib.error.HTTPError) as error:
            libretranslatepy.LibreTranslateAPI(server.url, "guess").translate("我爱你", "zh", "en")
        assert error.value.code == 403


def test_a_sentence_gets_the_same_translation_whatever_it_is_batched_with(served, translator):
    alone = {s: translator.translate([s])[0] for s in SENTENCES}
    assert translator.translate(SENTENCES) == [alone[s] for s in SENTENCES]  # one offline batch of all of them
    rng = random.Random(0)
    requests = [rng.sample(SENTENCES, rng.randint(1, 3)) for _ in range(16)]
    with ThreadPoolExecutor(12) as pool:  # 12 clients at once: their requests share model calls
        answers = list(pool.map(lambda q: post(served.url + "translate", {"q": q, "source": "zh", "target": "en"}),
                                requests))
    for q, (status, answer) in zip(requests, answers, strict=True):
        assert status == 200
        assert answer["translatedText"] == [alone[s] for s in q]
    metrics = urllib.request.urlopen(served.url + "metrics", timeout=10).read().decode()
    calls = float(re.search(r"^zhen_batch_sentences_count (\S+)$", metrics, re.M).group(1))
    lines = float(re.search(r"^zhen_batch_sentences_sum (\S+)$", metrics, re.M).group(1))
    assert lines / calls > 1.5, "concurrent requests should have shared model calls"


def test_explain_gives_the_trace_of_a_sentence(served):
    status, trace = post(served.url + "api/explain", {"q": "我爱你"})
    assert status == 200
    assert trace["translation"] == "I love you."
    assert trace["source"]["pieces"] == ["▁我爱", "你", "</s>"]
    assert trace["target"]["pieces"] == ["<s>", "▁I", "▁love", "▁you", "."]
    shapes = {a["name"]: (len(a["layers"]), len(a["layers"][0]), len(a["queries"]), len(a["keys"]))
              for a in trace["attention"]}
    assert shapes == {"encoder": (4, 4, 3, 3), "decoder": (4, 4, 5, 5), "cross": (4, 4, 5, 3)}
    assert [s["chosen"]["piece"] for s in trace["steps"]] == ["▁I", "▁love", "▁you", ".", "</s>"]
    assert post(served.url + "api/explain", {"q": "  "})[0] == 400  # nothing to explain after normalisation


# ----------------------------------------------------------------------------- a real process, stopped by SIGTERM


def health(url: str) -> dict:
    return json.loads(urllib.request.urlopen(url + "health", timeout=10).read())


def wait_for(condition, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_sigterm_answers_what_is_in_flight_then_exits():
    process, url = start_server("--beam", "1", "--max-wait-ms", "0")
    try:
        translate = {"source": "zh", "target": "en"}
        with ThreadPoolExecutor(5) as pool:
            long = pool.submit(post, url + "translate", {"q": SENTENCES * 4, **translate})  # 48 lines: busy a while
            wait_for(lambda: health(url)["translating"] > 0, "the long request to start")
            short = [pool.submit(post, url + "translate", {"q": s, **translate}) for s in SENTENCES[:4]]
            wait_for(lambda: health(url)["queued"] == 4, "the short requests to queue")
            process.send_signal(signal.SIGTERM)
            answers = [future.result(timeout=60) for future in [long, *short]]
        assert [status for status, _ in answers] == [200] * 5
        assert answers[1][1]["translatedText"] == "I love you."
        assert process.wait(timeout=60) == 0
        stderr = process.stderr.read()
        assert "Traceback" not in stderr and "Shutting down" in stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    with pytest.raises(OSError):
        urllib.request.urlopen(url + "health", timeout=5)


def test_an_int8_server_warns_that_its_answers_can_depend_on_the_batch():
    process, url = start_server("--precision", "int8", "--beam", "1")
    try:
        assert post(url + "translate", {"q": "我爱你", "source": "zh", "target": "en"}) == (
            200, {"translatedText": "I love you."})
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        warning = "zhen: warning: int8 translations can depend on the sentences batched with them"
        assert warning in process.stderr.read()
    finally:
        stop_server(process)


def test_start_up_errors_are_one_line(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = str(busy.getsockname()[1])
    try:
        for args, message in [(["--port", port], "cannot listen on 127.0.0.1:" + port),
                              (["--max-queue", "0"], "--max-queue must be at least 1"),
                              (["--api-keys", str(tmp_path / "none")], "cannot read the API key file")]:
            done = subprocess.run([sys.executable, "-m", "zhen", "serve", *args], capture_output=True, text=True,
                                  timeout=120)
            assert done.returncode == 2
            assert done.stderr.strip().splitlines()[-1].startswith(f"zhen: error: {message}")
    finally:
        busy.close()
