"""`chirp search reindex` and `chirp search verify`: the operator's side of the search index
(the work itself is in storage/search_sync.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from storage.search_sync import Drift, ReindexReport
from web.container import provide_services
from web.settings import Settings


class ProgressBar:
    """A click progress bar whose length is known only once the reindex has counted."""

    def __init__(self, label: str, *, show: bool = True) -> None:
        self._label = label
        self._show = show
        self._bar: Any = None

    def start(self, total: int) -> None:
        if self._show:
            self._bar = click.progressbar(length=total, label=self._label, show_pos=True)
            self._bar.__enter__()

    def advance(self, count: int) -> None:
        if self._bar is not None:
            self._bar.update(count)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


async def reindex_search(
    settings: Settings, *, batch_size: int = 1000, show_progress: bool = True
) -> ReindexReport:
    bar = ProgressBar("indexing tweets", show=show_progress)
    async with provide_services(settings, process_name="chirp-cli") as services:
        sync = services.search_sync
        sync.batch_size = batch_size
        try:
            return await sync.reindex(total=bar.start, progress=bar.advance)
        finally:
            bar.finish()


def _examples(ids: list[int]) -> str:
    if not ids:
        return "0"
    shown = ", ".join(str(i) for i in ids[:5])
    return f"{len(ids)}  (e.g. {shown})"


def describe(drift: Drift, alias: str) -> list[str]:
    if drift.collection is None:
        return [
            f"postgres: {drift.postgres_count} live tweets",
            f"index:    no alias {alias!r}: nothing is indexed",
        ]
    return [
        f"postgres: {drift.postgres_count} live tweets",
        f"index:    {drift.index_count} documents in {drift.collection} (alias {alias})",
        f"checked:  {drift.sampled} sampled"
        + ("; every id compared" if drift.full else "; ids compared only in the samples"),
        f"schema:   {'; '.join(drift.schema) if drift.schema else 'as the code defines it'}",
        f"missing:  {_examples(drift.missing)}",
        f"stale:    {_examples(drift.stale)}",
        f"extra:    {_examples(drift.extra)}",
    ]


async def verify_search(
    settings: Settings,
    *,
    sample: int,
    full: bool,
    repair: bool,
    echo: Callable[[str], None],
) -> bool:
    """Prints what drifted (and repairs it when asked); True when the index ends up clean."""
    async with provide_services(settings, process_name="chirp-cli") as services:
        sync = services.search_sync
        drift = await sync.verify(sample=sample, full=full)
        for line in describe(drift, settings.search_collection):
            echo(line)
        if drift.clean:
            echo("result:   the index matches Postgres")
            return True
        if not repair:
            echo("result:   drift found; `chirp search verify --repair` fixes it")
            return False
        fixed = await sync.repair(drift)
        echo(f"repair:   rewrote or removed {fixed} documents")
        after = await sync.verify(sample=sample, full=True)
        if after.clean:
            echo("result:   the index matches Postgres")
            return True
        for line in describe(after, settings.search_collection):
            echo(line)
        echo("result:   drift remains (writes during the check?); run it again")
        return False
