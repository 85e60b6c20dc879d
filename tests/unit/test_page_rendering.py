"""The page templates' filters and the CSRF token: pure functions, no server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from web.csrf import csrf_token, token_matches
from web.pages import safe_next
from web.templating import ago, compact_count, linkify


def test_linkify_escapes_markup_and_links_only_mentions_and_web_addresses() -> None:
    html = str(linkify('<script>alert("x")</script> @alice https://ex.com/a?b=1&c=2 javascript:x'))
    assert "<script>" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert '<a href="/u/alice">@alice</a>' in html
    assert '<a href="https://ex.com/a?b=1&amp;c=2" rel="nofollow noopener ugc"' in html
    assert "javascript:x" in html and 'href="javascript' not in html


def test_a_quote_or_angle_bracket_ends_a_web_address_so_it_cannot_break_out_of_the_link() -> None:
    html = str(linkify('https://ex.com/"onmouseover="alert(1) https://ex.com/<b>'))
    assert 'href="https://ex.com/"' in html
    assert "onmouseover=&#34;" in html
    assert 'href="https://ex.com/"' in html and "<b>" not in html


def test_an_email_address_is_not_taken_for_a_mention() -> None:
    assert "<a" not in str(linkify("write to bob@example.com"))


def test_ages_read_like_a_timeline() -> None:
    now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    assert ago(now - timedelta(seconds=5), now) == "5s"
    assert ago(now - timedelta(minutes=3), now) == "3m"
    assert ago(now - timedelta(hours=2), now) == "2h"
    assert ago(datetime(2026, 3, 4, tzinfo=UTC), now) == "Mar 4"
    assert ago(datetime(2025, 3, 4, tzinfo=UTC), now) == "Mar 4, 2025"


def test_large_counts_are_compact() -> None:
    assert [compact_count(n) for n in (7, 9_999, 12_345, 1_200_000)] == [
        "7",
        "9,999",
        "12.3K",
        "1.2M",
    ]


def test_a_csrf_token_belongs_to_one_session_and_one_key() -> None:
    token = csrf_token(b"key", "session-a")
    assert token_matches(b"key", "session-a", token)
    assert not token_matches(b"key", "session-b", token)
    assert not token_matches(b"other key", "session-a", token)
    assert not token_matches(b"key", None, token)
    assert not token_matches(b"key", "session-a", None)


def test_next_after_a_form_only_ever_leads_to_a_page_on_this_site() -> None:
    assert safe_next("/u/alice?cursor=12") == "/u/alice?cursor=12"
    for hostile in [
        "//evil.example",
        "/\\evil.example",
        "/\t/evil.example",
        "https://evil.example",
    ]:
        assert safe_next(hostile) == "/"
    assert safe_next(None, "/tweets/1") == "/tweets/1"
