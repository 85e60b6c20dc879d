"""The home timeline's pure parts: merging sources, windows and cursors."""

from __future__ import annotations

from domain.timeline import in_window, merge_newest_first, page_cursor, visible_authors


def test_merge_interleaves_newest_first_without_duplicates() -> None:
    home = [90, 70, 50, 10]
    celebrity_a = [95, 70, 60]
    celebrity_b = [80, 5]
    assert merge_newest_first(home, celebrity_a, celebrity_b) == [95, 90, 80, 70, 60, 50, 10, 5]


def test_merge_of_nothing_or_empty_sources_is_empty() -> None:
    assert merge_newest_first() == []
    assert merge_newest_first([], []) == []
    assert merge_newest_first([3, 2], []) == [3, 2]


def test_merge_keeps_ids_beyond_2_to_the_53_exact() -> None:
    big = 2**62
    assert merge_newest_first([big + 3, big + 1], [big + 2, big + 1]) == [
        big + 3,
        big + 2,
        big + 1,
    ]


def test_window_is_exclusive_on_both_ends() -> None:
    assert in_window(5, before=6, after=4)
    assert not in_window(6, before=6, after=None)
    assert not in_window(4, before=None, after=4)
    assert in_window(1, before=None, after=None)


def test_the_viewer_always_sees_their_own_tweets() -> None:
    assert visible_authors(1, [2, 3]) == {1, 2, 3}
    assert visible_authors(1, []) == {1}


def test_cursor_is_the_oldest_id_shown_only_when_more_exist() -> None:
    assert page_cursor([9, 8, 7], 3, more=True) == 7
    assert page_cursor([9, 8, 7], 3, more=False) is None
    assert page_cursor([9, 8], 3, more=True) is None
    assert page_cursor([], 3, more=True) is None


def test_walking_pages_by_cursor_neither_skips_nor_repeats() -> None:
    ids = list(range(100, 0, -1))
    seen: list[int] = []
    cursor = None
    while True:
        window = [i for i in ids if in_window(i, before=cursor, after=None)]
        page = window[:7]
        seen += page
        cursor = page_cursor(page, 7, more=len(window) > 7)
        if cursor is None:
            break
    assert seen == ids
