"""The search-index worker: keeps the Typesense index in step with the tweet events.

Events only say which tweets changed; what the index gets is decided from Postgres when the
batch is applied (a live tweet is upserted, a deleted one removed). So a redelivered event,
or a TweetPosted processed after its tweet was deleted, leaves the index right."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import asyncpg

from domain.errors import Unavailable
from domain.events import AnyEvent, TweetDeleted, TweetPosted
from realtime.batch_consumer import BatchEventConsumer
from realtime.jetstream import NatsLink, StreamNames
from storage.search_sync import SearchSync

log = logging.getLogger("chirp.indexer")

CONSUMER = "search-indexer"

# A batch failing with one of these waits for the dependency instead of using up deliveries.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    Unavailable,
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
)


class SearchIndexer:
    def __init__(self, sync: SearchSync) -> None:
        self._sync = sync
        # Typesense may come back from a restart without writes it had acknowledged (0.24
        # does, when it restarts before its first snapshot), so what it holds is not trusted
        # until reconciled with Postgres: at start, and after every outage.
        self._suspect = True

    async def reconcile(self) -> None:
        """Brings the index in line with Postgres where their counts disagree (the worker
        does this as it starts, then after every outage)."""
        fixed = await self._sync.reconcile()
        self._suspect = False
        if fixed:
            log.warning("search index reconciled with Postgres", extra={"resynced": fixed})

    async def handle_batch(self, events: Sequence[AnyEvent]) -> Mapping[int, str]:
        """Applies the tweet events; returns the event ids whose documents Typesense
        rejected, with its reason."""
        tweet_of = {
            e.event_id: e.tweet_id for e in events if isinstance(e, TweetPosted | TweetDeleted)
        }
        try:
            rejected = await self._sync.sync(list(tweet_of.values()))
            if self._suspect:
                await self.reconcile()
        except TRANSIENT_ERRORS:
            self._suspect = True
            raise
        return {event_id: rejected[t] for event_id, t in tweet_of.items() if t in rejected}


@dataclass(frozen=True)
class IndexerTuning:
    # Typesense imports cost per request as much as per document: big batches when there
    # is a backlog, and `max_wait` bounds how long a lone tweet waits for company.
    batch: int = 1000
    # A lone tweet waits at most this long for company before it is indexed.
    max_wait: float = 0.1
    # Deliveries of a rejected event before it is parked on the dead-letter stream.
    max_deliver: int = 10
    # First redelivery delay of a rejected event, doubling each time.
    redelivery_delay: float = 0.5
    # Longest pause between retries of a batch held while a dependency is down.
    max_retry_delay: float = 5.0


def search_indexer_consumer(
    link: NatsLink,
    names: StreamNames,
    indexer: SearchIndexer,
    tuning: IndexerTuning | None = None,
) -> BatchEventConsumer:
    tuning = tuning or IndexerTuning()
    return BatchEventConsumer(
        link,
        names,
        CONSUMER,
        indexer.handle_batch,
        # Only tweet events: follows and mode changes mean nothing to the index.
        filter_subject=names.subject("tweet.*"),
        batch=tuning.batch,
        max_wait=tuning.max_wait,
        max_deliver=tuning.max_deliver,
        transient=TRANSIENT_ERRORS,
        redelivery_delay=tuning.redelivery_delay,
        max_retry_delay=tuning.max_retry_delay,
    )
