"""A lean Redis client for the hot calls: the read path's timeline pages and cache MGETs, the
fanout worker's timeline pushes and presence lookups.

Why not redis-py for these: bench/ measured about 150 µs of CPU per call in redis-py's
asyncio client (connection pool checkout, retry wrapper, a timeout context per read,
command packing in Python), against about 50 µs here for the same MGET. A timeline read
makes three such calls, so it was most of the request.

One connection per process carries every caller: commands are written as they come and the
replies, which Redis sends in order, resolve the waiting futures first-in first-out. hiredis
parses. A reply that does not come within `reply_timeout` aborts the connection and fails
every waiting call, so a hung Redis costs callers a bounded wait and the breaker trips;
the next call reconnects. Writes and everything else stay on redis-py."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import time
from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import hiredis
from redis.exceptions import ResponseError

Arg = bytes | str | int


def pack_command(args: Sequence[Arg]) -> bytes:
    # hiredis's C packer: the fanout worker's script calls carry thousands of arguments,
    # which took twice as long to pack in Python. (Its stub types the tuple as of one.)
    packed: bytes = hiredis.pack_command(tuple(args))  # type: ignore[arg-type]
    return packed


class _Protocol(asyncio.Protocol):
    def __init__(self, client: RespClient) -> None:
        self._client = client
        self._reader = hiredis.Reader(replyError=ResponseError)
        self.transport: asyncio.Transport | None = None
        # Per connection: a reconnect must not hand the old connection's replies (or its
        # failure) to calls waiting on the new one.
        self.waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self.last_reply = time.monotonic()
        # Commands written in one turn of the event loop, sent together at its end: under
        # load several requests reach Redis in the same turn, and the loopback send was the
        # largest single cost of a timeline read in py-spy. bench/ at 64 connections: 3 to
        # 4 calls per write, and 5 µs less Redis CPU per read (it reads fewer times too).
        self._unsent: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they do implement it.
        self.transport = cast(asyncio.Transport, transport)

    def send(self, data: bytes) -> None:
        if not self._unsent:
            asyncio.get_running_loop().call_soon(self._flush)
        self._unsent.append(data)

    def _flush(self) -> None:
        data = b"".join(self._unsent)
        self._unsent.clear()
        # A connection lost meanwhile has failed the waiting calls (connection_lost).
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self.last_reply = time.monotonic()
        self._reader.feed(data)
        waiting = self.waiting
        while True:
            reply = self._reader.gets()
            if reply is False:
                return
            future, _ = waiting.popleft()
            if not future.done():  # the caller may have been cancelled
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._client._lost(self)
        self.fail(ConnectionError(f"Redis connection lost: {exc or 'closed'}"))

    def fail(self, error: Exception) -> None:
        while self.waiting:
            future, _ = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)


def _noscript(reply: Any) -> bool:
    return isinstance(reply, ResponseError) and str(reply).startswith("NOSCRIPT")


def _closing(protocol: _Protocol) -> bool:
    # A connection the server closed can still be in place until connection_lost runs.
    return protocol.transport is None or protocol.transport.is_closing()


class RespClient:
    def __init__(
        self, url: str, *, connect_timeout: float = 0.5, reply_timeout: float = 2.0
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "redis":
            raise ValueError(f"RespClient speaks plain redis:// only, not {parts.scheme}://")
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 6379
        self._db = int(parts.path.lstrip("/") or 0)
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        self._connect_timeout = connect_timeout
        self._reply_timeout = reply_timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None
        self._watchdog: asyncio.TimerHandle | None = None

    async def execute(self, *args: Arg) -> Any:
        (reply,) = await self.execute_many([args])
        return reply

    async def execute_many(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """Sends the commands in one write and returns their replies in order. An error
        reply raises ResponseError once all replies are in."""
        replies = await self._send(commands)
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies

    async def _send(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """The replies in order, error replies as ResponseError values."""
        protocol = self._protocol
        if protocol is None or _closing(protocol):
            protocol = await self._connect()
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        futures = []
        for _ in commands:
            future = loop.create_future()
            protocol.waiting.append((future, now))
            futures.append(future)
        protocol.send(b"".join(pack_command(c) for c in commands))
        if self._watchdog is None:
            self._watchdog = loop.call_later(self._reply_timeout, self._check_overdue)
        return [await f for f in futures]

    async def evalsha(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        (reply,) = await self.evalsha_many(script, [(keys, args)])
        return reply

    async def evalsha_many(
        self, script: Script, calls: Sequence[tuple[Sequence[Arg], Sequence[Arg]]]
    ) -> list[Any]:
        """Runs the script once per (keys, args), all sent in one write; an error reply
        raises once all replies are in. Calls that found the script missing from Redis's
        cache (after a restart or a flush) are sent again with its body, which loads it."""
        replies = await self._send(
            [("EVALSHA", script.sha, len(keys), *keys, *args) for keys, args in calls]
        )
        missing = [i for i, reply in enumerate(replies) if _noscript(reply)]
        if missing:
            again = await self._send(
                [
                    ("EVAL", script.body, len(calls[i][0]), *calls[i][0], *calls[i][1])
                    for i in missing
                ]
            )
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies

    async def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None

    async def _connect(self) -> _Protocol:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._protocol is not None and not _closing(self._protocol):
                return self._protocol
            loop = asyncio.get_running_loop()
            _, protocol = await asyncio.wait_for(
                loop.create_connection(lambda: _Protocol(self), self._host, self._port),
                self._connect_timeout,
            )
            handshake: list[list[Arg]] = []
            if self._password is not None:
                auth: list[Arg] = ["AUTH", self._password]
                if self._username:
                    auth.insert(1, self._username)
                handshake.append(auth)
            if self._db:
                handshake.append(["SELECT", self._db])
            self._protocol = protocol
            if handshake:
                try:
                    await self.execute_many(handshake)
                except BaseException:
                    await self.close()
                    raise
            return protocol

    def _lost(self, protocol: _Protocol) -> None:
        if protocol is self._protocol:
            self._protocol = None

    def _check_overdue(self) -> None:
        self._watchdog = None
        protocol = self._protocol
        if protocol is None or not protocol.waiting:
            return
        _, sent = protocol.waiting[0]
        # Overdue only while Redis is silent: replies that are arriving but not yet handled
        # because this process is busy (its loop lagging under load) are no reason to drop
        # the connection and fail every caller, which would only add load.
        overdue = time.monotonic() - max(sent, protocol.last_reply) - self._reply_timeout
        if overdue >= 0:
            self._protocol = None
            protocol.fail(TimeoutError("Redis did not reply in time"))
            if protocol.transport is not None:
                protocol.transport.abort()
            return
        loop = asyncio.get_running_loop()
        self._watchdog = loop.call_later(-overdue, self._check_overdue)


class Script:
    def __init__(self, body: str) -> None:
        self.body = body
        self.sha = hashlib.sha1(body.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1
