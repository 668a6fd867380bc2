"""`zhen serve`'s HTTP API with a scripted translator: every answer, good and bad, is JSON with the right status.

The app runs in-process under Starlette's TestClient (real ASGI, real middleware, real batcher thread); the
translator is a stand-in, so each test takes milliseconds. The real model and a real server process are in
test_serve_live.py and test_serve_browser.py.
"""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")

from starlette.testclient import TestClient

from zhen.serve.app import STATIC, create_app
from zhen.serve.limits import ApiKeys
from zhen.serve.settings import ServeSettings
from zhen.translator import Translation

ZH = {"source": "zh", "target": "en"}


class StubTranslator:
    """Translates 'X' to 'en:X' (k-th best: 'en:X#k'); '崩溃' makes it fail; `delay` makes it slow."""

    def __init__(self, delay: float = 0.0) -> None:
        self.config = SimpleNamespace(decode=SimpleNamespace(beam=5))
        self.normalizer = SimpleNamespace(zh=lambda text: " ".join(text.split()))
        self.tokenizer = SimpleNamespace(encode_src=lambda texts: [[7] * (len(t) + 1) for t in texts])
        self.warnings: list[str] = []
        self.delay = delay
        self.calls = 0

    def translate_nbest(self, lines: list[str], nbest: int) -> list[list[Translation]]:
        self.calls += 1
        if "崩溃" in lines:
            raise RuntimeError("a bug deep in the model (this text must not reach the client)")
        time.sleep(self.delay)
        return [[Translation(f"en:{line}" + (f"#{k}" if k else ""), -0.5 * (k + 1), ()) for k in range(nbest)]
                if line else [Translation("", 0.0, ())] for line in lines]


@pytest.fixture
def make_client():
    clients = []

    def make(translator=None, **settings) -> TestClient:
        keys = settings.pop("api_keys", None)
        app = create_app(translator or StubTranslator(), ServeSettings(**settings), api_keys=keys, model_name="stub")
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()  # runs the lifespan: the batcher's worker starts
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def error_of(response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert set(response.json()) == {"error"}
    assert "Traceback" not in response.text
    return response.json()["error"]


# ----------------------------------------------------------------------------- what LibreTranslate clients send


def test_translate_json_string_and_list(make_client):
    client = make_client()
    assert client.post("/translate", json={"q": "你好", **ZH}).json() == {"translatedText": "en:你好"}
    answer = client.post("/translate", json={"q": ["你好", "", "一\n二"], **ZH}).json()
    assert answer == {"translatedText": ["en:你好", "", "en:一\nen:二"]}


def test_translate_form_multipart_and_query_string(make_client):
    client = make_client()
    assert client.post("/translate", data={"q": "你好", **ZH}).json() == {"translatedText": "en:你好"}
    multipart = client.post("/translate", data=ZH, files={"q": (None, "你好")})
    assert multipart.json() == {"translatedText": "en:你好"}
    assert client.post("/translate?q=%E4%BD%A0%E5%A5%BD&source=zh&target=en").json() == {"translatedText": "en:你好"}


def test_alternatives_scores_and_auto(make_client):
    client = make_client()
    answer = client.post("/translate", json={"q": "你好", "source": "auto", "target": "en", "alternatives": 2,
                                             "scores": True}).json()
    assert answer == {"translatedText": "en:你好", "alternatives": ["en:你好#1", "en:你好#2"],
                      "scores": [-0.5, -1.0, -1.5], "detectedLanguage": {"confidence": 100.0, "language": "zh"}}
    answer = client.post("/translate", json={"q": ["一", "二"], **ZH, "alternatives": 1}).json()
    assert answer == {"translatedText": ["en:一", "en:二"], "alternatives": [["en:一#1"], ["en:二#1"]]}


def test_languages_detect_settings_health(make_client):
    client = make_client()
    languages = client.request("GET", "/languages", content=b"", headers={"Content-Type": "text/plain"}).json()
    assert languages[0] == {"code": "zh", "name": "Chinese", "targets": ["en"]}
    assert client.post("/detect", data={"q": "你好"}).json() == [{"confidence": 100.0, "language": "zh"}]
    settings = client.get("/frontend/settings").json()
    assert settings["charLimit"] == 5000 and settings["keyRequired"] is False and settings["zhen"]["beam"] == 5
    assert client.get("/health").json() == {"status": "ok", "model": "stub", "beam": 5, "queued": 0,
                                            "translating": 0}


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("body", "content_type", "message"), [
    (b'{"q": "x", ', "application/json", "Invalid JSON"),
    (b'["x"]', "application/json", "expected an object"),
    (b"[" * 100_000 + b"]" * 100_000, "application/json", "nested too deeply"),
    (b'{"q": "\xff\xfe", "source": "zh", "target": "en"}', "application/json", "not valid UTF-8"),
    (b"q=%FF%FE&source=zh&target=en", "application/x-www-form-urlencoded", "not valid UTF-8"),
    (b"q=x", "text/csv", "unsupported Content-Type"),
    (b'{"q": null, "source": "zh", "target": "en"}', "application/json", "missing q"),
    (b'{"q": {"a": 1}, "source": "zh", "target": "en"}', "application/json", "string or a list"),
    (b'{"q": "x", "source": "ru", "target": "en"}', "application/json", "ru is not supported"),
    (b'{"q": "x", "source": "zh", "target": "zh"}', "application/json", "zh is not supported"),
])
def test_bad_requests_get_400_and_a_message(make_client, body, content_type, message):
    client = make_client(max_body_bytes=1_000_000)
    assert message in error_of(client.post("/translate", content=body, headers={"Content-Type": content_type}), 400)


def test_sizes_past_the_limits_get_413(make_client):
    client = make_client(max_chars=100, max_line_chars=20, max_texts=3, max_body_bytes=2000, explain_max_chars=8)
    assert "4 texts" in error_of(client.post("/translate", json={"q": ["a"] * 4, **ZH}), 413)
    assert "exceeds text limit (100)" in error_of(client.post("/translate", json={"q": "字\n" * 60, **ZH}), 413)
    assert "line 1 of q" in error_of(client.post("/translate", json={"q": "字" * 21, **ZH}), 413)
    assert "at most 2000" in error_of(client.post("/translate", json={"q": "x" * 3000, **ZH}), 413)
    # A body sent in chunks without a length is stopped as it grows past the limit.
    chunks = (b'{"q": "' + b"x" * 500 if i == 0 else b"x" * 500 for i in range(10))
    assert "more than 2000" in error_of(client.post("/translate", content=chunks,
                                                       headers={"Content-Type": "application/json"}), 413)
    assert "at most 8" in error_of(client.post("/api/explain", json={"q": "我爱你我爱你我爱你"}), 413)
    assert client.post("/translate", json={"q": "字" * 20, **ZH}).status_code == 200


def test_unknown_routes_and_methods_are_json(make_client):
    client = make_client()
    assert "Not Found" in error_of(client.get("/v2/translate"), 404)
    assert "Method Not Allowed" in error_of(client.get("/translate"), 405)
    assert "missing q" in error_of(client.post("/api/explain", json={}), 400)


def test_a_fault_is_a_500_without_details_and_the_server_keeps_working(make_client):
    translator = StubTranslator()
    client = make_client(translator)
    message = error_of(client.post("/translate", json={"q": "崩溃", **ZH}), 500)
    assert "bug deep in the model" not in message
    assert client.post("/translate", json={"q": "你好", **ZH}).json() == {"translatedText": "en:你好"}
    # In a batch with other requests, only the failing request fails.
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda q: client.post("/translate", json={"q": q, **ZH}), ["一", "崩溃", "二", "三"]))
    assert [a.status_code for a in answers] == [200, 500, 200, 200]


# ----------------------------------------------------------------------------- access


def test_api_keys(make_client):
    client = make_client(api_keys=ApiKeys(["k-1", "k-2"]))
    assert "needs an API key" in error_of(client.post("/translate", json={"q": "你好", **ZH}), 403)
    assert error_of(client.post("/translate", json={"q": "你好", **ZH, "api_key": "k-3"}), 403) == "Invalid API key"
    assert client.post("/translate", json={"q": "你好", **ZH, "api_key": "k-2"}).status_code == 200
    assert client.post("/translate", data={"q": "你好", **ZH, "api_key": "k-1"}).status_code == 200
    assert error_of(client.post("/api/explain", json={"q": "你好"}), 403)
    assert client.get("/languages").status_code == 200  # as in LibreTranslate: no key needed to list languages
    assert client.get("/frontend/settings").json()["keyRequired"] is True


def test_rate_limit_per_client(make_client):
    client = make_client(rate_limit=3)
    answers = [client.post("/translate", json={"q": "你好", **ZH}) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert "Slowdown" in error_of(answers[-1], 429)
    assert int(answers[-1].headers["retry-after"]) >= 1
    assert client.get("/health").status_code == 200  # only the routes that use the model are limited


def test_cors_is_off_unless_origins_are_named(make_client):
    headers = {"Origin": "https://example.org"}
    plain = make_client().post("/translate", json={"q": "你好", **ZH}, headers=headers)
    assert "access-control-allow-origin" not in plain.headers
    client = make_client(cors_origins=("https://example.org",))
    allowed = client.post("/translate", json={"q": "你好", **ZH}, headers=headers)
    assert allowed.headers["access-control-allow-origin"] == "https://example.org"
    other = client.post("/translate", json={"q": "你好", **ZH}, headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    preflight = client.options("/translate", headers={**headers, "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 200


def test_a_full_queue_answers_429_and_recovers(make_client):
    translator = StubTranslator(delay=0.3)
    client = make_client(translator, max_queue=2, max_wait_ms=0)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: client.post("/translate", json={"q": f"句{i}", **ZH}), range(8)))
    statuses = sorted(a.status_code for a in answers)
    assert statuses.count(200) >= 3 and statuses.count(429) >= 1 and set(statuses) <= {200, 429}
    busy = next(a for a in answers if a.status_code == 429)
    assert "busy" in error_of(busy, 429) and busy.headers["retry-after"] == "1"
    assert client.post("/translate", json={"q": "你好", **ZH}).status_code == 200


# ----------------------------------------------------------------------------- metrics and the page


def test_metrics_in_prometheus_text_format(make_client):
    client = make_client()
    client.post("/translate", json={"q": ["一", "二"], **ZH})
    client.post("/translate", json={"q": "", **ZH})
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'zhen_http_requests_total{route="/translate",status="200"} 1.0' in text
    assert 'zhen_http_errors_total{route="/translate",status="400"} 1.0' in text
    assert 'zhen_http_request_duration_seconds_bucket{le="0.1",route="/translate"}' in text
    assert "zhen_batch_sentences_count 1.0" in text and "zhen_batch_sentences_sum 2.0" in text
    assert "zhen_sentences_translated_total 2.0" in text and "zhen_queue_sentences 0.0" in text
    client.get("/no/such/page/1")
    assert 'route="other"' in client.get("/metrics").text  # invented paths share one label


def test_the_page_and_its_files_come_from_the_package_with_no_outside_urls(make_client):
    client = make_client()
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for name in re.findall(r'(?:href|src)="(/static/[^"]+)"', page.text):
        assert client.get(name).status_code == 200
    for path in Path(STATIC).iterdir():
        text = path.read_text(encoding="utf-8")
        urls = set(re.findall(r"https?://[^\s\"'<>)]+", text)) - {"http://www.w3.org/2000/svg"}
        assert not urls, f"{path.name} refers to {urls}"


def test_requests_are_answered_while_the_model_is_busy(make_client):
    """The event loop never runs the model: /health answers at once while a slow batch is translated."""
    client = make_client(StubTranslator(delay=0.5))
    slow = threading.Thread(target=client.post, args=("/translate",), kwargs={"json": {"q": "慢", **ZH}})
    slow.start()
    time.sleep(0.1)
    start = time.perf_counter()
    assert client.get("/health").status_code == 200
    assert time.perf_counter() - start < 0.3
    slow.join()


def test_a_missing_extra_is_named(monkeypatch, capsys):
    import importlib.util

    from zhen.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    assert main(["serve"]) == 2
    assert capsys.readouterr().err.strip() == "zhen: error: zhen serve needs uvicorn: pip install 'zhen[serve]'"
