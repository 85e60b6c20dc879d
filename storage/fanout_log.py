"""What the fanout worker did with each tweet, kept briefly in Redis for operators: `chirp
trace` shows one tweet's record (`fo:{tweet_id}`), the operations page charts the recent ones
(`fo:recent`). Both are derived, small and expiring; losing them loses only the history."""

from __future__ import annotations

import msgspec
import redis.asyncio as aioredis

from storage.redis_store import RedisKeys

RECORD_TTL = 24 * 3600
RECENT = 500


class FanoutRecord(msgspec.Struct, frozen=True):
    tweet_id: int
    mode: str  # "push" or "celebrity"
    # Follower timelines written (the author's own not counted); 0 for a celebrity.
    followers: int
    # How long the fanout of this tweet took, and its creation to the end of it.
    seconds: float
    lag_seconds: float
    # Unix time at which it finished.
    at: float
    request_id: str | None = None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(FanoutRecord)


class FanoutLog:
    def __init__(self, client: aioredis.Redis, keys: RedisKeys) -> None:
        self._redis = client
        self._keys = keys

    async def record(self, entry: FanoutRecord) -> None:
        encoded = _encoder.encode(entry)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(self._keys.fanout(entry.tweet_id), encoded, ex=RECORD_TTL)
            pipe.lpush(self._keys.fanout_recent(), encoded)
            pipe.ltrim(self._keys.fanout_recent(), 0, RECENT - 1)
            await pipe.execute()

    async def get(self, tweet_id: int) -> FanoutRecord | None:
        raw = await self._redis.get(self._keys.fanout(tweet_id))
        return None if raw is None else _decoder.decode(raw)

    async def recent(self, count: int = 120) -> list[FanoutRecord]:
        """The latest records, oldest first."""
        raw = await self._redis.lrange(self._keys.fanout_recent(), 0, count - 1)
        return [_decoder.decode(item) for item in reversed(raw)]
