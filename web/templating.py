"""The page templates (ui/templates) and static assets (ui/static): the Jinja environment with
Chirp's filters, and the /static router. Autoescaping is on for every template, so any text a
user wrote reaches the page as text."""

from __future__ import annotations

import hashlib
import importlib.resources
import re
import secrets
from datetime import UTC, datetime
from pathlib import Path

from jinja2 import Environment, FileSystemLoader
from litestar import Router
from litestar.datastructures import CacheControlHeader
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig
from markupsafe import Markup, escape

from domain.rules import MAX_TWEET_LENGTH
from web.schemas import format_time

# Asset URLs carry a content hash (`?v=`), so browsers may keep the files for a year.
STATIC_CACHE = CacheControlHeader(max_age=365 * 86_400, public=True)
VERSIONED_ASSETS = ("app.css", "app.js", "vendor/VERSIONS.md")


def ui_dir() -> Path:
    return Path(str(importlib.resources.files("ui")))


def asset_version(static_dir: Path) -> str:
    digest = hashlib.sha256()
    for name in VERSIONED_ASSETS:
        path = static_dir / name
        if path.exists():
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def ago(moment: datetime, now: datetime | None = None) -> str:
    """Twitter-style short age: 42s, 5m, 3h, then the date."""
    now = now or datetime.now(UTC)
    seconds = int((now - moment).total_seconds())
    if seconds < 60:
        return f"{max(seconds, 0)}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86_400:
        return f"{seconds // 3600}h"
    local = moment.astimezone(UTC)
    if local.year == now.year:
        return f"{local:%b} {local.day}"
    return f"{local:%b} {local.day}, {local.year}"


def long_date(moment: datetime) -> str:
    local = moment.astimezone(UTC)
    return f"{local:%H:%M} UTC · {local:%b} {local.day}, {local.year}"


def compact_count(value: int) -> str:
    if value < 10_000:
        return f"{value:,}"
    if value < 1_000_000:
        return f"{value / 1000:.1f}".rstrip("0").rstrip(".") + "K"
    return f"{value / 1_000_000:.1f}".rstrip("0").rstrip(".") + "M"


# Applied to text that is already escaped: the patterns cannot see a raw "<" or quote, and
# only http(s) links are made, so nothing a user types can become markup or a script URL.
_LINK = re.compile(r"https?://(?:[^\s&]|&amp;)+|(?<![\w@])@([A-Za-z0-9_]{3,15})\b")


def linkify(text: str) -> Markup:
    escaped = str(escape(text))

    def link(match: re.Match[str]) -> str:
        username = match.group(1)
        if username:
            return f'<a href="/u/{username}">@{username}</a>'
        url = match.group(0).rstrip(".,;:!?)")
        rest = match.group(0)[len(url) :]
        shown = url.split("://", 1)[1]
        shown = shown if len(shown) <= 40 else shown[:39] + "…"
        return f'<a href="{url}" rel="nofollow noopener ugc" target="_blank">{shown}</a>{rest}'

    return Markup(_LINK.sub(link, escaped))  # noqa: S704 - built from escaped text only


def avatar_hue(user_id: int) -> int:
    # Spread neighbouring ids around the colour wheel.
    return (user_id * 2654435761 >> 7) % 360


def initial(name: str) -> str:
    for char in name:
        if char.isalnum():
            return char.upper()
    return "?"


def build_environment(templates: Path, version: str) -> Environment:
    env = Environment(
        loader=FileSystemLoader(templates),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )
    env.filters.update(
        ago=ago,
        long_date=long_date,
        iso=format_time,
        count=compact_count,
        linkify=linkify,
        hue=avatar_hue,
        initial=initial,
    )
    env.globals.update(
        static=lambda path: f"/static/{path}?v={version}",
        new_key=lambda: secrets.token_urlsafe(16),
        MAX_TWEET_LENGTH=MAX_TWEET_LENGTH,
    )
    return env


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    root = ui_dir()
    env = build_environment(root / "templates", asset_version(root / "static"))
    return TemplateConfig(instance=JinjaTemplateEngine.from_environment(env))


def static_files_router() -> Router:
    return create_static_files_router(
        path="/static",
        directories=[ui_dir() / "static"],
        cache_control=STATIC_CACHE,
        include_in_schema=False,
    )
