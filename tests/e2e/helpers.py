"""What the browser tests share: the Chromium to drive, a handle on the running site (with an
API client for setting the scene quickly), signing up through the pages, and axe-core."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from playwright.async_api import BrowserContext, Page, expect

from tests.support import ServerProcess, unique_name
from web.settings import Settings

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "correct horse 1"
AXE = Path(__file__).resolve().parent / "vendor" / "axe.min.js"


class Person:
    """A user set up through the JSON API (fast), who can also sign in to a browser."""

    def __init__(self, site: Site, username: str, token: str, user_id: str) -> None:
        self.site = site
        self.username = username
        self.token = token
        self.id = user_id

    async def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.site.url) as client:
            return await client.request(
                method, path, headers={"Authorization": f"Bearer {self.token}"}, **kwargs
            )

    async def post(self, text: str) -> str:
        response = await self.call("POST", "/api/v1/tweets", json={"text": text})
        assert response.status_code == 201, response.text
        tweet_id: str = response.json()["id"]
        return tweet_id

    async def follow(self, other: Person) -> None:
        response = await self.call("POST", f"/api/v1/users/{other.username}/follow")
        assert response.status_code == 200, response.text

    async def sign_in(self, context: BrowserContext) -> Page:
        page = await context.new_page()
        await page.goto("/signin")
        await page.get_by_label("Username").fill(self.username)
        await page.get_by_label("Password").fill(PASSWORD)
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.get_by_role("heading", name="Home")).to_be_visible()
        return page


class Site:
    def __init__(self, settings: Settings, web: ServerProcess) -> None:
        self.settings = settings
        self.web = web
        self.url = web.base_url

    async def person(self, display_name: str | None = None) -> Person:
        username = unique_name("e")
        body: dict[str, str] = {"username": username, "password": PASSWORD}
        if display_name is not None:
            body["display_name"] = display_name
        async with httpx.AsyncClient(base_url=self.url) as client:
            response = await client.post("/api/v1/accounts", json=body)
        assert response.status_code == 201, response.text
        data = response.json()
        return Person(self, username, data["token"], data["user"]["id"])


async def sign_up(context: BrowserContext, display_name: str = "") -> tuple[Page, str]:
    """Signs up through the sign-up page, as a new user would; returns the page and name."""
    username = unique_name("b")
    page = await context.new_page()
    await page.goto("/signup")
    await page.get_by_label("Username").fill(username)
    if display_name:
        await page.get_by_label("Display name").fill(display_name)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Create account").click()
    await expect(page.get_by_role("heading", name="Home")).to_be_visible()
    return page, username


async def live(page: Page) -> None:
    """Waits until the home page's socket is open."""
    await expect(page.locator("[data-live][data-socket=open]")).to_have_count(1)


async def axe_violations(page: Page) -> list[dict[str, Any]]:
    """Serious and critical axe-core findings on the page as it is now."""
    if not await page.evaluate("typeof window.axe !== 'undefined'"):
        await page.add_script_tag(content=AXE.read_text())
    result = await page.evaluate(
        "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
    )
    found: list[dict[str, Any]] = [
        {
            "id": v["id"],
            "impact": v["impact"],
            "help": v["help"],
            "nodes": [n["target"] for n in v["nodes"]][:5],
        }
        for v in result
        if v["impact"] in ("serious", "critical")
    ]
    return found


def describe(violations: list[dict[str, Any]]) -> str:
    return json.dumps(violations, indent=2)
