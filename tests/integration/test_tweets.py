"""Tweets (API.md "Tweets"): posting and its rules, replies, reading, deleting, likes,
Idempotency-Key retries and the hourly limit."""

from __future__ import annotations

import unicodedata

import asyncpg
import pytest
import redis.asyncio as aioredis

from realtime.fanout import Fanout
from tests.support import (
    ID_RE,
    TIME_RE,
    Api,
    assert_error,
    eventually,
    member,
    out_of_window_edge,
    running_app,
    timeline_members,
)
from web.settings import Settings


async def test_a_posted_tweet_has_string_ids_and_millisecond_utc_times(api: Api) -> None:
    alice = await api.sign_up()
    tweet = await alice.post("hello world")
    assert set(tweet) >= {
        "id",
        "text",
        "created_at",
        "author",
        "reply_to",
        "media",
        "like_count",
        "reply_count",
        "liked",
    }
    assert isinstance(tweet["id"], str) and ID_RE.match(tweet["id"])
    assert TIME_RE.match(tweet["created_at"]), tweet["created_at"]
    assert tweet["author"] == {
        "id": alice.id,
        "username": alice.username,
        "display_name": alice.username,
    }
    assert tweet["text"] == "hello world"
    assert tweet["reply_to"] is None
    assert tweet["media"] == []
    assert (tweet["like_count"], tweet["reply_count"], tweet["liked"]) == (0, 0, False)
    reply = await alice.post("me again", reply_to=tweet["id"])
    assert reply["reply_to"] == tweet["id"] and isinstance(reply["reply_to"], str)
    assert await api.tweet(tweet["id"]) == {**tweet, "reply_count": 1}


async def test_text_is_trimmed_and_nfc_normalised(api: Api) -> None:
    alice = await api.sign_up()
    assert (await alice.post("  \n\thello\u3000 \n"))["text"] == "hello"
    decomposed = "cafe\u0301 \u212b"  # e + combining acute; ANGSTROM SIGN
    tweet = await alice.post(decomposed)
    assert tweet["text"] == unicodedata.normalize("NFC", decomposed) == "caf\u00e9 \u00c5"
    assert (await api.tweet(tweet["id"]))["text"] == "caf\u00e9 \u00c5"


@pytest.mark.parametrize(
    "text",
    [
        "a" * 280,
        "\U0001f600" * 280,  # astral: 280 code points, 560 UTF-16 units
        "e\u0301" * 280,  # 560 code points, 280 after NFC
        "  " + "b" * 280 + "\n ",  # 280 after trimming
        "\U0001f468\u200d\U0001f469\u200d\U0001f467" * 56,  # ZWJ families: 280 code points
    ],
    ids=["ascii", "astral-emoji", "decomposed", "padded", "zwj"],
)
async def test_280_code_points_after_nfc_and_trimming_are_accepted(api: Api, text: str) -> None:
    alice = await api.sign_up()
    tweet = await alice.post(text)
    assert len(tweet["text"]) == 280
    assert tweet["text"] == unicodedata.normalize("NFC", text).strip()


@pytest.mark.parametrize(
    "text",
    ["a" * 281, "\U0001f600" * 281, "e\u0301" * 281, "\u00e9" * 280 + "x"],
    ids=["ascii", "astral-emoji", "decomposed", "composed"],
)
async def test_281_code_points_get_422(api: Api, text: str) -> None:
    alice = await api.sign_up()
    response = await api.client.post("/api/v1/tweets", json={"text": text}, headers=alice.auth)
    assert_error(response, 422)
    assert (await api.user(alice.username))["tweets_count"] == 0


@pytest.mark.parametrize("text", ["", " ", "\n\t \u3000", "\u00a0\u2003"])
async def test_empty_or_whitespace_text_gets_422(api: Api, text: str) -> None:
    alice = await api.sign_up()
    response = await api.client.post("/api/v1/tweets", json={"text": text}, headers=alice.auth)
    assert_error(response, 422)


async def test_reply_to_an_unknown_or_deleted_tweet_gets_422(api: Api) -> None:
    alice = await api.sign_up()
    gone = await alice.post("soon gone")
    await alice.delete(gone["id"])
    for reply_to in ("1234567890123456789", "999", "abc", gone["id"], "0"):
        response = await api.client.post(
            "/api/v1/tweets", json={"text": "re", "reply_to": reply_to}, headers=alice.auth
        )
        assert_error(response, 422)
    assert (await api.user(alice.username))["tweets_count"] == 0


async def test_replies_count_on_the_parent_and_list_oldest_first_with_paging(api: Api) -> None:
    alice, bob = await api.sign_up(), await api.sign_up()
    parent = await alice.post("parent")
    replies = [(await bob.post(f"reply {i}", reply_to=parent["id"]))["id"] for i in range(5)]
    await alice.post("unrelated")
    assert (await api.tweet(parent["id"]))["reply_count"] == 5
    path = f"/api/v1/tweets/{parent['id']}/replies"
    for limit in (1, 2, 5, 20):
        listed = await api.walk(path, "tweets", limit)
        assert [t["id"] for t in listed] == replies
    assert all(t["reply_to"] == parent["id"] for t in listed)
    await bob.delete(replies[1])
    assert (await api.tweet(parent["id"]))["reply_count"] == 4
    assert [t["id"] for t in await api.walk(path, "tweets", 2)] == [
        r for r in replies if r != replies[1]
    ]
    assert_error(await api.client.get("/api/v1/tweets/1234567890123/replies"), 404)


async def test_get_tweet_answers_200_and_unknown_or_non_numeric_ids_get_404(api: Api) -> None:
    alice = await api.sign_up()
    tweet = await alice.post("findable")
    assert (await api.tweet(tweet["id"]))["text"] == "findable"
    for tweet_id in ("1234567890123456789", "1", "abc", "-1", "1" * 30, "12a"):
        assert_error(await api.client.get(f"/api/v1/tweets/{tweet_id}"), 404)


async def test_only_the_author_can_delete_and_a_deleted_tweet_is_gone_everywhere(
    api: Api, fanout: Fanout, redis_client: aioredis.Redis, settings: Settings
) -> None:
    alice, bob = await api.sign_up(), await api.sign_up()
    await bob.follow(alice)
    await bob.timeline()
    keep = await alice.post("keep")
    doomed = await alice.post("doomed")

    async def pushed() -> bool:
        return member(doomed["id"]) in await timeline_members(redis_client, settings, bob.id)

    assert await eventually(pushed, timeout=2.0)
    assert (await api.user(alice.username))["tweets_count"] == 2

    response = await api.client.delete(f"/api/v1/tweets/{doomed['id']}", headers=bob.auth)
    assert_error(response, 403)
    assert_error(await api.client.delete(f"/api/v1/tweets/{doomed['id']}"), 401)
    assert (await api.tweet(doomed["id"]))["id"] == doomed["id"]

    response = await api.client.delete(f"/api/v1/tweets/{doomed['id']}", headers=alice.auth)
    assert response.status_code == 204 and response.content == b""
    assert_error(await api.client.get(f"/api/v1/tweets/{doomed['id']}"), 404)
    tweets = await api.walk(f"/api/v1/users/{alice.username}/tweets", "tweets", 20)
    assert [t["id"] for t in tweets] == [keep["id"]]
    # Gone from timelines at once, whatever Redis still holds.
    assert await alice.timeline_ids() == [keep["id"]]
    assert await bob.timeline_ids() == [keep["id"]]
    assert (await api.user(alice.username))["tweets_count"] == 1

    # And the worker takes it out of the follower's Redis timeline too.
    async def unpushed() -> bool:
        return member(doomed["id"]) not in await timeline_members(redis_client, settings, bob.id)

    assert await eventually(unpushed, timeout=2.0)

    # Deleting again, liking or replying to it: 404 / 422.
    assert_error(await api.client.delete(f"/api/v1/tweets/{doomed['id']}", headers=alice.auth), 404)
    assert_error(
        await api.client.post(f"/api/v1/tweets/{doomed['id']}/like", headers=bob.auth), 404
    )
    assert_error(await api.client.get(f"/api/v1/tweets/{doomed['id']}/replies"), 404)


async def test_deleting_an_unknown_tweet_gets_404(api: Api) -> None:
    alice = await api.sign_up()
    for tweet_id in ("1234567890123456789", "abc"):
        response = await api.client.delete(f"/api/v1/tweets/{tweet_id}", headers=alice.auth)
        assert_error(response, 404)


async def test_like_and_unlike_are_idempotent_with_counts_and_the_liked_flag(api: Api) -> None:
    alice, bob, carol = await api.sign_up(), await api.sign_up(), await api.sign_up()
    tweet = await alice.post("like me")
    assert await bob.like(tweet["id"]) == {"liked": True, "like_count": 1}
    assert await bob.like(tweet["id"]) == {"liked": True, "like_count": 1}
    assert await carol.like(tweet["id"]) == {"liked": True, "like_count": 2}
    assert (await api.tweet(tweet["id"], viewer=bob))["liked"] is True
    assert (await api.tweet(tweet["id"], viewer=alice))["liked"] is False
    seen = await api.tweet(tweet["id"])
    assert (seen["liked"], seen["like_count"]) == (False, 2)
    # The flag follows the viewer in lists too.
    await bob.follow(alice)
    assert [t["liked"] for t in (await bob.timeline())["tweets"]] == [True]
    assert [t["liked"] for t in (await alice.timeline())["tweets"]] == [False]

    assert await bob.unlike(tweet["id"]) == {"liked": False, "like_count": 1}
    assert await bob.unlike(tweet["id"]) == {"liked": False, "like_count": 1}
    assert await alice.unlike(tweet["id"]) == {"liked": False, "like_count": 1}
    after = await api.tweet(tweet["id"], viewer=bob)
    assert (after["liked"], after["like_count"]) == (False, 1)


async def test_a_like_and_a_reply_while_the_redis_breaker_is_open_still_reach_the_cache(
    api: Api,
) -> None:
    # After a failed Redis call the breaker skips Redis for a moment. It skipped the cache
    # invalidations too, while Redis itself was fine (a restarted Redis fails each pooled
    # connection once): the cached copy kept its old counts for a day (found by tests/faults).
    alice, bob = await api.sign_up(), await api.sign_up()
    tweet = await alice.post("counted")
    assert (await api.tweet(tweet["id"]))["like_count"] == 0  # now in the tweet cache
    breaker = api.client.app.state.services.breaker
    breaker.trip()
    await bob.like(tweet["id"])
    await bob.post("a reply", reply_to=tweet["id"])

    async def closed() -> bool:
        return bool(breaker.closed)

    assert await eventually(closed, timeout=5)
    seen = await api.tweet(tweet["id"])  # through the cache again
    assert (seen["like_count"], seen["reply_count"]) == (1, 1)


async def test_liking_an_unknown_tweet_gets_404(api: Api) -> None:
    alice = await api.sign_up()
    for tweet_id in ("1234567890123456789", "abc"):
        for method in ("POST", "DELETE"):
            response = await api.client.request(
                method, f"/api/v1/tweets/{tweet_id}/like", headers=alice.auth
            )
            assert_error(response, 404)


async def test_a_retry_with_the_same_idempotency_key_returns_the_original_tweet(
    api: Api, pg: asyncpg.Connection
) -> None:
    alice = await api.sign_up()
    headers = {**alice.auth, "Idempotency-Key": "post-1"}
    first = await api.client.post("/api/v1/tweets", json={"text": "once"}, headers=headers)
    again = await api.client.post("/api/v1/tweets", json={"text": "once"}, headers=headers)
    assert first.status_code == again.status_code == 201, (first.text, again.text)
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["text"] == "once"
    count = await pg.fetchval("SELECT count(*) FROM tweets WHERE author_id = $1", alice.int_id)
    assert count == 1
    assert (await api.user(alice.username))["tweets_count"] == 1
    assert await alice.timeline_ids() == [first.json()["id"]]
    # A different key is a different tweet.
    other = await api.client.post(
        "/api/v1/tweets", json={"text": "once"}, headers={**alice.auth, "Idempotency-Key": "post-2"}
    )
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]


async def test_the_same_idempotency_key_from_different_users_posts_different_tweets(
    api: Api,
) -> None:
    alice, bob = await api.sign_up(), await api.sign_up()
    ids = []
    for account in (alice, bob):
        response = await api.client.post(
            "/api/v1/tweets",
            json={"text": "shared key"},
            headers={**account.auth, "Idempotency-Key": "same-key"},
        )
        assert response.status_code == 201, response.text
        assert response.json()["author"]["id"] == account.id
        ids.append(response.json()["id"])
    assert ids[0] != ids[1]


async def test_an_idempotency_key_longer_than_64_characters_gets_422(api: Api) -> None:
    alice = await api.sign_up()
    response = await api.client.post(
        "/api/v1/tweets", json={"text": "x"}, headers={**alice.auth, "Idempotency-Key": "k" * 65}
    )
    assert_error(response, 422)
    ok = await api.client.post(
        "/api/v1/tweets", json={"text": "x"}, headers={**alice.auth, "Idempotency-Key": "k" * 64}
    )
    assert ok.status_code == 201, ok.text


def assert_rate_limit_headers(response: object, limit: int, remaining: int) -> None:
    headers = response.headers  # type: ignore[attr-defined]
    assert int(headers["RateLimit-Limit"]) == limit, dict(headers)
    assert int(headers["RateLimit-Remaining"]) == remaining, dict(headers)
    assert 0 <= int(headers["RateLimit-Reset"]) <= 3600, dict(headers)


async def test_a_201_carries_the_rate_limit_headers(api: Api, settings: Settings) -> None:
    alice = await api.sign_up()
    await out_of_window_edge(3600)
    for remaining in (settings.tweets_per_hour - 1, settings.tweets_per_hour - 2):
        response = await api.client.post("/api/v1/tweets", json={"text": "x"}, headers=alice.auth)
        assert response.status_code == 201
        assert_rate_limit_headers(response, settings.tweets_per_hour, remaining)


async def test_posting_over_the_hourly_limit_gets_429_with_retry_after(
    settings: Settings,
) -> None:
    async with running_app(settings.with_overrides(tweets_per_hour=3)) as api:
        alice, bob = await api.sign_up(), await api.sign_up()
        await out_of_window_edge(3600)
        for remaining in (2, 1, 0):
            response = await api.client.post(
                "/api/v1/tweets", json={"text": "x"}, headers=alice.auth
            )
            assert response.status_code == 201, response.text
            assert_rate_limit_headers(response, 3, remaining)
        response = await api.client.post("/api/v1/tweets", json={"text": "x"}, headers=alice.auth)
        assert_error(response, 429)
        assert 1 <= int(response.headers["Retry-After"]) <= 3600
        assert (await api.user(alice.username))["tweets_count"] == 3
        # The limit is per user.
        response = await api.client.post("/api/v1/tweets", json={"text": "x"}, headers=bob.auth)
        assert response.status_code == 201


async def test_a_429_for_tweets_carries_the_rate_limit_headers(settings: Settings) -> None:
    async with running_app(settings.with_overrides(tweets_per_hour=1)) as api:
        alice = await api.sign_up()
        await out_of_window_edge(3600)
        await alice.post("the one")
        response = await api.client.post("/api/v1/tweets", json={"text": "x"}, headers=alice.auth)
        assert_error(response, 429)
        assert_rate_limit_headers(response, 1, 0)
