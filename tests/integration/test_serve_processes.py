"""`chirp serve --workers N` (web/server.py): N processes, each with its own socket on the
one port, share the connections; one that dies is replaced; SIGTERM stops them all."""

from __future__ import annotations

import asyncio
import os
import signal
import socket

import httpx
import psutil
import pytest

from launcher.process import free_port
from tests.support import ServerProcess, eventually
from web.settings import Settings

pytestmark = pytest.mark.slow

CONNECTIONS = 32


def web_processes(server: ServerProcess) -> list[psutil.Process]:
    """The live web processes (multiprocessing's resource tracker aside; a killed one not
    yet reaped aside)."""
    found = []
    for p in psutil.Process(server.process.pid).children(recursive=True):
        try:
            if "resource_tracker" not in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:
            continue  # gone, or a zombie
    return found


def connections_held(process: psutil.Process, port: int) -> int:
    return sum(
        1
        for c in process.net_connections(kind="tcp")
        if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port
    )


async def open_connections(server: ServerProcess, count: int) -> list[httpx.AsyncClient]:
    """`count` keep-alive connections opened together, as a load balancer fills its pool."""
    clients = [
        httpx.AsyncClient(base_url=server.base_url, limits=httpx.Limits(max_connections=1))
        for _ in range(count)
    ]
    responses = await asyncio.gather(*(c.get("/health") for c in clients))
    assert {r.status_code for r in responses} == {200}
    return clients


async def test_two_web_processes_share_connections_opened_together_and_a_dead_one_is_replaced(
    settings: Settings,
) -> None:
    port = free_port()
    server = ServerProcess(
        settings.with_overrides(host="127.0.0.1", port=port), "serve", "--workers", "2"
    )
    try:
        await server.wait_ready(timeout=60)

        async def both_started() -> bool:
            return len(web_processes(server)) == 2

        assert await eventually(both_started, timeout=30)

        clients = await open_connections(server, CONNECTIONS)
        try:
            held = [connections_held(p, port) for p in web_processes(server)]
        finally:
            await asyncio.gather(*(c.aclose() for c in clients))
        # The kernel hashes each connection to a socket: both get a share. One shared
        # socket gave one process all 16 of 16 in bench/.
        assert sum(held) == CONNECTIONS
        assert min(held) >= CONNECTIONS // 8, held

        first = web_processes(server)[0]
        os.kill(first.pid, signal.SIGKILL)

        async def replaced() -> bool:
            now = {p.pid for p in web_processes(server)}
            return len(now) == 2 and first.pid not in now

        assert await eventually(replaced, timeout=60), server.stderr()
        await server.wait_ready(timeout=60)
        clients = await open_connections(server, 8)
        await asyncio.gather(*(c.aclose() for c in clients))
        processes = web_processes(server)
    finally:
        server.stop()
    assert server.process.returncode == 0, server.stderr()
    assert not [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


async def test_web_processes_that_cannot_start_stop_the_server_with_an_error(
    settings: Settings,
) -> None:
    port = free_port()
    taken = socket.socket()  # listening without SO_REUSEPORT: nobody else may bind the port
    taken.bind(("127.0.0.1", port))
    taken.listen()
    try:
        server = ServerProcess(
            settings.with_overrides(host="127.0.0.1", port=port), "serve", "--workers", "2"
        )
        try:
            code = await asyncio.to_thread(server.process.wait, 60)
        finally:
            server.stop()
    finally:
        taken.close()
    assert code == 1
    assert "failed to start" in server.stderr()
