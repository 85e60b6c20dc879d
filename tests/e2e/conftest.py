"""The browser suite's fixtures: one real Chirp (web process, fanout and search-indexer
workers) for the whole e2e package, and Debian's Chromium driven by Playwright.

The processes live for this package only (scope "package"): the integration tests that run
after it start their own workers in-process, and must not share the durable consumers with
these."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, BrowserContext, async_playwright

from launcher.process import free_port
from tests.e2e.helpers import CHROMIUM, CHROMIUM_ARGS, Site
from tests.support import ServerProcess
from web.settings import Settings

SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"


@pytest.fixture(scope="package")
def e2e_settings(base_settings: Settings, database: str) -> Settings:
    return base_settings.with_overrides(port=free_port())


@pytest.fixture(scope="package")
async def site(e2e_settings: Settings) -> AsyncIterator[Site]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
    web = ServerProcess(e2e_settings, "serve")
    workers = [
        ServerProcess(e2e_settings, "worker", "fanout"),
        ServerProcess(e2e_settings, "worker", "search-indexer"),
    ]
    try:
        await web.wait_ready()
        # Tests post at once and expect the workers' effects within seconds.
        for worker in workers:
            await worker.wait_for_log('"worker started"')
        yield Site(e2e_settings, web)
    finally:
        for process in [web, *workers]:
            process.stop()


@pytest.fixture(scope="package")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@contextlib.asynccontextmanager
async def fresh_context(browser: Browser, site: Site) -> AsyncIterator[BrowserContext]:
    """A new browser profile (no cookies) on the site."""
    ctx = await browser.new_context(base_url=site.url, viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(10_000)
    try:
        yield ctx
    finally:
        await ctx.close()


@pytest.fixture
async def context(browser: Browser, site: Site) -> AsyncIterator[BrowserContext]:
    async with fresh_context(browser, site) as ctx:
        yield ctx


@pytest.fixture
async def other_context(browser: Browser, site: Site) -> AsyncIterator[BrowserContext]:
    """A second person's browser, beside `context`."""
    async with fresh_context(browser, site) as ctx:
        yield ctx


@pytest.fixture(scope="package")
def screenshots() -> Iterator[Path]:
    SCREENSHOTS.mkdir(exist_ok=True)
    yield SCREENSHOTS
