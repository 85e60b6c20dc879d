"""`/metrics`: Prometheus text with every name in the README's operator table, recorded by the
web app in-process and, through the multiprocess directory, by separate worker processes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import websockets
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from prometheus_client.parser import text_string_to_metric_families

from launcher.process import free_port
from tests.support import Api, FanoutRun, ServerProcess, eventually, running_app, unique_name
from web.settings import Settings

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample's value (0 when absent: a counter not yet incremented)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every sample of that name whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


async def test_metrics_are_served_in_the_prometheus_text_format(api: Api) -> None:
    samples = await scrape(api.client)
    names = {name for name, _ in samples}
    assert "chirp_outbox_backlog" in names
    assert value(samples, "chirp_outbox_backlog") >= 0


async def test_request_latency_is_labelled_by_route_template_not_by_raw_path(api: Api) -> None:
    first, second = await api.sign_up(), await api.sign_up()
    before = await scrape(api.client)
    for person in (first, second):
        await api.user(person.username)
    after = await scrape(api.client)
    route = {"route": "/api/v1/users/{username}", "method": "GET", "status": "200"}
    count = "chirp_http_request_duration_seconds_count"
    assert value(after, count, **route) - value(before, count, **route) == 2
    raw_paths = [
        labels
        for name, labels in after
        if name.startswith("chirp_http") and any(first.username in v for _, v in labels)
    ]
    assert raw_paths == []


async def test_timeline_assembly_time_and_cache_hits_are_recorded(api: Api) -> None:
    author = await api.sign_up()
    await author.post("cached soon")
    before = await scrape(api.client)
    await author.timeline()
    await author.timeline()  # the second read finds the tweet and its author cached
    after = await scrape(api.client)
    assembled = "chirp_timeline_assembly_seconds_count"
    assert total(after, assembled) - total(before, assembled) == 2
    hits = "chirp_cache_requests_total"
    assert value(after, hits, cache="tweet", result="hit") > value(
        before, hits, cache="tweet", result="hit"
    )
    assert value(after, hits, cache="author", result="hit") > value(
        before, hits, cache="author", result="hit"
    )


async def test_rate_limit_rejections_are_counted_by_limit(settings: Settings) -> None:
    async with running_app(settings.with_overrides(tweets_per_hour=1)) as api:
        author = await api.sign_up()
        before = await scrape(api.client)
        await author.post("the only one this hour")
        refused = await api.client.post(
            "/api/v1/tweets", json={"text": "one too many"}, headers=author.auth
        )
        assert refused.status_code == 429
        after = await scrape(api.client)
    name = "chirp_rate_limit_rejections_total"
    assert value(after, name, limit="tweets") - value(before, name, limit="tweets") == 1


async def test_fanout_lag_and_the_fanout_consumers_pending_counts_are_shown(
    api: Api, fanout_run: FanoutRun
) -> None:
    author, reader = await api.sign_up(), await api.sign_up()
    await reader.follow(author)
    before = await scrape(api.client)
    await author.post("how long did that take")
    assert await fanout_run.settled()
    after = await scrape(api.client)
    lag = "chirp_fanout_lag_seconds_count"
    assert value(after, lag) - value(before, lag) >= 1
    assert value(after, "chirp_consumer_pending", consumer="fanout") == 0
    assert value(after, "chirp_consumer_ack_pending", consumer="fanout") == 0
    assert ("chirp_dead_letters", frozenset({("consumer", "fanout")})) in after


async def test_consumer_pending_counts_are_read_from_jetstream_at_scrape_time(
    api: Api, fanout_run: FanoutRun
) -> None:
    """A durable that nobody consumes: the events waiting for it show as pending, though no
    process ever recorded anything about it."""
    services = fanout_run.services
    durable = f"probe-{unique_name('c')}"
    await services.link.js.add_consumer(
        services.names.stream,
        ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.NEW,
        ),
    )
    try:
        author = await api.sign_up()
        await author.post("waiting for a consumer that never comes")
        await author.post("and another")
        assert await fanout_run.settled()
        samples = await scrape(api.client)
        assert value(samples, "chirp_consumer_pending", consumer=durable) == 2
        assert value(samples, "chirp_consumer_oldest_unacked_seconds", consumer=durable) > 0
    finally:
        await services.link.js.delete_consumer(services.names.stream, durable)


# -- several processes: the multiprocess directory ------------------------------------------


@pytest.fixture
async def processes(settings: Settings, tmp_path: Path) -> AsyncIterator[ServerProcess]:
    """A web process and a fanout worker process sharing a metrics directory, as `chirp up`
    runs them."""
    shared = settings.with_overrides(port=free_port(), metrics_dir=str(tmp_path / "metrics"))
    web = ServerProcess(shared, "serve")
    worker = ServerProcess(shared, "worker", "fanout")
    try:
        await web.wait_ready()
        yield web
    finally:
        web.stop()
        worker.stop()


async def sign_up(client: httpx.AsyncClient) -> tuple[str, dict[str, str]]:
    name = unique_name()
    answer = await client.post(
        "/api/v1/accounts", json={"username": name, "password": "correct horse 1"}
    )
    assert answer.status_code == 201, answer.text
    return name, {"Authorization": f"Bearer {answer.json()['token']}"}


@pytest.mark.slow
async def test_the_web_apps_metrics_include_what_the_worker_process_recorded(
    processes: ServerProcess,
) -> None:
    web = processes
    async with httpx.AsyncClient(base_url=web.base_url) as client:
        author_name, author = await sign_up(client)
        _, reader = await sign_up(client)
        assert (await client.post(f"/api/v1/users/{author_name}/follow", headers=reader)).is_success
        token = reader["Authorization"].removeprefix("Bearer ")
        url = f"ws://{web.settings.host}:{web.settings.port}/api/v1/stream?access_token={token}"
        async with websockets.connect(url) as socket:

            async def socket_counted() -> bool:
                return value(await scrape(client), "chirp_websockets_open") == 1

            assert await eventually(socket_counted, timeout=10)
            posted = await client.post(
                "/api/v1/tweets", json={"text": "measured twice"}, headers=author
            )
            assert posted.status_code == 201
            frame = json.loads(await asyncio.wait_for(socket.recv(), 30))
            assert frame["tweet"]["id"] == posted.json()["id"]

            async def recorded() -> bool:
                samples = await scrape(client)
                # The fanout lag is only ever recorded by the worker process.
                return (
                    value(samples, "chirp_fanout_lag_seconds_count") >= 1
                    and value(samples, "chirp_post_to_push_seconds_count") >= 1
                )

            if not await eventually(recorded, timeout=10):
                text = (await client.get("/metrics")).text
                raise AssertionError(
                    "\n".join(line for line in text.splitlines() if "chirp_" in line)
                )

        async def socket_gone() -> bool:
            return value(await scrape(client), "chirp_websockets_open") == 0

        assert await eventually(socket_gone, timeout=10)
