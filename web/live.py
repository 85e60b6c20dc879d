"""Live timeline sessions over WebSocket, shared by the JSON stream (/api/v1/stream) and the
htmx page socket: authentication, Origin check, the no-gap/no-duplicate resume, rendering
through the caller's renderer, and disconnection of slow clients."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

from litestar import WebSocket
from litestar.exceptions import WebSocketDisconnect

from domain.ids import id_timestamp_ms
from domain.model import TweetView
from realtime.live import LiveEvent, LiveHub, SlowConsumer
from storage.metrics import POST_TO_PUSH_SECONDS
from web.services import Chirp, Principal

# Close codes (4000-4999 are the application's own).
POLICY_VIOLATION = 1008
TRY_AGAIN_LATER = 1013
BACKLOG_LIMIT = 800


class Renderer(Protocol):
    def tweets(self, views: list[TweetView]) -> Awaitable[str] | str: ...

    def deleted(self, tweet_id: int) -> str: ...


def origin_allowed(socket: WebSocket[Any, Any, Any], allowed: tuple[str, ...]) -> bool:
    """Browsers always send Origin on WebSockets; a page on another site must not be able to
    open a socket with the user's cookie. Clients that are not browsers send none."""
    origin = socket.headers.get("origin")
    if origin is None:
        return True
    host = socket.headers.get("host", "")
    parsed = urlsplit(origin)
    return parsed.netloc == host or origin in allowed


class RecentIds:
    """The ids already sent on one socket, bounded."""

    def __init__(self, size: int = 2048) -> None:
        self._ids: OrderedDict[int, None] = OrderedDict()
        self._size = size

    def add(self, tweet_id: int) -> bool:
        """False when the id was sent already."""
        if tweet_id in self._ids:
            return False
        self._ids[tweet_id] = None
        if len(self._ids) > self._size:
            self._ids.popitem(last=False)
        return True


async def backlog(chirp: Chirp, principal: Principal, since_id: int) -> list[TweetView]:
    """Every timeline tweet newer than `since_id`, oldest first (bounded)."""
    views: list[TweetView] = []
    before: int | None = None
    while len(views) < BACKLOG_LIMIT:
        page = await chirp.s.timelines.read(
            principal.user.id, before=before, after=since_id, limit=100
        )
        views += page.items
        if page.next_cursor is None:
            break
        before = page.next_cursor
    return list(reversed(views))


async def run_session(
    socket: WebSocket[Any, Any, Any],
    chirp: Chirp,
    hub: LiveHub,
    principal: Principal,
    since_id: int | None,
    send: Callable[[str], Awaitable[None]],
    render: Renderer,
) -> None:
    _, celebrities = await chirp.s.follows.followees(principal.user.id)
    sent = RecentIds()
    async with hub.listen(principal.user.id, celebrities) as listener:
        await socket.accept()
        if since_id is not None:
            for view in await backlog(chirp, principal, since_id):
                if sent.add(view.tweet.id):
                    await send(await _maybe_await(render.tweets([view])))
        receiver = asyncio.create_task(_drain_incoming(socket))
        try:
            while not receiver.done():
                next_event = asyncio.ensure_future(listener.next())
                done, _ = await asyncio.wait(
                    {next_event, receiver}, return_when=asyncio.FIRST_COMPLETED
                )
                if next_event not in done:
                    next_event.cancel()
                    with contextlib.suppress(asyncio.CancelledError, SlowConsumer):
                        await next_event
                    break
                try:
                    event = next_event.result()
                except SlowConsumer:
                    await socket.close(code=TRY_AGAIN_LATER, reason="too slow")
                    return
                frame = await _render_event(chirp, event, sent, render)
                if frame is not None:
                    await send(frame)
                    if event.event == "tweet":
                        # Post to push: the tweet id's timestamp is when it was created.
                        lag = time.time() - id_timestamp_ms(event.id) / 1000
                        POST_TO_PUSH_SECONDS.observe(max(0.0, lag))
        except (WebSocketDisconnect, RuntimeError):
            return
        finally:
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect):
                await receiver


async def _render_event(
    chirp: Chirp, event: LiveEvent, sent: RecentIds, render: Renderer
) -> str | None:
    if event.event == "delete":
        return render.deleted(event.id)
    if not sent.add(event.id):
        return None
    views = await chirp.s.reader.views(None, [event.id])
    if not views:
        return None  # deleted before it got here
    return await _maybe_await(render.tweets(views))


async def _maybe_await(value: Awaitable[str] | str) -> str:
    if isinstance(value, str):
        return value
    return await value


async def _drain_incoming(socket: WebSocket[Any, Any, Any]) -> None:
    """Reads (and ignores) what the client sends, so a disconnect is noticed at once."""
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            message = await socket.receive()
            if message["type"] == "websocket.disconnect":
                return
