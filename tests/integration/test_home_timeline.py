from __future__ import annotations

from tests.support import Api, eventually


async def test_own_tweet_is_in_the_timeline_right_after_201(api: Api) -> None:
    alice = await api.sign_up()
    tweet = await alice.post("hello")
    assert await alice.timeline_ids() == [tweet["id"]]


async def test_followed_authors_tweet_reaches_the_follower_through_fanout(
    api: Api, fanout: object
) -> None:
    alice, bob = await api.sign_up(), await api.sign_up()
    await bob.follow(alice)
    tweet = await alice.post("for my followers")

    async def arrived() -> bool:
        return tweet["id"] in await bob.timeline_ids()

    assert await eventually(arrived, timeout=2.0)
