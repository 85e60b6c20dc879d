"""Running a durable JetStream consumer: batched pull, ack only after the effect is done,
back off on failure, and park a message that keeps failing on the dead-letter stream so it
never blocks the rest."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from domain.events import AnyEvent, decode_event, ordering_key
from realtime.jetstream import NATS_ERRORS, NatsLink, StreamNames
from storage.metrics import EVENTS_HANDLED
from storage.request_id import bound_request_id

log = logging.getLogger("chirp.consumer")

Handler = Callable[[AnyEvent], Awaitable[None]]


class EventConsumer:
    def __init__(
        self,
        link: NatsLink,
        names: StreamNames,
        durable: str,
        handler: Handler,
        *,
        batch: int = 64,
        ack_wait: float = 30.0,
        max_deliver: int = 10,
    ) -> None:
        self._link = link
        self._names = names
        self.durable = durable
        self._handler = handler
        self._batch = batch
        self._ack_wait = ack_wait
        self._max_deliver = max_deliver
        self.handled = 0
        self.failed = 0
        self.dead_lettered = 0

    def _config(self) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self._ack_wait,
            # No server-side cap: the consumer itself dead-letters at max_deliver, so the
            # message is recorded rather than silently dropped.
            max_deliver=-1,
            max_ack_pending=self._batch * 16,
        )

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        while not stop.is_set():
            await self._link.ready.wait()
            try:
                # Created (or updated) explicitly and then bound, because the consumer takes
                # every subject of the stream and so has no filter subject.
                await self._link.js.add_consumer(self._names.stream, self._config())
                subscription = await self._link.js.pull_subscribe_bind(
                    durable=self.durable, stream=self._names.stream
                )
            except NATS_ERRORS as error:
                log.warning(
                    "subscribe failed", extra={"consumer": self.durable, "error": repr(error)}
                )
                await asyncio.sleep(1.0)
                continue
            try:
                while not stop.is_set():
                    await self._pull(subscription, stop)
            except NATS_ERRORS as error:
                log.warning("fetch failed", extra={"consumer": self.durable, "error": repr(error)})
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(*NATS_ERRORS):
                    await subscription.unsubscribe()

    async def _pull(
        self, subscription: JetStreamContext.PullSubscription, stop: asyncio.Event
    ) -> None:
        """One fetch and its handling (a batching consumer overrides this). Messages are
        split into lanes by `ordering_key`: each lane in stream order, the lanes at once.
        One at a time, a worker spent most of each event waiting on round trips (bench/
        fanout.py steady posting: about 5 ms per tweet)."""
        try:
            messages = await subscription.fetch(self._batch, timeout=1.0)
        except TimeoutError:
            return
        lanes: dict[int | None, list[tuple[Msg, AnyEvent | None]]] = {}
        for message in messages:
            try:
                event: AnyEvent | None = decode_event(message.data)
            except Exception:
                log.exception("undecodable event", extra={"subject": message.subject})
                event = None
            key = ordering_key(event) if event is not None else None
            lanes.setdefault(key, []).append((message, event))
        # Every lane finishes (or fails) before the next fetch; then the first failure, if
        # any, is raised as a single lane's would be.
        results = await asyncio.gather(
            *(self._run_lane(lane) for lane in lanes.values()), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _run_lane(self, lane: list[tuple[Msg, AnyEvent | None]]) -> None:
        for message, event in lane:
            await self._handle(message, event)

    async def _handle(self, message: Msg, event: AnyEvent | None) -> None:
        if event is None:
            await self._dead_letter(message, "undecodable")
            return
        # The request that caused the event, in every log line written while handling it.
        with bound_request_id(event.request_id):
            try:
                await self._handler(event)
            except Exception as error:
                self.failed += 1
                EVENTS_HANDLED.labels(consumer=self.durable, result="failed").inc()
                delivered = message.metadata.num_delivered
                log.exception(
                    "event handler failed",
                    extra={
                        "consumer": self.durable,
                        "event_id": event.event_id,
                        "delivered": delivered,
                    },
                )
                if delivered >= self._max_deliver:
                    await self._dead_letter(message, repr(error))
                else:
                    # Exponential backoff, capped: a dependency outage is not hammered.
                    await message.nak(delay=min(30.0, 0.5 * 2 ** (delivered - 1)))
                return
        await message.ack()
        self.handled += 1
        EVENTS_HANDLED.labels(consumer=self.durable, result="ok").inc()

    async def _dead_letter(self, message: Msg, reason: str) -> None:
        await self._link.js.publish(
            self._names.dead_letter(self.durable),
            message.data,
            headers={"Chirp-Subject": message.subject, "Chirp-Reason": reason[:200]},
        )
        await message.ack()
        self.dead_lettered += 1
        EVENTS_HANDLED.labels(consumer=self.durable, result="dead_letter").inc()
