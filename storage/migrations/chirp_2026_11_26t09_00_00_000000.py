from piccolo.apps.migrations.auto.migration_manager import MigrationManager

from storage.raw_migration import sql_migration

ID = "2026-11-26T09:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "media uploads"

SCHEMA = """
-- One row per upload the app handed out a URL for. 'pending' until a tweet attaches it
-- (then 'attached', with the tweet's id); pending rows older than a day are collected by
-- `chirp media gc`, object and row together. The tweet keeps its own copy of what it shows
-- (tweets.media), so this table is read only when posting and collecting.
CREATE TABLE media (
    id bigint PRIMARY KEY,
    owner_id bigint NOT NULL REFERENCES users (id),
    key text NOT NULL UNIQUE,
    content_type text NOT NULL,
    size integer NOT NULL CHECK (size > 0),
    alt text NOT NULL DEFAULT '',
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'attached')),
    tweet_id bigint REFERENCES tweets (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    -- When the upload URL stops working.
    expires_at timestamptz NOT NULL,
    CHECK ((status = 'attached') = (tweet_id IS NOT NULL))
);
CREATE INDEX media_gc ON media (status, created_at);
CREATE INDEX media_by_tweet ON media (tweet_id) WHERE tweet_id IS NOT NULL;
"""

DROP = """
DROP TABLE IF EXISTS media;
"""


async def forwards() -> MigrationManager:
    return sql_migration(ID, DESCRIPTION, SCHEMA, DROP)
