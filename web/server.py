"""`chirp serve` with several web processes: each listens on a socket of its own on the same
port (SO_REUSEPORT), so the kernel spreads new connections evenly among them.

Why not uvicorn's own workers: they share one listening socket, and whichever process is awake
when connections arrive accepts them all. bench/ opens its connections together, as a load
balancer refilling its pool does: 16 of 16 landed on one of two processes, 52 of 64 in another
step, so one core served while the other idled and the figures swung with the draw.

This parent only starts the processes, starts a new one when one dies (not one that dies before
it serves: that would fail the same way again) and stops them on SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import threading
import time
from multiprocessing.process import BaseProcess
from typing import Any

log = logging.getLogger("chirp.serve")

STOP_GRACE_SECONDS = 15.0


def listening_socket(host: str, port: int, backlog: int) -> socket.socket:
    """A socket of this process's own on (host, port), sharing the port with the others."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    sock.listen(backlog)
    return sock


def _serve_one(options: dict[str, Any], host: str, port: int, started: Any) -> None:
    """One web process; sets `started` (a multiprocessing Event) once it serves."""
    import asyncio

    import uvicorn
    import uvloop

    config = uvicorn.Config(**options, host=host, port=port)
    sock = listening_socket(host, port, config.backlog)
    server = uvicorn.Server(config)

    async def serve() -> None:
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not serving.done():
            await asyncio.sleep(0.05)
        if server.started:
            started.set()
        await serving

    uvloop.run(serve())


def serve_processes(options: dict[str, Any], host: str, port: int, processes: int) -> int:
    """Runs `processes` uvicorn servers with these `uvicorn.Config` options until SIGTERM or
    SIGINT (returns 0), or until one fails to start (returns 1)."""
    context = multiprocessing.get_context("spawn")
    stopping = threading.Event()

    def start() -> tuple[BaseProcess, Any]:
        started = context.Event()
        process = context.Process(
            target=_serve_one, args=(options, host, port, started), daemon=False
        )
        process.start()
        return process, started

    def stop(signum: int, _frame: object) -> None:
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    running = [start() for _ in range(processes)]
    failed = False
    while not stopping.wait(0.5):
        for i, (process, started) in enumerate(running):
            if process.is_alive():
                continue
            if not started.is_set():
                log.error(
                    "web process failed to start; stopping",
                    extra={"pid": process.pid, "exitcode": process.exitcode},
                )
                failed = True
                stopping.set()
                break
            log.warning(
                "web process died; starting another",
                extra={"pid": process.pid, "exitcode": process.exitcode},
            )
            running[i] = start()
    for process, _ in running:
        if process.is_alive() and process.pid is not None:
            process.terminate()  # SIGTERM: uvicorn finishes the requests in flight
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for process, _ in running:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()
    return 1 if failed else 0
