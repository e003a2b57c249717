"""Bad input gets a 4xx with an error code; never a 500 or a traceback; nothing written."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import httpx
import pytest

from ..conftest import ControllerFactory

GOOD = {"user_id": "u", "thread_id": "t"}
CASES: list[tuple[str, Any, int, str]] = [
    ("user_id a number", {"user_id": 5, "thread_id": "t"}, 422, "invalid_request"),
    ("thread_id null", {"user_id": "u", "thread_id": None}, 422, "invalid_request"),
    ("missing thread_id", {"user_id": "u"}, 422, "invalid_request"),
    ("empty user_id", {"user_id": "", "thread_id": "t"}, 422, "invalid_request"),
    ("300-character id", {"user_id": "u" * 300, "thread_id": "t"}, 422, "invalid_request"),
    ("control character", {"user_id": "u\n", "thread_id": "t"}, 422, "invalid_request"),
    ("wait too long", {**GOOD, "wait_seconds": 121}, 422, "invalid_request"),
    ("wait negative", {**GOOD, "wait_seconds": -1}, 422, "invalid_request"),
    ("wait a string", {**GOOD, "wait_seconds": "5"}, 422, "invalid_request"),
    ("unknown field", {**GOOD, "admin": True}, 422, "invalid_request"),
    ("a list", [GOOD], 422, "invalid_request"),
]


@pytest.fixture
async def ctl(start_controller: ControllerFactory) -> Any:
    return await start_controller(prewarm_pool_size=0)


@pytest.mark.parametrize(("name", "body", "status", "code"), CASES, ids=[c[0] for c in CASES])
async def test_bad_bodies_are_refused_with_a_code(
    ctl: Any, name: str, body: Any, status: int, code: str
) -> None:
    response = await ctl.client.post("/sessions", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    assert "Traceback" not in response.text
    assert await ctl.controller.store.list_sessions("u") == []  # nothing half-written


async def test_malformed_json_and_wrong_content(ctl: Any) -> None:
    for content in (b"{not json", b"", b"\xff\xfe", b'{"user_id": "u", "thread_id": '):
        response = await ctl.client.post(
            "/sessions", content=content, headers={"content-type": "application/json"}
        )
        assert response.status_code == 422, (content, response.text)
        assert response.json()["error"]["code"] == "invalid_request"


async def test_a_ten_megabyte_body_is_refused_unread(ctl: Any) -> None:
    big = json.dumps({**GOOD, "pad": "x" * 10_000_000}).encode()
    response = await ctl.client.post(
        "/sessions", content=big, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large"

    async def chunks() -> Any:  # no content-length: refused once the limit is passed
        for _ in range(160):
            yield b"x" * 65536

    streamed = await ctl.client.post("/sessions", content=chunks())
    assert streamed.status_code == 413


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic dGVzdA=="},
        {"Authorization": "Bearer"},
    ],
    ids=["missing", "wrong", "basic", "empty"],
)
async def test_missing_or_wrong_token_is_401(ctl: Any, headers: dict[str, str]) -> None:
    async with httpx.AsyncClient(base_url=ctl.url, headers=headers) as client:
        for method, path in [
            ("POST", "/sessions"),
            ("GET", "/sessions/x"),
            ("GET", "/pool"),
            ("DELETE", "/sessions/x"),
            ("GET", "/internal/routes/x"),
        ]:
            response = await client.request(method, path, json=GOOD)
            assert response.status_code == 401, (method, path)
            assert response.json()["error"]["code"] == "unauthorized"
    assert await ctl.controller.store.list_sessions("u") == []


async def test_unknown_sessions_and_paths(ctl: Any) -> None:
    for method, path in [
        ("GET", "/sessions/nope"),
        ("DELETE", "/sessions/nope"),
        ("POST", "/sessions/nope/touch"),
        ("GET", "/internal/routes/nope"),
    ]:
        response = await ctl.client.request(method, path)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "session_not_found"
    missing = await ctl.client.get("/no/such/path")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong_method = await ctl.client.put("/sessions")
    assert wrong_method.status_code == 405
    # Without user_id: every session (the operator listing, issue 23), no longer a 422.
    assert (await ctl.client.get("/sessions")).status_code == 200


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian: prometheus)")
async def test_metrics_pass_promtool(start_controller: ControllerFactory) -> None:
    ctl = await start_controller(prewarm_pool_size=1)
    await ctl.wait_idle_pods(1)
    await ctl.open("u", "t1")
    await ctl.open("u", "t1")
    text = (await ctl.client.get("/metrics")).text
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=text.encode(), capture_output=True
    )
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
    for family in [
        "sandbox_pool_pods",
        "sandbox_sessions",
        "sandbox_session_requests_total",
        "sandbox_session_assign_seconds",
        "sandbox_pod_startup_seconds",
        "sandbox_reclaims_total",
        "sandbox_max_total_jobs",
        "sandbox_prewarm_pool_size",
        "sandbox_capacity_blocked",
        "sandbox_is_leader",
    ]:
        assert f"\n{family}" in text, family
    assert 'sandbox_session_requests_total{outcome="warm"} 1.0' in text
    assert 'sandbox_session_requests_total{outcome="existing"} 1.0' in text
    assert 'sandbox_session_assign_seconds_count{path="warm"} 1.0' in text
