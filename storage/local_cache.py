"""A per-process map whose entries expire: what each process keeps in memory to spare the
shared stores a round trip (token owners, follow lists, authors). Bounded; when full, the
oldest entry goes first."""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class ExpiringCache(Generic[K, V]):
    def __init__(self, ttl: float, *, max_entries: int = 50_000) -> None:
        self._ttl = ttl
        self._max_entries = max_entries
        self._entries: dict[K, tuple[V, float]] = {}

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] < time.monotonic():
            del self._entries[key]
            return None
        return entry[0]

    def get_all(self, keys: Iterable[K]) -> dict[K, V] | None:
        """Every one of the keys' values, or None if any is missing or expired."""
        now = time.monotonic()
        found: dict[K, V] = {}
        entries = self._entries
        for key in keys:
            entry = entries.get(key)
            if entry is None or entry[1] < now:
                return None
            found[key] = entry[0]
        return found

    def put(self, key: K, value: V) -> None:
        if self._ttl <= 0:
            return
        self._entries.pop(key, None)
        if len(self._entries) >= self._max_entries:
            del self._entries[next(iter(self._entries))]
        # Jittered, so entries filled together (a burst of sign-ins, a restart) do not all
        # expire together and send their reloads at once.
        self._entries[key] = (value, time.monotonic() + self._ttl * random.uniform(0.8, 1.0))

    def evict(self, key: K) -> None:
        self._entries.pop(key, None)
