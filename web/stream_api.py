"""`WebSocket /api/v1/stream`: the home timeline as JSON events for API clients."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import WebSocket, websocket
from litestar.datastructures import State

from domain.ids import parse_id
from domain.model import TweetView
from realtime.live import LiveHub
from web.live import POLICY_VIOLATION, origin_allowed, run_session
from web.schemas import MediaUrl, tweet_out
from web.services import Chirp

_encoder = msgspec.json.Encoder()


class JsonRenderer:
    def __init__(self, media_url: MediaUrl) -> None:
        self._media_url = media_url

    def tweets(self, views: list[TweetView]) -> str:
        return "".join(
            _encoder.encode({"event": "tweet", "tweet": tweet_out(v, self._media_url)}).decode()
            for v in views
        )

    def deleted(self, tweet_id: int) -> str:
        return _encoder.encode({"event": "delete", "id": str(tweet_id)}).decode()


@websocket("/api/v1/stream")
async def stream(socket: WebSocket[Any, Any, Any], state: State) -> None:
    chirp: Chirp = state.chirp
    hub: LiveHub = state.hub
    if not origin_allowed(socket, chirp.s.settings.allowed_origins):
        await socket.close(code=POLICY_VIOLATION, reason="origin not allowed")
        return
    token = socket.query_params.get("access_token") or socket.cookies.get("chirp_session")
    principal = await chirp.authenticate(token) if token else None
    if principal is None:
        await socket.close(code=POLICY_VIOLATION, reason="authentication required")
        return
    raw_since = socket.query_params.get("since_id")
    since_id = parse_id(raw_since) if raw_since else None
    if raw_since and since_id is None:
        await socket.close(code=POLICY_VIOLATION, reason="since_id is not valid")
        return
    await run_session(
        socket, chirp, hub, principal, since_id, socket.send_text, JsonRenderer(chirp.media.url)
    )
