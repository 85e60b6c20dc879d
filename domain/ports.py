"""Ports: what the core needs from the outside world, as protocols the adapters implement."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Protocol


class MediaStore(Protocol):
    """Where the bytes of uploaded images live. Clients upload and download through presigned
    URLs, so the bytes never pass through the app (the local store, which serves its own URLs,
    is the one exception). Presigning is pure computation; the other methods do I/O."""

    def presign_put(
        self, key: str, content_type: str, size: int, expires: timedelta
    ) -> tuple[str, dict[str, str]]:
        """A URL that accepts one PUT of the object, and the headers the PUT must carry."""
        ...

    def presign_get(self, key: str, expires: timedelta, *, issued_at: datetime) -> str:
        """A URL that reads the object from `issued_at` until `issued_at + expires`. The same
        arguments give the same URL, which is what lets browsers cache images."""
        ...

    async def head(self, key: str) -> int | None:
        """The object's size in bytes, or None when it does not exist."""
        ...

    async def read_range(self, key: str, start: int, length: int) -> bytes:
        """Up to `length` bytes from `start`: enough to recognise a file without reading it."""
        ...

    async def delete(self, key: str) -> None:
        """Removes the object; removing a missing object is not an error."""
        ...

    async def start(self) -> None:
        """Prepares the store (its directory or bucket). An unreachable store is logged, not
        fatal: the app serves everything else, and /ready reports the store as down."""
        ...

    async def ping(self) -> bool:
        """Whether the store answers (for /ready)."""
        ...
