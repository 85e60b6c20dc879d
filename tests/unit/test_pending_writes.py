"""Invalidations Redis did not take are kept and written again with the next attempt."""

from __future__ import annotations

from storage.redis_store import PendingWrites, RedisBreaker


class FlakyRedis:
    """Stands in for the write: refuses while `down`, records what it was given."""

    def __init__(self) -> None:
        self.down = False
        self.calls: list[list[int]] = []

    async def write(self, keys: list[int]) -> None:
        self.calls.append(sorted(keys))
        if self.down:
            raise ConnectionError("Redis is down")


async def test_a_refused_write_is_kept_and_sent_again_with_the_next_one() -> None:
    redis, breaker = FlakyRedis(), RedisBreaker(cooldown=60.0)
    pending: PendingWrites[int] = PendingWrites(redis.write, breaker)
    redis.down = True
    await pending.write([1])
    assert 1 in pending and not breaker.closed
    redis.down = False
    await pending.write([2])
    assert redis.calls == [[1], [1, 2]]
    assert not pending and list(pending) == []


async def test_nothing_pending_and_nothing_new_sends_nothing() -> None:
    redis = FlakyRedis()
    pending: PendingWrites[int] = PendingWrites(redis.write, RedisBreaker())
    await pending.write()
    assert redis.calls == []


async def test_while_redis_is_down_only_the_new_keys_are_added_up_to_the_limit() -> None:
    redis = FlakyRedis()
    pending: PendingWrites[int] = PendingWrites(redis.write, RedisBreaker(), limit=2)
    redis.down = True
    for key in range(5):
        await pending.write([key])
    # Each attempt still carries everything pending, so nothing kept is dropped unsent.
    assert sorted(pending) == [0, 1]
    assert redis.calls[-1] == [0, 1, 4]
