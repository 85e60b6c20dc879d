"""What users type stays text; forms and sockets only work from Chirp's own pages."""

from __future__ import annotations

import asyncio
from urllib.parse import quote

import pytest
import websockets
from playwright.async_api import BrowserContext, Dialog, expect

from tests.e2e.helpers import Site, live, sign_up

pytestmark = pytest.mark.e2e

PAYLOAD = "<img src=x onerror=\"window.__pwned='img'\"><script>window.__pwned='script'</script>"


async def test_script_payloads_in_tweets_names_and_search_render_as_text_and_never_run(
    site: Site, context: BrowserContext
) -> None:
    dialogs: list[str] = []

    async def record(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        await dialog.dismiss()

    page, username = await sign_up(context, display_name="<b>Bold</b><script>alert(1)</script>")
    page.on("dialog", record)
    author = await site.person(display_name=PAYLOAD[:50])
    await author.post(f"Look: {PAYLOAD} javascript:alert(1)")
    await page.goto(f"/u/{author.username}")
    await page.get_by_role("button", name=f"Follow @{author.username}").click()
    await expect(page.get_by_role("button", name=f"Unfollow @{author.username}")).to_be_visible()

    await page.goto("/")
    await live(page)
    tweet = page.locator("#timeline article").first
    await expect(tweet).to_contain_text("<script>window.__pwned='script'</script>")
    await expect(tweet.locator(".display")).to_have_text(PAYLOAD[:50])
    await expect(page.locator(".account .who strong")).to_have_text(
        "<b>Bold</b><script>alert(1)</script>"
    )
    # Live: the same payload arriving over the socket.
    live_id = await author.post(PAYLOAD)
    await expect(page.locator(f"#timeline #tweet-{live_id}")).to_contain_text(PAYLOAD)

    await page.goto(f"/search?q={quote(PAYLOAD[:100])}")
    await expect(page.get_by_label("Search tweets")).to_have_value(PAYLOAD[:100])
    await page.get_by_label("Search tweets").fill("<script>window.__pwned='search'</script>")
    await expect(page.locator("#results")).to_contain_text("<script>window.__pwned='search'")

    for path in ["/", f"/u/{author.username}", f"/u/{username}", f"/tweets/{live_id}"]:
        await page.goto(path)
        assert await page.locator("main script, main img[src=x]").count() == 0
    assert await page.evaluate("window.__pwned") is None
    assert dialogs == []


async def test_a_form_post_without_the_csrf_token_is_refused(
    site: Site, context: BrowserContext
) -> None:
    page, _ = await sign_up(context)
    token = await page.locator("body").get_attribute("data-csrf")
    assert token

    # The browser's cookies ride along, as they would on a forged cross-site form post.
    forged = await context.request.post("/tweets", form={"text": "forged"}, max_redirects=0)
    assert forged.status == 403
    wrong = await context.request.post(
        "/tweets", form={"text": "forged", "csrf_token": "0" * 64}, max_redirects=0
    )
    assert wrong.status == 403
    api = await context.request.post("/api/v1/tweets", data={"text": "forged through the API"})
    assert api.status == 403
    real = await context.request.post(
        "/tweets", form={"text": "genuine", "csrf_token": token}, max_redirects=0
    )
    assert real.status == 303

    await page.goto("/")
    await expect(page.locator("#timeline")).to_contain_text("genuine")
    await expect(page.locator("#timeline")).not_to_contain_text("forged")

    # Signing in is protected too (a forged sign-in would log a victim into another account).
    fresh = await context.browser.new_context(base_url=site.url)  # type: ignore[union-attr]
    try:
        refused = await fresh.request.post(
            "/signin", form={"username": "x", "password": "y"}, max_redirects=0
        )
        assert refused.status == 403
    finally:
        await fresh.close()


async def test_a_websocket_from_a_foreign_origin_or_without_a_session_is_refused(
    site: Site, context: BrowserContext
) -> None:
    await sign_up(context)
    session = next(c for c in await context.cookies() if c["name"] == "chirp_session")
    cookie = f"chirp_session={session['value']}"
    url = site.url.replace("http://", "ws://") + "/ws/home"

    with pytest.raises(websockets.InvalidStatus):
        async with websockets.connect(
            url, origin="https://evil.example", additional_headers={"Cookie": cookie}
        ):
            pass
    with pytest.raises(websockets.InvalidStatus):
        async with websockets.connect(url, origin=site.url):
            pass
    async with websockets.connect(
        url,
        origin=site.url,  # type: ignore[arg-type]
        additional_headers={"Cookie": cookie},
    ) as socket:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(socket.recv(), 0.3)
