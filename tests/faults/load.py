"""The generated load: many users posting, replying, liking, deleting, following and
unfollowing through the JSON API of several web processes, and the ledger of everything the
API acknowledged.

A request that fails (connection refused while its web process is dead, a reset, a timeout, a
5xx) is retried on the next web process until it gets an answer; a post keeps its
Idempotency-Key across the retries, so a retry must never make a second tweet. Each user does
one thing at a time, so the last acknowledged follow or like of a pair is its final state."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

import httpx

WORDS = [
    "river",
    "cloud",
    "lamp",
    "orbit",
    "maple",
    "quartz",
    "ember",
    "harbor",
    "lantern",
    "meadow",
    "pixel",
    "signal",
    "tundra",
    "violet",
    "willow",
    "zephyr",
    "anchor",
    "basalt",
    "cedar",
    "delta",
    "falcon",
    "glacier",
    "horizon",
    "island",
    "jasper",
    "kernel",
    "lagoon",
    "marble",
    "nebula",
    "oasis",
    "prairie",
    "quiver",
    "raven",
    "summit",
    "timber",
    "umber",
    "vertex",
]

PASSWORD = "fault suite pw 1"

CELEBRITY = "celebrity"
EDGE = "edge"  # hovers around the celebrity threshold, so it changes mode both ways
NORMAL = "normal"


class LoadError(Exception):
    """The API gave no usable answer for too long: the run cannot go on."""


@dataclass
class Member:
    index: int
    username: str
    id: str
    token: str
    role: str
    # The web process this user's requests go to first (the other one on failure).
    home: int

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass(frozen=True)
class TweetRecord:
    id: str
    author: str
    key: str
    reply_to: str | None


Pair = tuple[str, str]


@dataclass
class Ledger:
    """What the API acknowledged, and nothing else."""

    tweets: dict[str, TweetRecord] = field(default_factory=dict)
    # (author id, Idempotency-Key) -> the tweet id its 201 named.
    keys: dict[Pair, str] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)
    # A key answered with two different tweet ids.
    double_acks: list[str] = field(default_factory=list)
    # (follower id, followee id) -> following, as the last acknowledged request left it.
    follows: dict[Pair, bool] = field(default_factory=dict)
    # (user id, tweet id) -> liked, likewise.
    likes: dict[Pair, bool] = field(default_factory=dict)
    # Pairs with a request that timed out: it may still be applied after a later one, so
    # their final state is not known from the answers alone.
    uncertain: set[Pair] = field(default_factory=set)
    # A delete of one's own live tweet answered 404 although no earlier attempt of it may
    # have done it.
    unexpected: list[str] = field(default_factory=list)
    live_by_author: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    recent: deque[str] = field(default_factory=lambda: deque(maxlen=300))
    followers: Counter[str] = field(default_factory=Counter)

    def posted(self, author: str, key: str, tweet_id: str, reply_to: str | None) -> None:
        known = self.keys.get((author, key))
        if known is not None:
            if known != tweet_id:
                self.double_acks.append(f"key {key} of {author}: {known} and {tweet_id}")
            return
        self.keys[(author, key)] = tweet_id
        if tweet_id in self.tweets:
            self.double_acks.append(f"tweet {tweet_id} acknowledged for two keys")
            return
        self.tweets[tweet_id] = TweetRecord(tweet_id, author, key, reply_to)
        self.live_by_author[author].append(tweet_id)
        self.recent.append(tweet_id)

    def deleted_tweet(self, author: str, tweet_id: str) -> None:
        self.deleted.add(tweet_id)
        with contextlib.suppress(ValueError):
            self.live_by_author[author].remove(tweet_id)
        with contextlib.suppress(ValueError):
            self.recent.remove(tweet_id)

    def followed(self, follower: str, followee: str, following: bool) -> None:
        before = self.follows.get((follower, followee), False)
        self.follows[(follower, followee)] = following
        if before != following:
            self.followers[followee] += 1 if following else -1

    def following(self, follower: str) -> set[str]:
        return {b for (a, b), on in self.follows.items() if a == follower and on}

    @property
    def live(self) -> set[str]:
        return set(self.tweets) - self.deleted


@dataclass
class Attempts:
    """Client-side figures: answers and failures per kind of request and web process."""

    answered: Counter[str] = field(default_factory=Counter)
    by_web: Counter[int] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    failures_by_kind: Counter[str] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    search: Counter[str] = field(default_factory=Counter)

    def failed(self, kind: str, what: str) -> None:
        self.failures[what] += 1
        self.failures_by_kind[f"{kind}: {what}"] += 1


@dataclass
class Answer:
    response: httpx.Response
    # An earlier attempt may have been applied (reset, timeout, 5xx).
    maybe_done: bool
    # An earlier attempt timed out on a live server, so it may still be applied later.
    ghost: bool


class ApiPool:
    """HTTP clients for every web process, with failover between them."""

    def __init__(self, urls: list[str], *, timeout: float, give_up_after: float) -> None:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
        self.clients = [
            httpx.AsyncClient(
                base_url=url, timeout=httpx.Timeout(timeout, connect=2.0), limits=limits
            )
            for url in urls
        ]
        self.give_up_after = give_up_after
        self.attempts = Attempts()

    async def close(self) -> None:
        for client in self.clients:
            await client.aclose()

    async def call(
        self,
        kind: str,
        method: str,
        path: str,
        *,
        member: Member | None = None,
        prefer: int = 0,
        rng: random.Random | None = None,
        accept: tuple[int, ...] = (),
        **kwargs: Any,
    ) -> Answer:
        """`accept`: statuses that are answers here although they would otherwise be
        retried (503 from search while the engine is down)."""
        rng = rng or random.Random()
        if member is not None:
            kwargs["headers"] = {**kwargs.get("headers", {}), **member.auth}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.give_up_after
        web = prefer % len(self.clients)
        maybe_done = ghost = False
        delay = 0.1
        while True:
            try:
                response = await self.clients[web].request(method, path, **kwargs)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout):
                self.attempts.failed(kind, "refused")
            except httpx.TimeoutException:
                maybe_done = ghost = True
                self.attempts.failed(kind, "timeout")
            except httpx.TransportError:
                maybe_done = True
                self.attempts.failed(kind, "reset")
            else:
                status = response.status_code
                if status >= 500 and status not in accept:
                    maybe_done = True
                    self.attempts.failed(kind, f"http {status}")
                    if len(self.attempts.server_errors) < 50:
                        self.attempts.server_errors.append(
                            f"{method} {path} -> {status} on web-{web}: {response.text[:300]}"
                        )
                elif status == 429:
                    self.attempts.failed(kind, "http 429")
                else:
                    self.attempts.answered[kind] += 1
                    self.attempts.by_web[web] += 1
                    return Answer(response, maybe_done, ghost)
            if loop.time() > deadline:
                raise LoadError(f"{kind}: {method} {path} had no answer for {self.give_up_after} s")
            web = (web + 1) % len(self.clients)
            await asyncio.sleep(delay * (0.5 + rng.random()))
            delay = min(delay * 2, 2.0)


def expect(answer: Answer, *statuses: int) -> httpx.Response:
    response = answer.response
    if response.status_code not in statuses:
        raise LoadError(
            f"{response.request.method} {response.request.url.path} answered "
            f"{response.status_code} (expected {statuses}): {response.text[:300]}"
        )
    return response


@dataclass
class LoadMix:
    """Relative weights of what a user does next."""

    post: float = 30
    reply: float = 10
    like: float = 14
    unlike: float = 5
    delete: float = 7
    follow_change: float = 14
    read: float = 17
    search: float = 3

    def actions(self) -> tuple[list[str], list[float]]:
        names = list(vars(self))
        return names, [getattr(self, n) for n in names]


class Load:
    """The users and what they do, recorded in the ledger."""

    def __init__(
        self,
        pool: ApiPool,
        *,
        seed: int,
        users: int,
        celebrities: int,
        edges: int,
        think: float,
        mix: LoadMix | None = None,
    ) -> None:
        self.pool = pool
        self.seed = seed
        self.rng = random.Random(seed)
        self.tag = f"{self.rng.getrandbits(20):05x}"
        self.user_count = users
        self.celebrity_count = celebrities
        self.edge_count = edges
        self.think = think
        self.mix = mix or LoadMix()
        self.ledger = Ledger()
        self.members: list[Member] = []
        self._rngs: dict[str, random.Random] = {}
        self._sequence: Counter[str] = Counter()

    def rng_of(self, member: Member) -> random.Random:
        return self._rngs[member.id]

    def role_of(self, user_id: str) -> str:
        return next(m.role for m in self.members if m.id == user_id)

    # -- setup --------------------------------------------------------------------------

    async def sign_up(self) -> None:
        roles = (
            [CELEBRITY] * self.celebrity_count
            + [EDGE] * self.edge_count
            + [NORMAL] * (self.user_count - self.celebrity_count - self.edge_count)
        )
        gate = asyncio.Semaphore(4)  # password hashing is CPU work on a shared machine

        async def one(index: int, role: str) -> Member:
            username = f"f{self.tag}_{index:03d}"
            async with gate:
                answer = await self.pool.call(
                    "sign up",
                    "POST",
                    "/api/v1/accounts",
                    prefer=index,
                    json={"username": username, "password": PASSWORD},
                )
            body = expect(answer, 201).json()
            return Member(index, username, body["user"]["id"], body["token"], role, index % 2)

        self.members = list(await asyncio.gather(*(one(i, r) for i, r in enumerate(roles))))
        for member in self.members:
            self._rngs[member.id] = random.Random(self.seed * 100_003 + member.index)

    async def initial_graph(self) -> None:
        """Most users follow every celebrity; each edge user gets 4 followers (threshold 5:
        a few more make it a celebrity, a few fewer a normal author again); normal users
        follow two or three normal users, so stay below the threshold."""
        rng = self.rng
        celebrities = [m for m in self.members if m.role == CELEBRITY]
        edges = [m for m in self.members if m.role == EDGE]
        normal = [m for m in self.members if m.role == NORMAL]
        plan: dict[str, list[Member]] = defaultdict(list)
        for member in self.members:
            if member.role != CELEBRITY:
                plan[member.id] += [c for c in celebrities if rng.random() < 0.8]
        for edge in edges:
            for follower in rng.sample(normal, min(4, len(normal))):
                plan[follower.id].append(edge)
        counts: Counter[str] = Counter()
        for member in self.members:
            others = [n for n in normal if n.id != member.id and counts[n.id] < 3]
            for followee in rng.sample(others, min(rng.randint(2, 3), len(others))):
                plan[member.id].append(followee)
                counts[followee.id] += 1

        async def follow_all(member: Member) -> None:
            for followee in plan[member.id]:
                await self.follow(member, followee, True)
            await self.read(member)

        await asyncio.gather(*(follow_all(m) for m in self.members))

    # -- the run ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.gather(*(self._user(m, stop) for m in self.members))

    async def _user(self, member: Member, stop: asyncio.Event) -> None:
        rng = self.rng_of(member)
        names, weights = self.mix.actions()
        # Spread the start so the users do not move in step.
        await _pause(stop, rng.uniform(0, self.think))
        while not stop.is_set():
            action = rng.choices(names, weights)[0]
            await getattr(self, f"_do_{action}")(member, rng)
            await _pause(stop, rng.expovariate(1.0 / self.think))

    async def _call(self, member: Member, kind: str, method: str, path: str, **kw: Any) -> Answer:
        return await self.pool.call(
            kind, method, path, member=member, prefer=member.home, rng=self.rng_of(member), **kw
        )

    def _text(self, member: Member, rng: random.Random) -> str:
        self._sequence[member.id] += 1
        words = " ".join(rng.sample(WORDS, 3))
        return f"{words} from {member.username} #{self._sequence[member.id]}"

    async def post(self, member: Member, reply_to: str | None = None) -> str | None:
        rng = self.rng_of(member)
        text = self._text(member, rng)
        key = f"{member.username}-{self._sequence[member.id]}"
        body: dict[str, Any] = {"text": text}
        if reply_to is not None:
            body["reply_to"] = reply_to
        answer = await self._call(
            member, "reply" if reply_to else "post", "POST", "/api/v1/tweets",
            json=body, headers={"Idempotency-Key": key},
        )  # fmt: skip
        if reply_to is not None and answer.response.status_code == 422:
            return None  # the parent was deleted meanwhile: no tweet
        tweet_id = str(expect(answer, 201).json()["id"])
        self.ledger.posted(member.id, key, tweet_id, reply_to)
        return tweet_id

    async def _do_post(self, member: Member, rng: random.Random) -> None:
        await self.post(member)

    async def _do_reply(self, member: Member, rng: random.Random) -> None:
        parent = rng.choice(list(self.ledger.recent)) if self.ledger.recent else None
        await self.post(member, parent)

    async def _like(self, member: Member, tweet_id: str, liked: bool) -> None:
        answer = await self._call(
            member,
            "like" if liked else "unlike",
            "POST" if liked else "DELETE",
            f"/api/v1/tweets/{tweet_id}/like",
        )
        pair = (member.id, tweet_id)
        if answer.ghost:
            self.ledger.uncertain.add(pair)
        if expect(answer, 200, 404).status_code == 200:
            self.ledger.likes[pair] = liked
        elif answer.maybe_done:
            # Deleted meanwhile: an earlier attempt may or may not have got in before that.
            self.ledger.uncertain.add(pair)

    async def _do_like(self, member: Member, rng: random.Random) -> None:
        if self.ledger.recent:
            await self._like(member, rng.choice(list(self.ledger.recent)), True)

    async def _do_unlike(self, member: Member, rng: random.Random) -> None:
        liked = sorted(t for (u, t), on in self.ledger.likes.items() if u == member.id and on)
        if liked:
            await self._like(member, rng.choice(liked), False)

    async def _do_delete(self, member: Member, rng: random.Random) -> None:
        own = self.ledger.live_by_author[member.id]
        if not own:
            return
        tweet_id = rng.choice(own)
        answer = await self._call(member, "delete", "DELETE", f"/api/v1/tweets/{tweet_id}")
        status = expect(answer, 204, 404).status_code
        if status == 404 and not answer.maybe_done:
            self.ledger.unexpected.append(f"DELETE of live tweet {tweet_id} answered 404")
        self.ledger.deleted_tweet(member.id, tweet_id)

    async def follow(self, member: Member, other: Member, following: bool) -> None:
        answer = await self._call(
            member,
            "follow" if following else "unfollow",
            "POST" if following else "DELETE",
            f"/api/v1/users/{other.username}/follow",
        )
        expect(answer, 200)
        if answer.ghost:
            self.ledger.uncertain.add((member.id, other.id))
        self.ledger.followed(member.id, other.id, following)

    async def _do_follow_change(self, member: Member, rng: random.Random) -> None:
        """Follows or unfollows someone, keeping the roles: celebrities stay above the
        threshold, normal users below it, edge users wander across it both ways."""
        others = [m for m in self.members if m.id != member.id]
        role = rng.choices([EDGE, CELEBRITY, NORMAL], [4, 2, 4])[0]
        candidates = [m for m in others if m.role == role] or others
        other = rng.choice(candidates)
        following = self.ledger.follows.get((member.id, other.id), False)
        count = self.ledger.followers[other.id]
        if other.role == EDGE:
            change = (count >= 3) if following else (count <= 6)
        elif other.role == CELEBRITY:
            change = count >= 8 if following else True
        else:
            change = True if following else count <= 3
        if change:
            await self.follow(member, other, not following)

    async def read(self, member: Member) -> None:
        expect(await self._call(member, "read", "GET", "/api/v1/timeline"), 200)

    async def _do_read(self, member: Member, rng: random.Random) -> None:
        await self.read(member)

    async def _do_search(self, member: Member, rng: random.Random) -> None:
        # 503 is the contract's answer while the engine is down: an answer, not a failure.
        answer = await self._call(
            member, "search", "GET", "/api/v1/search",
            params={"q": rng.choice(WORDS)}, accept=(503,),
        )  # fmt: skip
        self.pool.attempts.search[str(answer.response.status_code)] += 1


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
