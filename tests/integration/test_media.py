"""Image media through the API: one contract suite, run against both media stores (the local
store served by the app, and S3 against a server these tests start), plus what only one of
them has."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from domain.media import MAX_MEDIA_BYTES
from domain.ports import MediaStore
from storage.media import LocalMediaStore
from tests.s3_server import S3Server, running_s3_server
from tests.support import Account, Api, running_app
from web.keys import secret_key
from web.media_service import collect_abandoned_uploads
from web.media_setup import build_media_store
from web.settings import Settings

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01" + b"\x00" * 500
GIF = b"GIF89a\x01\x00\x01\x00\x80\x00\x00" + b"\x00" * 100
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x00" * 100
NOT_AN_IMAGE = b"<!DOCTYPE html><script>alert(1)</script>" + b" " * 200


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    with running_s3_server() as server:
        yield server


@pytest.fixture(params=["local", "s3"])
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def media_settings(
    request: pytest.FixtureRequest,
    settings: Settings,
    store_kind: str,
    session_tag: str,
    tmp_path: Path,
) -> Settings:
    if store_kind == "local":
        return settings.with_overrides(media_store="local", media_dir=str(tmp_path / "media"))
    server: S3Server = request.getfixturevalue("s3_server")
    return settings.with_overrides(
        media_store="s3",
        s3_endpoint=server.endpoint,
        s3_access_key=server.access_key,
        s3_secret_key=server.secret_key,
        s3_bucket=f"chirp-test-{session_tag}",
    )


@pytest.fixture
async def media_api(media_settings: Settings) -> AsyncIterator[Api]:
    async with running_app(media_settings) as api:
        yield api


@pytest.fixture
def store(media_settings: Settings) -> MediaStore:
    """A second handle on the app's store, as the tests' window onto the objects."""
    return build_media_store(media_settings)


@pytest.fixture
async def db(media_settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(media_settings.database_url)
    try:
        yield connection
    finally:
        await connection.close()


# -- helpers -------------------------------------------------------------------------------


async def send(api: Api, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """Relative URLs are the app's own (the local store); absolute ones go to the store."""
    if url.startswith("/"):
        return await api.client.request(method, url, **kwargs)
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.request(method, url, **kwargs)


async def create_upload(
    account: Account,
    content_type: str = "image/png",
    size: int = len(PNG),
    alt: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"content_type": content_type, "size": size}
    if alt is not None:
        body["alt"] = alt
    response = await account.api.client.post("/api/v1/media", json=body, headers=account.auth)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def put_bytes(api: Api, created: dict[str, Any], data: bytes) -> httpx.Response:
    upload = created["upload"]
    assert upload["method"] == "PUT"
    return await send(api, "PUT", upload["url"], content=data, headers=upload["headers"])


async def upload(
    account: Account, data: bytes = PNG, content_type: str = "image/png", alt: str | None = None
) -> str:
    created = await create_upload(account, content_type, len(data), alt)
    response = await put_bytes(account.api, created, data)
    assert response.status_code in (200, 201, 204), response.text
    media_id: str = created["media_id"]
    return media_id


async def post_with_media(account: Account, media_ids: list[str]) -> httpx.Response:
    return await account.api.client.post(
        "/api/v1/tweets",
        json={"text": "look at this", "media_ids": media_ids},
        headers=account.auth,
    )


def error_detail(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status_code"] == status
    detail: str = body["detail"]
    return detail


async def footprint(db: asyncpg.Connection, *accounts: Account) -> list[tuple[Any, ...]]:
    """Everything a failed post could have changed: the authors' tweets and their uploads."""
    ids = [int(a.id) for a in accounts]
    tweets = await db.fetch(
        "SELECT id FROM tweets WHERE author_id = ANY($1::bigint[]) ORDER BY id", ids
    )
    media = await db.fetch(
        "SELECT id, status, tweet_id FROM media WHERE owner_id = ANY($1::bigint[]) ORDER BY id",
        ids,
    )
    counts = await db.fetch(
        "SELECT id, tweets_count FROM users WHERE id = ANY($1::bigint[]) ORDER BY id", ids
    )
    return [tuple(r) for r in [*tweets, *media, *counts]]


async def media_rows(db: asyncpg.Connection, account: Account) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM media WHERE owner_id = $1", int(account.id)
    )
    return count


# -- the contract, against both stores -----------------------------------------------------


async def test_an_uploaded_image_is_posted_and_readers_can_fetch_it(
    media_api: Api, store: MediaStore
) -> None:
    alice = await media_api.sign_up()
    created = await create_upload(alice, alt="a gradient")
    assert created["upload"]["headers"]["Content-Type"] == "image/png"
    assert created["expires_at"].endswith("Z")
    assert (await put_bytes(media_api, created, PNG)).status_code in (200, 201, 204)

    response = await post_with_media(alice, [created["media_id"]])
    assert response.status_code == 201, response.text
    tweet = response.json()
    [media] = tweet["media"]
    assert media["id"] == created["media_id"]
    assert media["content_type"] == "image/png"
    assert media["alt"] == "a gradient"

    # Any reader, signed in or not, can fetch it; the URL is stable so browsers can cache it.
    image = await send(media_api, "GET", media["url"])
    assert image.status_code == 200
    assert image.content == PNG
    assert image.headers["content-type"].startswith("image/png")
    assert "max-age" in image.headers.get("cache-control", "")
    again = await media_api.client.get(f"/api/v1/tweets/{tweet['id']}")
    assert again.json()["media"] == tweet["media"]
    assert (await alice.timeline())["tweets"][0]["media"] == tweet["media"]


@pytest.mark.parametrize(
    ("data", "content_type"),
    [(JPEG, "image/jpeg"), (PNG, "image/png"), (GIF, "image/gif"), (WEBP, "image/webp")],
)
async def test_each_allowed_image_type_can_be_attached(
    media_api: Api, data: bytes, content_type: str
) -> None:
    alice = await media_api.sign_up()
    media_id = await upload(alice, data, content_type)
    response = await post_with_media(alice, [media_id])
    assert response.status_code == 201, response.text
    assert response.json()["media"][0]["content_type"] == content_type


async def test_four_images_keep_the_order_they_were_given_in(media_api: Api) -> None:
    alice = await media_api.sign_up()
    ids = [await upload(alice, alt=f"image {n}") for n in range(4)]
    response = await post_with_media(alice, ids[::-1])
    assert response.status_code == 201, response.text
    media = response.json()["media"]
    assert [m["id"] for m in media] == ids[::-1]
    assert [m["alt"] for m in media] == [f"image {n}" for n in range(3, -1, -1)]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"content_type": "image/svg+xml", "size": 100}, "content_type"),
        ({"content_type": "text/html", "size": 100}, "content_type"),
        ({"content_type": "image/png", "size": MAX_MEDIA_BYTES + 1}, "size"),
        ({"content_type": "image/png", "size": 0}, "size"),
        ({"content_type": "image/png", "size": 10, "alt": "x" * 1001}, "alt"),
    ],
)
async def test_an_upload_of_a_wrong_type_or_size_is_refused_and_nothing_recorded(
    media_api: Api, db: asyncpg.Connection, body: dict[str, Any], fragment: str
) -> None:
    alice = await media_api.sign_up()
    response = await media_api.client.post("/api/v1/media", json=body, headers=alice.auth)
    assert fragment in error_detail(response, 422)
    assert await media_rows(db, alice) == 0


async def test_asking_for_an_upload_needs_a_signed_in_user(media_api: Api) -> None:
    response = await media_api.client.post(
        "/api/v1/media", json={"content_type": "image/png", "size": 10}
    )
    error_detail(response, 401)


async def test_another_users_media_cannot_be_attached(
    media_api: Api, db: asyncpg.Connection
) -> None:
    alice, bob = await media_api.sign_up(), await media_api.sign_up()
    bobs = await upload(bob)
    before = await footprint(db, alice, bob)
    assert "not yours" in error_detail(await post_with_media(alice, [bobs]), 422)
    assert await footprint(db, alice, bob) == before


async def test_media_never_uploaded_cannot_be_attached(
    media_api: Api, db: asyncpg.Connection
) -> None:
    alice = await media_api.sign_up()
    created = await create_upload(alice)
    before = await footprint(db, alice)
    assert "not uploaded" in error_detail(await post_with_media(alice, [created["media_id"]]), 422)
    assert await footprint(db, alice) == before


async def test_bytes_that_are_not_the_declared_image_type_cannot_be_attached(
    media_api: Api, db: asyncpg.Connection
) -> None:
    alice = await media_api.sign_up()
    disguised = await upload(alice, NOT_AN_IMAGE, "image/png")
    other_type = await upload(alice, JPEG, "image/png")
    before = await footprint(db, alice)
    for media_id in (disguised, other_type):
        detail = error_detail(await post_with_media(alice, [media_id]), 422)
        assert "not a image/png image" in detail
    assert await footprint(db, alice) == before


async def test_bytes_of_another_size_than_declared_are_refused_by_the_store_or_the_post(
    media_api: Api, db: asyncpg.Connection
) -> None:
    alice = await media_api.sign_up()
    bigger = await create_upload(alice, size=len(PNG))
    smaller = await create_upload(alice, size=len(PNG))
    # S3 takes any size on a presigned PUT; the local store refuses at once. Either way
    # the upload cannot be attached.
    await put_bytes(media_api, bigger, PNG + b"\x00" * 10)
    await put_bytes(media_api, smaller, PNG[:-10])
    before = await footprint(db, alice)
    for created in (bigger, smaller):
        error_detail(await post_with_media(alice, [created["media_id"]]), 422)
    assert await footprint(db, alice) == before


async def test_an_expired_upload_url_is_refused_and_the_media_cannot_be_attached(
    media_api: Api,
    db: asyncpg.Connection,
    store: MediaStore,
    store_kind: str,
    request: pytest.FixtureRequest,
) -> None:
    if store_kind == "s3" and not request.getfixturevalue("s3_server").enforces_expiry:
        pytest.skip("moto accepts expired presigned URLs; MinIO (not on PATH) would refuse")
    alice = await media_api.sign_up()
    created = await create_upload(alice)
    key = await db.fetchval("SELECT key FROM media WHERE id = $1", int(created["media_id"]))
    url, headers = store.presign_put(key, "image/png", len(PNG), timedelta(seconds=1))
    await asyncio.sleep(2.1)
    response = await send(media_api, "PUT", url, content=PNG, headers=headers)
    assert 400 <= response.status_code < 500, response.text
    before = await footprint(db, alice)
    assert "not uploaded" in error_detail(await post_with_media(alice, [created["media_id"]]), 422)
    assert await footprint(db, alice) == before


async def test_more_than_four_media_are_refused_and_none_is_attached(
    media_api: Api, db: asyncpg.Connection
) -> None:
    alice = await media_api.sign_up()
    ids = [await upload(alice) for _ in range(5)]
    before = await footprint(db, alice)
    assert "at most 4" in error_detail(await post_with_media(alice, ids), 422)
    assert await footprint(db, alice) == before
    assert (await post_with_media(alice, ids[:4])).status_code == 201


@pytest.mark.parametrize("media_id", ["123", "abc", "-1", ""])
async def test_an_unknown_media_id_is_refused(
    media_api: Api, db: asyncpg.Connection, media_id: str
) -> None:
    alice = await media_api.sign_up()
    before = await footprint(db, alice)
    error_detail(await post_with_media(alice, [media_id]), 422)
    assert await footprint(db, alice) == before


async def test_one_bad_media_fails_the_post_and_leaves_the_good_ones_attachable(
    media_api: Api, db: asyncpg.Connection
) -> None:
    alice = await media_api.sign_up()
    good = await upload(alice)
    missing = (await create_upload(alice))["media_id"]
    before = await footprint(db, alice)
    error_detail(await post_with_media(alice, [good, missing]), 422)
    assert await footprint(db, alice) == before
    assert (await post_with_media(alice, [good])).status_code == 201


async def test_media_attached_to_one_tweet_cannot_be_attached_to_another(
    media_api: Api, db: asyncpg.Connection
) -> None:
    alice = await media_api.sign_up()
    media_id = await upload(alice)
    assert (await post_with_media(alice, [media_id])).status_code == 201
    before = await footprint(db, alice)
    assert "attached" in error_detail(await post_with_media(alice, [media_id]), 422)
    assert await footprint(db, alice) == before


async def test_two_posts_racing_for_one_upload_attach_it_exactly_once(
    media_api: Api, db: asyncpg.Connection
) -> None:
    alice = await media_api.sign_up()
    media_id = await upload(alice)
    responses = await asyncio.gather(*(post_with_media(alice, [media_id]) for _ in range(4)))
    assert sorted(r.status_code for r in responses) == [201, 422, 422, 422]
    [winner] = [r.json() for r in responses if r.status_code == 201]
    row = await db.fetchrow("SELECT status, tweet_id FROM media WHERE id = $1", int(media_id))
    assert (row["status"], str(row["tweet_id"])) == ("attached", winner["id"])
    assert await db.fetchval("SELECT tweets_count FROM users WHERE id = $1", int(alice.id)) == 1


async def test_the_same_media_twice_in_one_tweet_is_refused(
    media_api: Api, db: asyncpg.Connection
) -> None:
    alice = await media_api.sign_up()
    media_id = await upload(alice)
    before = await footprint(db, alice)
    error_detail(await post_with_media(alice, [media_id, media_id]), 422)
    assert await footprint(db, alice) == before


async def test_a_retry_with_the_idempotency_key_returns_the_tweet_with_its_media(
    media_api: Api,
) -> None:
    alice = await media_api.sign_up()
    media_id = await upload(alice)
    body = {"text": "once", "media_ids": [media_id]}
    headers = {**alice.auth, "Idempotency-Key": "media-retry"}
    first = await media_api.client.post("/api/v1/tweets", json=body, headers=headers)
    second = await media_api.client.post("/api/v1/tweets", json=body, headers=headers)
    assert first.status_code == second.status_code == 201, second.text
    assert first.json()["id"] == second.json()["id"]
    assert first.json()["media"] == second.json()["media"]


async def test_uploads_never_attached_are_collected_after_a_day(
    media_api: Api, db: asyncpg.Connection, store: MediaStore, media_settings: Settings
) -> None:
    alice = await media_api.sign_up()
    old_uploaded, old_missing, fresh, attached = (
        await upload(alice),
        (await create_upload(alice))["media_id"],
        await upload(alice),
        await upload(alice),
    )
    assert (await post_with_media(alice, [attached])).status_code == 201
    await db.execute(
        "UPDATE media SET created_at = now() - interval '25 hours' WHERE id = ANY($1::bigint[])",
        [int(old_uploaded), int(old_missing), int(attached)],
    )
    keys = {
        r["id"]: r["key"]
        for r in await db.fetch("SELECT id, key FROM media WHERE owner_id = $1", int(alice.id))
    }

    assert await collect_abandoned_uploads(media_settings) >= 2

    left = {
        r["id"] for r in await db.fetch("SELECT id FROM media WHERE owner_id = $1", int(alice.id))
    }
    assert left == {int(fresh), int(attached)}
    assert await store.head(keys[int(old_uploaded)]) is None
    assert await store.head(keys[int(fresh)]) == len(PNG)
    assert await store.head(keys[int(attached)]) == len(PNG)


async def test_ready_reports_the_media_store(media_api: Api) -> None:
    response = await media_api.client.get("/ready")
    assert response.status_code == 200
    assert response.json()["media"] == "ok"


# -- what is particular to one store or one setting ----------------------------------------


async def test_ready_says_media_down_without_failing_when_the_store_is_unreachable(
    settings: Settings,
) -> None:
    unreachable = settings.with_overrides(media_store="s3", s3_endpoint="127.0.0.1:9")
    async with running_app(unreachable) as api:
        response = await api.client.get("/ready")
    assert response.status_code == 200
    assert response.json()["media"] == "down"


async def test_a_public_base_url_gives_readers_plain_urls(
    settings: Settings, tmp_path: Path
) -> None:
    public = settings.with_overrides(
        media_dir=str(tmp_path), media_public_base_url="https://cdn.example/media/"
    )
    async with running_app(public) as api:
        alice = await api.sign_up()
        response = await post_with_media(alice, [await upload(alice)])
    url = response.json()["media"][0]["url"]
    assert url.startswith("https://cdn.example/media/")
    assert url.endswith(".png") and "?" not in url


@pytest.fixture
async def local_api(settings: Settings, tmp_path: Path) -> AsyncIterator[tuple[Api, Path]]:
    local = settings.with_overrides(media_store="local", media_dir=str(tmp_path / "media"))
    async with running_app(local) as api:
        yield api, tmp_path / "media"


async def test_the_local_store_takes_exactly_the_declared_type_and_size_once(
    local_api: tuple[Api, Path],
) -> None:
    api, directory = local_api
    alice = await api.sign_up()
    created = await create_upload(alice)
    url = created["upload"]["url"]
    wrong_type = await api.client.put(url, content=PNG, headers={"Content-Type": "image/gif"})
    assert "Content-Type" in error_detail(wrong_type, 400)
    headers = created["upload"]["headers"]
    assert (await api.client.put(url, content=PNG + b"x", headers=headers)).status_code == 400
    assert (await api.client.put(url, content=PNG[:-1], headers=headers)).status_code == 400

    assert os.listdir(directory) == []

    # A browser sends its session cookie along; the signed URL needs no CSRF token for it.
    with_cookie = {**headers, "Cookie": "chirp_session=some-session"}
    assert (await api.client.put(url, content=PNG, headers=with_cookie)).status_code == 200
    assert (await api.client.put(url, content=PNG, headers=headers)).status_code == 409
    [name] = os.listdir(directory)
    assert (directory / name).read_bytes() == PNG


async def test_the_local_store_counts_a_streamed_body_and_keeps_nothing_of_a_wrong_one(
    tmp_path: Path,
) -> None:
    store = LocalMediaStore(tmp_path, b"secret")
    key = "0123456789abcdef" * 2 + ".png"

    async def chunks(data: bytes) -> AsyncIterator[bytes]:
        for start in range(0, len(data), 100):
            yield data[start : start + 100]

    # A body sent without a Content-Length is counted as it streams in.
    assert not await store.write(key, chunks(PNG + b"extra"), len(PNG))
    assert not await store.write(key, chunks(PNG[:-1]), len(PNG))
    assert os.listdir(tmp_path) == []
    assert await store.write(key, chunks(PNG), len(PNG))
    assert os.listdir(tmp_path) == [key]
    assert await store.read_range(key, 0, 8) == PNG[:8]


async def test_the_local_store_refuses_tampered_urls_and_foreign_paths(
    local_api: tuple[Api, Path],
) -> None:
    api, _ = local_api
    alice = await api.sign_up()
    created = await create_upload(alice)
    url: str = created["upload"]["url"]
    headers = created["upload"]["headers"]
    tampered = url.replace(f"size={len(PNG)}", f"size={len(PNG) + 1}")
    response = await api.client.put(tampered, content=PNG + b"x", headers=headers)
    error_detail(response, 403)
    unsigned = url.split("?")[0]
    error_detail(await api.client.put(unsigned, content=PNG, headers=headers), 403)
    for path in [
        "/media/upload/..%2F..%2Fvar%2Fsecret_key",
        "/media/files/..%2Fsecret_key?expires=9999999999&sig=x",
        "/media/files/%2Fetc%2Fpasswd?expires=9999999999&sig=x",
        "/media/files/x.png?expires=9999999999&sig=x",
    ]:
        method = "PUT" if "upload" in path else "GET"
        response = await api.client.request(method, path, content=b"x", headers=headers)
        assert response.status_code in (400, 403, 404), (path, response.status_code)


async def test_the_local_store_refuses_expired_and_forged_read_urls(
    local_api: tuple[Api, Path], settings: Settings
) -> None:
    api, directory = local_api
    alice = await api.sign_up()
    tweet = (await post_with_media(alice, [await upload(alice)])).json()
    url: str = tweet["media"][0]["url"]
    assert (await api.client.get(url)).status_code == 200
    key = url.split("?")[0].rsplit("/", 1)[1]
    store = LocalMediaStore(directory, secret_key(settings))
    three_days_ago = datetime.now(UTC) - timedelta(days=3)
    expired = store.presign_get(key, timedelta(days=1), issued_at=three_days_ago)
    error_detail(await api.client.get(expired), 403)
    forged = LocalMediaStore(directory, b"another secret").presign_get(
        key, timedelta(days=1), issued_at=datetime.now(UTC)
    )
    error_detail(await api.client.get(forged), 403)


async def test_the_local_stores_urls_are_not_served_when_s3_is_configured(
    settings: Settings, s3_server: S3Server
) -> None:
    s3 = settings.with_overrides(
        media_store="s3",
        s3_endpoint=s3_server.endpoint,
        s3_access_key=s3_server.access_key,
        s3_secret_key=s3_server.secret_key,
    )
    async with running_app(s3) as api:
        response = await api.client.get("/media/files/" + "0" * 32 + ".png?expires=1&sig=x")
    assert response.status_code == 404


def test_without_a_configured_secret_a_key_is_generated_once_and_kept_private(
    settings: Settings, tmp_path: Path
) -> None:
    local = settings.with_overrides(secret_key="", var_dir=tmp_path / "var")
    first = secret_key(local)
    assert len(first) >= 64
    assert secret_key(local) == first
    mode = stat.S_IMODE((tmp_path / "var" / "secret_key").stat().st_mode)
    assert mode == 0o600
    assert secret_key(settings.with_overrides(secret_key="configured")) == b"configured"
