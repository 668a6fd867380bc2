"""Every setting of `zhen serve`, with its default, checked once when the server starts."""

from __future__ import annotations

from dataclasses import dataclass

from zhen.errors import ZhenError


class ServeError(ZhenError, ValueError):
    """A server setting or start-up condition the user can fix (a bad limit, a missing key file, a busy port)."""


@dataclass(frozen=True)
class ServeSettings:
    """What the server accepts and how it batches. Sizes are per request unless said otherwise."""

    host: str = "127.0.0.1"  # loopback: reachable from other machines only when asked for
    port: int = 5000  # LibreTranslate's port, so clients configured for it need only the host
    max_chars: int = 5000  # characters in one request, all texts of q together
    max_line_chars: int = 500  # characters in one line: a line is one sequence for the model, and its cost
    max_texts: int = 128  # strings in one q list (LibreTranslate's batch limit)
    max_body_bytes: int = 256 * 1024  # request body, before any parsing
    max_queue: int = 1024  # lines waiting for the model; past it new requests get 429
    max_alternatives: int = 4  # LibreTranslate's `alternatives`: extra n-best entries per text
    batch_tokens: int = 2048  # source tokens the worker gives the model in one call
    max_wait_ms: float = 5.0  # how long a lone request waits for company before the model starts
    explain_max_chars: int = 64  # explain traces grow with the square of the length
    rate_limit: int = 0  # requests per minute per client on /translate, /detect, /api/explain; 0: none
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API; none: CORS off
    graceful_timeout: float = 30.0  # seconds to finish in-flight requests after SIGTERM

    def __post_init__(self) -> None:
        positive = ("max_chars", "max_line_chars", "max_texts", "max_body_bytes", "max_queue", "batch_tokens",
                    "explain_max_chars")
        for name in positive:
            if getattr(self, name) < 1:
                raise ServeError(f"--{name.replace('_', '-')} must be at least 1; got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            raise ServeError(f"--port must be between 0 and 65535; got {self.port}")
        if self.max_line_chars > self.max_chars:
            raise ServeError(f"--max-line-chars ({self.max_line_chars}) cannot exceed --max-chars ({self.max_chars})")
        if self.max_alternatives < 0 or self.rate_limit < 0:
            raise ServeError("--max-alternatives and --rate-limit cannot be negative")
        if not 0 <= self.max_wait_ms <= 1000:
            raise ServeError(f"--max-wait-ms must be between 0 and 1000; got {self.max_wait_ms}")
        if self.graceful_timeout <= 0:
            raise ServeError(f"--graceful-timeout must be positive; got {self.graceful_timeout}")
