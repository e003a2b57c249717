"""Issue 17 rows 5 and 8: a bad claim payload fails its session, not the pool, and a
slow claim does not hold POST /sessions past wait_seconds.

A real controller over HTTP (SQLite, the local backend) whose sandboxes are real
devsandbox processes. The devsandbox refuses (422) a claim whose files it cannot
write: the issue's payload ("x" and "x/y"), which the API now refuses before any pod
is touched, so it is handed to the scheduler directly, as a sandbox image stricter
than the API would see it; and a file name too long for the filesystem, which the API
accepts. A hung claim hook is a real sandbox process stopped with SIGSTOP."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from pathlib import Path
from typing import Any

import pytest

from sandbox_controller.clock import ManualClock
from sandbox_controller.hooks import ClaimFile, ClaimPayload

from ..conftest import ControllerFactory, RunningController
from ..eventually import eventually

WARM = 3
# Each session's claim costs at most this many pods (SANDBOX_MAX_CLAIM_ATTEMPTS's default).
MAX_ATTEMPTS = 3


async def metric(ctl: RunningController, line: str) -> float:
    text = (await ctl.client.get("/metrics")).text
    match = re.search(rf"^{re.escape(line)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def pods_started(ctl: RunningController) -> float:
    return await metric(ctl, "sandbox_pod_startup_seconds_count")


async def session(ctl: RunningController, session_id: str) -> dict[str, Any]:
    body: dict[str, Any] = (await ctl.client.get(f"/sessions/{session_id}")).json()
    return body


async def until_ended(ctl: RunningController, session_id: str) -> dict[str, Any]:
    async def ended() -> bool:
        return (await session(ctl, session_id))["state"] == "ended"

    await eventually(ended, within=30, what=f"session {session_id} to end")
    return await session(ctl, session_id)


async def assert_the_pool_held(ctl: RunningController, ended: dict[str, Any]) -> None:
    """The refused session cost at most MAX_ATTEMPTS pods, said why, and the pool is
    full again; then another user's open is a warm claim."""
    assert ended["end_reason"] == "claim_rejected"
    claim_answer = ended["end_detail"]["claim_answer"]
    assert claim_answer.startswith("refused by 2 sandboxes; the last answered HTTP 422: ")
    assert '"invalid_request"' in claim_answer and "files: cannot write" in claim_answer
    assert len(claim_answer) <= 300
    tried = await metric(ctl, "sandbox_claim_hook_failures_total")
    assert tried == 2  # refused by two pods: a third is never tried
    assert await metric(ctl, 'sandbox_reclaims_total{reason="claim_rejected"}') == 1.0
    await ctl.wait_idle_pods(WARM)  # refilled
    # Pods ever started: the first warm ones and one replacement per pod tried.
    assert await pods_started(ctl) <= WARM + MAX_ATTEMPTS

    warm_before = await metric(ctl, 'sandbox_session_requests_total{outcome="warm"}')
    bob = await ctl.client.post("/sessions", json={"user_id": "bob", "thread_id": "b1"})
    assert bob.status_code == 201 and bob.json()["state"] == "ready", bob.text
    after = await metric(ctl, 'sandbox_session_requests_total{outcome="warm"}')
    assert after == warm_before + 1  # served from the warm pool, its claim accepted
    assert await metric(ctl, "sandbox_claim_hook_failures_total") == tried


@pytest.mark.parametrize(
    "files",
    [
        [{"path": "x", "content": "1"}, {"path": "x/y", "content": "2"}],
        [{"path": ".", "content": "1"}],
        [{"path": "a/./b", "content": "1"}],
        [{"path": "a\\..\\..\\b", "content": "1"}],
        [{"path": "x", "content": "1"}, {"path": "x", "content": "2"}],
        [{"path": "x", "content": "1"}, {"path": "x", "content": "1"}],
    ],
    ids=["file-and-dir", "dot", "inner-dot", "backslash", "twice", "same-twice"],
)  # fmt: skip
async def test_the_api_refuses_the_issues_payloads_before_any_pod_is_tried(
    start_controller: ControllerFactory, files: list[dict[str, str]]
) -> None:
    ctl = await start_controller(prewarm_pool_size=1)
    refused = await ctl.client.post(
        "/sessions", json={"user_id": "mallory", "thread_id": "m1", "files": files}
    )
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error["code"] == "invalid_request" and error["message"].startswith("files")
    if files[0]["path"] == "x":  # a conflict names its path
        assert "'x'" in error["message"]
    assert await metric(ctl, "sandbox_claim_hook_failures_total") == 0.0


async def test_a_payload_every_sandbox_refuses_costs_at_most_three_pods(
    start_controller: ControllerFactory,
) -> None:
    """The issue's payload, as a sandbox stricter than the API would see it: given to
    the scheduler directly (the API refuses it now)."""
    ctl = await start_controller(prewarm_pool_size=WARM)
    await ctl.wait_idle_pods(WARM)
    scheduler = ctl.controller.scheduler
    assert scheduler is not None
    payload = ClaimPayload(files=(ClaimFile("x", "secret-one"), ClaimFile("x/y", "secret-two")))
    opened = await scheduler.open_session("mallory", "m1", 30.0, payload)
    ended = await until_ended(ctl, opened.session.id)
    assert "secret-" not in json.dumps(ended)
    await assert_the_pool_held(ctl, ended)


async def test_a_payload_the_api_takes_and_every_sandbox_refuses_ends_its_session(
    start_controller: ControllerFactory,
) -> None:
    """Valid to the API (255 characters at most), too long for the sandbox's filesystem
    (NAME_MAX is 255 bytes): every devsandbox refuses it. Through the HTTP API."""
    ctl = await start_controller(prewarm_pool_size=WARM)
    await ctl.wait_idle_pods(WARM)
    files = [{"path": "é" * 200, "content": "never written"}]
    response = await ctl.client.post(
        "/sessions",
        json={"user_id": "mallory", "thread_id": "m1", "files": files, "wait_seconds": 30},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["state"] == "ended"  # the caller hears it at once, with why
    assert body["end_detail"]["claim_answer"].endswith('File name too long"}}')
    await assert_the_pool_held(ctl, await session(ctl, body["id"]))


def warm_pod_pid(ctl: RunningController) -> int:
    [state] = (Path(ctl.settings.state_dir) / "pods").glob("*.json")
    pid: int = json.loads(state.read_text())["pid"]
    return pid


async def test_a_hung_claim_hook_answers_provisioning_by_wait_seconds(
    start_controller: ControllerFactory,
) -> None:
    """The warm sandbox is stopped (SIGSTOP): its claim hook accepts the connection and
    says nothing. wait_seconds is 1 on the scheduler's clock; the hook's own timeout is
    30 s of real time: the answer comes at the wait, long before the hook gives up."""
    clock = ManualClock(start=2_000_000_000.0)
    ctl = await start_controller(clock=clock, prewarm_pool_size=1, hook_timeout="30s")
    await ctl.wait_idle_pods(1)
    pid = warm_pod_pid(ctl)
    os.kill(pid, signal.SIGSTOP)
    try:
        request = asyncio.create_task(
            ctl.client.post(
                "/sessions", json={"user_id": "ann", "thread_id": "a1", "wait_seconds": 1}
            )
        )

        async def claiming() -> bool:
            return int((await ctl.pool())["pods"]["assigned"]) == 1

        await eventually(claiming, within=10, what="the claim to start")
        assert not request.done()  # the wait has not run out on the scheduler's clock
        clock.advance(1.0)
        loop = asyncio.get_running_loop()
        started = loop.time()
        response = await asyncio.wait_for(request, timeout=15)  # the hook's is 30 s
        assert loop.time() - started < 15
    finally:
        os.kill(pid, signal.SIGCONT)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["state"] == "provisioning"
    assert body["detail"] == "handing the session to its sandbox (claim hook)"

    async def ready() -> bool:  # the sandbox woke up and took the claim after all
        return (await session(ctl, body["id"]))["state"] == "ready"

    await eventually(ready, within=20, what="the late claim to be accepted")
