"""Running a durable JetStream consumer: batched pull, ack only after the effect is done,
back off on failure, and park a message that keeps failing on the dead-letter stream so it
never blocks the rest.

Optionally, the events of some kinds (`bulk_kinds`) in a fetched batch are applied together
by a bulk handler, before the batch's other events, which go through the lanes as usual: an
effect that costs mostly round trips costs them once per batch instead of once per event.
If the bulk handler fails, those events are handled one at a time through the ordinary
handler, so a poison event fails alone and is retried and dead-lettered like any other.
Whether applying them ahead of the others is safe is the handler's to say (the fanout's
reasoning is in realtime/fanout.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from domain.events import AnyEvent, Event, decode_event, ordering_key
from realtime.jetstream import NATS_ERRORS, NatsLink, StreamNames
from storage.metrics import EVENTS_HANDLED, labelled
from storage.request_id import bound_request_id

log = logging.getLogger("chirp.consumer")

Handler = Callable[[AnyEvent], Awaitable[None]]
# Applies all the events or raises.
BulkHandler = Callable[[Sequence[AnyEvent]], Awaitable[None]]


class EventConsumer:
    def __init__(
        self,
        link: NatsLink,
        names: StreamNames,
        durable: str,
        handler: Handler,
        *,
        batch: int = 64,
        max_wait: float = 0.0,
        ack_wait: float = 30.0,
        max_deliver: int = 10,
        redelivery_delay: float = 0.5,
        bulk_kinds: tuple[type[Event], ...] = (),
        bulk_handler: BulkHandler | None = None,
    ) -> None:
        self._link = link
        self._names = names
        self.durable = durable
        self._handler = handler
        self._batch = batch
        self._max_wait = max_wait
        self._ack_wait = ack_wait
        self._max_deliver = max_deliver
        self._redelivery_delay = redelivery_delay
        self._bulk_kinds = bulk_kinds if bulk_handler is not None else ()
        self._bulk_handler = bulk_handler
        self.handled = 0
        self.failed = 0
        self.dead_lettered = 0
        # Batches the bulk handler applied whole, and those it failed (then one at a time).
        self.bulks = 0
        self.bulks_failed = 0
        # The next batch, fetched while this one is handled.
        self._ahead: asyncio.Future[list[Msg]] | None = None

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
                await self._hand_back_ahead()
                with contextlib.suppress(*NATS_ERRORS):
                    await subscription.unsubscribe()

    async def _hand_back_ahead(self) -> None:
        """Messages fetched ahead and not handled go back at once, for whichever instance
        carries on, rather than after the ack wait."""
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return
        try:
            # A fetch returns within its timeout (a second); cancelled, the messages it was
            # bringing would come back only after the ack wait.
            messages = await ahead
        except asyncio.CancelledError:
            ahead.cancel()
            raise
        except NATS_ERRORS:
            return
        with contextlib.suppress(*NATS_ERRORS):
            for message in messages:
                await message.nak()

    async def _pull(
        self, subscription: JetStreamContext.PullSubscription, stop: asyncio.Event
    ) -> None:
        """One fetch and its handling (a batching consumer overrides this). The bulk kinds
        first, together; then the other messages, split into lanes by `ordering_key`: each
        lane in stream order, the lanes at once. One at a time, a worker spent most of each
        event waiting on round trips (bench/fanout.py steady posting: about 5 ms per
        tweet)."""
        ahead, self._ahead = self._ahead, None
        messages = await (ahead if ahead is not None else self._collect(subscription))
        if len(messages) == self._batch:
            # A backlog: the next batch travels while this one is handled (fetching took a
            # fifth of each batch's time in bench/fanout.py's steady posting). It is handled
            # after this one, so stream order within a lane is kept.
            self._ahead = asyncio.ensure_future(self._collect(subscription))
        bulk: list[tuple[Msg, AnyEvent]] = []
        lanes: dict[int | None, list[tuple[Msg, AnyEvent | None]]] = {}
        for message in messages:
            try:
                event: AnyEvent | None = decode_event(message.data)
            except Exception:
                log.exception("undecodable event", extra={"subject": message.subject})
                event = None
            if event is not None and isinstance(event, self._bulk_kinds):
                bulk.append((message, event))
                continue
            key = ordering_key(event) if event is not None else None
            lanes.setdefault(key, []).append((message, event))
        if bulk:
            await self._run_bulk(bulk)
        # Every lane finishes (or fails) before the next fetch; then the first failure, if
        # any, is raised as a single lane's would be.
        results = await asyncio.gather(
            *(self._run_lane(lane) for lane in lanes.values()), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _collect(self, subscription: JetStreamContext.PullSubscription) -> list[Msg]:
        """Up to a batch: what one fetch brings, topped up for `max_wait` after it."""
        try:
            messages = await subscription.fetch(self._batch, timeout=1.0)
        except TimeoutError:
            return []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._max_wait
        while len(messages) < self._batch:
            remaining = deadline - loop.time()
            if remaining < 0.01:
                break
            try:
                messages += await subscription.fetch(self._batch - len(messages), timeout=remaining)
            except TimeoutError:
                break
        return messages

    async def _run_bulk(self, deliveries: list[tuple[Msg, AnyEvent]]) -> None:
        assert self._bulk_handler is not None
        if len(deliveries) > 1:
            try:
                # The events of several requests: the log lines name none.
                with bound_request_id(None):
                    await self._bulk_handler([event for _, event in deliveries])
            except Exception as error:
                self.bulks_failed += 1
                log.warning(
                    "bulk handling failed; handling the events one at a time",
                    extra={"consumer": self.durable, "size": len(deliveries), "error": repr(error)},
                )
            else:
                self.bulks += 1
                for message, _ in deliveries:
                    await message.ack()
                self.handled += len(deliveries)
                labelled(EVENTS_HANDLED, self.durable, "ok").inc(len(deliveries))
                return
        # Effects are idempotent: whatever a failed bulk did is simply done again.
        for message, event in deliveries:
            await self._handle(message, event)

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
                labelled(EVENTS_HANDLED, self.durable, "failed").inc()
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
                    await message.nak(
                        delay=min(30.0, self._redelivery_delay * 2 ** (delivered - 1))
                    )
                return
        await message.ack()
        self.handled += 1
        labelled(EVENTS_HANDLED, self.durable, "ok").inc()

    async def _dead_letter(self, message: Msg, reason: str) -> None:
        await self._link.js.publish(
            self._names.dead_letter(self.durable),
            message.data,
            headers={"Chirp-Subject": message.subject, "Chirp-Reason": reason[:200]},
        )
        await message.ack()
        self.dead_lettered += 1
        labelled(EVENTS_HANDLED, self.durable, "dead_letter").inc()
