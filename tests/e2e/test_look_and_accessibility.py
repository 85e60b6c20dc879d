"""Screenshots of the main pages for people to review (tests/e2e/screenshots/, git-ignored),
and axe-core on every one of them: no serious or critical accessibility violations, in light
and dark mode, at desktop and phone widths."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, expect

from tests.e2e.helpers import PASSWORD, Site, axe_violations, describe, live
from tests.support import eventually

pytestmark = pytest.mark.e2e

WIDTHS = {"desktop": {"width": 1280, "height": 900}, "phone": {"width": 390, "height": 844}}


async def scene(site: Site) -> dict[str, str]:
    """A small, lived-in Chirp: a few people who follow each other, tweets, a reply, likes."""
    ada = await site.person("Ada Lovelace")
    grace = await site.person("Grace Hopper")
    alan = await site.person("Alan Turing")
    for one in (ada, grace, alan):
        for other in (ada, grace, alan):
            if one is not other:
                await one.follow(other)
    texts = [
        (alan, "Machines take me by surprise with great frequency."),
        (grace, "The most dangerous phrase in the language is 'we have always done it this way.'"),
        (
            ada,
            "Reading about hybrid fanout: push for most authors, pull for celebrities. "
            "An elegant trade-off. https://example.com/fanout",
        ),
        (
            alan,
            "We can only see a short distance ahead, but we can see plenty there that needs "
            "to be done.",
        ),
        (grace, "A ship in port is safe, but that is not what ships are built for. @ada agrees?"),
    ]
    ids = [await author.post(text) for author, text in texts]
    response = await ada.call(
        "POST", "/api/v1/tweets", json={"text": "Wholeheartedly, Grace.", "reply_to": ids[-1]}
    )
    assert response.status_code == 201
    for liker in (ada, alan):
        await liker.call("POST", f"/api/v1/tweets/{ids[-1]}/like")

    async def indexed() -> bool:
        answer = await ada.call("GET", "/api/v1/search", params={"q": "ship"})
        return answer.status_code == 200 and answer.json()["found"] > 0

    assert await eventually(indexed, timeout=10), "the search index never caught up"
    return {"user": ada.username, "profile": grace.username, "tweet": ids[-1]}


async def check(page: Page, shots: Path, name: str, *, axe: bool) -> list[str]:
    await page.screenshot(path=str(shots / f"{name}.png"), full_page=False)
    if not axe:
        return []
    found = await axe_violations(page)
    return [f"{name}: {describe(found)}"] if found else []


async def test_the_main_pages_look_right_and_pass_axe_at_desktop_and_phone_widths(
    browser: Browser, site: Site, screenshots: Path
) -> None:
    names = await scene(site)
    problems: list[str] = []
    for scheme in ("light", "dark"):
        for width, viewport in WIDTHS.items():
            axe = scheme == "light" or width == "desktop"
            context = await browser.new_context(
                base_url=site.url, viewport=viewport, color_scheme=scheme
            )
            try:
                page = await context.new_page()
                tag = f"{width}-{scheme}"
                await page.goto(f"/u/{names['profile']}")
                problems += await check(page, screenshots, f"profile-signed-out-{tag}", axe=axe)
                await page.goto("/")
                problems += await check(page, screenshots, f"welcome-{tag}", axe=axe)
                await page.get_by_label("Username").fill(names["user"])
                await page.get_by_label("Password").fill(PASSWORD)
                await page.get_by_role("button", name="Sign in").click()
                await live(page)
                await expect(page.locator("#timeline article")).to_have_count(6)
                problems += await check(page, screenshots, f"home-{tag}", axe=axe)

                await page.goto(f"/u/{names['profile']}")
                problems += await check(page, screenshots, f"profile-{tag}", axe=axe)
                await page.goto(f"/tweets/{names['tweet']}")
                await expect(page.locator("#replies article")).to_have_count(1)
                problems += await check(page, screenshots, f"tweet-{tag}", axe=axe)
                await page.goto("/search?q=ship")
                await expect(page.locator("#results article").first).to_be_visible()
                problems += await check(page, screenshots, f"search-{tag}", axe=axe)
                await page.goto(f"/u/{names['profile']}/followers")
                problems += await check(page, screenshots, f"followers-{tag}", axe=axe)
            finally:
                await context.close()
    assert not problems, "\n".join(problems)
