"""Worker processes: each runs one durable consumer with the same services as the web app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from realtime.consumer import EventConsumer
from realtime.fanout import Fanout
from realtime.live import LivePublisher
from web.container import Services, provide_services
from web.settings import Settings

log = logging.getLogger("chirp.worker")


def fanout_consumer(services: Services) -> tuple[EventConsumer, Fanout]:
    fanout = Fanout(
        services.store,
        services.timelines,
        services.tweets,
        services.users,
        services.follows,
        services.reader,
        LivePublisher(services.link, services.names, services.presence),
        active_days=services.settings.active_days,
    )
    return EventConsumer(services.link, services.names, "fanout", fanout.handle), fanout


async def run_worker(settings: Settings, name: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with provide_services(settings, process_name=f"chirp-{name}") as services:
        if name == "fanout":
            consumer, _ = fanout_consumer(services)
        else:
            raise SystemExit(f"unknown worker {name!r}")
        log.info("worker started", extra={"worker": name})
        await consumer.run(stop)
