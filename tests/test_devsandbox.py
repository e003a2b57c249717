"""The devsandbox implements the whole sandbox contract: tested against a real process."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

SECRET = "pod-claim-secret"
CLAIM = {
    "session_id": "sess-1",
    "user_id": "ada",
    "thread_id": "thread-9",
    "metadata": {"workspace": "ws-3"},
    "env": {"OPENAI_API_KEY": "sk-very-secret-value", "REGION": "eu-west"},
    "files": [{"path": "config/agent.toml", "content": "model = 'small'\n"}],
}


async def start_devsandbox(
    workdir: Path, secret: str | None
) -> tuple[asyncio.subprocess.Process, str]:
    env = {k: v for k, v in os.environ.items() if k != "SANDBOX_CLAIM_SECRET"}
    if secret is not None:
        env["SANDBOX_CLAIM_SECRET"] = secret
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sandbox_controller.devsandbox", "--port", "0",
        "--workdir", str(workdir), stdout=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
    return proc, line.split()[1]


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    proc, address = await start_devsandbox(tmp_path / "work", SECRET)
    try:
        async with httpx.AsyncClient(base_url=f"http://{address}", timeout=10) as client:
            yield client
    finally:
        proc.terminate()
        await proc.wait()


def with_secret(secret: str = SECRET) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def test_claim_records_the_session_and_writes_its_files(
    sandbox: httpx.AsyncClient, tmp_path: Path
) -> None:
    response = await sandbox.post("/_sandbox/claim", json=CLAIM, headers=with_secret())
    assert response.status_code == 204

    received = (await sandbox.get("/_sandbox/claim", headers=with_secret())).json()
    assert received["env"] == CLAIM["env"]
    assert received["metadata"] == {"workspace": "ws-3"}
    assert (tmp_path / "work" / "config" / "agent.toml").read_text() == "model = 'small'\n"


async def test_the_index_page_names_the_user_and_env_names_never_values(
    sandbox: httpx.AsyncClient,
) -> None:
    before = await sandbox.get("/")
    assert before.status_code == 200 and "Not claimed" in before.text
    assert "/_sandbox/claim" in before.text  # the endpoints are listed

    await sandbox.post("/_sandbox/claim", json=CLAIM, headers=with_secret())
    page = (await sandbox.get("/")).text
    assert "ada" in page and "thread-9" in page
    assert "OPENAI_API_KEY" in page and "REGION" in page
    assert "sk-very-secret-value" not in page and "eu-west" not in page


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}])
async def test_hooks_refuse_a_caller_without_the_claim_secret(
    sandbox: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    assert (await sandbox.post("/_sandbox/claim", json=CLAIM, headers=headers)).status_code == 401
    assert (await sandbox.get("/_sandbox/status", headers=headers)).status_code == 401
    assert (await sandbox.post("/_sandbox/release", headers=headers)).status_code == 401
    assert (await sandbox.get("/_sandbox/claim", headers=headers)).status_code == 401
    assert "Not claimed" in (await sandbox.get("/")).text


async def test_a_pod_without_a_claim_secret_cannot_be_claimed(tmp_path: Path) -> None:
    proc, address = await start_devsandbox(tmp_path, None)
    try:
        async with httpx.AsyncClient(base_url=f"http://{address}") as client:
            response = await client.post(
                "/_sandbox/claim", json=CLAIM, headers=with_secret("anything")
            )
            assert response.status_code == 401
    finally:
        proc.terminate()
        await proc.wait()


async def test_a_second_claim_is_refused(sandbox: httpx.AsyncClient) -> None:
    await sandbox.post("/_sandbox/claim", json=CLAIM, headers=with_secret())
    again = await sandbox.post(
        "/_sandbox/claim", json={**CLAIM, "user_id": "eve"}, headers=with_secret()
    )
    assert again.status_code == 409
    assert (await sandbox.get("/_sandbox/claim", headers=with_secret())).json()["user_id"] == "ada"


@pytest.mark.parametrize(
    "body",
    [
        {**CLAIM, "files": [{"path": "../escape.txt", "content": "x"}]},
        {**CLAIM, "files": [{"path": "/etc/escape.txt", "content": "x"}]},
        {**CLAIM, "env": {"N": 1}},
        {"user_id": "ada"},
    ],
)
async def test_a_bad_claim_is_a_422_and_claims_nothing(
    sandbox: httpx.AsyncClient, body: dict[str, object], tmp_path: Path
) -> None:
    response = await sandbox.post("/_sandbox/claim", json=body, headers=with_secret())
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"
    assert (await sandbox.get("/_sandbox/claim", headers=with_secret())).status_code == 404
    assert not (tmp_path / "escape.txt").exists()


async def test_the_busy_switch_is_what_status_answers(sandbox: httpx.AsyncClient) -> None:
    status = await sandbox.get("/_sandbox/status", headers=with_secret())
    assert status.json() == {"busy": False, "detail": ""}

    await sandbox.post("/_sandbox/busy", json={"busy": True, "detail": "running tests"})
    status = await sandbox.get("/_sandbox/status", headers=with_secret())
    assert status.json() == {"busy": True, "detail": "running tests"}
    assert "busy: running tests" in (await sandbox.get("/")).text

    await sandbox.post("/_sandbox/busy", json={"busy": False})
    assert (await sandbox.get("/_sandbox/status", headers=with_secret())).json()["busy"] is False
    assert (await sandbox.post("/_sandbox/busy", json={"busy": "yes?"})).status_code == 422


async def test_release_is_recorded(sandbox: httpx.AsyncClient) -> None:
    await sandbox.post("/_sandbox/claim", json=CLAIM, headers=with_secret())
    assert (await sandbox.post("/_sandbox/release", headers=with_secret())).status_code == 204
    assert (await sandbox.get("/_sandbox/claim", headers=with_secret())).json()["released"]
    assert "released" in (await sandbox.get("/")).text
