"""Operator commands that repair derived state from Postgres."""

from __future__ import annotations

from web.container import provide_services
from web.settings import Settings


async def rebuild_timelines(settings: Settings, username: str | None) -> int:
    async with provide_services(settings, process_name="chirp-cli") as services:
        if username is not None:
            user = await services.users.get_by_username(username)
            if user is None:
                raise SystemExit(f"no user named {username!r}")
            await services.timelines.populate(user.id)
            return 1
        count = 0
        async for user_id in services.users.all_ids():
            await services.timelines.populate(user_id)
            count += 1
        return count
