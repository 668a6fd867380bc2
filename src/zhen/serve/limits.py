"""Who may ask and how much: API keys, the per-client rate limit, and request sizes.

Keys and the rate limit are LibreTranslate's: `api_key` is a request field; without a valid one (when the
server has keys) the answer is 403; past the rate limit it is 429 with Retry-After. Sizes past the limits get
413. Everything here runs on the event loop's thread, so the rate limiter needs no lock.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from zhen.serve.errors import ApiError, error_response
from zhen.serve.settings import ServeError, ServeSettings


class ApiKeys:
    """The server's API keys, kept as SHA-256 digests and compared in constant time."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = [_digest(key) for key in keys if key]
        if not self._digests:
            raise ServeError("no API keys given")

    @classmethod
    def load(cls, path: str | Path) -> ApiKeys:
        """One key per line; blank lines and lines starting with # are ignored."""
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise ServeError(f"cannot read the API key file {path}: {error}") from None
        keys = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not keys:
            raise ServeError(f"the API key file {path} holds no keys (one a line)")
        return cls(keys)

    def __len__(self) -> int:
        return len(self._digests)

    def valid(self, key: str | None) -> bool:
        """Whether `key` is one of the keys. Digests have one length, so compare_digest's time does not depend
        on the key, and every stored key is compared, so neither does which one matched."""
        candidate = _digest(key or "")
        found = False
        for digest in self._digests:
            found |= hmac.compare_digest(candidate, digest)
        return found and bool(key)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


class RateLimiter:
    """A token bucket per client: `per_minute` requests a minute on average, bursts of up to `per_minute`."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic, max_clients: int = 10_000) -> None:
        self.per_minute = per_minute
        self._rate = per_minute / 60.0  # tokens a second
        self._clock = clock
        self._max_clients = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}  # client → (tokens, when counted)

    def retry_after(self, client: str) -> float:
        """0 if `client` may make a request now (and count it); else the seconds until it may."""
        now = self._clock()
        tokens, then = self._buckets.get(client, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + (now - then) * self._rate)
        allowed = tokens >= 1.0
        self._buckets[client] = (tokens - 1.0 if allowed else tokens, now)
        if len(self._buckets) > self._max_clients:
            self._forget_idle(now)
        return 0.0 if allowed else (1.0 - tokens) / self._rate

    def _forget_idle(self, now: float) -> None:
        """Drop clients whose bucket has refilled: they are where a new client starts, so memory stays bounded."""
        full_after = self.per_minute / self._rate
        self._buckets = {c: b for c, b in self._buckets.items() if now - b[1] < full_after}


class Access:
    """The checks a request that uses the model passes first: its API key, then the rate limit."""

    def __init__(self, keys: ApiKeys | None = None, limiter: RateLimiter | None = None) -> None:
        self.keys = keys
        self.limiter = limiter

    def check(self, request: Request, fields: dict) -> None:
        key = fields.get("api_key")
        key = key if isinstance(key, str) and key else None
        if self.keys is not None and not self.keys.valid(key):
            raise ApiError(403, "Invalid API key" if key else
                           "Invalid request: this server needs an API key (the api_key field); ask its operator")
        if self.limiter is not None:
            client = key if self.keys is not None and key else (request.client.host if request.client else "?")
            wait = self.limiter.retry_after(client)
            if wait:
                seconds = max(1, math.ceil(wait))
                raise ApiError(429, f"Slowdown: more than {self.limiter.per_minute} requests per minute from this "
                                    f"client; retry in {seconds} s", {"Retry-After": str(seconds)})


def check_sizes(texts: Sequence[str], batch: bool, settings: ServeSettings) -> None:
    """413 for a request with too many texts, too many characters, or too long a line."""
    if len(texts) > settings.max_texts:
        raise ApiError(413, f"Invalid request: q holds {len(texts)} texts; this server takes at most "
                            f"{settings.max_texts} per request")
    total = sum(len(text) for text in texts)
    if total > settings.max_chars:
        raise ApiError(413, f"Invalid request: request ({total} characters) exceeds text limit "
                            f"({settings.max_chars})")
    for index, text in enumerate(texts):
        for number, line in enumerate(text.splitlines(), 1):
            if len(line) > settings.max_line_chars:
                where = f"q[{index}]" if batch else "q"
                raise ApiError(413, f"Invalid request: line {number} of {where} has {len(line)} characters; "
                                    f"this server takes at most {settings.max_line_chars} a line (break long "
                                    "paragraphs into lines)")


class BodyLimit:
    """413 in JSON for a request body over the limit, on every route: at once when its Content-Length says so,
    else as soon as what has been read grows past it (chunked bodies), so no more than the limit is held."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await error_response(413, self._message(declared))(scope, receive, send)
            return
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:  # raised inside the route's body read: answered by the app
                    raise ApiError(413, self._message(f"more than {self.max_bytes}"))
            return message

        await self.app(scope, receive_within_limit, send)

    def _message(self, size: str) -> str:
        return f"Request body too large: {size} bytes; this server takes at most {self.max_bytes}"
