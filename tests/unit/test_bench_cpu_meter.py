"""bench/'s CpuMeter: the CPU a step used, per request, counted in the part it belongs to."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil

from bench.common import CpuMeter, HostSpeed, cpu_jiffies, half_second_p99, steal_share

# Says it is ready, waits for the go file, burns 0.25 s of CPU, says it is done, then idles.
WORKER = """
import pathlib, sys, time
here = pathlib.Path(sys.argv[1])
(here / f"ready-{sys.argv[2]}").touch()
while not (here / "go").exists():
    time.sleep(0.01)
end = time.process_time() + 0.25
while time.process_time() < end:
    pass
(here / f"done-{sys.argv[2]}").touch()
time.sleep(60)
"""
# The server: starts a worker of its own (as `chirp serve` starts its web workers), then
# works like one.
SERVER = f"""
import subprocess, sys
subprocess.Popen([sys.executable, "-c", {WORKER!r}, sys.argv[1], "child"])
exec({WORKER!r})
"""


def wait_for(path: Path) -> None:
    deadline = time.monotonic() + 30
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never came"
        time.sleep(0.01)


def test_the_servers_processes_count_as_web_and_the_meters_own_as_load_generator(
    tmp_path: Path,
) -> None:
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(tmp_path), "server"])
    try:
        wait_for(tmp_path / "ready-server")
        wait_for(tmp_path / "ready-child")
        meter = CpuMeter(server.pid)
        (tmp_path / "go").touch()
        end = time.process_time() + 0.2
        while time.process_time() < end:
            pass  # the load generator's own work
        wait_for(tmp_path / "done-server")
        wait_for(tmp_path / "done-child")
        per = meter.per_request(1000)
    finally:
        for process in psutil.Process(server.pid).children(recursive=True):
            process.kill()
        server.kill()
        server.wait()

    # µs per request: 2 x 0.25 s over 1,000 requests, and 0.2 s (plus the meter's own
    # sampling) over 1,000.
    assert 480 <= per["web"] <= 650
    assert 190 <= per["load generator"] <= 450
    assert per["total"] >= per["web"] + per["load generator"]


def test_the_measured_process_counts_under_the_name_it_is_given() -> None:
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        per = CpuMeter(worker.pid, served_by="fanout worker").per_request(1)
    finally:
        worker.kill()
        worker.wait()
    assert "fanout worker" in per
    assert "web" not in per


def test_steal_share_is_the_stolen_part_of_the_cpu_time_between_two_readings() -> None:
    before = {"user": 100, "system": 50, "idle": 800, "steal": 50}
    after = {"user": 400, "system": 100, "idle": 1300, "steal": 250}
    # 1,050 jiffies passed, 200 of them stolen.
    assert steal_share(before, after) == round(200 / 1050, 4)
    assert steal_share(before, before) is None
    assert steal_share({}, after) is None


def test_the_machine_reads_its_own_cpu_time_by_state() -> None:
    jiffies = cpu_jiffies()
    if not Path("/proc/stat").exists():
        assert jiffies == {}
        return
    assert {"user", "system", "idle", "steal"} <= set(jiffies)
    assert all(value >= 0 for value in jiffies.values())


def test_the_host_speed_sampler_reports_the_loops_speed_twice_a_second() -> None:
    host = HostSpeed()
    started = time.perf_counter()
    time.sleep(1.3)
    samples = host.stop()
    assert len(samples) >= 2
    assert all(started - 1 < moment < time.perf_counter() for moment, _ in samples)
    # ns per iteration of a pure-Python loop: a few to a few hundred on any machine.
    assert all(1 < ns < 1000 for _, ns in samples)


def test_the_p99_of_each_half_second_is_taken_by_when_requests_began() -> None:
    slow = [(10.1, 1.0)] * 99 + [(10.2, 80.0)]
    quick = [(10.6, 2.0)] * 100
    assert half_second_p99(slow + quick) == [(10.0, 80.0), (10.5, 2.0)]
