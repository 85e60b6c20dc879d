"""`WebSocket /ws/home`: the home page's live timeline for the htmx `ws` extension. The session
logic (authentication, Origin, resume without gap or duplicate, slow clients) is web/live.py's;
this only renders HTML fragments that htmx swaps in by id:

- a new tweet goes into the hidden `#pending` list; the page's script shows it at once when
  the reader is at the top, else counts it on the "N new tweets" bar;
- a deleted tweet is removed wherever it is on the page."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jinja2 import Environment
from litestar import WebSocket, websocket
from litestar.datastructures import State

from domain.ids import parse_id
from domain.model import Media, TweetView, User
from realtime.live import LiveHub
from web.csrf import SESSION_COOKIE, csrf_key, csrf_token
from web.live import POLICY_VIOLATION, origin_allowed, run_session
from web.services import Chirp


class HtmlRenderer:
    def __init__(
        self, env: Environment, me: User, csrf: str, media_url: Callable[[Media], str]
    ) -> None:
        self._template = env.get_template("fragments/live.html")
        self._context: dict[str, Any] = {
            "me": me,
            "csrf": csrf,
            "here": "/",
            "media_url": media_url,
        }

    def tweets(self, views: list[TweetView]) -> str:
        # `views` come oldest first and each is put at the top: render newest first.
        return self._template.render(self._context, views=list(reversed(views)))

    def deleted(self, tweet_id: int) -> str:
        return f'<div id="tweet-{tweet_id}" hx-swap-oob="delete"></div>'


@websocket("/ws/home", include_in_schema=False)
async def home_socket(socket: WebSocket[Any, Any, Any], state: State) -> None:
    chirp: Chirp = state.chirp
    hub: LiveHub = state.hub
    if not origin_allowed(socket, chirp.s.settings.allowed_origins):
        await socket.close(code=POLICY_VIOLATION, reason="origin not allowed")
        return
    token = socket.cookies.get(SESSION_COOKIE)
    principal = await chirp.authenticate(token) if token else None
    if principal is None or token is None:
        await socket.close(code=POLICY_VIOLATION, reason="authentication required")
        return
    raw_since = socket.query_params.get("since_id")
    since_id = parse_id(raw_since) if raw_since else None
    env: Environment = socket.app.template_engine.engine  # type: ignore[union-attr]
    renderer = HtmlRenderer(
        env,
        principal.user,
        csrf_token(csrf_key(state), token),
        chirp.media.url,
    )
    await run_session(socket, chirp, hub, principal, since_id, socket.send_text, renderer)
