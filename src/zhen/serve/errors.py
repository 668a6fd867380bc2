"""The one shape of every error the server answers: `{"error": "…"}` with LibreTranslate's status codes.

400 a bad request, 403 no valid API key, 404/405 no such route or method, 413 too large, 429 too many
(rate limit or a full queue), 503 shutting down, 500 only for a fault of the server itself.
"""

from __future__ import annotations

from starlette.responses import JSONResponse


class ApiError(Exception):
    """An answer other than 200, raised anywhere in a request and turned into JSON by the app."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)
