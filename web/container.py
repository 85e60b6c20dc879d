"""The composition root: the one place that knows which adapter serves which port. The web
app, the workers and the CLI all get their services from `provide_services`, so a worker
sees exactly what the web app sees."""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import redis.asyncio as aioredis

from domain.ids import IdGenerator
from domain.ports import MediaStore
from realtime.jetstream import JetStreamPublisher, NatsLink, StreamNames, ensure_streams
from realtime.live import Presence
from realtime.relay import OutboxRelay
from storage.hydrate import TweetReader
from storage.media_repo import MediaRepository
from storage.postgres import Database
from storage.redis_store import (
    RedisBreaker,
    RedisKeys,
    RedisRateLimiter,
    RedisTimelineStore,
    author_cache,
    connect_redis,
    tweet_cache,
)
from storage.repositories import (
    FollowRepository,
    OutboxRepository,
    TokenRepository,
    TweetRepository,
    UserRepository,
)
from storage.resp import RespClient
from storage.search_index import TypesenseIndex
from storage.search_sync import SearchSync
from storage.sessions import SessionCache
from storage.timeline import HomeTimeline
from web.media_setup import build_media_store
from web.settings import Settings

log = logging.getLogger("chirp")


@dataclass
class Services:
    settings: Settings
    db: Database
    redis: aioredis.Redis
    # The read path's lean client (storage/resp.py); everything else uses `redis`.
    redis_reads: RespClient
    keys: RedisKeys
    breaker: RedisBreaker
    link: NatsLink
    names: StreamNames
    ids: IdGenerator
    users: UserRepository
    tokens: TokenRepository
    sessions: SessionCache
    tweets: TweetRepository
    follows: FollowRepository
    outbox: OutboxRepository
    store: RedisTimelineStore
    reader: TweetReader
    timelines: HomeTimeline
    search: TypesenseIndex
    search_sync: SearchSync
    publisher: JetStreamPublisher
    relay: OutboxRelay
    rate_limiter: RedisRateLimiter
    presence: Presence
    media_store: MediaStore
    media: MediaRepository


def build_services(settings: Settings, *, process_name: str) -> Services:
    """Wires every adapter without connecting anything."""
    db = Database(settings.database_url, max_size=settings.db_pool_size)
    redis = connect_redis(settings.redis_url)
    reads = RespClient(settings.redis_url)
    keys = RedisKeys(settings.redis_prefix)
    breaker = RedisBreaker()
    link = NatsLink(settings.nats_url, name=process_name)
    names = StreamNames(settings.stream, settings.subject_prefix)
    users = UserRepository(db)
    tweets = TweetRepository(db)
    follows = FollowRepository(
        db,
        celebrity_threshold=settings.celebrity_threshold,
        hysteresis=settings.celebrity_hysteresis,
    )
    outbox = OutboxRepository(db)
    store = RedisTimelineStore(
        redis, reads, keys, max_entries=settings.timeline_max, ttl=settings.active_days * 86_400
    )
    reader = TweetReader(
        tweets,
        users,
        tweet_cache(redis, reads, keys, settings.tweet_cache_ttl),
        author_cache(redis, reads, keys, settings.tweet_cache_ttl),
        breaker,
    )
    publisher = JetStreamPublisher(link, names)
    search = TypesenseIndex(
        settings.typesense_url,
        settings.typesense_api_key,
        settings.search_collection,
        timeout=settings.search_timeout,
        budget_ms=settings.search_budget_ms,
    )
    return Services(
        settings=settings,
        db=db,
        redis=redis,
        redis_reads=reads,
        keys=keys,
        breaker=breaker,
        link=link,
        names=names,
        ids=IdGenerator(max(settings.worker_id, 0)),
        users=users,
        tokens=TokenRepository(db),
        sessions=SessionCache(redis, reads, keys, ttl=settings.session_cache_seconds),
        tweets=tweets,
        follows=follows,
        outbox=outbox,
        store=store,
        reader=reader,
        timelines=HomeTimeline(store, tweets, follows, reader, breaker),
        search=search,
        search_sync=SearchSync(tweets, users, search),
        publisher=publisher,
        relay=OutboxRelay(link, publisher, db, outbox),
        rate_limiter=RedisRateLimiter(redis, keys),
        presence=Presence(redis, keys),
        media_store=build_media_store(settings),
        media=MediaRepository(db),
    )


async def start_services(services: Services, *, wait_for_nats: bool = False) -> None:
    await services.db.start()
    if services.settings.worker_id < 0:
        await services.db.hold_worker_id(services.ids.assign)
    await services.media_store.start()

    async def prepare_streams() -> None:
        await ensure_streams(
            services.link,
            services.names,
            duplicate_window=services.settings.duplicate_window_seconds,
        )

    services.link.on_connect = prepare_streams
    await services.link.start(wait=wait_for_nats)


def settle_heap() -> None:
    """Once a long-running process has started: everything allocated so far (modules, the
    app, the pools) lives as long as the process, so move it out of the collector's sight.
    Full collections walking it stalled the event loop for 25-110 ms at a time, which was
    the timeline's p99 (bench/timeline.py)."""
    gc.collect()
    gc.freeze()


async def stop_services(services: Services) -> None:
    await services.link.stop()
    await services.search.close()
    await services.redis.aclose()
    await services.redis_reads.close()
    await services.db.stop()


@contextlib.asynccontextmanager
async def provide_services(
    settings: Settings, *, process_name: str, wait_for_nats: bool = False
) -> AsyncIterator[Services]:
    services = build_services(settings, process_name=process_name)
    await start_services(services, wait_for_nats=wait_for_nats)
    try:
        yield services
    finally:
        await stop_services(services)
