"""`zhen serve`: its arguments, the checks before it starts, and uvicorn.

Start-up: check the `serve` extra is installed → settings → API keys → load the model once and translate one
sentence (so the first request does not pay for packing the weights) → bind the socket → print the address →
serve. SIGTERM or Ctrl-C: stop accepting, answer what is in flight, stop the model's worker, exit.

This module imports only the standard library at import time: `zhen --help` stays quick and a missing extra
is one clear line instead of an ImportError.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import ipaddress
import signal
import socket
import sys
from typing import Any

from zhen.serve.settings import ServeError, ServeSettings

# import name → distribution name, for the error message
REQUIRED = {"starlette": "starlette", "uvicorn": "uvicorn", "prometheus_client": "prometheus-client",
            "multipart": "python-multipart"}
_HELP = {
    "max_chars": "characters per request, all texts together",
    "max_line_chars": "characters per line (one line is one sentence for the model)",
    "max_texts": "strings in one q list",
    "max_body_bytes": "request body size in bytes",
    "max_queue": "lines waiting for the model; past it: 429",
    "max_alternatives": "most alternatives a request may ask for",
    "batch_tokens": "source tokens the model gets in one call",
    "max_wait_ms": "how long a lone request waits for others to batch with",
    "explain_max_chars": "characters of a sentence /api/explain takes",
    "rate_limit": "requests per minute per client (0: no limit)",
    "graceful_timeout": "seconds to finish in-flight requests after SIGTERM",
}


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The `zhen serve` options (defaults from `ServeSettings`); returns the parser."""
    defaults = ServeSettings()
    parser.add_argument("--model", "-m", help="model directory or training run (default: the shipped model)")
    parser.add_argument("--host", default=defaults.host, help=f"address to listen on (default {defaults.host}: "
                        "this machine only; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=defaults.port, help=f"default {defaults.port}; 0: any free port")
    parser.add_argument("--beam", type=int, help="beam size (1: greedy); default: the model's decode.beam")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    parser.add_argument("--precision", help="fp32, bf16, int8 or auto (default: the model's decode.precision)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads for the model's worker (default: PyTorch's, one per core or OMP_NUM_THREADS)")
    for name, text in _HELP.items():
        kind = type(getattr(defaults, name))
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=getattr(defaults, name), metavar="N",
                            help=f"{text} (default {getattr(defaults, name)})")
    parser.add_argument("--api-keys", metavar="FILE", help="require an API key from this file (one a line)")
    parser.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                        help="let pages from this origin call the API (repeatable; default: none)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.add_argument("--access-log", action="store_true", help="log every request")
    return parser


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    values = {field.name: getattr(args, field.name) for field in dataclasses.fields(ServeSettings)
              if field.name != "cors_origins"}
    return ServeSettings(**values, cors_origins=tuple(args.cors_origin))


def require_extra() -> None:
    missing = [dist for module, dist in REQUIRED.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise ServeError(f"zhen serve needs {', '.join(missing)}: pip install 'zhen[serve]'")


def bind(host: str, port: int) -> socket.socket:
    """A bound socket, before the model loads: a busy port fails at once, and the port is known (also for
    --port 0). It listens only once the server is ready (see `run`)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as error:
        raise ServeError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    return sock


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _log_config() -> dict[str, Any]:
    """uvicorn's logging, with zhen.serve's messages (model failures) and the translator's warnings
    (`py.warnings`) in the same format."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    for name in ("zhen.serve", "py.warnings"):
        config["loggers"][name] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


def run(args: argparse.Namespace) -> int:
    require_extra()
    settings = settings_from_args(args)
    if args.threads is not None and args.threads < 1:
        raise ServeError(f"--threads must be at least 1; got {args.threads}")
    import logging

    import torch

    args.threads = args.threads or torch.get_num_threads()  # for the model's worker thread (Engine)
    torch.set_num_threads(1)  # the main thread: loading, warm-up, the event loop
    logging.captureWarnings(True)  # the translator's warnings (a line cut to the model's positions) go to the log
    from zhen.serve.limits import ApiKeys

    keys = ApiKeys.load(args.api_keys) if args.api_keys else None
    sock = bind(settings.host, settings.port)
    try:
        server, banner, cautions = _server(args, settings, keys)
        sock.listen(2048)  # from here connections wait in the backlog until the event loop accepts them
        print(banner.format(port=sock.getsockname()[1]), flush=True)
        if not _is_loopback(settings.host) and keys is None:
            cautions.append(f"listening on {settings.host} without --api-keys: anyone who can reach it can use it")
        for caution in cautions:
            print(f"zhen: warning: {caution}", file=sys.stderr, flush=True)
        # uvicorn answers SIGTERM gracefully, then re-raises it to the handler it found: ours makes that a
        # normal exit (status 0) instead of death by signal.
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
        try:
            server.run(sockets=[sock])
        finally:
            signal.signal(signal.SIGTERM, previous)
    finally:
        sock.close()
    return 0


def _server(args: argparse.Namespace, settings: ServeSettings, keys: Any) -> tuple[Any, str, list[str]]:
    """Load the model once, warm it up, and build the uvicorn server; and the banner and warnings to print."""
    import torch
    import uvicorn

    from zhen.serve.app import create_app
    from zhen.translator import Translator

    options = {key: value for key, value in (("beam", args.beam), ("precision", args.precision)) if value is not None}
    translator = Translator.load(args.model, device=args.device, **options)
    translator.translate(["你好。"])  # warm-up: packed weights and first-call allocations, before any client waits
    name = args.model or "the shipped model"
    app = create_app(translator, settings, api_keys=keys, model_name=name, model_threads=args.threads)
    config = uvicorn.Config(app, log_level=args.log_level, access_log=args.access_log, lifespan="on",
                            timeout_graceful_shutdown=settings.graceful_timeout, log_config=_log_config())
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    banner = (f"zhen serve: http://{host}:{{port}}/ ({name}, beam {translator.config.decode.beam}); "
              "Ctrl-C or SIGTERM stops it")
    cautions = []
    if translator.dtype == torch.int8:  # one activation scale per call (zhen.quantize; README, int8)
        cautions.append("int8 translations can depend on the sentences batched with them: a sentence may be "
                        "answered differently than when it is translated alone")
    return uvicorn.Server(config), banner, cautions
