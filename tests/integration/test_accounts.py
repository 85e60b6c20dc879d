"""Accounts and sessions (API.md "Accounts and sessions") and the error conventions every
endpoint shares: the error body, malformed and oversized bodies, wrong JSON types."""

from __future__ import annotations

import re

import pytest

from tests.support import (
    ID_RE,
    TIME_RE,
    Api,
    assert_error,
    out_of_window_edge,
    running_app,
    unique_name,
)
from web.settings import Settings

PASSWORD = "correct horse 1"


async def test_sign_up_answers_201_with_the_user_and_a_working_token(api: Api) -> None:
    name = unique_name()
    response = await api.client.post(
        "/api/v1/accounts", json={"username": name, "password": PASSWORD, "display_name": "Al"}
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"user", "token"}
    user = body["user"]
    assert ID_RE.match(user["id"]) and isinstance(user["id"], str)
    assert TIME_RE.match(user["created_at"])
    assert user["username"] == name
    assert user["display_name"] == "Al"
    assert (user["followers_count"], user["following_count"], user["tweets_count"]) == (0, 0, 0)
    assert user["following"] is False
    me = await api.client.get("/api/v1/me", headers={"Authorization": f"Bearer {body['token']}"})
    assert me.status_code == 200
    assert me.json()["id"] == user["id"]


async def test_display_name_defaults_to_the_username(api: Api) -> None:
    alice = await api.sign_up()
    assert (await api.user(alice.username))["display_name"] == alice.username


async def test_username_is_taken_case_insensitively(api: Api) -> None:
    name = "Ab" + unique_name()[:11]
    await api.sign_up(name)
    for taken in (name, name.lower(), name.upper()):
        response = await api.client.post(
            "/api/v1/accounts", json={"username": taken, "password": PASSWORD}
        )
        assert_error(response, 409)


@pytest.mark.parametrize(
    "username",
    ["ab", "a" * 16, "bad-name", "bad name", "héllo", "dot.name", "", "name\n"],
    ids=["too-short", "too-long", "dash", "space", "non-ascii", "dot", "empty", "newline"],
)
async def test_invalid_usernames_are_refused_with_422(api: Api, username: str) -> None:
    response = await api.client.post(
        "/api/v1/accounts", json={"username": username, "password": PASSWORD}
    )
    assert_error(response, 422)


async def test_usernames_of_3_and_15_letters_digits_and_underscores_are_accepted(
    api: Api,
) -> None:
    tag = unique_name("")
    for name in (f"_{tag[:2]}", f"A_9{tag}"[:15]):
        await api.sign_up(name)


@pytest.mark.parametrize("length", [0, 7, 129], ids=["empty", "7", "129"])
async def test_passwords_under_8_or_over_128_characters_are_refused_with_422(
    api: Api, length: int
) -> None:
    response = await api.client.post(
        "/api/v1/accounts", json={"username": unique_name(), "password": "p" * length}
    )
    assert_error(response, 422)


async def test_a_common_password_is_refused_with_422_and_no_account_is_made(api: Api) -> None:
    name = unique_name()
    response = await api.client.post(
        "/api/v1/accounts", json={"username": name, "password": "Password123"}
    )
    assert assert_error(response, 422) == "password is too common"
    assert (await api.client.get(f"/api/v1/users/{name}")).status_code == 404


async def test_passwords_of_8_and_128_characters_are_accepted(api: Api) -> None:
    for length in (8, 128):
        account = await api.sign_up(password="p" * length)
        response = await api.client.post(
            "/api/v1/sessions", json={"username": account.username, "password": "p" * length}
        )
        assert response.status_code == 200, response.text


async def test_sign_in_answers_200_with_the_user_and_a_new_token(api: Api) -> None:
    alice = await api.sign_up()
    response = await api.client.post(
        "/api/v1/sessions", json={"username": alice.username, "password": PASSWORD}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["user"]["id"] == alice.id
    assert body["token"] != alice.token
    me = await api.client.get("/api/v1/me", headers={"Authorization": f"Bearer {body['token']}"})
    assert me.json()["username"] == alice.username


async def test_wrong_password_and_unknown_user_get_401_with_the_same_detail(api: Api) -> None:
    alice = await api.sign_up()
    wrong = await api.client.post(
        "/api/v1/sessions", json={"username": alice.username, "password": "not the password"}
    )
    unknown = await api.client.post(
        "/api/v1/sessions", json={"username": unique_name(), "password": PASSWORD}
    )
    assert assert_error(wrong, 401) == assert_error(unknown, 401)
    assert "token" not in wrong.json()


async def test_sign_in_attempts_are_limited_per_username_with_429_and_retry_after(
    settings: Settings,
) -> None:
    # Its own Redis prefix: the per-address counter must not include other tests' sign-ins.
    limited = settings.with_overrides(
        sign_in_attempts_per_minute=3, redis_prefix=f"{settings.redis_prefix}signin:"
    )
    async with running_app(limited) as api:
        alice, bob = await api.sign_up(), await api.sign_up()
        await out_of_window_edge(60)
        for _ in range(3):
            response = await api.client.post(
                "/api/v1/sessions", json={"username": alice.username, "password": "wrong pass"}
            )
            assert_error(response, 401)
        # Over the limit even with the right password, and whatever the case of the name.
        for username in (alice.username, alice.username.upper()):
            response = await api.client.post(
                "/api/v1/sessions", json={"username": username, "password": PASSWORD}
            )
            assert_error(response, 429)
            assert 1 <= int(response.headers["Retry-After"]) <= 60
        # Another username is not affected.
        response = await api.client.post(
            "/api/v1/sessions", json={"username": bob.username, "password": PASSWORD}
        )
        assert response.status_code == 200, response.text


async def test_sign_out_answers_204_and_the_token_stops_working(api: Api) -> None:
    alice = await api.sign_up()
    second = await api.client.post(
        "/api/v1/sessions", json={"username": alice.username, "password": PASSWORD}
    )
    other_token = second.json()["token"]
    response = await api.client.delete("/api/v1/sessions/current", headers=alice.auth)
    assert response.status_code == 204
    assert response.content == b""
    assert_error(await api.client.get("/api/v1/me", headers=alice.auth), 401)
    assert_error(await api.client.get("/api/v1/timeline", headers=alice.auth), 401)
    assert_error(await api.client.delete("/api/v1/sessions/current", headers=alice.auth), 401)
    # Only that session ended.
    me = await api.client.get("/api/v1/me", headers={"Authorization": f"Bearer {other_token}"})
    assert me.status_code == 200


async def test_me_returns_the_caller_with_current_counts(api: Api) -> None:
    alice, bob = await api.sign_up(), await api.sign_up()
    await alice.post("one")
    await alice.follow(bob)
    await bob.follow(alice)
    response = await api.client.get("/api/v1/me", headers=alice.auth)
    assert response.status_code == 200
    me = response.json()
    assert me["id"] == alice.id and me["username"] == alice.username
    assert (me["followers_count"], me["following_count"], me["tweets_count"]) == (1, 1, 1)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer not-a-real-token"},
        {"Authorization": "Bearer " + "x" * 500},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "garbage"},
    ],
    ids=["missing", "empty-bearer", "unknown", "huge", "basic", "no-scheme"],
)
async def test_missing_or_garbage_credentials_get_401(api: Api, headers: dict[str, str]) -> None:
    for method, path in [
        ("GET", "/api/v1/me"),
        ("GET", "/api/v1/timeline"),
        ("POST", "/api/v1/tweets"),
        ("DELETE", "/api/v1/sessions/current"),
    ]:
        response = await api.client.request(
            method, path, headers=headers, json={"text": "x"} if method == "POST" else None
        )
        assert_error(response, 401)


async def test_malformed_json_gets_400_with_the_error_body(api: Api) -> None:
    alice = await api.sign_up()
    for path, headers in [("/api/v1/accounts", {}), ("/api/v1/tweets", alice.auth)]:
        response = await api.client.post(
            path,
            content=b'{"username": "abc", ',
            headers={**headers, "Content-Type": "application/json"},
        )
        assert_error(response, 400)


async def test_a_body_over_64_kib_gets_413(api: Api) -> None:
    alice = await api.sign_up()
    padding = "a" * (64 * 1024)
    for path, headers, body in [
        ("/api/v1/accounts", {}, {"username": unique_name(), "password": PASSWORD, "x": padding}),
        ("/api/v1/tweets", alice.auth, {"text": padding}),
    ]:
        response = await api.client.post(path, json=body, headers=headers)
        assert_error(response, 413)


@pytest.mark.parametrize(
    "body",
    [
        {"username": 5, "password": PASSWORD},
        {"username": "abcdef", "password": ["x"]},
        {"username": "abcdef"},
        {"username": None, "password": PASSWORD},
        [1, 2],
        "text",
        None,
    ],
    ids=["int-name", "list-password", "missing-field", "null-name", "array", "string", "null"],
)
async def test_wrong_json_types_get_400_or_422_never_500(api: Api, body: object) -> None:
    for path in ("/api/v1/accounts", "/api/v1/sessions"):
        response = await api.client.post(path, json=body)
        assert response.status_code in (400, 422), response.text
        assert_error(response, response.status_code)


async def test_wrong_json_types_in_a_tweet_get_400_or_422(api: Api) -> None:
    alice = await api.sign_up()
    for body in (
        {"text": 5},
        {"text": None},
        {"text": "ok", "reply_to": 123},
        {"text": "ok", "reply_to": "not-an-id"},
        {"text": "ok", "media_ids": "nope"},
        {"text": ["a"]},
        {},
    ):
        response = await api.client.post("/api/v1/tweets", json=body, headers=alice.auth)
        assert response.status_code in (400, 422), (body, response.text)
        assert_error(response, response.status_code)


async def test_an_api_write_carried_by_the_session_cookie_needs_the_csrf_token(
    api: Api,
) -> None:
    alice = await api.sign_up()
    cookie = {"Cookie": f"chirp_session={alice.token}"}
    page = await api.client.get("/", headers=cookie)
    [csrf] = re.findall(r'data-csrf="([0-9a-f]{64})"', page.text)

    forged = await api.client.post("/api/v1/tweets", json={"text": "forged"}, headers=cookie)
    assert_error(forged, 403)
    wrong = {**cookie, "X-CSRF-Token": "0" * 64}
    assert_error(await api.client.post("/api/v1/tweets", json={"text": "x"}, headers=wrong), 403)
    genuine = {**cookie, "X-CSRF-Token": csrf}
    created = await api.client.post("/api/v1/tweets", json={"text": "genuine"}, headers=genuine)
    assert created.status_code == 201
    # Reads need no token, and a bearer token is no ambient credential: it needs none either.
    timeline = await api.client.get("/api/v1/timeline", headers=cookie)
    assert [t["text"] for t in timeline.json()["tweets"]] == ["genuine"]
    bearer = await api.client.post("/api/v1/tweets", json={"text": "by bearer"}, headers=alice.auth)
    assert bearer.status_code == 201
