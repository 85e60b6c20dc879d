"""The request id: one id per HTTP request (taken from `X-Request-ID` or made up), carried in
the events the request causes, so that the web app's log lines and the workers' log lines
about the same tweet can be found together.

A contextvar, so every log line written while handling a request (or an event) can carry it;
it lives in this lower layer because both the web app and the realtime workers set it."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from contextvars import ContextVar

from storage.unique import unique_string

HEADER = "X-Request-ID"
MAX_LENGTH = 64
_VALID = re.compile(r"[A-Za-z0-9._:-]{1,64}")

_current: ContextVar[str | None] = ContextVar("chirp_request_id", default=None)


def current_request_id() -> str | None:
    return _current.get()


def new_request_id() -> str:
    return unique_string()


def accept_request_id(supplied: str | None) -> str:
    """The client's id when it is a sane one (letters, digits, `._:-`, at most 64), else a
    new one: an id goes into every log line, so it must be bounded and harmless."""
    if supplied is not None and _VALID.fullmatch(supplied):
        return supplied
    return new_request_id()


@contextlib.contextmanager
def bound_request_id(request_id: str | None) -> Iterator[None]:
    """Makes `request_id` the current one for the duration (None: none)."""
    token = _current.set(request_id)
    try:
        yield
    finally:
        _current.reset(token)


def set_request_id(request_id: str | None) -> None:
    """For a task of its own (an ASGI request): sets it for the rest of this context."""
    _current.set(request_id)
