"""Snowflake-style IDs: 41 bits of milliseconds since the Chirp epoch, 10 bits of worker id,
12 bits of sequence. They sort by creation time and fit a signed 64-bit integer."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

EPOCH_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
WORKER_BITS = 10
SEQUENCE_BITS = 12
MAX_WORKER_ID = (1 << WORKER_BITS) - 1
MAX_SEQUENCE = (1 << SEQUENCE_BITS) - 1
TIMESTAMP_SHIFT = WORKER_BITS + SEQUENCE_BITS
MAX_ID = (1 << 63) - 1

# Redis sorted-set scores are doubles, exact only to 2**53, so IDs are never used as scores:
# timelines store them as members of equal score, zero-padded to a fixed width, and Redis
# orders equal-score members byte by byte — which for fixed-width digits is numeric order.
ID_WIDTH = 19


class IdGenerator:
    def __init__(self, worker_id: int, clock_ms: Callable[[], int] | None = None) -> None:
        # Used from worker threads too (password hashing runs off the event loop).
        self._lock = threading.Lock()
        self._worker_id = 0
        self.assign(worker_id)
        self._clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._last_ms = -1
        self._sequence = 0

    @property
    def worker_id(self) -> int:
        return self._worker_id

    def assign(self, worker_id: int) -> None:
        """Sets the worker id (a process claims one at start, see Database.claim_worker_id)."""
        if not 0 <= worker_id <= MAX_WORKER_ID:
            raise ValueError(f"worker id must be in 0..{MAX_WORKER_ID}")
        with self._lock:
            self._worker_id = worker_id

    def next_id(self) -> int:
        with self._lock:
            now = self._clock_ms() - EPOCH_MS
            # A clock that steps back must not produce an ID that sorts before one already
            # handed out: keep counting from the last timestamp instead.
            if now < self._last_ms:
                now = self._last_ms
            if now == self._last_ms:
                self._sequence = (self._sequence + 1) & MAX_SEQUENCE
                if self._sequence == 0:
                    now = self._last_ms + 1
                    while self._clock_ms() - EPOCH_MS < now:
                        time.sleep(0.0001)
            else:
                self._sequence = 0
            self._last_ms = now
            return (now << TIMESTAMP_SHIFT) | (self._worker_id << SEQUENCE_BITS) | self._sequence


def id_timestamp_ms(snowflake: int) -> int:
    """Unix milliseconds at which the ID was generated."""
    return (snowflake >> TIMESTAMP_SHIFT) + EPOCH_MS


def smallest_id_at(unix_ms: int) -> int:
    """The smallest ID that could have been generated at `unix_ms` (for time-bounded ranges)."""
    return max(0, unix_ms - EPOCH_MS) << TIMESTAMP_SHIFT


def encode_member(snowflake: int) -> str:
    return str(snowflake).zfill(ID_WIDTH)


def parse_id(text: str) -> int | None:
    """A public ID string to an int, or None when it is not one of ours."""
    if not text or len(text) > ID_WIDTH or not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if 0 < value <= MAX_ID else None
