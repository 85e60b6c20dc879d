"""Whom each token belongs to, shared by every process in Redis (`ss:{token hash}`).

Each web process keeps the owners it resolved for a few seconds (`auth_cache_seconds`), but
with many processes behind a load balancer a user's requests rarely meet the same process
within that time: without a shared copy nearly every request asked Postgres who the token
belongs to (bench/, full size, 2,000 readers over only two processes: sharing the copy took
a timeline read from 753 to 549 µs of CPU).

A sign-out does not delete the copy: it overwrites it with a tombstone, and copies are only
ever added where no key is (`SET NX`). So a lookup that read Postgres just before the
sign-out revoked the token cannot put the token back after it: its write finds the
tombstone. The tombstone lives as long as a copy could, after which Postgres answers."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal

import msgspec
import redis.asyncio as aioredis

from domain.model import User
from storage.redis_store import RedisKeys
from storage.resp import RespClient, Script

REVOKED = b"-"

# Replaces a held copy (a new last-seen time) and keeps its expiry; never a tombstone, and
# never creates a key: a copy gone meanwhile is loaded again from Postgres when needed.
_REFRESH = Script(
    """
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
  return 1
end
return 0
"""
)


class Session(msgspec.Struct, frozen=True, array_like=True, gc=False):
    user: User
    last_seen_at: datetime
    expires_at: datetime | None  # None: an API token, which does not expire


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(Session)


class SessionCache:
    def __init__(
        self, client: aioredis.Redis, reads: RespClient, keys: RedisKeys, *, ttl: int
    ) -> None:
        self._redis = client
        self._reads = reads
        self._keys = keys
        self._ttl = ttl

    @staticmethod
    def encode(session: Session) -> bytes:
        return _ENCODER.encode(session)

    async def get(self, token_hash: bytes) -> Session | Literal[False] | None:
        """The token's session; False once it was signed out; None when no copy is held."""
        blob: bytes | None = await self._reads.execute("GET", self._keys.session(token_hash))
        if blob is None:
            return None
        if blob == REVOKED:
            return False
        return _DECODER.decode(blob)

    async def remember(self, token_hash: bytes, session: Session, now: datetime) -> None:
        ttl = self._ttl
        if session.expires_at is not None:
            ttl = min(ttl, int((session.expires_at - now).total_seconds()))
        if ttl > 0:
            key = self._keys.session(token_hash)
            await self._redis.set(key, self.encode(session), ex=ttl, nx=True)

    async def refresh(self, token_hash: bytes, session: Session) -> None:
        await self._reads.evalsha(
            _REFRESH, [self._keys.session(token_hash)], [self.encode(session), REVOKED]
        )

    async def revoke(self, token_hashes: Sequence[bytes]) -> None:
        if not token_hashes:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for token_hash in token_hashes:
                pipe.set(self._keys.session(token_hash), REVOKED, ex=self._ttl)
            await pipe.execute()

    async def forget(self, token_hashes: Sequence[bytes]) -> None:
        """Drops the copies (the user changed): the next request loads them again."""
        if token_hashes:
            await self._redis.delete(*[self._keys.session(h) for h in token_hashes])
