"""The home timeline in a real browser: following from a profile page, tweets arriving live,
liking and deleting without a reload, the "N new tweets" bar, and resuming after the
connection drops."""

from __future__ import annotations

import asyncio
import time

import pytest
from playwright.async_api import BrowserContext, Dialog, Page, expect

from launcher.process import free_port
from tests.e2e.helpers import Site, live, sign_up
from tests.support import ServerProcess

pytestmark = pytest.mark.e2e


async def post_from_home(page: Page, text: str) -> str:
    await page.get_by_label("New tweet").fill(text)
    async with page.expect_response(lambda r: r.url.endswith("/tweets")) as answer:
        await page.get_by_role("button", name="Post").click()
    assert (await answer.value).status == 201
    tweet = page.locator("#timeline article", has_text=text)
    await expect(tweet).to_have_count(1)
    tweet_id = await tweet.get_attribute("data-id")
    assert tweet_id
    return tweet_id


def accept_dialogs(page: Page) -> None:
    async def accept(dialog: Dialog) -> None:
        await dialog.accept()

    page.on("dialog", accept)


async def test_a_followed_users_tweet_appears_live_is_liked_and_disappears_when_deleted(
    site: Site, context: BrowserContext, other_context: BrowserContext
) -> None:
    alice_page, alice = await sign_up(context, "Alice")
    bob_page, _ = await sign_up(other_context, "Bob")

    await bob_page.goto(f"/u/{alice}")
    await bob_page.get_by_role("button", name=f"Follow @{alice}").click()
    await expect(bob_page.get_by_role("button", name=f"Unfollow @{alice}")).to_be_visible()
    await expect(bob_page.locator(".counts")).to_contain_text("1 Follower")

    await bob_page.get_by_role("link", name="Home", exact=True).click()
    await live(bob_page)
    await live(alice_page)

    posted_at = time.monotonic()
    tweet_id = await post_from_home(alice_page, "Hello from Alice, live!")
    on_bob = bob_page.locator(f"#timeline #tweet-{tweet_id}")
    await expect(on_bob).to_be_visible(timeout=2_000)
    assert time.monotonic() - posted_at < 2.0 + 1.0  # the post itself included
    await expect(on_bob).to_contain_text("Hello from Alice, live!")

    like = on_bob.get_by_role("button", name="Like")
    await like.click()
    await expect(like).to_have_attribute("aria-pressed", "true")
    await expect(like).to_contain_text("1")
    await like.click()  # and unlike
    await expect(like).to_have_attribute("aria-pressed", "false")
    await expect(like).not_to_contain_text("1")
    await like.click()
    await expect(like).to_have_attribute("aria-pressed", "true")

    accept_dialogs(alice_page)
    on_alice = alice_page.locator(f"#tweet-{tweet_id}")
    await on_alice.get_by_role("button", name="Delete tweet").click()
    await expect(alice_page.locator(f"#tweet-{tweet_id}")).to_have_count(0)
    await expect(bob_page.locator(f"#tweet-{tweet_id}")).to_have_count(0, timeout=2_000)
    assert bob_page.url.endswith("/")  # never reloaded or navigated


async def test_my_own_tweet_from_another_tab_appears_once(
    site: Site, context: BrowserContext
) -> None:
    first_tab, _ = await sign_up(context)
    second_tab = await context.new_page()
    await second_tab.goto("/")
    await live(first_tab)
    await live(second_tab)

    tweet_id = await post_from_home(second_tab, "Posted in the other tab")
    await expect(first_tab.locator(f"#tweet-{tweet_id}")).to_be_visible(timeout=2_000)
    # The socket delivers it to the tab that posted it too; it stays there once.
    await second_tab.wait_for_timeout(500)
    await expect(second_tab.locator(f"[id='tweet-{tweet_id}']")).to_have_count(1)


async def test_a_celebrity_authors_tweet_appears_live_too(
    site: Site, context: BrowserContext
) -> None:
    star = await site.person("A Star")
    fans = [await site.person() for _ in range(site.settings.celebrity_threshold + 1)]
    for fan in fans:
        await fan.follow(star)
    page = await fans[0].sign_in(context)
    await live(page)

    tweet_id = await star.post("Thank you all!")
    await expect(page.locator(f"#timeline #tweet-{tweet_id}")).to_be_visible(timeout=2_000)


async def test_scrolling_down_loads_older_tweets_without_repeating_any(
    site: Site, context: BrowserContext
) -> None:
    author = await site.person()
    posted = [await author.post(f"Tweet number {i}") for i in range(45)]
    page = await author.sign_in(context)
    articles = page.locator("#timeline article")
    await expect(articles).to_have_count(20)

    await page.locator("#more").scroll_into_view_if_needed()
    await expect(articles).to_have_count(40)
    await page.locator("#more").scroll_into_view_if_needed()
    await expect(articles).to_have_count(45)
    await expect(page.locator("#more")).to_have_count(0)

    shown = await articles.evaluate_all("items => items.map(a => a.dataset.id)")
    assert shown == list(reversed(posted))


async def test_new_tweets_wait_behind_a_polite_bar_when_the_reader_has_scrolled_down(
    site: Site, context: BrowserContext
) -> None:
    author = await site.person("Prolific")
    reader = await site.person()
    await reader.follow(author)
    for i in range(15):
        await author.post(f"Earlier tweet {i}")
    page = await reader.sign_in(context)
    await live(page)
    await page.evaluate("window.scrollTo(0, 900)")
    await page.wait_for_function("window.scrollY > 800")
    before = await page.evaluate("window.scrollY")
    first_shown = await page.locator("#timeline article").first.get_attribute("id")

    fresh = [await author.post("Breaking news one"), await author.post("Breaking news two")]
    bar = page.locator("#new-bar")
    await expect(bar).to_have_text("Show 2 new tweets", timeout=2_000)
    await expect(page.locator("#live-status")).to_have_text("2 new tweets")
    # Nothing moved under the reader.
    assert await page.evaluate("window.scrollY") == before
    assert await page.locator("#timeline article").first.get_attribute("id") == first_shown

    await bar.click()
    await expect(bar).to_be_hidden()
    ids = await page.locator("#timeline article").evaluate_all(
        "items => items.slice(0, 2).map(a => a.dataset.id)"
    )
    assert ids == list(reversed(fresh))
    await expect(page.locator(f"#tweet-{fresh[-1]}")).to_be_focused()


async def test_the_page_reconnects_after_its_server_dies_and_misses_nothing(
    site: Site, context: BrowserContext
) -> None:
    # A second app process on its own port: the browser's server dies and comes back on
    # the same port, while the author keeps posting through the other one.
    own = site.settings.with_overrides(port=free_port())
    flaky = ServerProcess(own, "serve")
    try:
        await flaky.wait_ready()
        author = await site.person("Steady")
        reader = await site.person()
        await reader.follow(author)
        await author.post("Before the outage")
        page = await context.new_page()
        await page.goto(f"{flaky.base_url}/signin")
        await page.get_by_label("Username").fill(reader.username)
        await page.get_by_label("Password").fill("correct horse 1")
        await page.get_by_role("button", name="Sign in").click()
        await live(page)
        # Reconnect quickly in the test (the default backs off with jitter up to a minute).
        await page.evaluate("htmx.config.wsReconnectDelay = () => 200")

        flaky.stop(kill=True)
        await expect(page.locator("[data-live][data-socket=closed]")).to_have_count(1)
        missed = [await author.post("Missed one"), await author.post("Missed two")]
        await asyncio.sleep(0.5)  # let the fanout push to nobody
        flaky = ServerProcess(own, "serve")
        await flaky.wait_ready()
        await live(page)

        after = await author.post("After the outage")
        for tweet_id in [*missed, after]:
            await expect(page.locator(f"#timeline #tweet-{tweet_id}")).to_have_count(1)
        await page.wait_for_timeout(500)
        ids = await page.locator("article").evaluate_all("items => items.map(a => a.id)")
        assert len(ids) == len(set(ids)) == 4
    finally:
        flaky.stop()
