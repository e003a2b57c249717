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
    start_controller: ControllerFactory, tmp_path: Path, database_url: str
) -> None:
    """On SQLite and on PostgreSQL, with the file store."""
    clock = ManualClock(start=START)
    ctl = await start(start_controller, clock, tmp_path, database_url=database_url)
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


async def test_suspend_and_resume_on_request_and_the_proxys_wake_up(
    start_controller: ControllerFactory, tmp_path: Path
) -> None:
    clock = ManualClock(start=START)
    ctl = await start(start_controller, clock, tmp_path)
    opened = await open_with_work(ctl, "bob", "t1")
    sid = opened["id"]

    asked = await ctl.client.post(f"/sessions/{sid}/suspend")
    assert asked.status_code == 202, asked.text
    assert asked.json()["state"] in ("suspending", "suspended")
    await until_state(ctl, sid, "suspended")
    again = await ctl.client.post(f"/sessions/{sid}/suspend")  # idempotent
    assert again.status_code == 202 and again.json()["state"] == "suspended"

    # The proxy's view: no route while suspended, a resume on its credential, then the route.
    route = await ctl.client.get(f"/internal/routes/{sid}")
    assert route.status_code == 409, route.text
    assert route.json()["error"]["code"] == "session_suspended"
    woken = await ctl.client.post(f"/internal/sessions/{sid}/resume")
    assert woken.status_code == 202, woken.text
    assert woken.json()["state"] in ("resuming", "ready")

    async def routed() -> bool:
        return (await ctl.client.get(f"/internal/routes/{sid}")).status_code == 200

    await eventually(routed, within=20, what="the resumed session's route")
    ready = await session(ctl, sid)
    assert ready["state"] == "ready" and ready["resumed"] is True
    workdir = Path((await claimed(ctl, ready["pod"]))["workdir"])
    assert (workdir / "src" / "main.py").exists()

    # Resuming a ready session answers it as it is; the public resume does the same.
    same = await ctl.client.post(f"/sessions/{sid}/resume", json={"wait_seconds": 5})
    assert same.status_code == 200 and same.json()["pod"] == ready["pod"]

    await ctl.client.post(f"/sessions/{sid}/suspend")
    await until_state(ctl, sid, "suspended")
    resumed = await ctl.client.post(f"/sessions/{sid}/resume", json={"wait_seconds": 30})
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["state"] == "ready" and resumed.json()["resumed"] is True


async def test_suspended_sessions_count_toward_no_limit_and_reclaim_suspends(
    start_controller: ControllerFactory, tmp_path: Path
) -> None:
    clock = ManualClock(start=START)
    ctl = await start(start_controller, clock, tmp_path, max_sessions_per_user=1, max_total_jobs=2)
    first = await open_with_work(ctl, "cat", "t1")
    clock.advance(IDLE_AFTER + 10)  # idle, so reclaimable: reclaim suspends it
    second = await ctl.open("cat", "t2")
    assert second.status_code == 201, second.text
    assert second.json()["reclaimed_session_id"] == first["id"]
    reclaimed = await until_state(ctl, first["id"], "suspended")
    assert reclaimed["end_reason"] is None and reclaimed["snapshot"]["bytes"] > 0

    # At the limit with the second one active, the first cannot come back: 429, and it
    # stays suspended with its archive.
    refused = await ctl.open("cat", "t1")
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "user_session_limit"
    assert "Retry-After" in refused.headers
    assert (await session(ctl, first["id"]))["state"] == "suspended"

    # Once the second is idle, resuming the first reclaims (suspends) it in turn.
    clock.advance(IDLE_AFTER + 10)
    back = await ctl.open("cat", "t1")
    assert back.status_code == 200, back.text
    assert back.json()["resumed"] is True and back.json()["state"] == "ready"
    assert back.json()["reclaimed_session_id"] == second.json()["id"]
    await until_state(ctl, second.json()["id"], "suspended")


async def test_deleting_or_expiring_a_suspended_session_deletes_its_archive(
    start_controller: ControllerFactory, tmp_path: Path
) -> None:
    clock = ManualClock(start=START)
    ctl = await start(start_controller, clock, tmp_path, snapshot_retention="2h")
    kept = await open_with_work(ctl, "dan", "t1")
    gone = await open_with_work(ctl, "dan", "t2")
    for sid in (kept["id"], gone["id"]):
        assert (await ctl.client.post(f"/sessions/{sid}/suspend")).status_code == 202
        await until_state(ctl, sid, "suspended")
    assert len(archives(tmp_path)) == 2

    assert (await ctl.client.delete(f"/sessions/{gone['id']}")).status_code == 204
    ended = await until_state(ctl, gone["id"], "ended")
    assert ended["end_reason"] == "deleted" and ended["snapshot"] is None

    async def one_left() -> bool:
        return len(archives(tmp_path)) == 1

    await eventually(one_left, within=20, what="the deleted session's archive to go")

    clock.advance(2 * 3600 + 1)  # past SANDBOX_SNAPSHOT_RETENTION
    expired = await until_state(ctl, kept["id"], "ended")
    assert expired["end_reason"] == "snapshot_expired"

    async def none_left() -> bool:
        return archives(tmp_path) == []

    await eventually(none_left, within=20, what="the expired archive to go")


async def test_the_sweep_deletes_archives_no_session_owns(
    start_controller: ControllerFactory, tmp_path: Path
) -> None:
    clock = ManualClock(start=START)
    ctl = await start(start_controller, clock, tmp_path)
    owned = await open_with_work(ctl, "eve", "t1")
    await ctl.client.post(f"/sessions/{owned['id']}/suspend")
    await until_state(ctl, owned["id"], "suspended")
    stray = tmp_path / "archives" / "0123abcd" / "1.tar"  # a crash between upload and record
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"not owned")

    scheduler = ctl.controller.scheduler
    assert scheduler is not None
    assert await scheduler.sweep_archives() == ["0123abcd/1.tar"]
    assert archives(tmp_path) == sorted([key for key in archives(tmp_path)])
    (left,) = archives(tmp_path)
    assert left.startswith(owned["id"])
