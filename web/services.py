"""Application services: the use cases behind the API and the pages. Controllers parse and
render; these decide, call the repositories and the stores, and hand events to the relay.

Redis work on the request path is best effort: Postgres has already committed, the events
will reach the workers through the outbox, and the read path tolerates a stale Redis."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Literal

import msgspec

from domain.errors import NotFound, RateLimited, Unauthorized
from domain.events import Event, FanoutModeChanged, TweetDeleted, TweetPosted
from domain.media import validate_media_ids
from domain.model import Tweet, TweetView, User
from domain.rules import (
    ensure_not_self_follow,
    normalize_display_name,
    normalize_tweet_text,
    validate_idempotency_key,
    validate_password,
    validate_username,
)
from domain.timeline import page_cursor
from storage.local_cache import ExpiringCache
from storage.redis_store import REDIS_ERRORS, PendingWrites, RateLimitDecision
from storage.request_id import current_request_id
from storage.sessions import Session
from storage.timeline import HomePage
from web.container import Services
from web.media_service import MediaService
from web.security import hash_password, hash_token, needs_rehash, new_token, verify_password
from web.tweet_json import TweetJson

log = logging.getLogger("chirp.services")

SESSION_LIFETIME = timedelta(days=30)
LAST_SEEN_RESOLUTION = timedelta(hours=1)


class Principal(msgspec.Struct, frozen=True, gc=False):
    user: User
    last_seen_at: datetime
    token_hash: bytes
    expires_at: datetime | None = None  # None: an API token, which does not expire

    def session(self) -> Session:
        return Session(self.user, self.last_seen_at, self.expires_at)


class UserPage(msgspec.Struct, frozen=True):
    users: list[tuple[User, bool]]  # (user, whether the viewer follows them)
    next_cursor: int | None


class TweetPage(msgspec.Struct, frozen=True):
    items: list[TweetView]
    next_cursor: int | None


class Chirp:
    def __init__(self, services: Services) -> None:
        self.s = services
        self.media = MediaService(services)
        self.tweet_json = TweetJson(self.media.url, self.media.url_window)
        # Whom a token belongs to: the lookup was a Postgres query on every authenticated
        # request, the largest single cost of a timeline read.
        self._principals: ExpiringCache[bytes, Principal] = ExpiringCache(
            services.settings.auth_cache_seconds
        )
        self._signed_out: ExpiringCache[bytes, bool] = ExpiringCache(
            2 * services.settings.auth_cache_seconds
        )
        # Tokens signed out here whose tombstone Redis did not take (storage/sessions.py):
        # refused here until it does.
        self._unrevoked: PendingWrites[bytes] = PendingWrites(
            services.sessions.revoke, services.breaker
        )
        # Readers who liked or unliked here while Redis refused the bump of their likes'
        # version. Other processes keep a reader's likes as long as it is unchanged
        # (storage/timeline.py), up to ten minutes; follow list versions need no such
        # retry: the fanout worker bumps them again from the follow events.
        self._unbumped_likes: PendingWrites[int] = PendingWrites(
            services.store.bump_like_versions, services.breaker
        )

    # -- best effort on derived stores -------------------------------------------------

    async def _best_effort(self, operation: Awaitable[object]) -> None:
        if not self.s.breaker.closed:
            operation.close()  # type: ignore[attr-defined]
            return
        try:
            await operation
        except REDIS_ERRORS:
            self.s.breaker.trip()

    def _publish(self, events: list[Event]) -> None:
        self.s.relay.publish_soon(events)

    async def _limit(
        self, name: str, subject: str, *, limit: int, window: int
    ) -> RateLimitDecision:
        decision = await self.s.rate_limiter.hit(name, subject, limit=limit, window=window)
        if not decision.allowed:
            raise RateLimited(
                f"rate limit exceeded: {limit} per {window} seconds", decision.reset, limit
            )
        return decision

    # -- accounts ----------------------------------------------------------------------

    async def sign_up(
        self,
        username: str,
        password: str,
        display_name: str | None,
        client: str,
        *,
        browser: bool = False,
    ) -> tuple[User, str]:
        validate_username(username)
        validate_password(password)
        name = normalize_display_name(display_name, username)
        await self._limit("signup", client, limit=self.s.settings.sign_ups_per_hour, window=3600)
        user = await self.s.users.create(
            self.s.ids.next_id(), username, name, await hash_password(password)
        )
        return user, await self.issue_token(user.id, "session" if browser else "api")

    async def sign_in(
        self, username: str, password: str, client: str, *, browser: bool = False
    ) -> tuple[User, str]:
        """`browser`: the token is for a session cookie, so it expires (API tokens do not)."""
        limit = self.s.settings.sign_in_attempts_per_minute
        await self._limit("signin-user", username.lower()[:64], limit=limit, window=60)
        await self._limit("signin-addr", client, limit=limit * 3, window=60)
        found = await self.s.users.credentials(username)
        if not await verify_password(found[1] if found else None, password) or found is None:
            raise Unauthorized("wrong username or password")
        user, stored_hash = found
        if needs_rehash(stored_hash):
            await self.s.users.set_password_hash(user.id, await hash_password(password))
        return user, await self.issue_token(user.id, "session" if browser else "api")

    async def issue_token(self, user_id: int, kind: str) -> str:
        token = new_token()
        expires = datetime.now(UTC) + SESSION_LIFETIME if kind == "session" else None
        await self.s.tokens.insert(hash_token(token), user_id, kind, expires)
        return token

    async def authenticate(self, token: str) -> Principal | None:
        if not token or len(token) > 128:
            return None
        token_hash = hash_token(token)
        cached = self._principals.get(token_hash)
        if cached is not None and (
            cached.expires_at is None or cached.expires_at > datetime.now(UTC)
        ):
            return cached
        if token_hash in self._unrevoked:
            return None
        now = datetime.now(UTC)
        session = await self._shared_session(token_hash)
        if session is False:
            return None
        if session is None or (session.expires_at is not None and session.expires_at <= now):
            found = await self.s.tokens.resolve(token_hash)
            if found is None:
                return None
            session = Session(*found)
            await self._best_effort(self.s.sessions.remember(token_hash, session, now))
        principal = Principal(session.user, session.last_seen_at, token_hash, session.expires_at)
        # A lookup that raced this process's sign-out of the token must not cache it again.
        if self._signed_out.get(token_hash) is None:
            self._principals.put(token_hash, principal)
        return principal

    async def _shared_session(self, token_hash: bytes) -> Session | Literal[False] | None:
        if not self.s.breaker.closed:
            return None
        if self._unrevoked:
            await self._unrevoked.write()
            if not self.s.breaker.closed:  # the retry found Redis down: so would the GET
                return None
        try:
            return await self.s.sessions.get(token_hash)
        except REDIS_ERRORS:
            self.s.breaker.trip()
            return None

    async def sign_out(self, principal: Principal) -> None:
        self._signed_out.put(principal.token_hash, True)
        self._principals.evict(principal.token_hash)
        await self.s.tokens.revoke(principal.token_hash)
        # A skipped tombstone would leave the token usable through other processes for the
        # shared copy's lifetime.
        await self._unrevoked.write([principal.token_hash])

    # -- users and the follow graph --------------------------------------------------------

    async def user(self, username: str) -> User:
        user = await self.s.users.get_by_username(username)
        if user is None:
            raise NotFound("user not found")
        return user

    async def is_following(self, viewer: Principal | None, user: User) -> bool:
        if viewer is None or viewer.user.id == user.id:
            return False
        return await self.s.follows.is_following(viewer.user.id, user.id)

    async def follow(self, principal: Principal, username: str) -> None:
        followee = await self.user(username)
        ensure_not_self_follow(principal.user.id, followee.id)
        events = await self.s.follows.follow(
            principal.user.id, followee.id, self.s.ids.next_id(), self._event_ids(2)
        )
        if events:
            if not followee.is_celebrity:
                # So the followee's tweets are there on the very next read; the worker
                # repeats this from the event (idempotently) in case Redis was down now.
                await self._best_effort(
                    self.s.timelines.merge_into_timeline(principal.user.id, followee.id)
                )
            await self._follow_list_changed(principal.user.id, events)
            self._publish(events)

    async def unfollow(self, principal: Principal, username: str) -> None:
        followee = await self.user(username)
        events = await self.s.follows.unfollow(principal.user.id, followee.id, self._event_ids(2))
        if events:
            await self._best_effort(
                self.s.timelines.unmerge_from_timeline(principal.user.id, followee.id)
            )
            await self._follow_list_changed(principal.user.id, events)
            self._publish(events)

    async def _follow_list_changed(self, user_id: int, events: list[Event]) -> None:
        """Invalidates the processes' cached follow lists (HomeTimeline's copies) so the next
        read sees the change; the fanout worker repeats this from the events in case Redis
        failed now."""
        self.s.timelines.forget_reader(user_id)
        await self._invalidate(self.s.store.bump_follow_version(user_id))
        if any(isinstance(e, FanoutModeChanged) for e in events):
            await self._invalidate(self.s.store.bump_celebrity_version())

    async def _invalidate(self, operation: Awaitable[object]) -> None:
        """Tried even while the breaker is open: a skipped invalidation leaves other
        processes serving a stale copy, while a failed attempt costs little."""
        try:
            await operation
        except REDIS_ERRORS:
            self.s.breaker.trip()

    def _event_ids(self, count: int) -> list[int]:
        return [self.s.ids.next_id() for _ in range(count)]

    async def follow_list(
        self,
        viewer: Principal | None,
        username: str,
        *,
        followers: bool,
        before: int | None,
        limit: int,
    ) -> UserPage:
        user = await self.user(username)
        rows = await self.s.follows.page(
            user.id, followers=followers, before=before, limit=limit + 1
        )
        page = rows[:limit]
        users = [u for _, u in page]
        followed: set[int] = set()
        if viewer is not None and users:
            followed = await self.s.follows.following_among(viewer.user.id, [u.id for u in users])
        return UserPage(
            users=[(u, u.id in followed) for u in users],
            next_cursor=page_cursor([f for f, _ in page], limit, len(rows) > limit),
        )

    # -- tweets ----------------------------------------------------------------------------

    async def post_tweet(
        self,
        principal: Principal,
        text: str,
        *,
        reply_to: int | None = None,
        media_ids: list[int] | None = None,
        media_alts: dict[int, str] | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[TweetView, RateLimitDecision]:
        author = principal.user
        clean_text = normalize_tweet_text(text)
        key = validate_idempotency_key(idempotency_key)
        validate_media_ids(media_ids or [])
        decision = await self._limit(
            "tweets", str(author.id), limit=self.s.settings.tweets_per_hour, window=3600
        )
        media = await self.media.prepare(author.id, media_ids or [], media_alts)
        tweet = Tweet(
            id=self.s.ids.next_id(),
            author_id=author.id,
            text=clean_text,
            created_at=datetime.now(UTC),
            reply_to=reply_to,
            media=media,
        )
        event = TweetPosted(
            event_id=self.s.ids.next_id(),
            tweet_id=tweet.id,
            author_id=author.id,
            reply_to=reply_to,
            request_id=current_request_id(),
        )
        stored, created = await self.s.tweets.post(tweet, event, key)
        if created:
            # Read-your-writes: the author sees the tweet on the next read, before fanout.
            own = [([author.id], [tweet.id])]
            await self._best_effort(self.s.store.push_many(timelines=own, authors=own))
            # Cached now, before the response gives anyone its id. Every open socket of a
            # follower hydrates the tweet the moment its live message arrives, all at once:
            # uncached, each asked Postgres (bench/push_latency.py at full size: 25 sockets
            # of a process per tweet, and a p50 of 200 ms from the fanout to the socket).
            await self.s.reader.remember_tweets([stored])
            if reply_to is not None:
                await self.s.reader.forget_tweets([reply_to])
            self._publish([event])
        return TweetView(tweet=stored, author=author.as_author()), decision

    async def tweet(self, viewer: Principal | None, tweet_id: int) -> TweetView:
        views = await self.s.reader.views(viewer.user.id if viewer else None, [tweet_id])
        if not views:
            raise NotFound("tweet not found")
        return views[0]

    async def delete_tweet(self, principal: Principal, tweet_id: int) -> None:
        event: TweetDeleted = await self.s.tweets.delete(
            tweet_id, principal.user.id, self.s.ids.next_id()
        )
        # The parent's reply count changed too.
        forget = [tweet_id] if event.reply_to is None else [tweet_id, event.reply_to]
        await self.s.reader.forget_tweets(forget)
        await self._best_effort(self.s.store.unpush_from_timelines([principal.user.id], [tweet_id]))
        await self._best_effort(self.s.store.unpush_from_author(principal.user.id, tweet_id))
        self._publish([event])

    async def like(self, principal: Principal, tweet_id: int, *, liked: bool) -> int:
        if liked:
            count = await self.s.tweets.like(principal.user.id, tweet_id)
        else:
            count = await self.s.tweets.unlike(principal.user.id, tweet_id)
        await self.s.reader.forget_tweets([tweet_id])
        # Processes keep a copy of each reader's likes while this version is unchanged.
        self.s.timelines.forget_reader(principal.user.id)
        await self._unbumped_likes.write([principal.user.id])
        return count

    async def replies(
        self, viewer: Principal | None, tweet_id: int, *, after: int | None, limit: int
    ) -> TweetPage:
        await self.tweet(viewer, tweet_id)
        ids = await self.s.tweets.replies(tweet_id, after=after, limit=limit + 1)
        views = await self.s.reader.views(viewer.user.id if viewer else None, ids[:limit])
        return TweetPage(items=views, next_cursor=page_cursor(ids[:limit], limit, len(ids) > limit))

    async def user_tweets(
        self, viewer: Principal | None, username: str, *, before: int | None, limit: int
    ) -> TweetPage:
        user = await self.user(username)
        ids = await self.s.tweets.ids_by_authors(
            [user.id], before=before, after=None, limit=limit + 1
        )
        views = await self.s.reader.views(viewer.user.id if viewer else None, ids[:limit])
        return TweetPage(items=views, next_cursor=page_cursor(ids[:limit], limit, len(ids) > limit))

    # -- home timeline ---------------------------------------------------------------------

    async def home(
        self, principal: Principal, *, before: int | None, after: int | None, limit: int
    ) -> HomePage:
        user_id = principal.user.id
        if self._unbumped_likes and self.s.breaker.closed:
            await self._unbumped_likes.write()
        now = datetime.now(UTC)
        if now - principal.last_seen_at > LAST_SEEN_RESOLUTION:
            inactive = now - principal.last_seen_at > timedelta(days=self.s.settings.active_days)
            await self.s.users.touch_last_seen(user_id)
            seen = msgspec.structs.replace(principal, last_seen_at=now)
            if self._principals.get(principal.token_hash) is not None:
                self._principals.put(principal.token_hash, seen)
            # Or every other process would find the old time in the shared copy and touch
            # (and after a long absence, rebuild the timeline) again.
            await self._best_effort(self.s.sessions.refresh(principal.token_hash, seen.session()))
            # Fanout skipped this user while inactive: their Redis timeline (if any survived)
            # is missing tweets, so rebuild it before serving it.
            if inactive:
                await self._best_effort(self.s.timelines.populate(user_id))
            await self._best_effort(self.s.store.keep_alive(user_id))
        return await self.s.timelines.read(user_id, before=before, after=after, limit=limit)
