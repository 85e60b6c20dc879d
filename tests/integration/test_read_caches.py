"""What each web process remembers to make a timeline read cheap (the token's owner, the
follow list) must never show a stale follow graph. Two app instances stand in for two
processes: a change made through one must show on the very next read through the other,
with no fanout worker running to help."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.support import Account, Api, running_app
from web.settings import Settings


@pytest.fixture
async def other_process(settings: Settings) -> AsyncIterator[Api]:
    async with running_app(settings) as api:
        yield api


def through(api: Api, account: Account) -> Account:
    """The same account, its requests sent to another app instance."""
    return Account(api, account.username, account.id, account.token)


async def test_a_follow_through_one_process_shows_on_the_next_read_through_another(
    api: Api, other_process: Api
) -> None:
    reader, author = await api.sign_up(), await api.sign_up()
    earlier = await author.post("before the follow")
    elsewhere = through(other_process, reader)
    assert await elsewhere.timeline_ids() == []  # the other process now holds the follow list
    await reader.follow(author)
    assert await elsewhere.timeline_ids() == [earlier["id"]]


async def test_an_unfollow_through_one_process_hides_the_author_on_the_next_read_through_another(
    api: Api, other_process: Api
) -> None:
    reader, author = await api.sign_up(), await api.sign_up()
    await reader.follow(author)
    tweet = await author.post("while followed")
    elsewhere = through(other_process, reader)
    assert await elsewhere.timeline_ids() == [tweet["id"]]
    await reader.unfollow(author)
    assert await elsewhere.timeline_ids() == []


async def test_an_author_turning_celebrity_is_merged_on_the_next_read_through_another_process(
    api: Api, other_process: Api, pg: asyncpg.Connection
) -> None:
    # Celebrity threshold in the test settings: 5 followers. The reader's cached split has
    # the author as a normal (pushed) author; once the sixth follower makes the author a
    # celebrity, new tweets are not pushed (no worker runs here anyway) and only the
    # read-time merge can show them.
    author, reader = await api.sign_up(), await api.sign_up()
    await reader.follow(author)
    for _ in range(4):
        await (await api.sign_up()).follow(author)
    elsewhere = through(other_process, reader)
    assert await elsewhere.timeline_ids() == []
    await (await api.sign_up()).follow(author)
    assert await pg.fetchval("SELECT is_celebrity FROM users WHERE id = $1", author.int_id)
    merged = await author.post("as a celebrity")
    assert await elsewhere.timeline_ids() == [merged["id"]]
