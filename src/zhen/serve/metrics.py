"""Prometheus metrics of the server, through prometheus_client, in a registry of its own (one per app).

    zhen_http_requests_total{route,status}          every answer
    zhen_http_errors_total{route,status}            answers with status >= 400
    zhen_http_request_duration_seconds{route}       latency histogram, request in → answer out
    zhen_batch_sentences                            lines (sentences) per model call: how well batching works
    zhen_batch_duration_seconds                     time of one model call
    zhen_sentences_translated_total
    zhen_queue_sentences                            lines waiting for the model now
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from starlette.types import ASGIApp, Message, Receive, Scope, Send

ROUTES = frozenset({"/", "/translate", "/detect", "/languages", "/api/explain", "/health", "/metrics",
                    "/frontend/settings"})
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("zhen_http_requests", "HTTP answers by route and status", ["route", "status"],
                                registry=r)
        self.errors = Counter("zhen_http_errors", "HTTP answers with status >= 400 by route and status",
                              ["route", "status"], registry=r)
        self.latency = Histogram("zhen_http_request_duration_seconds", "Time from request to answer", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_sentences = Histogram("zhen_batch_sentences", "Sentences (lines) translated in one model call",
                                         buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("zhen_batch_duration_seconds", "Time of one model call",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.sentences = Counter("zhen_sentences_translated", "Sentences (lines) translated", registry=r)
        self.queue = Gauge("zhen_queue_sentences", "Sentences (lines) waiting for the model", registry=r)

    def observe_batch(self, sentences: int, seconds: float) -> None:
        """Called by the batcher's worker thread after each model call (prometheus_client is thread-safe)."""
        self.batch_sentences.observe(sentences)
        self.batch_seconds.observe(seconds)
        self.sentences.inc(sentences)

    def track_queue(self, queued: Callable[[], float]) -> None:
        self.queue.set_function(queued)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        if status >= 400:
            self.errors.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The text exposition format (or OpenMetrics, if the scraper's Accept header asks for it)."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


def route_label(path: str) -> str:
    """A bounded set of labels: a client cannot create time series by inventing paths."""
    if path in ROUTES:
        return path
    return "/static" if path.startswith("/static/") else "other"


class MetricsMiddleware:
    """Counts and times every HTTP request, whatever answers it (a route, an error handler, a limit)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # if the app raises before answering, the outer error handler answers 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.metrics.observe_request(route_label(scope["path"]), status, time.perf_counter() - start)
