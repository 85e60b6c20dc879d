"""Publishing events to JetStream (realtime/jetstream.py `JetStreamPublisher`): many at once,
each answered by its own ack, with the event id as Nats-Msg-Id so a republish is a no-op.

Each test publishes to a stream of its own."""

from __future__ import annotations

import contextlib

import pytest
from nats.js.errors import NoStreamResponseError

from domain.events import TweetPosted, decode_event, encode_event
from realtime.jetstream import JetStreamPublisher, NatsLink, StreamNames
from tests.support import services_with_own_stream
from web.container import Services
from web.settings import Settings


def own_stream(settings: Settings) -> contextlib.AbstractAsyncContextManager[Services]:
    return services_with_own_stream(settings, "test-publisher")


def posted(event_id: int) -> tuple[int, str, bytes]:
    event = TweetPosted(event_id=event_id, tweet_id=event_id * 10, author_id=1)
    return event.event_id, event.kind, encode_event(event)


async def stored_event_ids(services: Services) -> list[int]:
    info = await services.link.js.stream_info(services.names.stream)
    ids = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        message = await services.link.js.get_msg(services.names.stream, seq)
        ids.append(decode_event(message.data or b"").event_id)
    return ids


async def test_publish_many_stores_each_event_once_and_answers_none_for_each(
    settings: Settings,
) -> None:
    async with own_stream(settings) as services:
        first = await services.publisher.publish_many([posted(i) for i in (1, 2, 3)])
        # The same events again, as the relay's sweep republishes, and a new one.
        again = await services.publisher.publish_many([posted(i) for i in (1, 2, 3, 4)])

        assert first == [None, None, None]
        assert again == [None, None, None, None]
        assert await stored_event_ids(services) == [1, 2, 3, 4]


async def test_publish_many_answers_an_error_for_each_event_when_the_stream_is_missing(
    settings: Settings,
) -> None:
    async with own_stream(settings) as services:
        await services.link.js.delete_stream(services.names.stream)
        results = await services.publisher.publish_many([posted(i) for i in (1, 2)])

        assert [type(r) for r in results] == [NoStreamResponseError] * 2
        with pytest.raises(NoStreamResponseError):
            await services.publisher.publish(*posted(3))


async def test_publish_many_answers_an_error_for_each_event_when_nats_is_not_connected(
    settings: Settings,
) -> None:
    link = NatsLink(settings.nats_url, name="test-never-connected")  # never started
    publisher = JetStreamPublisher(link, StreamNames("NOWHERE", "nowhere"))

    results = await publisher.publish_many([posted(i) for i in (1, 2)])

    assert [type(r) for r in results] == [ConnectionError] * 2


async def test_publish_many_with_nothing_to_publish_answers_nothing(settings: Settings) -> None:
    link = NatsLink(settings.nats_url, name="test-never-connected")
    assert await JetStreamPublisher(link, StreamNames()).publish_many([]) == []
