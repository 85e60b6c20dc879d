"""The system under test: private NATS, Redis and Typesense on free ports, and the Chirp
processes (web and workers) that the fault injector kills and starts again.

Each Chirp process lives in a *slot* ("web-0", "fanout-1", ...) that keeps its settings, its
own Prometheus multiprocess directory (so the work each slot did can be read back) and one log
file appended to across restarts (workdir/logs/<slot>.log)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from launcher.services import (
    ManagedProcess,
    free_port,
    start_nats,
    start_redis,
    start_typesense,
)
from web.settings import Settings

ROOT = Path(__file__).resolve().parents[2]

WEB = "web"
FANOUT = "fanout"
INDEXER = "search-indexer"
SERVICES = ("nats", "redis", "typesense")

Log = Callable[[str], None]


class ChirpProcess:
    """One `chirp serve` / `chirp worker ...` process of a slot. SIGKILL is the crash; a new
    process with the same settings is the restart."""

    def __init__(self, slot: Slot) -> None:
        self.slot = slot
        env = {
            key: value
            for key, value in os.environ.items()
            # The slot's own metrics directory must win (the variable would override it).
            if key != "PROMETHEUS_MULTIPROC_DIR"
        }
        env.update(slot.settings.to_env())
        slot.log_path.parent.mkdir(parents=True, exist_ok=True)
        with slot.log_path.open("ab") as log:
            self._log_offset = log.tell()
            log.write(f"--- {time.strftime('%H:%M:%S')} starting {slot.name}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "web.cli", *slot.argv],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            with self.slot.log_path.open("rb") as log:
                log.seek(self._log_offset)
                text = log.read().decode("utf-8", "replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _logged(self, text: str) -> bool:
        try:
            with self.slot.log_path.open("rb") as log:
                log.seek(self._log_offset)
                return text.encode() in log.read()
        except OSError:
            return False

    async def wait_ready(self, timeout: float) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        async with httpx.AsyncClient(timeout=1.0) as client:
            while True:
                if not self.alive:
                    raise RuntimeError(
                        f"{self.slot.name} exited with {self.popen.returncode} while starting:\n"
                        + self.log_tail()
                    )
                if self.slot.kind == WEB:
                    with contextlib.suppress(httpx.HTTPError):
                        if (await client.get(f"{self.slot.url}/health")).status_code == 200:
                            return
                elif self._logged("worker started"):
                    return
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError(
                        f"{self.slot.name} not ready within {timeout:.0f} s:\n" + self.log_tail()
                    )
                await asyncio.sleep(0.1)

    def kill(self) -> None:
        """kill -9, as a crash or the OOM killer would."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)

    def stop(self) -> None:
        """SIGTERM, SIGKILL after a grace period."""
        if self.alive:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
                return
            except subprocess.TimeoutExpired:
                pass
        self.kill()


@dataclass
class Slot:
    name: str
    kind: str
    settings: Settings
    metrics_dir: Path
    log_path: Path
    process: ChirpProcess | None = None
    starts: int = 0
    kills: int = 0
    unexpected_exits: int = 0
    # Set while the injector has this slot down on purpose.
    faulted: bool = False

    @property
    def argv(self) -> tuple[str, ...]:
        return ("serve",) if self.kind == WEB else ("worker", self.kind)

    @property
    def url(self) -> str:
        return self.settings.url

    async def start(self, timeout: float = 90.0) -> None:
        self.process = ChirpProcess(self)
        self.starts += 1
        await self.process.wait_ready(timeout)

    async def kill(self) -> None:
        if self.process is not None:
            await asyncio.to_thread(self.process.kill)
        self.kills += 1

    async def stop(self) -> None:
        if self.process is not None:
            await asyncio.to_thread(self.process.stop)

    def counters(self) -> dict[str, float]:
        """What this slot's processes (every incarnation) recorded."""
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.metrics_dir))  # type: ignore[no-untyped-call]
        totals: dict[str, float] = {}
        for family in registry.collect():
            for sample in family.samples:
                if sample.name == "chirp_http_request_duration_seconds_count":
                    totals["requests"] = totals.get("requests", 0.0) + sample.value
                elif sample.name == "chirp_events_total" and sample.labels["result"] == "ok":
                    totals["events"] = totals.get("events", 0.0) + sample.value
                elif sample.name == "chirp_fanout_tweets_total":
                    name = f"fanned out ({sample.labels['mode']})"
                    totals[name] = totals.get(name, 0.0) + sample.value
        return totals


@dataclass
class Cluster:
    settings: Settings
    services: dict[str, ManagedProcess]
    slots: list[Slot]
    workdir: Path
    log: Log
    service_restarts: dict[str, int] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)

    def of(self, kind: str) -> list[Slot]:
        return [slot for slot in self.slots if slot.kind == kind]

    @property
    def web_urls(self) -> list[str]:
        return [slot.url for slot in self.of(WEB)]

    async def restart_slot(self, slot: Slot, downtime: float) -> None:
        slot.faulted = True
        try:
            await slot.kill()
            await asyncio.sleep(downtime)
            await slot.start()
        finally:
            slot.faulted = False

    async def restart_service(self, name: str, downtime: float) -> None:
        service = self.services[name]
        await asyncio.to_thread(service.stop)
        await asyncio.sleep(downtime)
        await asyncio.to_thread(service.start)
        self.service_restarts[name] = self.service_restarts.get(name, 0) + 1

    async def watch(self, stop: asyncio.Event) -> None:
        """Restarts a Chirp process that died without the injector killing it, and records
        it: a process that exits by itself under these faults is a finding."""
        while not stop.is_set():
            for slot in self.slots:
                process = slot.process
                if slot.faulted or process is None or process.alive:
                    continue
                note = f"{slot.name} exited by itself with {process.popen.returncode}"
                self.unexpected.append(f"{note}:\n{process.log_tail()}")
                slot.unexpected_exits += 1
                self.log(f"UNEXPECTED: {note}; restarting it")
                slot.faulted = True
                try:
                    await slot.start()
                finally:
                    slot.faulted = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    async def all_up(self) -> None:
        """Every service answers and every slot's process is alive (restarting any that
        is not)."""
        for name, service in self.services.items():
            if not service.running:
                self.log(f"{name} is not running; starting it")
                await asyncio.to_thread(service.start)
        for slot in self.slots:
            if slot.process is None or not slot.process.alive:
                await slot.start()


def _slot_settings(settings: Settings, kind: str, metrics_dir: Path) -> Settings:
    # Each process claims its own worker id (a Postgres advisory lock), so a process killed
    # with -9 and started again exercises the claim too.
    changes: dict[str, object] = {"worker_id": -1, "metrics_dir": str(metrics_dir)}
    if kind == WEB:
        changes["port"] = free_port()
    return settings.with_overrides(**changes)


@contextlib.asynccontextmanager
async def running_cluster(
    base: Settings,
    workdir: Path,
    *,
    web: int = 2,
    fanout: int = 2,
    indexers: int = 2,
    log: Log = print,
) -> AsyncIterator[Cluster]:
    """Private NATS, Redis and Typesense, then the Chirp processes; all of it stopped at the
    end, whatever happens. `base` names the database (which must exist and be migrated)."""
    workdir.mkdir(parents=True, exist_ok=True)
    services: dict[str, ManagedProcess] = {}
    slots: list[Slot] = []
    try:
        ports = {name: free_port() for name in SERVICES}
        starting = {
            "nats": asyncio.to_thread(start_nats, ports["nats"], workdir / "nats"),
            "redis": asyncio.to_thread(start_redis, ports["redis"], workdir / "redis"),
            "typesense": asyncio.to_thread(
                start_typesense, ports["typesense"], workdir / "typesense", base.typesense_api_key
            ),
        }
        results = await asyncio.gather(*starting.values(), return_exceptions=True)
        for name, result in zip(starting, results, strict=True):
            if isinstance(result, ManagedProcess):
                services[name] = result
        for result in results:
            if isinstance(result, BaseException):
                raise result
        settings = base.with_overrides(
            nats_url=f"nats://127.0.0.1:{ports['nats']}",
            redis_url=f"redis://127.0.0.1:{ports['redis']}/0",
            typesense_url=f"http://127.0.0.1:{ports['typesense']}",
        )
        log(
            f"services: nats :{ports['nats']}, redis :{ports['redis']}, "
            f"typesense :{ports['typesense']} (data and logs in {workdir})"
        )
        for kind, count in ((WEB, web), (FANOUT, fanout), (INDEXER, indexers)):
            for index in range(count):
                name = f"{kind}-{index}"
                metrics_dir = workdir / "metrics" / name
                metrics_dir.mkdir(parents=True, exist_ok=True)
                slots.append(
                    Slot(
                        name=name,
                        kind=kind,
                        settings=_slot_settings(settings, kind, metrics_dir),
                        metrics_dir=metrics_dir,
                        log_path=workdir / "logs" / f"{name}.log",
                    )
                )
        await asyncio.gather(*(slot.start() for slot in slots))
        log(
            "processes: "
            + ", ".join(f"{s.name} (pid {s.process.popen.pid})" for s in slots if s.process)
        )
        yield Cluster(settings, services, slots, workdir, log)
    finally:
        for slot in slots:
            with contextlib.suppress(Exception):
                await slot.stop()
        for service in services.values():
            with contextlib.suppress(Exception):
                await asyncio.to_thread(service.stop)
