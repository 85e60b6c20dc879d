"""Cross-site request forgery protection for everything a browser sends with ambient
credentials (the session cookie).

The token is an HMAC of a secret the page's origin holds and another site cannot read: the
session token once signed in, before that a random pre-session cookie (so the sign-in and
sign-up forms are protected too). Forms carry it as the `csrf_token` field, htmx and other
scripts as the `X-CSRF-Token` header. A request authenticated by an `Authorization` header is
exempt: browsers never attach that header on their own, so another site cannot forge it."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

from litestar.connection import ASGIConnection, Request
from litestar.datastructures import State
from litestar.enums import ScopeType
from litestar.exceptions import PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.types import ASGIApp, Receive, Scope, Send

from web.keys import secret_key

SESSION_COOKIE = "chirp_session"
PRESESSION_COOKIE = "chirp_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


def csrf_key(state: State) -> bytes:
    """The app's CSRF key, derived from its secret key (read once per process): the same in
    every app process, so a form rendered by one is accepted by another."""
    key: bytes | None = state.get("csrf_key")
    if key is None:
        secret = secret_key(state.services.settings)
        key = hashlib.sha256(b"chirp-csrf\x00" + secret).digest()
        state.csrf_key = key
    return key


def csrf_token(key: bytes, binding: str) -> str:
    return hmac.new(key, binding.encode(), hashlib.sha256).hexdigest()


def new_presession_value() -> str:
    return secrets.token_urlsafe(24)


def csrf_binding(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """What the request's token must be derived from: its session, else its pre-session."""
    return connection.cookies.get(SESSION_COOKIE) or connection.cookies.get(PRESESSION_COOKIE)


def token_matches(key: bytes, binding: str | None, offered: str | None) -> bool:
    if not binding or not offered:
        return False
    return hmac.compare_digest(csrf_token(key, binding), offered)


async def _check(connection: ASGIConnection[Any, Any, Any, Any]) -> None:
    offered = connection.headers.get(CSRF_HEADER)
    if offered is None and isinstance(connection, Request):
        value = (await connection.form()).get(CSRF_FIELD)
        offered = value if isinstance(value, str) else None
    if not token_matches(csrf_key(connection.app.state), csrf_binding(connection), offered):
        raise PermissionDeniedException(
            "the form has expired or did not come from this site; reload the page and try again"
        )


def _unsafe(connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
    return (
        connection.scope["type"] == ScopeType.HTTP
        and connection.scope["method"] not in SAFE_METHODS
        and not connection.headers.get("authorization")
    )


def csrf_protection(app: ASGIApp) -> ASGIApp:
    """App-wide (a middleware): an unsafe request that the session cookie would authenticate
    needs the token (JSON API calls from the page's own scripts send it in the header).
    A middleware rather than an app-wide guard: Litestar copies the route handler for every
    guard call, on safe requests too, which was a twentieth of a timeline read."""

    async def protect(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP and scope["method"] not in SAFE_METHODS:
            # Routes behind signed URLs (the local media store's uploads) grant nothing to
            # the cookie: the URL's signature is the credential, and another site cannot
            # know it.
            handler = scope.get("route_handler")
            if handler is None or not handler.opt.get("csrf_exempt"):
                request: Request[Any, Any, Any] = Request(scope, receive)
                if _unsafe(request) and SESSION_COOKIE in request.cookies:
                    await _check(request)
        await app(scope, receive, send)

    return protect


async def page_csrf_guard(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    """On page routes: every unsafe request needs the token, in the header or the form, even
    before sign-in (a forged sign-in would log the victim into the attacker's account)."""
    if _unsafe(connection):
        await _check(connection)
