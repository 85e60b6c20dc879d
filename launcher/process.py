"""Server child processes that can be stopped, killed and restarted, and whose
leftovers from a killed parent never block the next start."""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from launcher.errors import MissingService

_LOG_TAIL_LINES = 30


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (racy by nature, fine for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def tcp_bindable(host: str, port: int) -> bool:
    """Whether a server could bind this port now: nothing listens on it and no other socket
    (a client connection's local end among them) holds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def tcp_listening(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _proc_start_time(pid: int) -> int | None:
    """Kernel start time of pid in clock ticks, None if it is gone or a zombie.

    Together with the pid it identifies a process for good: a pid number can be
    reused after a reboot or wrap-around, the pair cannot.
    """
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may itself contain spaces and parentheses.
    fields = raw[raw.rfind(")") + 2 :].split()
    if not fields or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _alive(pid: int) -> bool:
    if Path("/proc").is_dir():
        return _proc_start_time(pid) is not None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def as_user(name: str | None) -> dict[str, Any]:
    """Popen arguments that drop to account `name` completely.

    user= alone keeps root's groups, and group root would then be denied by a
    0701 directory that "others" may traverse (pytest's tmp dirs are such).
    """
    if name is None:
        return {}
    account = pwd.getpwnam(name)
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def write_pid_file(path: Path, pid: int) -> None:
    start = _proc_start_time(pid)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{pid} {start if start is not None else '-'}\n")
    tmp.replace(path)


def live_owner(pid_file: Path) -> int | None:
    """The pid recorded in pid_file if that very process is still alive.

    A file left by a SIGKILLed run may name a pid that is dead or now belongs
    to an unrelated process; both count as not ours, so nobody gets signalled
    by mistake.
    """
    try:
        pid_text, start_text = pid_file.read_text().split()[:2]
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    if pid <= 0 or pid == os.getpid():
        return None
    recorded = None if start_text == "-" else int(start_text)
    actual = _proc_start_time(pid)
    if recorded is None or actual is None or actual != recorded:
        return None
    return pid


def terminate(pid: int, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Stop a process we do not parent (an orphan from an earlier run) and its group."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            break
        time.sleep(0.1)
    _kill_group(pid)
    deadline = time.monotonic() + 5.0
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _kill_group(pgid: int) -> None:
    # Children were started as session leaders, so pid == pgid; helpers they
    # forked (postgres backends) die with the group instead of lingering.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _exited(popen: subprocess.Popen[bytes]) -> bool:
    """Whether the child has exited, without reaping it (see _reap)."""
    if popen.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, popen.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return popen.poll() is not None


def log_tail(path: Path, since: int = 0, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(since)
            data = fh.read()
    except OSError:
        return "(no log file)"
    text = data.decode("utf-8", "replace").rstrip()
    if not text:
        return "(log is empty)"
    return "\n".join(text.splitlines()[-lines:])


class ManagedProcess:
    """One server process in its own process group, with a pid file and a log
    file in `workdir`, and a readiness check.

    restart() reuses the same argv, so the same port and data directory.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        workdir: Path,
        ready: Callable[[], bool],
        ready_timeout: float = 30.0,
        stop_signal: int = signal.SIGTERM,
        stop_timeout: float = 10.0,
        user: str | None = None,
        env: Mapping[str, str] | None = None,
        description: str | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self.pid_path = workdir / f"{name}.pid"
        self.description = description or name
        self._ready = ready
        self._ready_timeout = ready_timeout
        self._stop_signal = stop_signal
        self._stop_timeout = stop_timeout
        self._user = user
        self._env = dict(env) if env is not None else None
        self._popen: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def __repr__(self) -> str:
        return f"ManagedProcess({self.name!r}, pid={self.pid})"

    @property
    def pid(self) -> int | None:
        """Pid while running (including a crashed child not yet noticed)."""
        return self._popen.pid if self._popen is not None else None

    @property
    def running(self) -> bool:
        return self._popen is not None and not _exited(self._popen)

    def start(self) -> None:
        self.spawn()
        self.wait_ready()

    def spawn(self) -> None:
        """Start the child without waiting for it to answer."""
        if self._popen is not None:
            raise RuntimeError(f"{self.name} is already started (pid {self._popen.pid})")
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"--- {stamp} starting: {' '.join(self.argv)}\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C aimed at the terminal's foreground
                # group does not reach servers; we stop them in order.
                start_new_session=True,
                cwd=self.workdir,
                env=self._env,
                **as_user(self._user),
            )
        write_pid_file(self.pid_path, self._popen.pid)

    def wait_ready(self) -> None:
        """Block until the readiness check passes; on failure stop and explain."""
        popen = self._popen
        if popen is None:
            raise RuntimeError(f"{self.name} was not started")
        deadline = time.monotonic() + self._ready_timeout
        while True:
            if _exited(popen):
                self._reap()
                code = popen.returncode
                raise MissingService(
                    f"{self.description} exited with code {code} right after starting. "
                    f"Last lines of {self.log_path}:\n{log_tail(self.log_path, self._log_offset)}"
                )
            if self._ready():
                return
            if time.monotonic() > deadline:
                tail = log_tail(self.log_path, self._log_offset)
                self.stop()
                raise MissingService(
                    f"{self.description} did not answer within {self._ready_timeout:.0f}s. "
                    f"Last lines of {self.log_path}:\n{tail}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        """Graceful stop, SIGKILL after the grace period. Idempotent."""
        popen = self._popen
        if popen is None:
            return
        if not _exited(popen):
            with contextlib.suppress(ProcessLookupError):
                os.kill(popen.pid, self._stop_signal)
            deadline = time.monotonic() + self._stop_timeout
            while not _exited(popen) and time.monotonic() < deadline:
                time.sleep(0.05)
        self._reap()

    def kill(self) -> None:
        """SIGKILL the whole group, as a crash or OOM kill would. Idempotent."""
        if self._popen is None:
            return
        self._reap()

    def restart(self) -> None:
        self.stop()
        self.start()

    def _reap(self) -> None:
        popen = self._popen
        if popen is None:
            return
        # The unreaped leader keeps its pid, and so the group id, from being
        # reused, so signalling the group here cannot hit a stranger.
        if popen.returncode is None:
            _kill_group(popen.pid)
        popen.wait()
        self._popen = None
        self.pid_path.unlink(missing_ok=True)
