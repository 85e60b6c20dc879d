"""Property-based fuzzing of the JSON API with schemathesis, against a real `chirp serve`.

Every operation of the served OpenAPI document gets generated requests (valid and invalid);
none may answer 5xx, and every documented response must match its schema. The schemathesis
CLI runs as a subprocess: its own event loop and warnings stay out of pytest's."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from launcher.process import free_port
from tests.support import ServerProcess, unique_name
from web.settings import Settings

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 8
SEED = 20261125


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[ServerProcess]:
    fuzz_settings = settings.with_overrides(
        port=free_port(),
        tweets_per_hour=1_000_000,
        sign_ups_per_hour=1_000_000,
        sign_in_attempts_per_minute=1_000_000,
    )
    process = ServerProcess(fuzz_settings, "serve")
    try:
        await process.wait_ready()
        yield process
    finally:
        process.stop()


async def test_no_generated_request_gets_a_server_error_or_a_response_off_its_schema(
    server: ServerProcess, tmp_path: Path
) -> None:
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        response = await client.post(
            "/api/v1/accounts", json={"username": unique_name("fz"), "password": "fuzzing pass 1"}
        )
        assert response.status_code == 201, response.text
        token = response.json()["token"]

    schemathesis = Path(sys.executable).parent / "schemathesis"
    result = subprocess.run(
        [
            str(schemathesis),
            "run",
            f"{server.base_url}/schema/openapi.json",
            "--checks",
            "not_a_server_error,response_schema_conformance",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            str(SEED),
            "--header",
            f"Authorization: Bearer {token}",
            # Signing out would revoke the token the rest of the run uses.
            "--exclude-path",
            "/api/v1/sessions/current",
            "--phases",
            "examples,coverage,fuzzing",
            "--workers",
            "4",
            "--request-timeout",
            "10",
            "--no-color",
        ],
        cwd=tmp_path,  # its report directory, if any, goes there
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:] + "\n--- server log ---\n" + server.stderr()
    assert " passed" in output, output[-4000:]
