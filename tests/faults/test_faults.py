"""The short fault suite: under a generated load, kill -9 each kind of Chirp process and
restart NATS, Redis and Typesense; afterwards nothing acknowledged is lost, doubled or
misplaced, and two processes of each kind shared the work. (`make faults` runs the long
version: tests/faults/__main__.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.harness import FAULT_KINDS, FaultPlan, run_fault_suite
from web.settings import Settings

pytestmark = pytest.mark.slow

SHORT = FaultPlan(
    duration=45.0,
    seed=7,
    users=30,
    celebrities=3,
    edges=2,
    think=1.0,
    fault_interval=4.0,
    max_downtime=2.0,
    converge_timeout=90.0,
)


async def test_under_kills_and_restarts_nothing_acknowledged_is_lost_doubled_or_misplaced(
    base_settings: Settings, database: str, tmp_path: Path
) -> None:
    # `database` only makes sure the session's Postgres is up: the run makes its own database.
    report = await run_fault_suite(base_settings, SHORT, tmp_path / "faults")
    table = report.table()
    print(table)
    assert set(report.faults_by_kind) == set(FAULT_KINDS), table
    assert report.acknowledged > 100 and report.deleted > 0, table
    assert report.converged, table
    figures = {
        "lost": report.lost,
        "duplicated": report.duplicated,
        "wrong timelines": report.wrong_timelines,
        "wrong counters": report.wrong_counters,
        "wrong search": report.wrong_search,
        "ledger mismatches": report.ledger_mismatches,
        "unexpected exits": len(report.unexpected_exits),
    }
    assert figures == dict.fromkeys(figures, 0), table
    # Two processes of each kind shared the work.
    for slot, counters in report.split.items():
        done = counters.get("requests" if slot.startswith("web") else "events", 0)
        assert done > 0, f"{slot} did nothing\n{table}"
