"""The request id: taken from X-Request-ID (or made up), returned, written into the events a
request causes, and present in the web app's and the workers' JSON log lines."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest

from domain.events import TweetPosted, decode_event
from launcher.process import free_port
from storage.request_id import bound_request_id
from tests.support import Api, ServerProcess, eventually, one_event, unique_name
from web.logs import JsonFormatter
from web.settings import Settings


async def test_a_response_carries_the_request_id_the_client_sent(api: Api) -> None:
    response = await api.client.get("/health", headers={"X-Request-ID": "checkout-42.a:b"})
    assert response.headers["x-request-id"] == "checkout-42.a:b"


async def test_a_request_without_an_id_is_given_a_new_one_each_time(api: Api) -> None:
    first = (await api.client.get("/health")).headers["x-request-id"]
    second = (await api.client.get("/health")).headers["x-request-id"]
    assert first and second and first != second


@pytest.mark.parametrize("supplied", ["x" * 65, "two words", "<script>", ""])
async def test_an_unreasonable_request_id_is_replaced_by_a_new_one(api: Api, supplied: str) -> None:
    response = await api.client.get("/health", headers={"X-Request-ID": supplied})
    returned = response.headers["x-request-id"]
    assert returned != supplied
    assert 0 < len(returned) <= 64 and returned.isalnum()


async def test_error_responses_carry_the_request_id_too(api: Api) -> None:
    response = await api.client.post(
        "/api/v1/tweets", json={"text": "x"}, headers={"X-Request-ID": "denied-1"}
    )
    assert response.status_code == 401
    assert response.headers["x-request-id"] == "denied-1"


async def test_the_request_id_is_written_into_the_events_the_request_causes(
    api: Api, pg: asyncpg.Connection
) -> None:
    author = await api.sign_up()
    reader = await api.sign_up()
    response = await api.client.post(
        "/api/v1/tweets",
        json={"text": "traced"},
        headers={**author.auth, "X-Request-ID": "post-7f3a"},
    )
    assert response.status_code == 201
    posted = await one_event(pg, TweetPosted, tweet_id=int(response.json()["id"]))
    assert posted.request_id == "post-7f3a"
    follow = await api.client.post(
        f"/api/v1/users/{author.username}/follow",
        headers={**reader.auth, "X-Request-ID": "follow-1"},
    )
    assert follow.status_code == 200
    row = await pg.fetchrow(
        "SELECT payload FROM outbox WHERE kind = 'follow.created' ORDER BY id DESC LIMIT 1"
    )
    assert row is not None
    assert decode_event(bytes(row["payload"])).request_id == "follow-1"


def test_events_written_before_request_ids_existed_still_decode() -> None:
    old = msgspec.json.encode(
        {"type": "tweet.posted", "event_id": 1, "tweet_id": 2, "author_id": 3}
    )
    event = decode_event(old)
    assert isinstance(event, TweetPosted) and event.request_id is None


def test_a_json_log_line_names_the_current_request() -> None:
    record = logging.LogRecord("chirp.test", logging.INFO, __file__, 1, "hello", None, None)
    with bound_request_id("abc123"):
        inside = json.loads(JsonFormatter().format(record))
    outside = json.loads(JsonFormatter().format(record))
    assert inside["request_id"] == "abc123"
    assert "request_id" not in outside


def json_lines(process: ServerProcess) -> list[dict[str, Any]]:
    lines = []
    for line in process.stderr().splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    return lines


@pytest.mark.slow
async def test_the_request_id_follows_a_tweet_from_the_web_log_into_the_fanout_workers_log(
    settings: Settings,
) -> None:
    debug = settings.with_overrides(port=free_port(), log_level="DEBUG")
    web = ServerProcess(debug, "serve")
    worker = ServerProcess(debug, "worker", "fanout")
    request_id = f"trace-{unique_name('r')}"
    try:
        await web.wait_ready()
        async with httpx.AsyncClient(base_url=web.base_url) as client:
            tokens = []
            names = []
            for _ in range(2):
                name = unique_name()
                answer = await client.post(
                    "/api/v1/accounts", json={"username": name, "password": "correct horse 1"}
                )
                assert answer.status_code == 201, answer.text
                tokens.append(answer.json()["token"])
                names.append(name)
            author, reader = ({"Authorization": f"Bearer {t}"} for t in tokens)
            assert (
                await client.post(f"/api/v1/users/{names[0]}/follow", headers=reader)
            ).is_success
            posted = await client.post(
                "/api/v1/tweets",
                json={"text": "follow my request id"},
                headers={**author, "X-Request-ID": request_id},
            )
            assert posted.status_code == 201
            tweet_id = posted.json()["id"]

            async def in_timeline() -> bool:
                answer = await client.get("/api/v1/timeline", headers=reader)
                return tweet_id in [t["id"] for t in answer.json()["tweets"]]

            # The reader's timeline has it once the worker has fanned it out; the worker's
            # debug line about it is written right after.
            assert await eventually(in_timeline, timeout=30)
            await asyncio.sleep(0.5)
    finally:
        web.stop()
        worker.stop()
    web_lines = [line for line in json_lines(web) if line.get("request_id") == request_id]
    assert any(line["message"] == "request" and line["status"] == 201 for line in web_lines), (
        web.stderr()
    )
    worker_lines = [line for line in json_lines(worker) if line.get("request_id") == request_id]
    assert any(
        line["message"] == "tweet fanned out" and str(line["tweet_id"]) == tweet_id
        for line in worker_lines
    ), worker.stderr()
