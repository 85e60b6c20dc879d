"""Profiles, the follow graph and its lists (API.md "Users and the follow graph"), and the
denormalised counters, which must always equal a recount of the rows they count."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from tests.support import ID_RE, TIME_RE, Account, Api, assert_error, unique_name
from web.container import provide_services
from web.settings import Settings


async def test_profile_has_counts_and_no_following_flag_for_anonymous_viewers(api: Api) -> None:
    alice, bob = await api.sign_up(), await api.sign_up()
    await alice.post("hello")
    await bob.follow(alice)
    profile = await api.user(alice.username)
    assert set(profile) == {
        "id",
        "username",
        "display_name",
        "bio",
        "created_at",
        "followers_count",
        "following_count",
        "tweets_count",
        "following",
    }
    assert profile["id"] == alice.id and ID_RE.match(profile["id"])
    assert TIME_RE.match(profile["created_at"])
    assert (profile["followers_count"], profile["following_count"]) == (1, 0)
    assert profile["tweets_count"] == 1
    assert profile["following"] is False


async def test_following_flag_says_whether_the_viewer_follows_the_user(api: Api) -> None:
    alice, bob, carol = await api.sign_up(), await api.sign_up(), await api.sign_up()
    await bob.follow(alice)
    assert (await api.user(alice.username, viewer=bob))["following"] is True
    assert (await api.user(alice.username, viewer=carol))["following"] is False
    # Following is one-way.
    assert (await api.user(bob.username, viewer=alice))["following"] is False
    assert (await api.user(alice.username, viewer=alice))["following"] is False
    await bob.unfollow(alice)
    assert (await api.user(alice.username, viewer=bob))["following"] is False


async def test_unknown_user_gets_404(api: Api) -> None:
    alice = await api.sign_up()
    name = unique_name("nobody")
    assert_error(await api.client.get(f"/api/v1/users/{name}"), 404)
    for path in ("followers", "following", "tweets"):
        assert_error(await api.client.get(f"/api/v1/users/{name}/{path}"), 404)
    assert_error(await api.client.post(f"/api/v1/users/{name}/follow", headers=alice.auth), 404)
    assert_error(await api.client.delete(f"/api/v1/users/{name}/follow", headers=alice.auth), 404)


async def test_follow_is_idempotent_and_counts_once(api: Api) -> None:
    alice, bob = await api.sign_up(), await api.sign_up()
    await bob.follow(alice)
    await bob.follow(alice)
    assert (await api.user(alice.username))["followers_count"] == 1
    assert (await api.user(bob.username))["following_count"] == 1
    followers = await api.walk(f"/api/v1/users/{alice.username}/followers", "users", 20)
    assert [u["id"] for u in followers] == [bob.id]


async def test_unfollow_is_idempotent_and_counts_once(api: Api) -> None:
    alice, bob, carol = await api.sign_up(), await api.sign_up(), await api.sign_up()
    await bob.follow(alice)
    await carol.follow(alice)
    await bob.unfollow(alice)
    await bob.unfollow(alice)
    assert (await api.user(alice.username))["followers_count"] == 1
    assert (await api.user(bob.username))["following_count"] == 0
    # Unfollowing someone never followed is fine too, and changes nothing.
    await bob.unfollow(carol)
    assert (await api.user(carol.username))["followers_count"] == 0


async def test_following_yourself_gets_422(api: Api) -> None:
    alice = await api.sign_up()
    for name in (alice.username, alice.username.upper()):
        response = await api.client.post(f"/api/v1/users/{name}/follow", headers=alice.auth)
        assert_error(response, 422)
    profile = await api.user(alice.username)
    assert (profile["followers_count"], profile["following_count"]) == (0, 0)


async def test_follow_and_unfollow_need_authentication(api: Api) -> None:
    alice = await api.sign_up()
    assert_error(await api.client.post(f"/api/v1/users/{alice.username}/follow"), 401)
    assert_error(await api.client.delete(f"/api/v1/users/{alice.username}/follow"), 401)


async def test_followers_list_is_newest_follow_first_and_pages_without_skip_or_repeat(
    api: Api,
) -> None:
    star = await api.sign_up()
    fans = await api.sign_up_many(5)
    for fan in fans:
        await fan.follow(star)
    newest_first = [f.id for f in reversed(fans)]
    path = f"/api/v1/users/{star.username}/followers"
    for limit in (1, 2, 3, 5, 100):
        assert [u["id"] for u in await api.walk(path, "users", limit)] == newest_first
    first = (await api.client.get(path, params={"limit": 2})).json()
    assert [u["id"] for u in first["users"]] == newest_first[:2]
    assert isinstance(first["next_cursor"], str)
    # Unfollow and follow again: the follow is new, so it comes first.
    await fans[0].unfollow(star)
    await fans[0].follow(star)
    assert [u["id"] for u in await api.walk(path, "users", 2)] == [fans[0].id, *newest_first[:4]]


async def test_following_list_is_newest_follow_first_and_pages(api: Api) -> None:
    fan = await api.sign_up()
    stars = await api.sign_up_many(4)
    for star in stars:
        await fan.follow(star)
    path = f"/api/v1/users/{fan.username}/following"
    expected = [s.id for s in reversed(stars)]
    assert [u["id"] for u in await api.walk(path, "users", 3)] == expected
    assert [u["id"] for u in await api.walk(path, "users", 4)] == expected
    # The viewer's own following flags are filled in.
    page = (await api.client.get(path, headers=stars[0].auth)).json()
    flags = {u["id"]: u["following"] for u in page["users"]}
    assert flags == {s.id: False for s in stars}
    await stars[0].follow(stars[1])
    page = (await api.client.get(path, headers=stars[0].auth)).json()
    assert {u["id"]: u["following"] for u in page["users"]}[stars[1].id] is True


@pytest.mark.parametrize("path", ["followers", "following", "tweets"])
@pytest.mark.parametrize("limit", ["0", "101", "-1", "abc", "1.5", ""])
async def test_list_limit_outside_1_to_100_is_refused(api: Api, path: str, limit: str) -> None:
    alice = await api.sign_up()
    response = await api.client.get(f"/api/v1/users/{alice.username}/{path}?limit={limit}")
    if limit == "":
        # An empty limit is either the default or refused; never a 500.
        assert response.status_code in (200, 400, 422), response.text
        return
    assert response.status_code in (400, 422), response.text
    assert_error(response, response.status_code)


@pytest.mark.parametrize("path", ["followers", "following", "tweets"])
@pytest.mark.parametrize("cursor", ["abc", "-5", "0", "1" * 25, "\uff11\uff12\uff13"])
async def test_list_with_a_bad_cursor_gets_422(api: Api, path: str, cursor: str) -> None:
    alice = await api.sign_up()
    response = await api.client.get(
        f"/api/v1/users/{alice.username}/{path}", params={"cursor": cursor}
    )
    assert_error(response, 422)


async def test_users_tweets_are_newest_first_and_page_without_skip_or_repeat(api: Api) -> None:
    alice, bob = await api.sign_up(), await api.sign_up()
    ids = await alice.post_many(7)
    await bob.post("not alice's")
    path = f"/api/v1/users/{alice.username}/tweets"
    for limit in (1, 3, 7, 20):
        tweets = await api.walk(path, "tweets", limit)
        assert [t["id"] for t in tweets] == ids[::-1]
    assert all(t["author"]["id"] == alice.id for t in tweets)
    await alice.delete(ids[3])
    assert [t["id"] for t in await api.walk(path, "tweets", 2)] == [
        i for i in ids[::-1] if i != ids[3]
    ]


# -- counters ----------------------------------------------------------------------------

USER_RECOUNT = """
SELECT u.id, u.username,
       u.followers_count, (SELECT count(*) FROM follows f WHERE f.followee_id = u.id) AS followers,
       u.following_count, (SELECT count(*) FROM follows f WHERE f.follower_id = u.id) AS following,
       u.tweets_count,
       (SELECT count(*) FROM tweets t WHERE t.author_id = u.id AND t.deleted_at IS NULL) AS tweets
FROM users u WHERE u.id = ANY($1::bigint[])
"""

TWEET_RECOUNT = """
SELECT t.id,
       t.like_count, (SELECT count(*) FROM likes l WHERE l.tweet_id = t.id) AS likes,
       t.reply_count,
       (SELECT count(*) FROM tweets r WHERE r.reply_to = t.id AND r.deleted_at IS NULL) AS replies
FROM tweets t WHERE t.author_id = ANY($1::bigint[])
"""


async def assert_counters_equal_recount(pg: asyncpg.Connection, accounts: list[Account]) -> None:
    ids = [a.int_id for a in accounts]
    users = await pg.fetch(USER_RECOUNT, ids)
    assert len(users) == len(ids)
    for row in users:
        assert row["followers_count"] == row["followers"], dict(row)
        assert row["following_count"] == row["following"], dict(row)
        assert row["tweets_count"] == row["tweets"], dict(row)
    for row in await pg.fetch(TWEET_RECOUNT, ids):
        assert row["like_count"] == row["likes"], dict(row)
        assert row["reply_count"] == row["replies"], dict(row)


async def test_counters_equal_a_recount_after_a_mix_of_changes(
    api: Api, pg: asyncpg.Connection
) -> None:
    alice, bob, carol, dave = await api.sign_up_many(4)
    everyone = [alice, bob, carol, dave]

    # Follows, repeated follows, unfollows, re-follows.
    for follower, followee in [
        (bob, alice),
        (carol, alice),
        (dave, alice),
        (bob, alice),
        (alice, bob),
        (carol, bob),
        (dave, carol),
    ]:
        await follower.follow(followee)
    await carol.unfollow(alice)
    await carol.unfollow(alice)
    await dave.unfollow(carol)
    await dave.follow(carol)
    await assert_counters_equal_recount(pg, everyone)

    # Tweets, replies (also to replies), likes and unlikes, repeated.
    root = await alice.post("root")
    other = await alice.post("other")
    replies = [await bob.post("reply", reply_to=root["id"]) for _ in range(3)]
    nested = await carol.post("nested", reply_to=replies[0]["id"])
    await dave.post("reply to other", reply_to=other["id"])
    for liker in (bob, carol, dave, bob):
        await liker.like(root["id"])
    await carol.unlike(root["id"])
    await carol.unlike(root["id"])
    await dave.unlike(other["id"])  # never liked
    await alice.like(replies[1]["id"])
    await alice.like(nested["id"])
    await assert_counters_equal_recount(pg, everyone)

    # Deletes: a reply, a tweet with replies and likes, a liked reply.
    await bob.delete(replies[2]["id"])
    await alice.delete(other["id"])
    await bob.delete(replies[1]["id"])
    await assert_counters_equal_recount(pg, everyone)

    # The API shows the same numbers as the rows.
    assert (await api.tweet(root["id"]))["reply_count"] == 1
    assert (await api.tweet(root["id"]))["like_count"] == 2
    profile = await api.user(alice.username)
    assert (profile["followers_count"], profile["following_count"], profile["tweets_count"]) == (
        2,
        1,
        1,
    )
    assert (await api.user(bob.username))["tweets_count"] == 1


async def test_two_users_following_each_other_at_the_same_moment_both_succeed(
    api: Api, settings: Settings, pg: asyncpg.Connection
) -> None:
    # Each follow updates both users' counters; taken in opposite orders by two concurrent
    # transactions, the row locks deadlocked and one of the two requests got a 500 (found by
    # tests/faults). Concurrent at the repository, where the transactions interleave.
    pairs = [await api.sign_up_many(2) for _ in range(10)]
    both_ways = [(a.int_id, b.int_id) for x, y in pairs for a, b in ((x, y), (y, x))]
    everyone = [user for pair in pairs for user in pair]
    async with provide_services(settings, process_name="test-follow-race") as services:
        ids = services.ids

        def event_ids() -> list[int]:
            return [ids.next_id(), ids.next_id()]

        follows = await asyncio.gather(
            *(services.follows.follow(a, b, ids.next_id(), event_ids()) for a, b in both_ways),
            return_exceptions=True,
        )
        assert [r for r in follows if isinstance(r, BaseException)] == []
        await assert_counters_equal_recount(pg, everyone)
        unfollows = await asyncio.gather(
            *(services.follows.unfollow(a, b, event_ids()) for a, b in both_ways),
            return_exceptions=True,
        )
        assert [r for r in unfollows if isinstance(r, BaseException)] == []
        await assert_counters_equal_recount(pg, everyone)
