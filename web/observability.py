"""What operators see of the web app: the request id and request metrics (an ASGI middleware),
and `/metrics`.

`/metrics` serves what every Chirp process recorded (storage/metrics.py explains the
multiprocess directory) followed by gauges read at scrape time from where the truth lives:
consumer pending counts from JetStream, the outbox backlog from Postgres."""

from __future__ import annotations

import asyncio
import logging
import time

from litestar import Response, get
from litestar.datastructures import State
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from realtime.streams_report import StreamsUnavailable, read_streams
from storage.metrics import HTTP_REQUEST_SECONDS, exposition, labelled
from storage.request_id import accept_request_id, bound_request_id
from web.container import Services

log = logging.getLogger("chirp.web")

_HEADER = b"x-request-id"


def request_observer(app: ASGIApp) -> ASGIApp:
    """Per request: the request id (the client's `X-Request-ID` when sane, else a new one)
    made current for every log line and event, returned in the response header; and the
    request's duration by route template (not the raw path: bounded label values)."""

    async def observe(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await app(scope, receive, send)
            return
        supplied = next(
            (value.decode("latin-1") for name, value in scope["headers"] if name == _HEADER),
            None,
        )
        request_id = accept_request_id(supplied)
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [
                    *(h for h in message.get("headers", ()) if h[0].lower() != _HEADER),
                    (_HEADER, request_id.encode()),
                ]
                message = {**message, "headers": headers}
            await send(message)

        started = time.perf_counter()
        with bound_request_id(request_id):
            try:
                await app(scope, receive, send_with_id)
            finally:
                if scope["type"] == ScopeType.HTTP:
                    route = str(scope.get("path_template") or "unmatched")
                    method = str(scope.get("method", ""))
                    seconds = time.perf_counter() - started
                    labelled(HTTP_REQUEST_SECONDS, route, method, str(status)).observe(seconds)
                    # The access log, structured (uvicorn's own is off); debug: it is a
                    # line per request.
                    log.debug(
                        "request",
                        extra={
                            "method": method,
                            "route": route,
                            "status": status,
                            "ms": round(seconds * 1000, 1),
                        },
                    )

    return observe


async def scraped_gauges(services: Services) -> list[Metric]:
    """Gauges of state kept elsewhere, read now. A dependency that does not answer leaves its
    gauges out (absent, rather than a stale or made-up value)."""
    families: list[Metric] = []
    try:
        backlog = await asyncio.wait_for(services.outbox.backlog(), 1.0)
    except Exception as error:
        log.debug("outbox backlog unavailable for metrics", extra={"error": repr(error)})
    else:
        outbox = GaugeMetricFamily(
            "chirp_outbox_backlog", "Outbox events committed but not yet published."
        )
        outbox.add_metric([], backlog)
        families.append(outbox)
    try:
        streams = await read_streams(services.link, services.names, timeout=1.5)
    except StreamsUnavailable as error:
        log.debug("streams unavailable for metrics", extra={"error": str(error)})
        return families
    helps = {
        "chirp_consumer_pending": "Stream messages not yet delivered to the consumer.",
        "chirp_consumer_ack_pending": "Messages delivered to the consumer, not yet acked.",
        "chirp_consumer_redelivered": "Messages redelivered to the consumer.",
        "chirp_consumer_oldest_unacked_seconds": (
            "Age of the consumer's oldest unacknowledged message (0 when none)."
        ),
        "chirp_dead_letters": "Messages on the dead-letter stream, by consumer.",
    }
    built = {
        name: GaugeMetricFamily(name, text, labels=["consumer"]) for name, text in helps.items()
    }
    for stream in streams:
        for consumer in stream.consumers:
            label = [consumer.name]
            built["chirp_consumer_pending"].add_metric(label, consumer.pending)
            built["chirp_consumer_ack_pending"].add_metric(label, consumer.ack_pending)
            built["chirp_consumer_redelivered"].add_metric(label, consumer.redelivered)
            built["chirp_consumer_oldest_unacked_seconds"].add_metric(
                label, consumer.oldest_unacked_age or 0.0
            )
            built["chirp_dead_letters"].add_metric(label, consumer.dead_letters)
    stream_messages = GaugeMetricFamily(
        "chirp_stream_messages", "Messages held by a JetStream stream.", labels=["stream"]
    )
    for stream in streams:
        stream_messages.add_metric([stream.name], stream.messages)
    return [*families, *built.values(), stream_messages]


@get("/metrics", tags=["operations"])
async def metrics(state: State) -> Response[bytes]:
    """Prometheus text format."""
    services: Services = state.services
    body = exposition(await scraped_gauges(services))
    return Response(body, media_type=CONTENT_TYPE_LATEST)
