"""Every error leaves as the contract's body: {"status_code", "detail", "extra"?}. Domain
errors map to their status; anything unexpected is logged and answered 500 without details."""

from __future__ import annotations

import logging
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException

from domain.errors import (
    Conflict,
    DomainError,
    Forbidden,
    InvalidInput,
    NotFound,
    RateLimited,
    Unauthorized,
    Unavailable,
)

log = logging.getLogger("chirp.web")

STATUS_BY_ERROR: dict[type[DomainError], int] = {
    InvalidInput: 422,
    NotFound: 404,
    Forbidden: 403,
    Conflict: 409,
    Unauthorized: 401,
    RateLimited: 429,
    Unavailable: 503,
}


def error_response(
    status: int, detail: str, *, extra: object = None, headers: dict[str, str] | None = None
) -> Response[dict[str, object]]:
    body: dict[str, object] = {"status_code": status, "detail": detail}
    if extra:
        body["extra"] = extra
    return Response(body, status_code=status, headers=headers, media_type=MediaType.JSON)


def rate_limit_headers(limit: int, remaining: int, reset: int) -> dict[str, str]:
    return {
        "RateLimit-Limit": str(limit),
        "RateLimit-Remaining": str(remaining),
        "RateLimit-Reset": str(reset),
    }


def handle_domain_error(
    _: Request[Any, Any, Any], error: DomainError
) -> Response[dict[str, object]]:
    status = next((code for kind, code in STATUS_BY_ERROR.items() if isinstance(error, kind)), 400)
    headers: dict[str, str] = {}
    if isinstance(error, RateLimited):
        headers["Retry-After"] = str(max(1, error.retry_after))
        headers.update(rate_limit_headers(error.limit, 0, max(1, error.retry_after)))
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    return error_response(status, error.detail, headers=headers)


def handle_http_error(
    _: Request[Any, Any, Any], error: HTTPException
) -> Response[dict[str, object]]:
    return error_response(
        error.status_code, str(error.detail), extra=error.extra, headers=error.headers
    )


def handle_unexpected(
    request: Request[Any, Any, Any], error: Exception
) -> Response[dict[str, object]]:
    log.exception("unhandled error", extra={"path": request.url.path})
    return error_response(500, "internal server error")
