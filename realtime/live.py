"""Live push: who is online, and getting timeline events to the sockets that want them, across
any number of app processes.

Routing goes through core NATS subjects (not the stream: live push is for whoever is connected
now). The fanout worker publishes a normal author's tweet to each *online* follower's user
subject, and a celebrity's tweet once to the author's subject, which every app process with a
connected follower of that celebrity subscribes to. Within a process, one NATS subscription per
subject is shared by all its sockets (broadcaster's pattern), and each socket has a bounded
queue: a client too slow to drain it is disconnected instead of growing memory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence

import msgspec
import redis.asyncio as aioredis
from nats.aio.subscription import Subscription

from realtime.jetstream import NATS_ERRORS, NatsLink, StreamNames
from storage.metrics import WEBSOCKETS_OPEN
from storage.redis_store import REDIS_ERRORS, RedisKeys
from storage.resp import RespClient

log = logging.getLogger("chirp.live")


class LiveEvent(msgspec.Struct, frozen=True):
    """What travels on a live subject: the event and the tweet it is about. Each app process
    renders it for its own sockets (JSON or HTML)."""

    event: str  # "tweet" or "delete"
    id: int
    author_id: int


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(LiveEvent)


class Presence:
    """Which users have a live socket somewhere: `on:{user_id}` keys with a short TTL that
    every app process refreshes for its connected users."""

    TTL = 90

    def __init__(
        self,
        client: aioredis.Redis,
        keys: RedisKeys,
        *,
        reads: RespClient | None = None,
        keys_per_call: int = 1000,
    ) -> None:
        self._redis = client
        self._keys = keys
        # The fanout worker looks up thousands of users per tweet: through the lean client
        # (storage/resp.py) that costs a fraction of redis-py's MGET.
        self._reads = reads
        self._keys_per_call = keys_per_call

    async def mark_online(self, user_ids: Iterable[int]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for user_id in user_ids:
                pipe.set(self._keys.online(user_id), 1, ex=self.TTL)
            await pipe.execute()

    async def online_among(self, user_ids: Sequence[int]) -> list[int]:
        if not user_ids:
            return []
        keys = [self._keys.online(u) for u in user_ids]
        if self._reads is None:
            values = await self._redis.mget(keys)
        else:
            step = self._keys_per_call
            replies = await self._reads.execute_many(
                [("MGET", *keys[i : i + step]) for i in range(0, len(keys), step)]
            )
            values = [v for reply in replies for v in reply]
        return [u for u, v in zip(user_ids, values, strict=True) if v is not None]


class LivePublisher:
    """Used by the fanout worker."""

    def __init__(self, link: NatsLink, names: StreamNames, presence: Presence) -> None:
        self._link = link
        self._names = names
        self._presence = presence
        self.published = 0

    async def to_online_users(self, user_ids: Sequence[int], event: LiveEvent) -> None:
        one = (event,)
        await self.to_online(dict.fromkeys(user_ids, one))

    async def to_online(self, events: Mapping[int, Sequence[LiveEvent]]) -> None:
        """Each user's events, to those of the users who are online: one presence lookup
        for all of them."""
        if not self._link.connected or not events:
            return
        users = list(events)
        try:
            online = await self._presence.online_among(users)
        except REDIS_ERRORS:
            online = users  # without presence, tell everyone rather than no one
        payloads: dict[LiveEvent, bytes] = {}
        for user_id in online:
            subject = self._names.live_user(user_id)
            for event in events[user_id]:
                payload = payloads.get(event)
                if payload is None:
                    payload = payloads[event] = _encoder.encode(event)
                await self._link.client.publish(subject, payload)
                self.published += 1

    async def to_author_followers(self, event: LiveEvent) -> None:
        if not self._link.connected:
            return
        await self._link.client.publish(
            self._names.live_author(event.author_id), _encoder.encode(event)
        )
        self.published += 1


class SlowConsumer(Exception):
    """A socket's queue overflowed; the socket is closed."""


class Listener:
    """One socket's view of the hub: a bounded queue of the events for its user."""

    def __init__(self, maxsize: int) -> None:
        self.queue: asyncio.Queue[LiveEvent] = asyncio.Queue(maxsize=maxsize)
        self.overflowed = asyncio.Event()

    def offer(self, event: LiveEvent) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed.set()

    async def next(self) -> LiveEvent:
        """The next event; raises SlowConsumer once the queue has overflowed."""
        if self.overflowed.is_set():
            raise SlowConsumer
        getter = asyncio.ensure_future(self.queue.get())
        overflow = asyncio.ensure_future(self.overflowed.wait())
        try:
            done, _ = await asyncio.wait({getter, overflow}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            overflow.cancel()
            if not getter.done():
                getter.cancel()
        if getter in done and not getter.cancelled():
            return getter.result()
        raise SlowConsumer


class LiveHub:
    """Per app process: shared NATS subscriptions per subject, fanned out to listeners."""

    def __init__(
        self, link: NatsLink, names: StreamNames, presence: Presence, *, queue_size: int = 256
    ) -> None:
        self._link = link
        self._names = names
        self._presence = presence
        self._queue_size = queue_size
        self._listeners: dict[str, set[Listener]] = {}
        self._subscriptions: dict[str, Subscription] = {}
        self._users: dict[int, int] = {}
        self._lock = asyncio.Lock()

    @property
    def connections(self) -> int:
        return sum(self._users.values())

    @contextlib.asynccontextmanager
    async def listen(self, user_id: int, celebrity_ids: Sequence[int]) -> AsyncIterator[Listener]:
        """Subscribes a socket of `user_id` to its own subject and to the subjects of the
        celebrities it follows. The subscriptions are in place when this yields: the caller
        reads the backlog only after that, so nothing falls between the two."""
        listener = Listener(self._queue_size)
        subjects = [self._names.live_user(user_id)] + [
            self._names.live_author(c) for c in celebrity_ids
        ]
        async with self._lock:
            for subject in subjects:
                await self._add(subject, listener)
            self._users[user_id] = self._users.get(user_id, 0) + 1
        with contextlib.suppress(*REDIS_ERRORS):
            await self._presence.mark_online([user_id])
        WEBSOCKETS_OPEN.inc()
        try:
            yield listener
        finally:
            WEBSOCKETS_OPEN.dec()
            async with self._lock:
                for subject in subjects:
                    await self._remove(subject, listener)
                self._users[user_id] -= 1
                if self._users[user_id] == 0:
                    del self._users[user_id]

    async def _add(self, subject: str, listener: Listener) -> None:
        listeners = self._listeners.setdefault(subject, set())
        listeners.add(listener)
        if subject not in self._subscriptions and self._link.connected:
            try:
                self._subscriptions[subject] = await self._link.client.subscribe(
                    subject, cb=self._deliver
                )
                # The subscription must be registered at the server before the backlog is
                # read, or a message published in between would be missed.
                await self._link.client.flush(timeout=2)
            except NATS_ERRORS as error:
                log.warning(
                    "live subscribe failed", extra={"subject": subject, "error": repr(error)}
                )

    async def _remove(self, subject: str, listener: Listener) -> None:
        listeners = self._listeners.get(subject)
        if listeners is None:
            return
        listeners.discard(listener)
        if not listeners:
            del self._listeners[subject]
            subscription = self._subscriptions.pop(subject, None)
            if subscription is not None:
                with contextlib.suppress(*NATS_ERRORS):
                    await subscription.unsubscribe()

    async def _deliver(self, message: object) -> None:
        subject: str = message.subject  # type: ignore[attr-defined]
        try:
            event = _decoder.decode(message.data)  # type: ignore[attr-defined]
        except msgspec.DecodeError:
            return
        for listener in tuple(self._listeners.get(subject, ())):
            listener.offer(event)

    async def keep_presence(self, interval: float = 30.0) -> None:
        """Refreshes the presence of every user connected to this process."""
        while True:
            if self._users:
                with contextlib.suppress(*REDIS_ERRORS):
                    await self._presence.mark_online(list(self._users))
            await asyncio.sleep(interval)

    async def resubscribe(self) -> None:
        """After NATS comes back, subscribe whatever was missed while it was down."""
        async with self._lock:
            for subject in list(self._listeners):
                if subject not in self._subscriptions and self._link.connected:
                    with contextlib.suppress(*NATS_ERRORS):
                        self._subscriptions[subject] = await self._link.client.subscribe(
                            subject, cb=self._deliver
                        )
