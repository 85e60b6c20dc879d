"""Piccolo table definitions. The schema itself is created by the migrations in
`storage/migrations/`, which also hold what Piccolo's table classes cannot express: the
composite primary keys of `follows`, `likes` and `idempotency_keys` (accessed with SQL in the
repositories), partial indexes, and the case-insensitive unique index on usernames."""

from piccolo.columns import (
    JSONB,
    BigInt,
    Boolean,
    Bytea,
    Integer,
    Text,
    Timestamptz,
)
from piccolo.table import Table

from storage.piccolo_conf import DB


class User(Table, tablename="users", db=DB):
    id = BigInt(primary_key=True)
    username = Text()
    display_name = Text()
    bio = Text(default="")
    password_hash = Text()
    created_at = Timestamptz()
    last_seen_at = Timestamptz()
    followers_count = Integer(default=0)
    following_count = Integer(default=0)
    tweets_count = Integer(default=0)
    is_celebrity = Boolean(default=False)
    is_admin = Boolean(default=False)


class AccessToken(Table, tablename="access_tokens", db=DB):
    token_hash = Bytea(primary_key=True)
    user_id = BigInt()
    kind = Text(default="api")
    created_at = Timestamptz()
    expires_at = Timestamptz(null=True, default=None)


class Tweet(Table, tablename="tweets", db=DB):
    id = BigInt(primary_key=True)
    author_id = BigInt()
    text = Text()
    reply_to = BigInt(null=True, default=None)
    media = JSONB(default="[]")
    created_at = Timestamptz()
    deleted_at = Timestamptz(null=True, default=None)
    like_count = Integer(default=0)
    reply_count = Integer(default=0)


class Outbox(Table, tablename="outbox", db=DB):
    id = BigInt(primary_key=True)
    kind = Text()
    payload = Bytea()
    created_at = Timestamptz()
    published_at = Timestamptz(null=True, default=None)
