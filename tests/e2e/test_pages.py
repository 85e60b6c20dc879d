"""The pages as a person uses them: with JavaScript (htmx) and without it (plain forms)."""

from __future__ import annotations

import struct
import zlib

import pytest
from playwright.async_api import Browser, BrowserContext, expect

from tests.e2e.helpers import PASSWORD, Site, sign_up
from tests.support import eventually, unique_name

pytestmark = pytest.mark.e2e


async def test_reading_and_posting_work_without_javascript(browser: Browser, site: Site) -> None:
    author = await site.person("Plain Author")
    hello = await author.post("Readable without scripts")
    context = await browser.new_context(base_url=site.url, java_script_enabled=False)
    try:
        page = await context.new_page()
        await page.goto("/")
        await page.get_by_role("link", name="Create account").first.click()
        username = unique_name("n")
        await page.get_by_label("Username").fill(username)
        await page.get_by_label("Password").fill(PASSWORD)
        await page.get_by_role("button", name="Create account").click()
        await expect(page.get_by_role("heading", name="Home")).to_be_visible()

        await page.get_by_label("New tweet").fill("Posted with a plain form")
        await page.get_by_role("button", name="Post").click()
        await expect(page.locator("#timeline article").first).to_contain_text(
            "Posted with a plain form"
        )

        await page.goto(f"/u/{author.username}")
        await page.get_by_role("button", name=f"Follow @{author.username}").click()
        unfollow = page.get_by_role("button", name=f"Unfollow @{author.username}")
        await expect(unfollow).to_be_visible()
        await page.goto("/")
        tweet = page.locator(f"#tweet-{hello}")
        await expect(tweet).to_contain_text("Readable without scripts")
        await tweet.get_by_role("button", name="Like").click()
        liked = page.locator(f"#tweet-{hello}").get_by_role("button", name="Like")
        await expect(liked).to_have_attribute("aria-pressed", "true")

        await page.locator(f"#tweet-{hello}").get_by_role("link", name="Reply").click()
        await page.get_by_label("Your reply").fill("A reply without scripts")
        await page.get_by_role("button", name="Reply", exact=True).click()
        await expect(page.locator("#replies")).to_contain_text("A reply without scripts")

        await page.goto(f"/u/{username}")
        await expect(page.locator("#timeline")).to_contain_text("Posted with a plain form")
        mine = page.locator("#timeline article", has_text="Posted with a plain form")
        await mine.get_by_role("button", name="Delete tweet").click()
        await expect(page.locator("#timeline")).not_to_contain_text("Posted with a plain form")

        await page.get_by_role("button", name="Sign out").first.click()
        await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    finally:
        await context.close()


async def test_the_character_counter_counts_exactly_as_the_server_does(
    context: BrowserContext,
) -> None:
    page, _ = await sign_up(context)
    box = page.get_by_label("New tweet")
    counter = page.locator("[data-count]")
    post = page.get_by_role("button", name="Post")
    await expect(counter).to_have_text("280")
    await expect(post).to_be_disabled()

    # "e" + combining acute is one code point after NFC; an emoji is one code point (two
    # UTF-16 units); surrounding spaces are trimmed.
    await box.fill("  " + "e\u0301" * 10 + "\U0001f426" * 10 + "  ")
    await expect(counter).to_have_text("260")
    await expect(post).to_be_enabled()

    await box.fill("\U0001f426" * 280)
    await expect(counter).to_have_text("0")
    await expect(post).to_be_enabled()
    async with page.expect_response(lambda r: r.url.endswith("/tweets")) as answer:
        await post.click()
    assert (await answer.value).status == 201
    await expect(counter).to_have_text("280")  # the box is cleared after posting

    await box.fill("x" * 281)
    await expect(counter).to_have_text("-1")
    await expect(post).to_be_disabled()
    await expect(box).to_have_attribute("aria-invalid", "true")


async def test_a_rejected_action_says_why_without_leaving_the_page(
    site: Site, context: BrowserContext
) -> None:
    page, _ = await sign_up(context)
    author = await site.person()
    tweet_id = await author.post("Soon gone")
    await page.goto(f"/tweets/{tweet_id}")
    response = await author.call("DELETE", f"/api/v1/tweets/{tweet_id}")
    assert response.status_code == 204
    await page.get_by_role("button", name="Like").click()
    await expect(page.get_by_role("alert").filter(has_text="not found")).to_be_visible()


async def test_profiles_list_followers_and_following(site: Site, context: BrowserContext) -> None:
    star = await site.person("Star Person")
    fan = await site.person("Big Fan")
    await fan.follow(star)
    page, me = await sign_up(context)
    await page.goto(f"/u/{star.username}")
    await expect(page.get_by_role("heading", name="Star Person", level=1)).to_be_visible()
    await page.get_by_role("link", name="1 Follower").click()
    await expect(page.locator("#people")).to_contain_text("Big Fan")
    await page.get_by_role("button", name=f"Follow @{fan.username}").click()
    await expect(page.get_by_role("button", name=f"Unfollow @{fan.username}")).to_be_visible()
    await page.goto(f"/u/{me}/following")
    await expect(page.locator("#people")).to_contain_text("Big Fan")


async def test_search_shows_results_as_you_type(site: Site, context: BrowserContext) -> None:
    author = await site.person("Searchable")
    word = unique_name("zq")
    tweet_id = await author.post(f"A tweet about {word} and other things")

    async def indexed() -> bool:
        response = await author.call("GET", "/api/v1/search", params={"q": word})
        return response.status_code == 200 and response.json()["found"] > 0

    assert await eventually(indexed, timeout=5)
    page, _ = await sign_up(context)
    await page.goto("/search")
    await page.get_by_label("Search tweets").press_sequentially(word, delay=30)
    await expect(page.locator(f"#results #tweet-{tweet_id}")).to_be_visible()
    await expect(page.locator("#results")).to_contain_text("1 result for")
    assert f"q={word}" in page.url


def tiny_png() -> bytes:
    """A valid 8x8 PNG, made here so the test needs no fixture file."""
    width = height = 8
    raw = b"".join(b"\x00" + bytes([40, 90, 200]) * width for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


async def test_an_image_attached_in_the_compose_box_is_posted_with_the_tweet(
    context: BrowserContext,
) -> None:
    page, _ = await sign_up(context)
    await page.get_by_label("New tweet").fill("With a picture")
    await page.get_by_label("Add images").set_input_files(
        files=[{"name": "blue.png", "mimeType": "image/png", "buffer": tiny_png()}]
    )
    await expect(page.locator("[data-attachments] input[name=media_ids]")).to_have_count(1)
    await page.get_by_label("Alt text for image blue.png").fill("A small blue square")
    await page.get_by_role("button", name="Post").click()
    image = page.locator("#timeline article", has_text="With a picture").locator(".media img")
    await expect(image).to_be_visible()
    await expect(image).to_have_attribute("alt", "A small blue square")
    await expect(image).to_have_attribute("loading", "lazy")
    assert await image.evaluate("img => img.complete && img.naturalWidth") == 8
    await expect(page.locator("[data-attachments] li")).to_have_count(0)
