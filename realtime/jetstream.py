"""The NATS connection, the JetStream stream Chirp's events travel on, and publishing."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import urlsplit

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, NoStreamResponseError
from nats.js.errors import Error as JetStreamError

log = logging.getLogger("chirp.nats")

# Headers of a JetStream publish and of its reply.
EXPECTED_STREAM = "Nats-Expected-Stream"
STATUS = "Status"
NO_RESPONDERS = "503"

NATS_ERRORS: tuple[type[BaseException], ...] = (NatsError, JetStreamError, OSError, TimeoutError)


class StreamNames:
    """Stream, subject and consumer names (listed in the README's operator table). Tests use
    their own stream and subject prefix so they never touch a running instance's events."""

    def __init__(self, stream: str = "CHIRP", subject_prefix: str = "chirp") -> None:
        self.stream = stream
        self.prefix = subject_prefix
        self.dead_letter_stream = f"{stream}_DLQ"

    def subject(self, kind: str) -> str:
        return f"{self.prefix}.{kind}"

    @property
    def stream_subjects(self) -> list[str]:
        return [f"{self.prefix}.tweet.*", f"{self.prefix}.follow.*", f"{self.prefix}.author.*"]

    def dead_letter(self, consumer: str) -> str:
        return f"{self.prefix}_dlq.{consumer}"

    # Core NATS (not in the stream): live push is for whoever is connected right now.
    def live_user(self, user_id: int) -> str:
        return f"{self.prefix}_live.user.{user_id}"

    def live_author(self, author_id: int) -> str:
        return f"{self.prefix}_live.author.{author_id}"


class NatsLink:
    """One NATS connection per process. If NATS is down at start the process still starts
    and keeps trying in the background; callers check `connected` and degrade."""

    def __init__(self, url: str, *, name: str) -> None:
        self._url = url
        self._name = name
        self._client: NatsClient | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._closing = False
        self.ready = asyncio.Event()
        # Run after every (re)connection: a NATS that restarted without its store has lost
        # the streams, and they must exist before anything is published or consumed.
        self.on_connect: Callable[[], Awaitable[None]] | None = None

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.is_connected

    @property
    def client(self) -> NatsClient:
        if self._client is None:
            raise ConnectionError("NATS is not connected")
        return self._client

    @property
    def js(self) -> JetStreamContext:
        return self.client.jetstream(timeout=5)

    async def start(self, *, wait: bool = False) -> None:
        if not await self._try_connect() and self._connecting is None:
            self._connecting = asyncio.create_task(self._keep_connecting(), name="nats-connect")
            if wait:
                await self.ready.wait()

    async def _answers(self) -> bool:
        """A plain TCP probe, so a refused connection fails at once."""
        parts = urlsplit(self._url)
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(parts.hostname or "127.0.0.1", parts.port or 4222), 1.0
            )
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    async def _try_connect(self) -> bool:
        if not await self._answers():
            log.warning("nats not answering", extra={"url": self._url})
            return False
        client = NatsClient()
        try:
            # nats-py retries the first connection forever when reconnects are unlimited,
            # so bound it: a process must start (degraded) while NATS is down.
            await asyncio.wait_for(self._connect(client), timeout=3)
        except NATS_ERRORS as error:  # TimeoutError is one of them
            with contextlib.suppress(*NATS_ERRORS):
                await client.close()
            log.warning("nats connect failed", extra={"url": self._url, "error": repr(error)})
            return False
        self._client = client
        await self._prepare()
        self.ready.set()
        return True

    async def _connect(self, client: NatsClient) -> None:
        await client.connect(
            servers=[self._url],
            name=self._name,
            connect_timeout=1,
            reconnect_time_wait=0.5,  # type: ignore[arg-type]  # seconds; floats work
            max_reconnect_attempts=-1,
            allow_reconnect=True,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
        )

    async def _prepare(self) -> None:
        if self.on_connect is not None:
            try:
                await self.on_connect()
            except NATS_ERRORS as error:
                log.warning("nats on_connect failed", extra={"error": repr(error)})

    async def _keep_connecting(self) -> None:
        while not await self._try_connect():
            await asyncio.sleep(1.0)

    async def _on_error(self, error: Exception) -> None:
        log.debug("nats error", extra={"error": repr(error)})

    async def _on_disconnected(self) -> None:
        if not self._closing:
            log.warning("nats disconnected")

    async def _on_reconnected(self) -> None:
        log.info("nats reconnected")
        await self._prepare()

    async def stop(self) -> None:
        self._closing = True
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        if self._client is not None and not self._client.is_closed:
            with contextlib.suppress(*NATS_ERRORS):
                await self._client.drain()
            with contextlib.suppress(*NATS_ERRORS):
                await self._client.close()


async def ensure_streams(link: NatsLink, names: StreamNames, *, duplicate_window: float) -> None:
    """Creates or updates the event stream and its dead-letter stream. The duplicate window
    must exceed the outbox relay's worst-case delay between a publish and its retry."""
    js = link.js
    config = StreamConfig(
        name=names.stream,
        subjects=names.stream_subjects,
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        duplicate_window=duplicate_window,
        max_age=7 * 24 * 3600,
    )
    dead = StreamConfig(
        name=names.dead_letter_stream,
        subjects=[f"{names.prefix}_dlq.>"],
        storage=StorageType.FILE,
        max_age=30 * 24 * 3600,
    )
    for stream in (config, dead):
        try:
            await js.add_stream(stream)
        except JetStreamError:
            await js.update_stream(stream)


class JetStreamPublisher:
    def __init__(self, link: NatsLink, names: StreamNames, *, timeout: float = 2.0) -> None:
        self._link = link
        self._names = names
        self._timeout = timeout
        # The acks of publish_many come to one inbox subscription per connection, each to
        # the future waiting under its reply token.
        self._acks: dict[str, asyncio.Future[None]] = {}
        self._tokens = itertools.count()
        self._inbox: tuple[NatsClient, str] | None = None
        self._subscribing = asyncio.Lock()

    async def publish(self, event_id: int, kind: str, payload: bytes) -> None:
        """Publishes one event; the event id as Nats-Msg-Id makes a republish a no-op."""
        [error] = await self.publish_many([(event_id, kind, payload)])
        if error is not None:
            raise error

    async def publish_many(
        self, events: Sequence[tuple[int, str, bytes]]
    ) -> list[BaseException | None]:
        """Publishes (event id, kind, payload) events at once and waits for JetStream's
        acks, up to the timeout for all of them: for each event in order, None once it is
        stored (or dropped as a duplicate of its event id), else why not. Awaiting one
        `js.publish` per event (a request, a task and a timer each) cost about 25 µs of CPU
        an event against about 8 µs this way; the outbox relay and bench/fanout.py's
        publisher share the machine with the workers they feed."""
        results: list[BaseException | None] = [None] * len(events)
        tokens: list[str] = []
        futures: list[asyncio.Future[None]] = []
        try:
            try:
                client = self._link.client
                prefix = await self._ack_inbox(client)
                loop = asyncio.get_running_loop()
                for event_id, kind, payload in events:
                    token = str(next(self._tokens))
                    future: asyncio.Future[None] = loop.create_future()
                    self._acks[token] = future
                    tokens.append(token)
                    futures.append(future)
                    await client.publish(
                        self._names.subject(kind),
                        payload,
                        reply=prefix + token,
                        headers={
                            "Nats-Msg-Id": str(event_id),
                            EXPECTED_STREAM: self._names.stream,
                        },
                    )
            except NATS_ERRORS as error:
                # Not sent (not connected, or the connection closed on the way): the
                # outbox keeps them for the sweep.
                if futures:
                    futures.pop().cancel()
                for i in range(len(futures), len(events)):
                    results[i] = error
            pending = [f for f in futures if not f.done()]
            if pending:
                await asyncio.wait(pending, timeout=self._timeout)
        finally:
            for token in tokens:
                self._acks.pop(token, None)
        for i, future in enumerate(futures):
            if not future.done():
                future.cancel()
                results[i] = TimeoutError(f"no ack from JetStream within {self._timeout} s")
            else:
                results[i] = future.exception()
        return results

    async def _ack_inbox(self, client: NatsClient) -> str:
        """The reply prefix of this connection's ack subscription (nats-py subscribes again
        by itself after a reconnect; a new client gets a new one)."""
        async with self._subscribing:
            if self._inbox is None or self._inbox[0] is not client:
                prefix = client.new_inbox() + "."
                await client.subscribe(prefix + "*", cb=self._on_ack)
                self._inbox = (client, prefix)
            return self._inbox[1]

    async def _on_ack(self, msg: Msg) -> None:
        future = self._acks.pop(msg.subject.rpartition(".")[2], None)
        if future is None or future.done():
            return  # timed out already
        if msg.headers and msg.headers.get(STATUS) == NO_RESPONDERS:
            future.set_exception(NoStreamResponseError())
            return
        data = msg.data
        # Only an error reply is worth parsing: an ack is {"stream":..,"seq":..}.
        if b'"error"' in data or not data.startswith(b"{"):
            error = _reply_error(data)
            if error is not None:
                future.set_exception(error)
                return
        future.set_result(None)


def _reply_error(data: bytes) -> APIError | None:
    try:
        reply = json.loads(data)
    except ValueError:
        return APIError(description=data.decode(errors="replace")[:200])
    if not isinstance(reply, dict):
        return APIError(description=str(reply)[:200])
    error = reply.get("error")
    if not error:
        return None
    try:
        APIError.from_error(error)  # raises the error's own subclass
    except APIError as typed:
        return typed
    except (KeyError, TypeError, ValueError):
        pass
    return APIError(description=str(error)[:200])
