"""`zhen serve`: one process that loads a model once and answers over HTTP.

    settings.py    every server setting and its default, checked once
    errors.py      the one shape of an error answer: {"error": "…"} and its status
    protocol.py    LibreTranslate's request fields and answers (/translate, /detect, /languages)
    limits.py      API keys, the per-client rate limit, request sizes
    batcher.py     the queue and the one worker thread that batches concurrent requests for the model
    engine.py      what the server asks of a Translator (n-best, token counts, explain traces)
    trace_json.py  the explain trace (zhen.explain) as JSON for the page
    metrics.py     Prometheus metrics and the middleware that counts requests
    app.py         the Starlette routes that tie these together
    command.py     `zhen serve` arguments → settings → uvicorn
    static/        the page at / (HTML, JS, CSS; no CDN, no build step)

Nothing here imports the server's third-party libraries at package import time, so `zhen serve`
can say which extra is missing instead of failing with an ImportError.
"""
