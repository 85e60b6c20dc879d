"""Run a few long-lived commands side by side, like a tiny Procfile runner.

Nothing is restarted: if one child dies the whole set stops, so a broken
process is noticed at once instead of being masked by restarts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import IO, Any

_GRACE_SECONDS = 10.0

_print_lock = threading.Lock()


def _pump(name: str, width: int, stream: IO[bytes], wake: threading.Event) -> None:
    prefix = f"{name:<{width}} | "
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace").rstrip("\n")
        with _print_lock:
            sys.stdout.write(prefix + line + "\n")
            sys.stdout.flush()
    stream.close()
    # End of output usually means the child exited: check promptly.
    wake.set()


def _signal_group(pid: int, sig: int) -> None:
    # Each child leads its own group, so e.g. uvicorn's workers get it too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _stop_all(children: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
    for _, child in children:
        if child.poll() is None:
            _signal_group(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + _GRACE_SECONDS
    for _, child in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(max(0.0, deadline - time.monotonic()))
    for _, child in children:
        # Also sweeps up grandchildren left behind by a leader that did exit.
        _signal_group(child.pid, signal.SIGKILL)
        child.wait()


def _die_with_parent() -> None:
    """Runs in the child before exec: if the supervisor is SIGKILLed it cannot stop its
    children, so the kernel does it — otherwise an orphaned web process would keep the port
    and the next `make run` would fail to start."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: children may outlive a killed supervisor


def run_processes(
    commands: list[tuple[str, list[str]]],
    *,
    env: dict[str, str],
    on_ready: Callable[[], None] | None = None,
) -> int:
    """Run all commands until Ctrl-C/SIGTERM (returns 0) or until one exits
    (returns its exit code, or 1 if it exited with 0); the others are stopped
    with SIGTERM, then SIGKILL after a grace period."""
    wake = threading.Event()
    stopping: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)
        wake.set()

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)

    width = max((len(name) for name, _ in commands), default=0)
    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    pumps: list[threading.Thread] = []
    exit_code = 0
    try:
        for name, argv in commands:
            child = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                # Our own signal handling decides when children stop, and in
                # which order; a terminal Ctrl-C must not hit them directly.
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
            children.append((name, child))
            assert child.stdout is not None
            pump = threading.Thread(
                target=_pump, args=(name, width, child.stdout, wake), daemon=True
            )
            pump.start()
            pumps.append(pump)
        if on_ready is not None:
            on_ready()
        while not stopping:
            wake.wait(0.5)
            wake.clear()
            dead = [
                (name, child.returncode) for name, child in children if child.poll() is not None
            ]
            if dead:
                name, code = dead[0]
                with _print_lock:
                    print(
                        f"{name} exited with code {code}; stopping the others",
                        file=sys.stderr,
                    )
                exit_code = code if code > 0 else 1
                break
    except KeyboardInterrupt:
        pass
    finally:
        _stop_all(children)
        for pump in pumps:
            pump.join(timeout=5.0)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return exit_code
