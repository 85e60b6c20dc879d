"""The app's secret key, for signatures that must survive restarts and hold across every
app process (the local media store's URLs)."""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from pathlib import Path

from web.settings import Settings

SECRET_KEY_FILE = "secret_key"  # noqa: S105 (a file name, not a secret)


def secret_key(settings: Settings) -> bytes:
    """CHIRP_SECRET_KEY when set; otherwise a key generated once and kept in
    var_dir/secret_key (mode 0600), so a local run needs no configuration and still signs
    the same way after a restart."""
    if settings.secret_key:
        return settings.secret_key.encode()
    path = Path(settings.var_dir) / SECRET_KEY_FILE
    for _ in range(50):
        with contextlib.suppress(FileNotFoundError):
            stored = path.read_text().strip()
            if stored:
                return stored.encode()
        _create(path)
        time.sleep(0.01)
    raise RuntimeError(f"cannot read or create the secret key at {path}")


def _create(path: Path) -> None:
    # Several app processes may start at once: each writes a complete key to a file of its
    # own, and link() lets exactly one of them become the key (it refuses an existing target),
    # so nobody ever reads a half-written file.
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32) + "\n")
        with contextlib.suppress(FileExistsError):
            os.link(temp, path)
    finally:
        temp.unlink(missing_ok=True)
