"""The JSON API, version 1 (../shared/API.md). Controllers parse, call `Chirp`, render."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, cast

from litestar import Controller, MediaType, Request, Response, delete, get, post
from litestar.params import FromPath, HeaderParameter, JSONBody, QueryParameter

from domain.errors import InvalidInput, NotFound
from domain.ids import parse_id
from domain.model import TweetView
from web.deps import ChirpDep, PrincipalDep, ViewerDep
from web.errors import rate_limit_headers
from web.schemas import (
    FollowingOut,
    LikeOut,
    SessionOut,
    SignInIn,
    SignUpIn,
    TweetIn,
    TweetListOut,
    TweetOut,
    UserListOut,
    UserOut,
    cursor_out,
    tweet_out,
    user_out,
)
from web.services import Chirp


def tweet_list(
    chirp: Chirp, items: Sequence[TweetView], next_cursor: int | None
) -> Response[TweetListOut]:
    """A TweetListOut, encoded by TweetJson (which reuses each tweet's JSON)."""
    body = chirp.tweet_json.list_body(items, next_cursor)
    # Already the encoded TweetListOut: Litestar sends bytes as they are, and documents the
    # annotation's type in the OpenAPI schema.
    return Response(cast("TweetListOut", body), media_type=MediaType.JSON)


DEFAULT_LIMIT = 20
MAX_LIMIT = 100

LimitParam = Annotated[
    str | None, QueryParameter(name="limit", description="1 to 100, default 20", required=False)
]
CursorParam = Annotated[
    str | None,
    QueryParameter(name="cursor", description="next_cursor of the previous page", required=False),
]


def parse_limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    if not raw.strip().lstrip("-").isdigit():
        raise InvalidInput("limit must be a whole number from 1 to 100")
    value = int(raw)
    if not 1 <= value <= MAX_LIMIT:
        raise InvalidInput("limit must be from 1 to 100")
    return value


def parse_cursor(raw: str | None, name: str = "cursor") -> int | None:
    if raw is None or raw == "":
        return None
    value = parse_id(raw)
    if value is None:
        raise InvalidInput(f"{name} is not valid")
    return value


def parse_tweet_id(raw: str) -> int:
    value = parse_id(raw)
    if value is None:
        raise NotFound("tweet not found")
    return value


def client_address(request: Request[Any, Any, Any]) -> str:
    return request.client.host if request.client else "unknown"


class AccountController(Controller):
    path = "/api/v1"
    tags = ["accounts"]

    @post("/accounts", status_code=201)
    async def sign_up(
        self, data: JSONBody[SignUpIn], chirp: ChirpDep, request: Request[Any, Any, Any]
    ) -> SessionOut:
        user, token = await chirp.sign_up(
            data.username, data.password, data.display_name, client_address(request)
        )
        return SessionOut(user=user_out(user), token=token)

    @post("/sessions", status_code=200)
    async def sign_in(
        self, data: JSONBody[SignInIn], chirp: ChirpDep, request: Request[Any, Any, Any]
    ) -> SessionOut:
        user, token = await chirp.sign_in(data.username, data.password, client_address(request))
        return SessionOut(user=user_out(user), token=token)

    @delete("/sessions/current", status_code=204)
    async def sign_out(self, principal: PrincipalDep, chirp: ChirpDep) -> None:
        await chirp.sign_out(principal)

    @get("/me")
    async def me(self, principal: PrincipalDep, chirp: ChirpDep) -> UserOut:
        return user_out(await chirp.user(principal.user.username))


class UserController(Controller):
    path = "/api/v1/users/{username:str}"
    tags = ["users"]

    @get("/")
    async def profile(self, username: FromPath[str], chirp: ChirpDep, viewer: ViewerDep) -> UserOut:
        user = await chirp.user(username)
        return user_out(user, await chirp.is_following(viewer, user))

    @post("/follow", status_code=200)
    async def follow(
        self, username: FromPath[str], principal: PrincipalDep, chirp: ChirpDep
    ) -> FollowingOut:
        await chirp.follow(principal, username)
        return FollowingOut(following=True)

    @delete("/follow", status_code=200)
    async def unfollow(
        self, username: FromPath[str], principal: PrincipalDep, chirp: ChirpDep
    ) -> FollowingOut:
        await chirp.unfollow(principal, username)
        return FollowingOut(following=False)

    @get("/followers")
    async def followers(
        self,
        username: FromPath[str],
        chirp: ChirpDep,
        viewer: ViewerDep,
        limit: LimitParam = None,
        cursor: CursorParam = None,
    ) -> UserListOut:
        return await self._list(chirp, viewer, username, True, limit, cursor)

    @get("/following")
    async def following(
        self,
        username: FromPath[str],
        chirp: ChirpDep,
        viewer: ViewerDep,
        limit: LimitParam = None,
        cursor: CursorParam = None,
    ) -> UserListOut:
        return await self._list(chirp, viewer, username, False, limit, cursor)

    async def _list(
        self,
        chirp: ChirpDep,
        viewer: ViewerDep,
        username: FromPath[str],
        followers: bool,
        limit: str | None,
        cursor: str | None,
    ) -> UserListOut:
        page = await chirp.follow_list(
            viewer,
            username,
            followers=followers,
            before=parse_cursor(cursor),
            limit=parse_limit(limit),
        )
        return UserListOut(
            users=[user_out(u, f) for u, f in page.users], next_cursor=cursor_out(page.next_cursor)
        )

    @get("/tweets")
    async def tweets(
        self,
        username: FromPath[str],
        chirp: ChirpDep,
        viewer: ViewerDep,
        limit: LimitParam = None,
        cursor: CursorParam = None,
    ) -> Response[TweetListOut]:
        page = await chirp.user_tweets(
            viewer, username, before=parse_cursor(cursor), limit=parse_limit(limit)
        )
        return tweet_list(chirp, page.items, page.next_cursor)


class TweetController(Controller):
    path = "/api/v1/tweets"
    tags = ["tweets"]

    @post("/", status_code=201)
    async def post_tweet(
        self,
        data: JSONBody[TweetIn],
        principal: PrincipalDep,
        chirp: ChirpDep,
        idempotency_key: Annotated[
            str | None, HeaderParameter(name="Idempotency-Key", required=False)
        ] = None,
    ) -> Response[TweetOut]:
        reply_to = None
        if data.reply_to is not None:
            reply_to = parse_id(data.reply_to)
            if reply_to is None:
                raise InvalidInput("reply_to is not an existing tweet")
        media_ids: list[int] = []
        for raw in data.media_ids or []:
            media_id = parse_id(raw)
            if media_id is None:
                raise InvalidInput("media_ids holds an unknown media id")
            media_ids.append(media_id)
        view, decision = await chirp.post_tweet(
            principal,
            data.text,
            reply_to=reply_to,
            media_ids=media_ids,
            idempotency_key=idempotency_key,
        )
        return Response(
            tweet_out(view, chirp.media.url),
            status_code=201,
            headers=rate_limit_headers(decision.limit, decision.remaining, decision.reset),
        )

    @get("/{tweet_id:str}")
    async def get_tweet(
        self, tweet_id: FromPath[str], chirp: ChirpDep, viewer: ViewerDep
    ) -> TweetOut:
        return tweet_out(await chirp.tweet(viewer, parse_tweet_id(tweet_id)), chirp.media.url)

    @delete("/{tweet_id:str}", status_code=204)
    async def delete_tweet(
        self, tweet_id: FromPath[str], principal: PrincipalDep, chirp: ChirpDep
    ) -> None:
        await chirp.delete_tweet(principal, parse_tweet_id(tweet_id))

    @get("/{tweet_id:str}/replies")
    async def replies(
        self,
        tweet_id: FromPath[str],
        chirp: ChirpDep,
        viewer: ViewerDep,
        limit: LimitParam = None,
        cursor: CursorParam = None,
    ) -> Response[TweetListOut]:
        page = await chirp.replies(
            viewer, parse_tweet_id(tweet_id), after=parse_cursor(cursor), limit=parse_limit(limit)
        )
        return tweet_list(chirp, page.items, page.next_cursor)

    @post("/{tweet_id:str}/like", status_code=200)
    async def like(
        self, tweet_id: FromPath[str], principal: PrincipalDep, chirp: ChirpDep
    ) -> LikeOut:
        count = await chirp.like(principal, parse_tweet_id(tweet_id), liked=True)
        return LikeOut(liked=True, like_count=count)

    @delete("/{tweet_id:str}/like", status_code=200)
    async def unlike(
        self, tweet_id: FromPath[str], principal: PrincipalDep, chirp: ChirpDep
    ) -> LikeOut:
        count = await chirp.like(principal, parse_tweet_id(tweet_id), liked=False)
        return LikeOut(liked=False, like_count=count)


class TimelineController(Controller):
    path = "/api/v1/timeline"
    tags = ["timeline"]

    @get("/")
    async def home(
        self,
        principal: PrincipalDep,
        chirp: ChirpDep,
        limit: LimitParam = None,
        cursor: CursorParam = None,
        since_id: Annotated[
            str | None,
            QueryParameter(
                name="since_id", description="only tweets newer than this", required=False
            ),
        ] = None,
    ) -> Response[TweetListOut]:
        page = await chirp.home(
            principal,
            before=parse_cursor(cursor),
            after=parse_cursor(since_id, "since_id"),
            limit=parse_limit(limit),
        )
        return tweet_list(chirp, page.items, page.next_cursor)
