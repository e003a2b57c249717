"""Claim-time configuration (issue 12 item 2) end to end: POST /sessions with env,
files and metadata, a real controller over HTTP, real devsandbox processes (local
backend) that implement the claim hook, or none of the hooks."""

from __future__ import annotations

import json
import logging
import re
import secrets
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox_controller.api.schemas import (
    ENV_MAX_KEYS,
    ENV_TOTAL_MAX,
    ENV_VALUE_MAX,
    FILE_CONTENT_MAX,
    FILES_MAX,
    FILES_TOTAL_MAX,
    METADATA_KEY_MAX,
    METADATA_MAX_KEYS,
    METADATA_VALUE_MAX,
)
from sandbox_controller.backends.base import LABEL_CREATE_ID
from sandbox_controller.backends.local import LocalBackend
from sandbox_controller.sandbox_contract import claim_secret, hook_key

from ..conftest import ControllerFactory, RunningController
from ..eventually import eventually

TOKEN_SECRET = b"test-token-secret"  # the start_controller fixture's


async def pod_hook_secret(ctl: RunningController, pod: str) -> str:
    """What the controller computes for the pod: from its create id label."""
    labels = ctl.sandboxes()[pod]["labels"]
    return claim_secret(hook_key(TOKEN_SECRET), labels[LABEL_CREATE_ID])


async def sandbox_claim(ctl: RunningController, pod: str, address: str) -> dict[str, Any]:
    secret = await pod_hook_secret(ctl, pod)
    async with httpx.AsyncClient() as direct:
        response = await direct.get(
            f"http://{address}/_sandbox/claim", headers={"Authorization": f"Bearer {secret}"}
        )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def address_of(ctl: RunningController, session_id: str) -> str:
    route = (await ctl.client.get(f"/internal/routes/{session_id}")).json()
    address: str = route["address"]
    return address


async def metric(ctl: RunningController, line: str) -> float:
    text = (await ctl.client.get("/metrics")).text
    match = re.search(rf"^{re.escape(line)} (\S+)$", text, re.MULTILINE)
    assert match, f"{line} not in /metrics"
    return float(match.group(1))


def database_text(path: Path) -> str:
    """Every row of every table, and the raw bytes of the database and its journal."""
    rows = []
    with sqlite3.connect(path) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            rows.extend(repr(row) for row in db.execute(f'SELECT * FROM "{table}"'))
    raw = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*") if p.is_file()).decode(
        "latin-1"
    )
    return "\n".join(rows) + raw


async def test_env_and_files_reach_a_warm_sandbox_and_nowhere_else(
    start_controller: ControllerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    env_value = f"env-secret-{secrets.token_hex(8)}"
    file_content = f"file-secret-{secrets.token_hex(8)}\nline two\n"
    ctl = await start_controller(prewarm_pool_size=2, log_level="debug")
    await ctl.wait_idle_pods(2)
    response = await ctl.client.post(
        "/sessions",
        json={
            "user_id": "alice",
            "thread_id": "t1",
            "metadata": {"workspace": "w-42", "app": "crm"},
            "env": {"API_KEY": env_value, "EMPTY": ""},
            "files": [{"path": "config/app.env", "content": file_content}],
        },
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["state"] == "ready" and body["metadata"] == {"workspace": "w-42", "app": "crm"}
    assert await metric(ctl, 'sandbox_session_requests_total{outcome="warm"}') == 1.0
    assert await metric(ctl, "sandbox_claim_hook_failures_total") == 0.0

    claim = await sandbox_claim(ctl, body["pod"], await address_of(ctl, body["id"]))
    assert (claim["session_id"], claim["user_id"], claim["thread_id"]) == (
        body["id"],
        "alice",
        "t1",
    )
    assert claim["env"] == {"API_KEY": env_value, "EMPTY": ""}
    assert claim["metadata"] == {"workspace": "w-42", "app": "crm"}
    assert claim["files"] == [{"path": "config/app.env", "content": file_content}]
    assert (Path(claim["workdir"]) / "config/app.env").read_text() == file_content

    # A retry for the thread is the same session; its env is not sent again.
    retry = await ctl.client.post(
        "/sessions",
        json={"user_id": "alice", "thread_id": "t1", "env": {"API_KEY": "changed"}},
    )
    assert retry.status_code == 200 and retry.json()["id"] == body["id"]
    assert retry.json()["metadata"] == {"workspace": "w-42", "app": "crm"}
    again = await sandbox_claim(ctl, body["pod"], await address_of(ctl, body["id"]))
    assert again["env"] == {"API_KEY": env_value, "EMPTY": ""}

    fetched = await ctl.client.get(f"/sessions/{body['id']}")
    listed = await ctl.client.get("/sessions", params={"user_id": "alice"})
    assert fetched.json()["metadata"] == {"workspace": "w-42", "app": "crm"}
    await ctl.client.delete(f"/sessions/{body['id']}")
    await ctl.stop()  # every write is on disk

    for secret in (env_value, file_content.splitlines()[0]):
        assert secret not in fetched.text and secret not in listed.text
        assert secret not in database_text(tmp_path / "sandbox.db")
        assert secret not in caplog.text
    # The log was captured, down to debug, from the controller and its HTTP clients.
    names = {r.name for r in caplog.records}
    assert "sandbox_controller.scheduler.loop" in names and "httpx" in names


async def test_a_failed_claim_costs_that_pod_and_the_next_warm_pod_serves(
    start_controller: ControllerFactory,
) -> None:
    ctl = await start_controller(prewarm_pool_size=2)
    await ctl.wait_idle_pods(2)
    scheduler = ctl.controller.scheduler
    assert scheduler is not None and scheduler._pool is not None
    # The pod the pool hands out next; claimed beforehand by someone else, so its
    # claim hook answers 409 already_claimed.
    first = scheduler._pool.inventory.oldest_fresh_idle()
    assert first is not None and first.address is not None
    secret = await pod_hook_secret(ctl, first.name)
    async with httpx.AsyncClient() as direct:
        taken = await direct.post(
            f"http://{first.address}/_sandbox/claim",
            headers={"Authorization": f"Bearer {secret}"},
            json={"session_id": "x", "user_id": "mallory", "thread_id": "x"},
        )
    assert taken.status_code == 204

    response = await ctl.client.post(
        "/sessions", json={"user_id": "alice", "thread_id": "t1", "env": {"TOKEN": "abc"}}
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["state"] == "ready" and body["pod"] != first.name
    assert await metric(ctl, 'sandbox_session_requests_total{outcome="warm"}') == 1.0
    assert await metric(ctl, "sandbox_claim_hook_failures_total") == 1.0
    claim = await sandbox_claim(ctl, body["pod"], await address_of(ctl, body["id"]))
    assert claim["session_id"] == body["id"] and claim["env"] == {"TOKEN": "abc"}

    async def first_deleted() -> bool:
        return first.name not in ctl.sandboxes()

    await eventually(first_deleted, within=15, what="the refused pod to be deleted")


async def test_a_sandbox_without_hooks_still_serves_warm(
    start_controller: ControllerFactory, tmp_path: Path
) -> None:
    backend = LocalBackend(
        tmp_path / "state",
        stop_on_close=True,
        claim_key=hook_key(TOKEN_SECRET),
        sandbox_args=("--no-hooks",),
    )
    ctl = await start_controller(prewarm_pool_size=1, backend_object=backend)
    await ctl.wait_idle_pods(1)
    response = await ctl.client.post(
        "/sessions",
        json={"user_id": "alice", "thread_id": "t1", "metadata": {"k": "v"}, "env": {"A": "b"}},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["state"] == "ready" and body["metadata"] == {"k": "v"}
    assert await metric(ctl, 'sandbox_session_requests_total{outcome="warm"}') == 1.0
    assert await metric(ctl, "sandbox_claim_hook_failures_total") == 0.0
    address = await address_of(ctl, body["id"])
    async with httpx.AsyncClient() as direct:
        assert (await direct.get(f"http://{address}/_sandbox/claim")).status_code == 404
        assert (await direct.post(f"http://{address}/echo", content=b"hi")).content == b"hi"


async def test_with_hooks_off_env_and_files_are_refused_and_metadata_kept(
    start_controller: ControllerFactory,
) -> None:
    ctl = await start_controller(prewarm_pool_size=1, hooks=False)
    for extra in ({"env": {"A": "b"}}, {"files": [{"path": "a", "content": "b"}]}):
        refused = await ctl.client.post(
            "/sessions", json={"user_id": "u", "thread_id": "t", **extra}
        )
        assert refused.status_code == 422
        assert refused.json()["error"]["code"] == "hooks_disabled"
    await ctl.wait_idle_pods(1)
    ok = await ctl.client.post(
        "/sessions", json={"user_id": "u", "thread_id": "t", "metadata": {"k": "v"}}
    )
    assert ok.status_code == 201 and ok.json()["state"] == "ready"
    assert ok.json()["metadata"] == {"k": "v"}


def _over_limits() -> list[tuple[str, dict[str, Any]]]:
    big = "x" * ENV_VALUE_MAX
    return [
        ("env value", {"env": {"A": big + "x"}}),
        ("env keys", {"env": {f"K{i}": "" for i in range(ENV_MAX_KEYS + 1)}}),
        ("env total", {"env": {f"K{i}": big for i in range(ENV_TOTAL_MAX // ENV_VALUE_MAX)}}),
        ("metadata keys", {"metadata": {f"k{i}": "" for i in range(METADATA_MAX_KEYS + 1)}}),
        ("metadata key", {"metadata": {"k" * (METADATA_KEY_MAX + 1): ""}}),
        ("metadata value", {"metadata": {"k": "v" * (METADATA_VALUE_MAX + 1)}}),
        ("files", {"files": [{"path": f"f{i}", "content": ""} for i in range(FILES_MAX + 1)]}),
        ("file content", {"files": [{"path": "f", "content": "x" * (FILE_CONTENT_MAX + 1)}]}),
        (
            "files total",
            {
                "files": [
                    {"path": f"f{i}", "content": "x" * FILE_CONTENT_MAX}
                    for i in range(FILES_TOTAL_MAX // FILE_CONTENT_MAX + 1)
                ]
            },
        ),
    ]


def _malformed() -> list[tuple[str, dict[str, Any]]]:
    return [
        ("env name", {"env": {"1A": "b"}}),
        ("env name with =", {"env": {"A=B": "b"}}),
        ("env NUL", {"env": {"A": "b\x00"}}),
        ("metadata control", {"metadata": {"k": "a\nb"}}),
        ("path ..", {"files": [{"path": "a/../../etc/passwd", "content": ""}]}),
        ("absolute path", {"files": [{"path": "/etc/passwd", "content": ""}]}),
        ("env not a string", {"env": {"A": 1}}),
    ]


async def test_claim_limits_are_422_and_the_largest_valid_body_is_accepted(
    start_controller: ControllerFactory,
) -> None:
    ctl = await start_controller(prewarm_pool_size=1)
    base = {"user_id": "u", "thread_id": "t"}
    for what, extra in _over_limits():
        refused = await ctl.client.post("/sessions", json={**base, **extra})
        assert refused.status_code == 422, (what, refused.text)
        assert refused.json()["error"]["code"] == "claim_limit_exceeded", (what, refused.text)
    for what, extra in _malformed():
        refused = await ctl.client.post("/sessions", json={**base, **extra})
        assert refused.status_code == 422, (what, refused.text)
        assert refused.json()["error"]["code"] == "invalid_request", (what, refused.text)

    # Every limit reached at once, in characters that JSON escapes at 12 bytes each:
    # the body limit leaves room for it, and the sandbox's hook takes it.
    wide = "\U0001f600"
    value_len = ENV_TOTAL_MAX // ENV_MAX_KEYS - 4
    largest = {
        **base,
        "metadata": {
            f"{i:02d}" + "k" * (METADATA_KEY_MAX - 2): wide * METADATA_VALUE_MAX
            for i in range(METADATA_MAX_KEYS)
        },
        "env": {f"K{i:03d}": wide * value_len for i in range(ENV_MAX_KEYS)},
        "files": [
            {"path": f"{i:02d}" + "p" * 253, "content": wide * (FILES_TOTAL_MAX // FILES_MAX)}
            for i in range(FILES_MAX)
        ],
    }
    raw = json.dumps(largest, ensure_ascii=True).encode()
    assert len(raw) > 3_000_000
    await ctl.wait_idle_pods(1)
    response = await ctl.client.post(
        "/sessions", content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == 201, response.text[:500]
    assert response.json()["state"] == "ready"
    assert await metric(ctl, "sandbox_claim_hook_failures_total") == 0.0
