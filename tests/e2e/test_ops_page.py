"""The operations page, in a real browser against the running site (web process and workers):
admins see the streams table (refreshed by htmx), the fanout-lag chart and the celebrity
authors; everyone else gets the ordinary "not found" page. axe-clean in light and dark."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from playwright.async_api import Browser, BrowserContext, expect

from tests.e2e.helpers import Person, Site, axe_violations, describe
from tests.support import eventually

pytestmark = pytest.mark.e2e


async def make_admin(site: Site, person: Person) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "web.cli", "admin", "grant", person.username),
        env={**os.environ, **site.settings.to_env()},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await process.communicate()
    assert process.returncode == 0, err.decode()


async def fanned_out(site: Site) -> tuple[Person, Person]:
    """An author whose tweet a follower has received: a fanout, so the chart has a bar."""
    author, reader = await site.person(), await site.person()
    await reader.follow(author)
    tweet_id = await author.post("measured on its way")

    async def arrived() -> bool:
        answer = await reader.call("GET", "/api/v1/timeline")
        return tweet_id in [t["id"] for t in answer.json()["tweets"]]

    assert await eventually(arrived, timeout=20)
    return author, reader


async def a_celebrity(site: Site) -> Person:
    """Above the suite's celebrity threshold (5 followers)."""
    star = await site.person("Famous")
    for _ in range(6):
        await (await site.person()).follow(star)
    return star


async def test_an_admin_sees_the_streams_the_fanout_lag_chart_and_the_celebrities(
    browser: Browser, site: Site, screenshots: Path
) -> None:
    admin = await site.person("Operator")
    await make_admin(site, admin)
    await fanned_out(site)
    star = await a_celebrity(site)
    problems = []
    for scheme in ("light", "dark"):
        context = await browser.new_context(
            base_url=site.url, viewport={"width": 1280, "height": 900}, color_scheme=scheme
        )
        context.set_default_timeout(10_000)
        try:
            page = await admin.sign_in(context)
            await page.get_by_role("link", name="Operations").click()
            await expect(page.get_by_role("heading", name="Operations", level=1)).to_be_visible()
            streams = page.locator("#streams")
            await expect(streams.locator("tr[data-consumer=fanout]")).to_have_count(1)
            await expect(streams).to_contain_text(f"{site.settings.stream}_DLQ")
            chart = page.get_by_role("img", name="Fanout lag of the recent tweets")
            await expect(chart).to_be_visible()
            assert await chart.locator("rect.bar").count() >= 1
            await expect(page.locator("#lag-summary")).to_contain_text("median")
            row = page.get_by_role("row").filter(has_text=f"@{star.username}")
            await expect(row).to_contain_text("pull")
            await expect(row).to_contain_text("6")
            await page.screenshot(path=str(screenshots / f"ops-{scheme}.png"))
            found = await axe_violations(page)
            if found:
                problems.append(f"{scheme}: {describe(found)}")
        finally:
            await context.close()
    assert not problems, "\n".join(problems)


async def test_the_streams_table_refreshes_itself_every_few_seconds(
    context: BrowserContext, site: Site
) -> None:
    admin = await site.person()
    await make_admin(site, admin)
    page = await admin.sign_in(context)
    await page.goto("/ops")
    async with page.expect_response(lambda r: r.url.endswith("/ops/live"), timeout=12_000) as r:
        pass
    response = await r.value
    assert response.status == 200
    await expect(page.locator("#streams tr[data-consumer=fanout]")).to_have_count(1)


async def test_someone_who_is_not_an_admin_is_told_the_page_does_not_exist(
    context: BrowserContext, site: Site
) -> None:
    anonymous = await context.new_page()
    answer = await anonymous.goto("/ops")
    assert answer is not None and answer.status == 404
    await expect(anonymous.get_by_role("heading", name="Not found")).to_be_visible()
    person = await site.person()
    page = await person.sign_in(context)
    await expect(page.get_by_role("link", name="Operations")).to_have_count(0)
    for path in ("/ops", "/ops/live"):
        answer = await page.goto(path)
        assert answer is not None and answer.status == 404
        await expect(page.get_by_role("heading", name="Not found")).to_be_visible()
