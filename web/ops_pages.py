"""The operations page (`/ops`), for admin users only — anyone else gets the same 404 as an
unknown address, so the page's existence is not revealed. It shows the streams table (htmx
polls it), a fanout-lag chart (inline SVG drawn here: no chart library, nothing from a CDN) and
the celebrity authors with their fanout mode."""

from __future__ import annotations

import contextlib
import statistics
from dataclasses import dataclass
from typing import Any

from litestar import Response, Router, get
from litestar.exceptions import NotFoundException

from realtime.streams_report import StreamState, StreamsUnavailable, read_streams
from storage.fanout_log import FanoutLog, FanoutRecord
from storage.operations import OperationsRepository
from storage.redis_store import REDIS_ERRORS
from web.ops_cli import human_age, human_bytes
from web.pages import UiDep, page_router
from web.services import Chirp

POLL_SECONDS = 5
LAG_THRESHOLD = 1000
CHART_POINTS = 120


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str


@dataclass(frozen=True)
class LagChart:
    width: int
    height: int
    bars: list[Bar]
    # Horizontal grid lines: (y position, label).
    ticks: list[tuple[float, str]]
    summary: str


def _nice_ceiling(value: float) -> float:
    for step in (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30, 60, 120, 300):
        if value <= step:
            return float(step)
    return value


def lag_chart(records: list[FanoutRecord], *, width: int = 560, height: int = 160) -> LagChart:
    """A bar per recent push-mode fanout, oldest on the left: its lag (created → written)."""
    pushes = [r for r in records if r.mode == "push"][-CHART_POINTS:]
    if not pushes:
        return LagChart(width, height, [], [], "No fanouts recorded yet.")
    lags = [r.lag_seconds for r in pushes]
    top = _nice_ceiling(max(lags))
    left, bottom = 44.0, 18.0
    plot_w, plot_h = width - left - 4, height - bottom - 6
    slot = plot_w / max(len(pushes), 20)
    bars = []
    for index, record in enumerate(pushes):
        bar_h = max(1.0, plot_h * min(record.lag_seconds, top) / top)
        bars.append(
            Bar(
                x=round(left + index * slot + slot * 0.15, 2),
                y=round(6 + plot_h - bar_h, 2),
                width=round(max(1.0, slot * 0.7), 2),
                height=round(bar_h, 2),
                label=f"{record.lag_seconds * 1000:.0f} ms to {record.followers} followers",
            )
        )
    ticks = [
        (round(6 + plot_h - plot_h * fraction, 2), f"{top * fraction * 1000:.0f} ms")
        for fraction in (0.0, 0.5, 1.0)
    ]
    p95 = sorted(lags)[max(0, int(len(lags) * 0.95) - 1)]
    summary = (
        f"Last {len(lags)} fanouts: median {statistics.median(lags) * 1000:.0f} ms,"
        f" p95 {p95 * 1000:.0f} ms, max {max(lags) * 1000:.0f} ms."
    )
    return LagChart(width, height, bars, ticks, summary)


def _admin(ui: Any) -> None:
    if ui.viewer is None or not ui.viewer.user.is_admin:
        raise NotFoundException("page not found")


async def _live_context(chirp: Chirp) -> dict[str, Any]:
    services = chirp.s
    streams: list[StreamState] = []
    streams_error = None
    try:
        streams = await read_streams(services.link, services.names)
    except StreamsUnavailable as error:
        streams_error = str(error)
    records: list[FanoutRecord] = []
    with contextlib.suppress(*REDIS_ERRORS):
        records = await FanoutLog(services.redis, services.keys).recent(CHART_POINTS * 2)
    return {
        "streams": streams,
        "streams_error": streams_error,
        "threshold": LAG_THRESHOLD,
        "chart": lag_chart(records),
        "poll": POLL_SECONDS,
        "human_age": human_age,
        "human_bytes": human_bytes,
    }


@get("/")
async def operations(ui: UiDep) -> Response[Any]:
    _admin(ui)
    chirp = ui.chirp
    settings = chirp.s.settings
    authors = await OperationsRepository(chirp.s.db).celebrity_authors(
        settings.celebrity_threshold, settings.celebrity_hysteresis
    )
    return ui.page(
        "ops.html",
        authors=authors,
        celebrity_threshold=settings.celebrity_threshold,
        push_below=int(settings.celebrity_threshold * (1 - settings.celebrity_hysteresis)),
        **await _live_context(chirp),
    )


@get("/live")
async def operations_live(ui: UiDep) -> Response[Any]:
    """The part of the page htmx refreshes."""
    _admin(ui)
    return ui.page("fragments/ops_live.html", **await _live_context(ui.chirp))


def ops_router() -> Router:
    return page_router("/ops", [operations, operations_live])
