from piccolo.apps.migrations.auto.migration_manager import MigrationManager

from storage.raw_migration import sql_migration

ID = "2026-11-25T13:30:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "users, tokens, tweets, follows, likes, outbox, idempotency keys"

SCHEMA = """
CREATE TABLE users (
    id bigint PRIMARY KEY,
    username text NOT NULL,
    display_name text NOT NULL,
    bio text NOT NULL DEFAULT '',
    password_hash text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    followers_count integer NOT NULL DEFAULT 0 CHECK (followers_count >= 0),
    following_count integer NOT NULL DEFAULT 0 CHECK (following_count >= 0),
    tweets_count integer NOT NULL DEFAULT 0 CHECK (tweets_count >= 0),
    is_celebrity boolean NOT NULL DEFAULT false,
    is_admin boolean NOT NULL DEFAULT false
);
CREATE UNIQUE INDEX users_username_lower ON users (lower(username));

CREATE TABLE access_tokens (
    token_hash bytea PRIMARY KEY,
    user_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind text NOT NULL DEFAULT 'api',
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz
);
CREATE INDEX access_tokens_user ON access_tokens (user_id);

CREATE TABLE tweets (
    id bigint PRIMARY KEY,
    author_id bigint NOT NULL REFERENCES users (id),
    text text NOT NULL,
    reply_to bigint REFERENCES tweets (id),
    media jsonb NOT NULL DEFAULT '[]',
    created_at timestamptz NOT NULL,
    deleted_at timestamptz,
    like_count integer NOT NULL DEFAULT 0 CHECK (like_count >= 0),
    reply_count integer NOT NULL DEFAULT 0 CHECK (reply_count >= 0)
);
CREATE INDEX tweets_by_author ON tweets (author_id, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX tweets_by_parent ON tweets (reply_to, id) WHERE reply_to IS NOT NULL AND deleted_at IS NULL;

-- follows.id is a Snowflake taken at follow time: it orders the follower and following lists
-- (newest follow first) and serves as their cursor.
CREATE TABLE follows (
    follower_id bigint NOT NULL REFERENCES users (id),
    followee_id bigint NOT NULL REFERENCES users (id),
    id bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (follower_id, followee_id),
    CHECK (follower_id <> followee_id)
);
CREATE INDEX follows_by_followee ON follows (followee_id, id DESC);
CREATE INDEX follows_by_follower ON follows (follower_id, id DESC);

CREATE TABLE likes (
    user_id bigint NOT NULL REFERENCES users (id),
    tweet_id bigint NOT NULL REFERENCES tweets (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, tweet_id)
);
CREATE INDEX likes_by_tweet ON likes (tweet_id);

CREATE TABLE outbox (
    id bigint PRIMARY KEY,
    kind text NOT NULL,
    payload bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;

CREATE TABLE idempotency_keys (
    user_id bigint NOT NULL REFERENCES users (id),
    key text NOT NULL,
    tweet_id bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
"""

DROP = """
DROP TABLE IF EXISTS idempotency_keys, outbox, likes, follows, tweets, access_tokens, users;
"""


async def forwards() -> MigrationManager:
    return sql_migration(ID, DESCRIPTION, SCHEMA, DROP)
