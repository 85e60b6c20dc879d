"""What operators want to know about the JetStream streams and their consumers: size, how far
each consumer is behind, how old its oldest unacknowledged message is, and how many of its
messages ended on the dead-letter stream. Read by `chirp streams`, `/metrics` and `/ops`.

Everything here is read from JetStream itself (stream and consumer info), so it is true for
every worker process at once, whichever one is asked."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from nats.js.api import StreamInfo
from nats.js.errors import NotFoundError

from realtime.jetstream import NATS_ERRORS, NatsLink, StreamNames


@dataclass(frozen=True)
class ConsumerState:
    stream: str
    name: str
    # Stream messages the consumer has not been delivered yet.
    pending: int
    # Delivered, not acknowledged yet.
    ack_pending: int
    redelivered: int
    delivered_seq: int
    ack_floor_seq: int
    # Seconds since the oldest message this consumer has not acknowledged was stored (None:
    # nothing outstanding, or not known).
    oldest_unacked_age: float | None
    dead_letters: int
    last_active: datetime | None = None

    @property
    def outstanding(self) -> int:
        return self.pending + self.ack_pending


@dataclass(frozen=True)
class StreamState:
    name: str
    subjects: list[str]
    messages: int
    bytes: int
    first_seq: int
    last_seq: int
    consumers: list[ConsumerState] = field(default_factory=list)
    # Messages per subject (read for the dead-letter stream only).
    per_subject: dict[str, int] = field(default_factory=dict)


class StreamsUnavailable(Exception):
    """NATS (or JetStream) did not answer."""


async def read_streams(
    link: NatsLink, names: StreamNames, *, ages: bool = True, timeout: float = 3.0
) -> list[StreamState]:
    """The event stream with its consumers, then the dead-letter stream. `ages`: also look up
    each lagging consumer's oldest unacknowledged message (one request per such consumer)."""
    if not link.connected:
        raise StreamsUnavailable("NATS is not connected")
    try:
        return await asyncio.wait_for(_read(link, names, ages), timeout)
    except NATS_ERRORS as error:  # TimeoutError is one of them
        raise StreamsUnavailable(f"JetStream did not answer: {error!r}") from error


def _stream_state(name: str, info: StreamInfo, **extra: Any) -> StreamState:
    return StreamState(
        name=name,
        subjects=list(info.config.subjects or []),
        messages=info.state.messages,
        bytes=info.state.bytes,
        first_seq=info.state.first_seq,
        last_seq=info.state.last_seq,
        **extra,
    )


async def _read(link: NatsLink, names: StreamNames, ages: bool) -> list[StreamState]:
    js = link.js
    dead: dict[str, int] = {}
    dead_stream: StreamState | None = None
    try:
        info = await js.stream_info(names.dead_letter_stream, subjects_filter=">")
        dead = dict(info.state.subjects or {})
        dead_stream = _stream_state(names.dead_letter_stream, info, per_subject=dead)
    except NotFoundError:
        pass
    try:
        info = await js.stream_info(names.stream)
    except NotFoundError:
        return [dead_stream] if dead_stream else []
    consumers = []
    for consumer in sorted(await js.consumers_info(names.stream), key=lambda c: c.name):
        floor = consumer.ack_floor.stream_seq if consumer.ack_floor else 0
        pending = consumer.num_pending or 0
        ack_pending = consumer.num_ack_pending or 0
        age = None
        if ages and pending + ack_pending > 0:
            age = await _age_of(link, names.stream, max(floor + 1, info.state.first_seq))
        consumers.append(
            ConsumerState(
                stream=names.stream,
                name=consumer.name,
                pending=pending,
                ack_pending=ack_pending,
                redelivered=consumer.num_redelivered or 0,
                delivered_seq=consumer.delivered.stream_seq if consumer.delivered else 0,
                ack_floor_seq=floor,
                oldest_unacked_age=age,
                dead_letters=dead.get(names.dead_letter(consumer.name), 0),
                last_active=consumer.delivered.last_active if consumer.delivered else None,
            )
        )
    main = _stream_state(names.stream, info, consumers=consumers)
    return [main, dead_stream] if dead_stream else [main]


async def _age_of(link: NatsLink, stream: str, seq: int) -> float | None:
    """Seconds since the message at `seq` was stored. The first message after the ack floor
    is, by the floor's definition, the oldest one not acknowledged (Debian's nats-server 2.9
    reports no timestamp for the floor itself, so the message is fetched)."""
    try:
        message = await link.js.get_msg(stream, seq)
    except NotFoundError:
        return None
    if message.time is None:
        return None
    stored = message.time if message.time.tzinfo else message.time.replace(tzinfo=UTC)
    return max(0.0, (datetime.now(UTC) - stored).total_seconds())
