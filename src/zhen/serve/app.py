"""The Starlette app of `zhen serve`: routes, error answers, middleware, and the batcher's life.

    GET  /                  the page (static/index.html), which uses the routes below
    POST /translate         LibreTranslate's translate (protocol.py)
    POST /detect            LibreTranslate's detect
    GET  /languages         LibreTranslate's languages
    GET  /frontend/settings LibreTranslate's page settings: limits, whether a key is needed
    POST /api/explain       the explain trace of one sentence as JSON (trace_json.py)
    GET  /health            200 while the model's worker runs, else 503
    GET  /metrics           Prometheus text format (metrics.py)

Every error is `{"error": "…"}` with its status (errors.py); a fault of the server is a 500 whose details
go to the server's log, never to the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from zhen.errors import ZhenError
from zhen.serve.batcher import Batcher, BatcherClosed, QueueFull
from zhen.serve.engine import Engine
from zhen.serve.errors import ApiError, error_response
from zhen.serve.limits import Access, ApiKeys, BodyLimit, RateLimiter, check_sizes
from zhen.serve.metrics import Metrics, MetricsMiddleware
from zhen.serve.protocol import (
    LANGUAGES,
    detect_languages,
    parse_text,
    parse_translate,
    read_fields,
    split_lines,
    translate_answer,
)
from zhen.serve.settings import ServeSettings

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("zhen.serve")
T = TypeVar("T")


@dataclass
class ServeState:
    """Everything the routes share, kept on `app.state.zhen`."""

    settings: ServeSettings
    engine: Engine
    batcher: Batcher
    access: Access
    metrics: Metrics
    model_name: str


def _state(request: Request) -> ServeState:
    return request.app.state.zhen


async def _on_model(work: Awaitable[T]) -> T:
    """Await work queued for the model; its failures become answers (the worker thread never dies of them)."""
    try:
        return await work
    except QueueFull as error:
        raise ApiError(429, str(error), {"Retry-After": "1"}) from None
    except BatcherClosed as error:
        raise ApiError(503, str(error)) from None
    except ZhenError as error:  # the translator or the trace refused the input
        raise ApiError(400, str(error)) from None
    except Exception:
        log.exception("the model failed on a request")
        raise ApiError(500, "Internal server error: the model failed on this request (the server's log has the "
                            "details)") from None


# ----------------------------------------------------------------------------- routes


async def translate(request: Request) -> Response:
    state = _state(request)
    fields = await read_fields(request)
    state.access.check(request, fields)
    query = parse_translate(fields, state.settings.max_alternatives)
    check_sizes(query.texts, query.batch, state.settings)
    lines, counts = split_lines(query.texts)
    results = await _on_model(state.batcher.translate(lines, 1 + query.alternatives))
    return JSONResponse(translate_answer(query, counts, results))


async def detect(request: Request) -> Response:
    state = _state(request)
    fields = await read_fields(request)
    state.access.check(request, fields)
    text = parse_text(fields)
    check_sizes([text], False, state.settings)
    return JSONResponse(detect_languages(text))


async def explain(request: Request) -> Response:
    state = _state(request)
    fields = await read_fields(request)
    state.access.check(request, fields)
    text = parse_text(fields)
    if len(text) > state.settings.explain_max_chars:
        raise ApiError(413, f"Invalid request: explain takes at most {state.settings.explain_max_chars} "
                            f"characters; got {len(text)}")
    # The trace and its JSON (hundreds of kB for a long sentence) are both made off the event loop.
    return await _on_model(state.batcher.call(lambda: JSONResponse(state.engine.explain(text))))


async def languages(request: Request) -> Response:
    return JSONResponse(LANGUAGES)


async def frontend_settings(request: Request) -> Response:
    """LibreTranslate's /frontend/settings, plus what zhen's page needs under "zhen"."""
    state = _state(request)
    settings = state.settings
    return JSONResponse({
        "charLimit": settings.max_chars,
        "frontendTimeout": 300,
        "apiKeys": state.access.keys is not None,
        "keyRequired": state.access.keys is not None,
        "suggestions": False,
        "filesTranslation": False,
        "supportedFilesFormat": [],
        "language": {"source": {"code": "zh", "name": "Chinese"}, "target": {"code": "en", "name": "English"}},
        "zhen": {"model": state.model_name, "beam": state.engine.beam, "lineCharLimit": settings.max_line_chars,
                 "maxAlternatives": settings.max_alternatives, "explainCharLimit": settings.explain_max_chars},
    })


async def health(request: Request) -> Response:
    state = _state(request)
    alive = state.batcher.alive
    return JSONResponse({"status": "ok" if alive else "unavailable", "model": state.model_name,
                         "beam": state.engine.beam, "queued": state.batcher.queued,
                         "translating": state.batcher.running}, status_code=200 if alive else 503)


async def metrics(request: Request) -> Response:
    body, content_type = _state(request).metrics.exposition(request.headers.get("accept"))
    return Response(body, headers={"Content-Type": content_type})


async def index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


ROUTES = [
    Route("/", index, methods=["GET"]),
    Route("/translate", translate, methods=["POST"]),
    Route("/detect", detect, methods=["POST"]),
    Route("/languages", languages, methods=["GET"]),
    Route("/frontend/settings", frontend_settings, methods=["GET"]),
    Route("/api/explain", explain, methods=["POST"]),
    Route("/health", health, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Mount("/static", StaticFiles(directory=STATIC), name="static"),
]


# ----------------------------------------------------------------------------- error answers


async def _api_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, ApiError)
    return error_response(error.status, error.message, error.headers)


async def _http_error(request: Request, error: Exception) -> Response:
    """Starlette's own errors (no such route, wrong method, body too large) in the same JSON shape."""
    assert isinstance(error, HTTPException)
    return error_response(error.status_code, f"{error.detail}: {request.method} {request.url.path}",
                          dict(error.headers or {}))


async def _server_error(request: Request, error: Exception) -> Response:
    return error_response(500, "Internal server error (the server's log has the details)")


# ----------------------------------------------------------------------------- the app


def create_app(translator: Any, settings: ServeSettings | None = None, *, api_keys: ApiKeys | None = None,
               model_name: str = "", model_threads: int | None = None) -> Starlette:
    """The server for one loaded `Translator`. The batcher's worker starts and stops with the app's lifespan;
    `model_threads`: the CPU threads it translates with (default: leave PyTorch's setting as it is)."""
    settings = settings or ServeSettings()
    engine = Engine(translator, model_threads)
    metrics_ = Metrics()
    batcher = Batcher(engine.translate_nbest, engine.cost, beam=engine.beam, batch_tokens=settings.batch_tokens,
                      max_wait=settings.max_wait_ms / 1000, max_queue=settings.max_queue,
                      on_batch=metrics_.observe_batch, on_start=engine.on_worker_start)
    metrics_.track_queue(lambda: batcher.queued)
    access = Access(api_keys, RateLimiter(settings.rate_limit) if settings.rate_limit else None)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:  # after uvicorn has answered what was in flight: the queue is empty, the worker stops
            await asyncio.to_thread(batcher.close, settings.graceful_timeout)

    middleware = [Middleware(MetricsMiddleware, metrics=metrics_),
                  Middleware(BodyLimit, max_bytes=settings.max_body_bytes)]
    if settings.cors_origins:  # off unless origins are named: a page elsewhere cannot use this server
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                                     allow_methods=["GET", "POST"], allow_headers=["Content-Type", "Authorization"]))
    app = Starlette(routes=ROUTES, middleware=middleware, lifespan=lifespan,
                    exception_handlers={ApiError: _api_error, HTTPException: _http_error, Exception: _server_error})
    app.state.zhen = ServeState(settings, engine, batcher, access, metrics_, model_name)
    return app
