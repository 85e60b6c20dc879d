"""An S3-compatible server for the media tests: MinIO when its binary is on the PATH, else
moto's server (in-process, from the dev dependencies). Started by the tests, stopped at
their teardown."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class S3Server:
    kind: str  # "minio" or "moto"
    endpoint: str  # http://127.0.0.1:port
    access_key: str
    secret_key: str

    @property
    def enforces_expiry(self) -> bool:
        # moto accepts presigned URLs whatever their age; MinIO refuses expired ones.
        return self.kind == "minio"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_until_up(url: str, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the S3 server exited with {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code < 500:
                return
        time.sleep(0.1)
    raise RuntimeError(f"the S3 server did not answer at {url}")


@contextlib.contextmanager
def running_s3_server() -> Iterator[S3Server]:
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    binary = shutil.which("minio")
    if binary is not None:
        access_key, secret_key = "chirptest", "chirptest-secret"
        with tempfile.TemporaryDirectory(prefix="chirp-minio-") as data:
            env = {
                **os.environ,
                "MINIO_ROOT_USER": access_key,
                "MINIO_ROOT_PASSWORD": secret_key,
                "MINIO_BROWSER": "off",
            }
            process = subprocess.Popen(
                [binary, "server", data, "--address", f"127.0.0.1:{port}", "--quiet"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                _wait_until_up(f"{endpoint}/minio/health/live", process)
                yield S3Server("minio", endpoint, access_key, secret_key)
            finally:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        return

    from moto.server import ThreadedMotoServer

    # werkzeug logs every request to stderr otherwise.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        _wait_until_up(f"{endpoint}/")
        yield S3Server("moto", endpoint, "chirptest", "chirptest-secret")
    finally:
        server.stop()
