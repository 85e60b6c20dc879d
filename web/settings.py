"""Every setting Chirp reads, from `CHIRP_*` environment variables with safe local defaults.
This is the only place that reads the environment; everything else is handed its values."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from launcher.services import ServiceUrls


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    database_url: str = "postgresql://postgres@127.0.0.1:5432/chirp"
    redis_url: str = "redis://127.0.0.1:6379/0"
    nats_url: str = "nats://127.0.0.1:4222"
    typesense_url: str = "http://127.0.0.1:8108"
    typesense_api_key: str = "chirp-local-key"
    # The Typesense alias searches and the indexer use; collections behind it are named
    # `<alias>_<when built>`. Tests set their own so they never touch a running instance's.
    search_collection: str = "tweets"
    # A search that Typesense has not answered by then gets a 503.
    search_timeout: float = 2.0
    # Milliseconds Typesense may spend ranking one pass of a search. A query that matches
    # more is answered from its newest matches (a second pass, same budget); 0: no budget.
    search_budget_ms: int = 25
    # Followers above which an author's tweets are merged at read time instead of pushed.
    celebrity_threshold: int = 10_000
    # An author stops being a celebrity only below threshold * (1 - hysteresis).
    celebrity_hysteresis: float = 0.1
    timeline_max: int = 800
    # Users not seen for this many days get no fanout; their timeline is rebuilt on return.
    active_days: int = 30
    # The Snowflake worker id, 0-1023; -1 (the default): each process claims a free one from
    # Postgres at start, so processes never share one.
    worker_id: int = -1
    # Prefixes that let several instances (and the tests) share one Redis and one NATS.
    redis_prefix: str = ""
    stream: str = "CHIRP"
    subject_prefix: str = "chirp"
    # Must exceed the outbox relay's worst-case delay between a publish and its retry.
    duplicate_window_seconds: float = 600.0
    tweets_per_hour: int = 300
    sign_in_attempts_per_minute: int = 10
    sign_ups_per_hour: int = 30
    max_body_bytes: int = 64 * 1024
    var_dir: Path = field(default_factory=lambda: Path("var"))
    web_processes: int = 1
    secret_key: str = ""
    secure_cookies: bool = False
    # Extra origins (besides the app's own) whose pages may open WebSockets, comma-separated.
    allowed_origins: tuple[str, ...] = ()
    log_level: str = "INFO"
    log_json: bool = True
    # prometheus_client's multiprocess directory for `chirp up`/`serve`/`worker` (empty:
    # var_dir/metrics); PROMETHEUS_MULTIPROC_DIR, when set, wins.
    metrics_dir: str = ""
    tweet_cache_ttl: int = 24 * 3600
    # Seconds a web process remembers whom a token belongs to (0: ask Postgres every time).
    # Sign-out takes effect at once in the process that handles it; other processes may
    # accept the revoked token until their entry expires.
    auth_cache_seconds: float = 5.0
    # How long Redis keeps a token's owner for every process (storage/sessions.py). A
    # sign-out replaces it at once; an admin grant or revoke drops it.
    session_cache_seconds: int = 600
    db_pool_size: int = 10
    # Where uploaded images live: "local" (files under media_dir, served by the app through
    # signed URLs; the default for `make run`) or "s3" (MinIO or any S3, settings below).
    media_store: str = "local"
    # Empty means var_dir/media.
    media_dir: str = ""
    # host:port or a URL (its scheme then decides TLS, overriding s3_secure).
    s3_endpoint: str = "127.0.0.1:9000"
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_bucket: str = "chirp-media"
    # Given explicitly so that presigning needs no request to the server.
    s3_region: str = "us-east-1"
    s3_secure: bool = False
    # Where clients reach the store, when that differs from where the app does (compose:
    # the app calls minio:9000, browsers call localhost:9000). Presigned URLs name this host.
    s3_public_endpoint: str = ""
    # When set, readers get `<base>/<key>` (a CDN or a public-read bucket) instead of
    # presigned read URLs.
    media_public_base_url: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = environ.get(f"CHIRP_{f.name.upper()}")
            if raw is None:
                continue
            values[f.name] = _parse(raw, f.type, f.name)
        return cls(**values)  # type: ignore[arg-type]

    def to_env(self) -> dict[str, str]:
        """The environment that gives another process these same settings."""
        env: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = ",".join(value)
            elif isinstance(value, bool):
                value = "1" if value else "0"
            env[f"CHIRP_{f.name.upper()}"] = str(value)
        return env

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    def service_urls(self) -> ServiceUrls:
        """What the launcher needs to find, or start, the services these settings name."""
        return ServiceUrls(
            database_url=self.database_url,
            redis_url=self.redis_url,
            nats_url=self.nats_url,
            typesense_url=self.typesense_url,
            typesense_api_key=self.typesense_api_key,
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def _parse(raw: str, type_name: object, name: str) -> object:
    kind = str(type_name)
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            return raw.strip().lower() in {"1", "true", "yes", "on"}
        if kind == "Path":
            return Path(raw)
        if kind.startswith("tuple"):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
    except ValueError:
        raise SystemExit(f"CHIRP_{name.upper()} must be a {kind}, got {raw!r}") from None
    return raw
