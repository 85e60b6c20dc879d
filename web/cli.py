"""The `chirp` command line (listed in the README's operator table)."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import click

from web.settings import Settings


def _settings() -> Settings:
    return Settings.from_env()


def _metrics_dir(settings: Settings, *, fresh: bool = False) -> None:
    """Points prometheus_client's multiprocess mode at a directory shared by every Chirp
    process on this machine (storage/metrics.py says why), before anything imports it.
    `fresh`: empty it first (`chirp up`, before it starts the processes: the files of a
    previous run's processes would otherwise count forever)."""
    from pathlib import Path

    if "PROMETHEUS_MULTIPROC_DIR" in os.environ and not fresh:
        return
    path = Path(
        os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        or settings.metrics_dir
        or Path(settings.var_dir) / "metrics"
    )
    path.mkdir(parents=True, exist_ok=True)
    if fresh:
        for stale in path.glob("*.db"):
            stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path.resolve())


@click.group()
def main() -> None:
    """Chirp: a Twitter-like service."""
    from web.logs import configure_logging

    configure_logging(_settings())


@main.command()
def migrate() -> None:
    """Create the database if needed and apply migrations."""
    from launcher.services import ensure_database
    from storage.postgres import migrate as run_migrations

    settings = _settings()
    asyncio.run(ensure_database(settings.database_url))
    asyncio.run(run_migrations(settings.database_url))
    click.echo("migrations applied")


@main.command()
@click.option(
    "--workers", type=int, default=None, help="web processes (default CHIRP_WEB_PROCESSES)"
)
def serve(workers: int | None) -> None:
    """Run the web app (API, pages, WebSockets)."""
    import uvicorn

    from web.logs import configure_logging, logging_config

    settings = _settings()
    _metrics_dir(settings)
    configure_logging(settings)
    options: dict[str, Any] = {
        "app": "web.app:create_app",
        "factory": True,
        "loop": "uvloop",
        "http": "httptools",
        "lifespan": "on",
        "access_log": False,
        "log_config": logging_config(settings),
    }
    processes = workers or settings.web_processes
    if processes > 1 and settings.port != 0:
        from web.server import serve_processes

        sys.exit(serve_processes(options, settings.host, settings.port, processes))
    uvicorn.run(**options, host=settings.host, port=settings.port)


@main.group()
def worker() -> None:
    """Run a background worker."""


@worker.command("fanout")
def worker_fanout() -> None:
    """Push new tweets into followers' home timelines."""
    _run_worker("fanout")


@worker.command("search-indexer")
def worker_search_indexer() -> None:
    """Keep the Typesense index in step with new and deleted tweets."""
    _run_worker("search-indexer")


def _run_worker(name: str) -> None:
    settings = _settings()
    _metrics_dir(settings)  # before the worker's modules import prometheus_client

    import uvloop

    from web.logs import configure_logging
    from web.workers import run_worker

    configure_logging(settings)
    uvloop.run(run_worker(settings, name))


@main.group()
def timeline() -> None:
    """Home timeline maintenance."""


@timeline.command("rebuild")
@click.argument("username", required=False)
@click.option("--all", "all_users", is_flag=True, help="rebuild every user's timeline")
def timeline_rebuild(username: str | None, all_users: bool) -> None:
    """Rebuild USERNAME's (or --all) home timeline in Redis from Postgres."""
    if bool(username) == all_users:
        raise click.UsageError("give a USERNAME or --all")
    from web.maintenance import rebuild_timelines

    count = asyncio.run(rebuild_timelines(_settings(), username))
    click.echo(f"rebuilt {count} timeline(s)")


def wait_for_health(url: str, *, timeout: float) -> bool:
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - our own URL
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    return False


@main.group()
def search() -> None:
    """Search index maintenance (Typesense)."""


@search.command("reindex")
@click.option("--batch", default=1000, show_default=True, help="tweets per import")
def search_reindex(batch: int) -> None:
    """Rebuild the index from Postgres into a new collection, then switch the alias to it
    (searches carry on throughout) and drop the old collection."""
    from web.search_admin import reindex_search

    report = asyncio.run(reindex_search(_settings(), batch_size=batch))
    click.echo(
        f"indexed {report.documents} tweets into {report.collection}"
        + (f" (replacing {report.previous})" if report.previous else "")
    )


@search.command("verify")
@click.option("--repair", is_flag=True, help="fix the drift found")
@click.option("--sample", default=1000, show_default=True, help="documents sampled per side")
@click.option("--full", is_flag=True, help="compare every id, even when the counts agree")
def search_verify(repair: bool, sample: int, full: bool) -> None:
    """Compare the index with Postgres (counts, schema, sampled documents) and report drift.
    Exits 1 while drift remains."""
    from web.search_admin import verify_search

    clean = asyncio.run(
        verify_search(_settings(), sample=sample, full=full, repair=repair, echo=click.echo)
    )
    if not clean:
        sys.exit(1)


@main.command()
@click.option("--repair", is_flag=True, help="fix the drift found, then audit again")
@click.option(
    "--sample", default=200, show_default=True, help="timelines sampled (and search documents)"
)
@click.option(
    "--user", "usernames", multiple=True, metavar="NAME", help="audit this user (repeatable)"
)
@click.option("--all", "every", is_flag=True, help="every timeline in Redis, every indexed id")
@click.option(
    "--grace",
    default=60.0,
    show_default=True,
    help="seconds a new tweet, follow or deletion may take to reach the timelines",
)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def audit(
    repair: bool, sample: int, usernames: tuple[str, ...], every: bool, grace: float, as_json: bool
) -> None:
    """Compare home timelines in Redis, the users' and tweets' counters and the search index
    with Postgres, and report drift. Exits 1 while drift remains."""
    if usernames and every:
        raise click.UsageError("give --user or --all, not both")
    from web.audit import AuditScope, describe_outcome, outcome_json, run_audit

    scope = AuditScope(usernames=usernames, sample=sample, every=every, grace_seconds=grace)
    try:
        outcome = asyncio.run(run_audit(_settings(), scope, repair=repair))
    except LookupError as error:
        raise click.ClickException(str(error)) from None
    if as_json:
        click.echo(outcome_json(outcome))
    else:
        for line in describe_outcome(outcome):
            click.echo(line)
    if not outcome.clean:
        sys.exit(1)


@main.group()
def media() -> None:
    """Uploaded images."""


@media.command("gc")
def media_gc() -> None:
    """Delete uploads never attached to a tweet within a day (object and row)."""
    from web.media_service import collect_abandoned_uploads

    count = asyncio.run(collect_abandoned_uploads(_settings()))
    click.echo(f"removed {count} abandoned upload(s)")


@main.command()
@click.option("--watch", is_flag=True, help="refresh until Ctrl-C")
@click.option("--interval", default=2.0, show_default=True, help="seconds between refreshes")
@click.option("--count", type=int, default=None, help="stop after this many refreshes")
@click.option(
    "--lag-threshold",
    default=1000,
    show_default=True,
    help="a consumer with more messages outstanding is shown as lagging",
)
def streams(watch: bool, interval: float, count: int | None, lag_threshold: int) -> None:
    """JetStream streams and consumers: messages, bytes, pending, ack pending, redeliveries,
    age of the oldest unacked message, dead letters. Lagging (over the threshold) and growing
    backlogs are highlighted."""
    from web.ops_cli import streams_command

    asyncio.run(
        streams_command(
            _settings(),
            watch=watch,
            interval=interval,
            count=count,
            threshold=lag_threshold,
            echo=click.echo,
        )
    )


@main.command()
@click.argument("tweet_id")
@click.argument("username", required=False)
def trace(tweet_id: str, username: str | None) -> None:
    """Follow TWEET_ID through the pipeline: stored, outbox, published, in the stream, fanned
    out, in USERNAME's timeline (or why not), indexed."""
    from domain.ids import parse_id
    from web.ops_cli import trace_command

    parsed = parse_id(tweet_id)
    if parsed is None:
        raise click.UsageError(f"{tweet_id!r} is not a tweet id")
    if not asyncio.run(trace_command(_settings(), parsed, username, click.echo)):
        sys.exit(1)


@main.group()
def admin() -> None:
    """Who may see the operations page (/ops)."""


@admin.command("grant")
@click.argument("username")
def admin_grant(username: str) -> None:
    """Make USERNAME an admin."""
    _set_admin(username, True)


@admin.command("revoke")
@click.argument("username")
def admin_revoke(username: str) -> None:
    """Make USERNAME an ordinary user again."""
    _set_admin(username, False)


def _set_admin(username: str, admin: bool) -> None:
    from web.ops_cli import SessionsNotForgotten, set_admin

    try:
        if not asyncio.run(set_admin(_settings(), username, admin)):
            raise click.ClickException(f"no user named {username!r}")
    except SessionsNotForgotten as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"@{username} is {'now' if admin else 'no longer'} an admin")


@main.command()
def up() -> None:
    """Start everything on this machine: services (reused or embedded), migrations, web app,
    workers. Ctrl-C stops what it started."""
    from pathlib import Path

    from launcher.services import MissingService, ensure_database, ensure_services
    from launcher.supervisor import run_processes
    from storage.postgres import migrate as run_migrations

    settings = _settings()
    urls = settings.service_urls()
    try:
        stack = ensure_services(urls, Path(settings.var_dir))
    except MissingService as missing:
        raise click.ClickException(str(missing)) from None
    try:
        asyncio.run(ensure_database(settings.database_url))
        asyncio.run(run_migrations(settings.database_url, quiet=True))
        me = [sys.executable, "-m", "web.cli"]
        _metrics_dir(settings, fresh=True)
        env = dict(os.environ)
        commands = [
            ("web", [*me, "serve"]),
            ("fanout", [*me, "worker", "fanout"]),
            ("search-indexer", [*me, "worker", "search-indexer"]),
        ]

        def announce() -> None:
            # Only once the app answers, so the printed URL works when it appears.
            if wait_for_health(f"{settings.url}/health", timeout=60):
                click.echo(f"\n  Chirp is running at {settings.url}\n  Ctrl-C stops it.\n")
            else:
                click.echo(f"\n  Chirp did not answer at {settings.url} within 60 s\n", err=True)

        code = run_processes(commands, env=env, on_ready=announce)
    finally:
        stack.stop()
    sys.exit(code)


if __name__ == "__main__":
    main()
