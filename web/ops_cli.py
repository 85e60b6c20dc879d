"""The operator commands behind `chirp streams`, `chirp trace` and `chirp admin` (web/cli.py
holds only their click declarations)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

import click

from realtime.jetstream import NatsLink, StreamNames
from realtime.streams_report import ConsumerState, StreamState, StreamsUnavailable, read_streams
from storage.operations import OperationsRepository
from storage.postgres import Database
from storage.redis_store import REDIS_ERRORS, RedisKeys, connect_redis
from storage.repositories import TokenRepository
from storage.resp import RespClient
from storage.sessions import SessionCache
from web.container import provide_services
from web.settings import Settings
from web.trace import Step, trace_tweet

Echo = Callable[[str], None]


class SessionsNotForgotten(Exception):
    pass


COLUMNS = (
    ("STREAM / CONSUMER", 24),
    ("MESSAGES", 10),
    ("BYTES", 10),
    ("PENDING", 9),
    ("ACK PENDING", 12),
    ("REDELIVERED", 12),
    ("OLDEST UNACKED", 15),
    ("DEAD LETTERS", 13),
    ("STATE", 8),
)


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"


def human_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def consumer_state(consumer: ConsumerState, previous: int | None, threshold: int) -> str:
    """The consumer's state: "lagging" above the threshold, "growing" when its backlog grew
    since the previous look, else "ok"."""
    if consumer.outstanding > threshold:
        return "lagging"
    if previous is not None and consumer.outstanding > previous:
        return "growing"
    return "ok"


def _row(cells: list[str]) -> str:
    return "".join(
        cell.ljust(width) if index == 0 else cell.rjust(width)
        for index, (cell, (_, width)) in enumerate(zip(cells, COLUMNS, strict=True))
    )


def render_streams(
    streams: list[StreamState], previous: dict[str, int], threshold: int
) -> tuple[list[str], dict[str, int]]:
    """The table's lines (styled) and each consumer's backlog, for the next refresh."""
    lines = [click.style(_row([title for title, _ in COLUMNS]), bold=True)]
    seen: dict[str, int] = {}
    for stream in streams:
        lines.append(
            _row(
                [stream.name, f"{stream.messages:,}", human_bytes(stream.bytes)]
                + [""] * (len(COLUMNS) - 3)
            )
        )
        for consumer in stream.consumers:
            key = f"{stream.name}/{consumer.name}"
            state = consumer_state(consumer, previous.get(key), threshold)
            seen[key] = consumer.outstanding
            line = _row(
                [
                    f"  {consumer.name}",
                    "",
                    "",
                    f"{consumer.pending:,}",
                    f"{consumer.ack_pending:,}",
                    f"{consumer.redelivered:,}",
                    human_age(consumer.oldest_unacked_age),
                    f"{consumer.dead_letters:,}",
                    state,
                ]
            )
            if state == "lagging":
                line = click.style(line, fg="red", bold=True)
            elif state == "growing":
                line = click.style(line, fg="yellow")
            lines.append(line)
    return lines, seen


async def streams_command(
    settings: Settings,
    *,
    watch: bool,
    interval: float,
    count: int | None,
    threshold: int,
    echo: Echo,
) -> None:
    link = NatsLink(settings.nats_url, name="chirp-cli")
    await link.start()
    try:
        if not link.connected:
            raise click.ClickException(f"NATS is not answering at {settings.nats_url}")
        names = StreamNames(settings.stream, settings.subject_prefix)
        previous: dict[str, int] = {}
        shown = 0
        while True:
            try:
                streams = await read_streams(link, names)
            except StreamsUnavailable as error:
                raise click.ClickException(str(error)) from None
            lines, previous = render_streams(streams, previous, threshold)
            if watch and sys.stdout.isatty():
                click.clear()
            if not streams:
                lines.append(f"no stream {names.stream} yet (it is created when Chirp starts)")
            echo("\n".join(lines))
            shown += 1
            if not watch or (count is not None and shown >= count):
                return
            echo("")
            await asyncio.sleep(interval)
    finally:
        await link.stop()


MARKS = {"ok": ("✓", "green"), "no": ("✗", "red"), "wait": ("…", "yellow"), "info": ("·", None)}


def render_step(step: Step) -> str:
    mark, colour = MARKS.get(step.state, ("·", None))
    return f"{click.style(mark, fg=colour)} {click.style(step.name, bold=True)}: {step.detail}"


async def trace_command(
    settings: Settings, tweet_id: int, username: str | None, echo: Echo
) -> bool:
    """Prints the steps; False when there is no such tweet."""
    async with provide_services(settings, process_name="chirp-cli") as services:
        steps = await trace_tweet(services, tweet_id, username)
    for step in steps:
        echo(render_step(step))
    return steps[0].state == "ok"


async def set_admin(settings: Settings, username: str, admin: bool) -> bool:
    """Changes the flag, and drops the user's sessions that Redis keeps for every process
    (which hold the flag; each process's own copy lapses within `auth_cache_seconds`)."""
    db = Database(settings.database_url, min_size=1, max_size=2)
    await db.start()
    try:
        user = await OperationsRepository(db).set_admin(username, admin)
        if user is None:
            return False
        hashes = await TokenRepository(db).hashes_of(user.id)
    finally:
        await db.stop()
    redis = connect_redis(settings.redis_url)
    reads = RespClient(settings.redis_url)
    sessions = SessionCache(
        redis, reads, RedisKeys(settings.redis_prefix), ttl=settings.session_cache_seconds
    )
    try:
        await sessions.forget(hashes)
    except REDIS_ERRORS as error:
        raise SessionsNotForgotten(
            f"the admin flag changed, but the sessions Redis keeps still show the old one"
            f" for up to {settings.session_cache_seconds} s ({error})"
        ) from error
    finally:
        await redis.aclose()
        await reads.close()
    return True
