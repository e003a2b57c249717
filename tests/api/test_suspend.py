"""Suspend and resume over real HTTP with real sandbox processes (local backend), the
file store and the fake clock: an idle session gives its pod back and keeps its
workspace; the next POST /sessions for its thread brings it back on another pod."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from sandbox_controller.backends.base import LABEL_CREATE_ID
from sandbox_controller.clock import ManualClock

from ..conftest import ControllerFactory, RunningController
from ..eventually import eventually

START = 2_000_000_000.0
IDLE_AFTER = 300.0
IDLE_TIMEOUT = 3600.0


async def start(
    start_controller: ControllerFactory, clock: ManualClock, tmp_path: Path, **kw: Any
) -> RunningController:
    values: dict[str, Any] = {
        "prewarm_pool_size": 2,
        "max_sessions_per_user": 2,
        "idle_after": IDLE_AFTER,
        "idle_timeout": IDLE_TIMEOUT,
        "hook_timeout": "1s",
        "release_timeout": "1s",
        "idle_action": "suspend",
        "snapshot_store": f"file://{tmp_path}/archives",
        "snapshot_timeout": "10s",
    }
    values.update(kw)
    ctl = await start_controller(clock=clock, **values)
    await ctl.wait_idle_pods(values["prewarm_pool_size"])
    return ctl


async def claimed(ctl: RunningController, pod: str) -> dict[str, Any]:
    """What the pod's sandbox says it was claimed with (its workdir among it), asked
    with its own claim secret, as the controller asks."""
    sandbox = ctl.sandboxes()[pod]
    hooks = ctl.controller.hooks
    assert hooks is not None
    secret = hooks.secret(sandbox["labels"][LABEL_CREATE_ID])
    async with httpx.AsyncClient() as client:
        response = await client.get(
            f"http://127.0.0.1:{sandbox['port']}/_sandbox/claim",
            headers={"authorization": f"Bearer {secret}"},
        )
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


async def session(ctl: RunningController, sid: str) -> dict[str, Any]:
    body: dict[str, Any] = (await ctl.client.get(f"/sessions/{sid}")).json()
    return body


async def until_state(ctl: RunningController, sid: str, state: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    async def reached() -> bool:
        seen.update(await session(ctl, sid))
        return bool(seen["state"] == state)

    await eventually(reached, within=20, what=f"session {sid} to be {state}")
    return seen


def archives(tmp_path: Path) -> list[str]:
    root = tmp_path / "archives"
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name[0] != "."
    )


async def open_with_work(ctl: RunningController, user: str, thread: str) -> dict[str, Any]:
    """A session whose workspace holds a claimed file and one its agent wrote."""
    response = await ctl.client.post(
        "/sessions",
        json={
            "user_id": user,
            "thread_id": thread,
            "files": [{"path": "notes/plan.md", "content": "step 1"}],
        },
    )
    assert response.status_code == 201, response.text
    opened: dict[str, Any] = response.json()
    workdir = Path((await claimed(ctl, opened["pod"]))["workdir"])
    (workdir / "src").mkdir()
    (workdir / "src" / "main.py").write_text("print('written after the claim')\n")
    return opened


async def test_an_idle_session_is_suspended_and_resumed_with_its_files_on_another_pod(
    start_controller: ControllerFactory, tmp_path: Path
) -> None:
    clock = ManualClock(start=START)
    ctl = await start(start_controller, clock, tmp_path)
    opened = await open_with_work(ctl, "ann", "t1")
    first_pod = opened["pod"]
    assert opened["snapshot"] is None and opened["resumed"] is False

    clock.advance(IDLE_TIMEOUT + 1)  # asked first (not busy), then suspended
    suspended = await until_state(ctl, opened["id"], "suspended")
    assert suspended["pod"] is None and suspended["end_reason"] is None
    assert suspended["snapshot"]["bytes"] > 0
    assert suspended["connect"] is not None  # the proxy wakes it with the same token
    (key,) = archives(tmp_path)
    assert key.startswith(f"{opened['id']}/")

    async def pod_gone() -> bool:
        return first_pod not in ctl.sandboxes()

    await eventually(pod_gone, within=20, what="the suspended session's pod to go")
    pool = await ctl.pool()
    assert pool["pods"]["assigned"] == 0  # its cap slot is free
    metrics = (await ctl.client.get("/metrics")).text
    assert 'sandbox_sessions{state="suspended"} 1.0' in metrics
    assert 'sandbox_snapshots_total{outcome="ok"} 1.0' in metrics
    assert "sandbox_suspend_seconds_count 1.0" in metrics

    again = await ctl.open("ann", "t1")  # the editor's usual call for the thread
    assert again.status_code == 200, again.text
    resumed = again.json()
    assert resumed["id"] == opened["id"]
    assert resumed["state"] == "ready" and resumed["resumed"] is True
    assert resumed["pod"] not in (None, first_pod)
    assert resumed["snapshot"] is None
    workdir = Path((await claimed(ctl, resumed["pod"]))["workdir"])
    assert (workdir / "notes" / "plan.md").read_text() == "step 1"
    assert (workdir / "src" / "main.py").read_text() == "print('written after the claim')\n"

    async def archive_deleted() -> bool:
        return archives(tmp_path) == []

    await eventually(archive_deleted, within=20, what="the archive to be deleted")
    metrics = (await ctl.client.get("/metrics")).text
    assert 'sandbox_snapshots_total{outcome="restored"} 1.0' in metrics
    assert "sandbox_resume_seconds_count 1.0" in metrics
    assert 'sandbox_sessions{state="suspended"} 0.0' in metrics
