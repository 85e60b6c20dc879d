"""Keeping the search index equal to Postgres, the source of truth: bringing given tweets in
line (the indexer and `verify --repair`), rebuilding everything into a fresh collection
(`reindex`), and measuring how far the two have drifted apart (`verify`).

Every decision is taken from the tweet's state in Postgres at that moment, never from an
event: a live tweet is upserted, a deleted or unknown one is removed. So applying the same
ids twice, or out of order, ends in the same index."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import msgspec

from domain.ids import smallest_id_at
from domain.model import Tweet
from storage.repositories import TweetRepository, UserRepository
from storage.search_index import (
    MissingCollection,
    SearchRejected,
    TweetDocument,
    TypesenseIndex,
    schema_drift,
    tweet_document,
)

log = logging.getLogger("chirp.search")

# Changes within this long before a reindex started are applied again at its end: clocks of
# the app servers (which stamp ids) and of Postgres (which stamps deletions) may differ.
CATCH_UP_MARGIN = timedelta(minutes=1)


class ReindexReport(msgspec.Struct, frozen=True):
    collection: str
    previous: str | None
    documents: int


class Drift(msgspec.Struct, frozen=True):
    postgres_count: int
    index_count: int
    collection: str | None
    schema: list[str]
    sampled: int
    # Compared id by id (all of them), rather than only the samples.
    full: bool
    missing: list[int]
    stale: list[int]
    extra: list[int]

    @property
    def clean(self) -> bool:
        return (
            self.collection is not None
            and not self.schema
            and not self.missing
            and not self.stale
            and not self.extra
            and self.postgres_count == self.index_count
        )


class SearchSync:
    def __init__(
        self,
        tweets: TweetRepository,
        users: UserRepository,
        index: TypesenseIndex,
        *,
        batch_size: int = 1000,
    ) -> None:
        self._tweets = tweets
        self._users = users
        self.index = index
        self.batch_size = batch_size

    async def documents_for(self, tweets: Sequence[Tweet]) -> list[TweetDocument]:
        authors = await self._users.authors(list({t.author_id for t in tweets}))
        # Authors are never deleted (tweets reference them), so none is skipped in practice.
        return [tweet_document(t, authors[t.author_id]) for t in tweets if t.author_id in authors]

    async def sync(
        self, tweet_ids: Sequence[int], *, collection: str | None = None
    ) -> dict[int, str]:
        """Brings these tweets' documents in line with Postgres. Returns the ids the engine
        rejected, with its reason; raises SearchUnavailable when it cannot be reached."""
        ids = list(dict.fromkeys(tweet_ids))
        if not ids:
            return {}
        if collection is not None:
            return await self._apply(ids, collection)
        await self.index.ensure_once()
        try:
            return await self._apply(ids, None)
        except MissingCollection:
            # Someone removed the alias or its collection: recreate, then start filling it
            # (`verify --repair` or a reindex brings back what was lost).
            await self.index.ensure()
            return await self._apply(ids, None)

    async def _apply(self, ids: list[int], collection: str | None) -> dict[int, str]:
        tweets = await self._tweets.get_many(ids)
        live = [tweets[i] for i in ids if i in tweets and not tweets[i].deleted]
        gone = [i for i in ids if i not in tweets or tweets[i].deleted]
        rejected = await self.index.upsert(await self.documents_for(live), collection=collection)
        if gone:
            await self.index.delete(gone, collection=collection)
        return {int(doc_id): error for doc_id, error in rejected.items()}

    # -- reindex ----------------------------------------------------------------------------

    async def reindex(
        self,
        *,
        total: Callable[[int], None] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> ReindexReport:
        """Builds a new collection from Postgres, then points the alias at it and drops the
        old one. Searches keep using the old collection until the switch, and the indexer
        keeps writing through the alias, so what changed meanwhile is applied again to the new
        collection before and after the switch."""
        started = datetime.now(UTC) - CATCH_UP_MARGIN
        if total is not None:
            total(await self._tweets.count_live())
        name = self.index.new_collection_name()
        await self.index.create_collection(name)
        try:
            after = 0
            while True:
                tweets = await self._tweets.live_after(after, self.batch_size)
                if not tweets:
                    break
                rejected = await self.index.upsert(
                    await self.documents_for(tweets), collection=name
                )
                if rejected:
                    doc_id, error = next(iter(rejected.items()))
                    raise SearchRejected(
                        f"{len(rejected)} documents were rejected, e.g. {doc_id}: {error}"
                    )
                after = tweets[-1].id
                if progress is not None:
                    progress(len(tweets))
            await self._catch_up(started, name)
            previous = await self.index.point_alias(name)
        except BaseException:
            await self.index.drop_collection(name)
            raise
        # Changes written through the alias between the first catch-up and the switch went
        # to the old collection.
        await self._catch_up(started, name)
        if previous is not None and previous != name:
            await self.index.drop_collection(previous)
        log.info("search reindexed", extra={"collection": name, "previous": previous})
        return ReindexReport(
            collection=name, previous=previous, documents=await self.index.count(collection=name)
        )

    async def _catch_up(self, since: datetime, collection: str) -> None:
        after = smallest_id_at(int(since.timestamp() * 1000))
        while True:
            ids = [t.id for t in await self._tweets.live_after(after, self.batch_size)]
            if not ids:
                break
            await self.sync(ids, collection=collection)
            after = ids[-1]
        deleted = await self._tweets.deleted_since(since)
        if deleted:
            await self.index.delete(deleted, collection=collection)

    # -- verify -----------------------------------------------------------------------------

    async def verify(self, *, sample: int = 1000, full: bool = False) -> Drift:
        """Compares the index with Postgres: counts, the schema, and documents sampled from
        both sides (a sampled tweet must be indexed as it is now; a sampled document must
        belong to a live tweet). When the counts differ, or `full` is asked for, every id
        is compared, so that a repair knows exactly what to fix."""
        postgres_count = await self._tweets.count_live()
        collection = await self.index.current_collection()
        if collection is None:
            return Drift(postgres_count, 0, None, [], 0, False, [], [], [])
        schema = await self.index.collection_info(collection)
        index_count = int(schema.get("num_documents", 0))
        missing: set[int] = set()
        stale: set[int] = set()
        extra: set[int] = set()

        tweets = await self._tweets.sample_live(sample)
        indexed = await self.index.documents([t.id for t in tweets])
        for expected in await self.documents_for(tweets):
            found = indexed.get(int(expected.id))
            if found is None:
                missing.add(int(expected.id))
            elif found != expected:
                stale.add(int(expected.id))
        sampled_docs = await self.index.sample_ids(sample)
        rows = await self._tweets.get_many(sampled_docs)
        extra.update(i for i in sampled_docs if i not in rows or rows[i].deleted)

        compare_all = full or postgres_count != index_count
        if compare_all:
            live = await self._all_live_ids()
            in_index = await self.index.ids()
            missing.update(live - in_index)
            extra.update(in_index - live)
        return Drift(
            postgres_count=postgres_count,
            index_count=index_count,
            collection=collection,
            schema=schema_drift(schema),
            sampled=len(tweets) + len(sampled_docs),
            full=compare_all,
            missing=sorted(missing),
            stale=sorted(stale),
            extra=sorted(extra),
        )

    async def reconcile(self) -> int:
        """The cheap check after an outage: when the counts differ, compare every id and
        bring the differences in line. Returns how many tweets it re-synced. (Equal counts
        hiding a loss and an extra of the same size are left to `verify`.)"""
        await self.index.ensure_once()
        if await self._tweets.count_live() == await self.index.count():
            return 0
        live = await self._all_live_ids()
        indexed = await self.index.ids()
        differing = sorted(live ^ indexed)
        for start in range(0, len(differing), self.batch_size):
            await self.sync(differing[start : start + self.batch_size])
        return len(differing)

    async def _all_live_ids(self) -> set[int]:
        ids: set[int] = set()
        after = 0
        while True:
            page = await self._tweets.live_ids_after(after, 50_000)
            if not page:
                return ids
            ids.update(page)
            after = page[-1]

    async def repair(self, drift: Drift) -> int:
        """Fixes what `verify` found: a schema that differs (or no collection) needs a
        reindex; wrong documents are brought in line one by one. Returns how many documents
        were rewritten or removed."""
        if drift.collection is None or drift.schema:
            return (await self.reindex()).documents
        ids = [*drift.missing, *drift.stale, *drift.extra]
        for start in range(0, len(ids), self.batch_size):
            rejected = await self.sync(ids[start : start + self.batch_size])
            if rejected:
                doc_id, error = next(iter(rejected.items()))
                raise SearchRejected(
                    f"{len(rejected)} documents were rejected, e.g. {doc_id}: {error}"
                )
        return len(ids)
