"""A durable consumer that applies events in batches, for effects that are much cheaper in
bulk (one Typesense import instead of hundreds of requests).

A batch closes when it is full or `max_wait` after its first message, whichever comes
first, so a lone event is applied within `max_wait`. Messages are acked only after the
handler has applied their events. Failures come in three kinds, treated apart:

- the dependency is down (a `transient` exception for the whole batch): the batch is held,
  its messages kept leased with in-progress acks, and retried with back-off until it
  succeeds. The outage uses up none of their deliveries, so nothing reaches the dead-letter
  stream just because a server was restarted.
- the handler rejects some events (it returns their ids): the others are acked, the rejected
  ones redelivered later with back-off and dead-lettered after `max_deliver` deliveries.
- the handler raises anything else: the events are applied one at a time, so that one
  poison event fails alone instead of taking its batch-mates with it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig

from domain.events import AnyEvent, decode_event
from realtime.consumer import EventConsumer
from realtime.jetstream import NatsLink, StreamNames
from storage.metrics import EVENTS_HANDLED, labelled
from storage.request_id import bound_request_id

log = logging.getLogger("chirp.consumer")

# Applies the events; returns the ids of those it could not apply, each with the reason.
BatchHandler = Callable[[Sequence[AnyEvent]], Awaitable[Mapping[int, str]]]

Delivery = tuple[Msg, AnyEvent]


class BatchEventConsumer(EventConsumer):
    def __init__(
        self,
        link: NatsLink,
        names: StreamNames,
        durable: str,
        handler: BatchHandler,
        *,
        filter_subject: str | None = None,
        batch: int = 256,
        max_wait: float = 0.1,
        ack_wait: float = 30.0,
        max_deliver: int = 10,
        transient: tuple[type[BaseException], ...] = (OSError, TimeoutError),
        retry_delay: float = 0.25,
        max_retry_delay: float = 5.0,
        redelivery_delay: float = 0.5,
    ) -> None:
        super().__init__(
            link,
            names,
            durable,
            self._unused,
            batch=batch,
            max_wait=max_wait,
            ack_wait=ack_wait,
            max_deliver=max_deliver,
            redelivery_delay=redelivery_delay,
        )
        self._batch_handler = handler
        self._filter_subject = filter_subject
        self._transient = transient
        self._retry_delay = retry_delay
        self._max_retry_delay = max_retry_delay
        self.batches = 0
        self.held_retries = 0

    async def _unused(self, event: AnyEvent) -> None:
        raise AssertionError("a batch consumer handles events through its batch handler")

    def _config(self) -> ConsumerConfig:
        config = super()._config()
        if self._filter_subject is None:
            return config
        return dataclasses.replace(config, filter_subject=self._filter_subject)

    async def _pull(
        self, subscription: JetStreamContext.PullSubscription, stop: asyncio.Event
    ) -> None:
        messages = await self._collect(subscription)
        if messages:
            await self._process(messages, stop)

    async def _process(self, messages: list[Msg], stop: asyncio.Event) -> None:
        batch: list[Delivery] = []
        for message in messages:
            try:
                batch.append((message, decode_event(message.data)))
            except Exception:
                log.exception("undecodable event", extra={"subject": message.subject})
                await self._dead_letter(message, "undecodable")
        if not batch:
            return
        rejected = await self._apply(batch, stop)
        if rejected is None:
            # Stopping while the dependency is down: hand the messages back at once, for
            # whichever instance carries on.
            for message, _ in batch:
                await message.nak()
            return
        self.batches += 1
        for message, event in batch:
            reason = rejected.get(event.event_id)
            if reason is None:
                await message.ack()
                self.handled += 1
                labelled(EVENTS_HANDLED, self.durable, "ok").inc()
                continue
            self.failed += 1
            labelled(EVENTS_HANDLED, self.durable, "failed").inc()
            delivered = message.metadata.num_delivered
            with bound_request_id(event.request_id):
                log.warning(
                    "event rejected",
                    extra={
                        "consumer": self.durable,
                        "event_id": event.event_id,
                        "delivered": delivered,
                        "reason": reason,
                    },
                )
            if delivered >= self._max_deliver:
                await self._dead_letter(message, reason)
            else:
                await message.nak(delay=min(30.0, self._redelivery_delay * 2 ** (delivered - 1)))

    async def _apply(self, batch: list[Delivery], stop: asyncio.Event) -> dict[int, str] | None:
        """The handler's rejections for this batch; None when told to stop first."""
        attempt = 0
        while True:
            try:
                # A batch of one (the usual case when traffic is light) is handled with its
                # request id current, like any other consumer's events; a larger batch mixes
                # several requests, so its log lines name none.
                with bound_request_id(batch[0][1].request_id if len(batch) == 1 else None):
                    return dict(await self._batch_handler([event for _, event in batch]))
            except self._transient as error:
                attempt += 1
                self.held_retries += 1
                if attempt == 1:
                    log.warning(
                        "dependency unavailable; holding the batch",
                        extra={"consumer": self.durable, "size": len(batch), "error": repr(error)},
                    )
                # Resets the ack timer, so the server does not redeliver what is held here.
                for message, _ in batch:
                    await message.in_progress()
                delay = min(self._max_retry_delay, self._retry_delay * 2 ** (attempt - 1))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                if stop.is_set():
                    return None
            except Exception as error:
                if len(batch) == 1:
                    log.exception(
                        "event handler failed",
                        extra={"consumer": self.durable, "event_id": batch[0][1].event_id},
                    )
                    return {batch[0][1].event_id: repr(error)}
                rejected: dict[int, str] = {}
                for delivery in batch:
                    alone = await self._apply([delivery], stop)
                    if alone is None:
                        return None
                    rejected.update(alone)
                return rejected
