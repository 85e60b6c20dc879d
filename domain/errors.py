"""Errors the domain raises; the web layer maps each to its status code."""

from __future__ import annotations


class DomainError(Exception):
    """Base for rule violations. `detail` is safe to show to the caller."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidInput(DomainError):
    """The request breaks a rule (422)."""


class NotFound(DomainError):
    """The object does not exist or is not visible (404)."""


class Forbidden(DomainError):
    """The caller may not act on this object (403)."""


class Conflict(DomainError):
    """The object exists already (409)."""


class Unauthorized(DomainError):
    """Missing or wrong credentials (401)."""


class RateLimited(DomainError):
    def __init__(self, detail: str, retry_after: int, limit: int = 0) -> None:
        super().__init__(detail)
        self.retry_after = retry_after
        self.limit = limit


class Unavailable(DomainError):
    """A dependency that this operation cannot do without is down (503)."""
