"""`python -m tests.faults`: the long fault-suite run, standalone (`make faults`).

It needs only a Postgres (the configured one, or an embedded one started as `make run` does);
the run makes its own database there and starts private NATS, Redis and Typesense instances
on free ports under a temporary directory, kept when something was found (or with --keep).
Exits 1 unless every invariant held."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path

from launcher.services import MissingService, ensure_services
from tests.faults.harness import FaultPlan, run_fault_suite
from web.settings import Settings


def log(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)


def parse(argv: list[str] | None) -> tuple[FaultPlan, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python -m tests.faults",
        description="Chirp under load while processes are killed and services restarted; "
        "then checks that nothing acknowledged was lost, doubled or misplaced.",
    )
    defaults = FaultPlan()
    for f in fields(FaultPlan):
        parser.add_argument(
            f"--{f.name.replace('_', '-')}",
            type=type(getattr(defaults, f.name)),
            default=getattr(defaults, f.name),
            metavar=f.name.upper(),
            help=f"(default {getattr(defaults, f.name)})",
        )
    parser.add_argument("--workdir", type=Path, help="where services keep data and logs")
    parser.add_argument("--keep", action="store_true", help="keep the workdir afterwards")
    parser.add_argument(
        "--hold",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="when something is found, keep everything up this long to look at it",
    )
    args = parser.parse_args(argv)
    plan = FaultPlan(**{f.name: getattr(args, f.name) for f in fields(FaultPlan)})
    return plan, args


def main(argv: list[str] | None = None) -> int:
    plan, args = parse(argv)
    settings = Settings.from_env()
    urls = settings.service_urls()
    try:
        stack = ensure_services(urls, Path(settings.var_dir), log=log, only=("postgres",))
    except MissingService as missing:
        print(missing, file=sys.stderr)
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="chirp-faults-"))
    try:
        report = asyncio.run(run_fault_suite(settings, plan, workdir, log=log, hold=args.hold))
    finally:
        stack.stop()
    print("\n" + report.table(), flush=True)
    if report.clean and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if report.clean else 1


if __name__ == "__main__":
    sys.exit(main())
