"""What the fanout worker did with each tweet, kept briefly in Redis for operators: `chirp
trace` shows one tweet's record (`fo:{tweet_id}`), the operations page charts the recent ones
(`fo:recent`). Both are derived, small and expiring; losing them loses only the history."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import redis.asyncio as aioredis

from storage.redis_store import RedisKeys
from storage.resp import Arg, RespClient

RECORD_TTL = 24 * 3600
RECENT = 500


class FanoutRecord(msgspec.Struct, frozen=True):
    tweet_id: int
    mode: str  # "push" or "celebrity"
    # Follower timelines written (the author's own not counted); 0 for a celebrity.
    followers: int
    # How long the fanout of this tweet took (for a tweet fanned out with the others of a
    # batch, the whole batch's time), and its creation to the end of it.
    seconds: float
    lag_seconds: float
    # Unix time at which it finished.
    at: float
    request_id: str | None = None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(FanoutRecord)


class FanoutLog:
    def __init__(
        self, client: aioredis.Redis, keys: RedisKeys, *, writes: RespClient | None = None
    ) -> None:
        self._redis = client
        self._keys = keys
        # The worker writes a record per tweet: through the lean client when it has one.
        self._writes = writes

    async def record(self, entry: FanoutRecord) -> None:
        await self.record_many([entry])

    async def record_many(self, entries: Sequence[FanoutRecord]) -> None:
        """One round trip for all of them; the last one is the newest in `fo:recent`."""
        if not entries:
            return
        encoded = [_encoder.encode(e) for e in entries]
        recent = self._keys.fanout_recent()
        commands: list[tuple[Arg, ...]] = [
            ("SET", self._keys.fanout(e.tweet_id), value, "EX", RECORD_TTL)
            for e, value in zip(entries, encoded, strict=True)
        ]
        commands += [("LPUSH", recent, *encoded), ("LTRIM", recent, 0, RECENT - 1)]
        if self._writes is not None:
            await self._writes.execute_many(commands)
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            await pipe.execute()

    async def get(self, tweet_id: int) -> FanoutRecord | None:
        raw = await self._redis.get(self._keys.fanout(tweet_id))
        return None if raw is None else _decoder.decode(raw)

    async def recent(self, count: int = 120) -> list[FanoutRecord]:
        """The latest records, oldest first."""
        raw = await self._redis.lrange(self._keys.fanout_recent(), 0, count - 1)
        return [_decoder.decode(item) for item in reversed(raw)]
