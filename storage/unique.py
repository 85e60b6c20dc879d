"""Strings never handed out before, cheaply: a random prefix per process and a counter.

For values that must not repeat (request ids, cache version tokens) but need not be secret:
`secrets.token_hex` per call was a syscall and a few percent of a timeline read, which makes
one of each. The prefix is drawn again in a forked child, so parent and child never share a
sequence."""

from __future__ import annotations

import itertools
import os
import secrets

_source: tuple[int, str, itertools.count[int]] | None = None


def unique_string() -> str:
    global _source
    pid = os.getpid()
    if _source is None or _source[0] != pid:
        _source = (pid, secrets.token_hex(6), itertools.count())
    return f"{_source[1]}{next(_source[2]):x}"
