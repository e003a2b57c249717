"""The leader SIGKILLed in the middle of a snapshot and in the middle of a restore: two
`serve` replicas on PostgreSQL, kubesim with devsandbox workloads, the file store in a
directory both replicas share. The sandbox's hook is stalled (devsandbox's test switch)
so the kill lands while the call is in flight.

Verified from outside: the sessions as the new leader answers for them, the pods as
kubesim has them (and who deleted them, from its call log), the archives as the store's
directory holds them. Nothing acknowledged is lost, no session is left with two pods, and
no archive is left without a session nor a session without its archive.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox_controller.backends.base import LABEL_SESSION, session_label

from ...conftest import fresh_postgres
from ...eventually import eventually
from .harness import HA, Replica, writes_by

REPLICAS = ("replica-a", "replica-b")
WORK = {"path": "notes/plan.md", "content": "kept across a failover"}


class Drill:
    def __init__(self, ha: HA, archives: Path, a: Replica, b: Replica) -> None:
        self.ha, self.archives, self.a, self.b = ha, archives, a, b
        self.http = ha.http

    async def pods(self) -> dict[str, dict[str, Any]]:
        assert self.ha.kubesim is not None
        return await self.ha.kubesim.pods(self.http)

    async def address(self, pod: str) -> str:
        return f"{(await self.pods())[pod]['status']['podIP']}:8080"

    async def stall(self, pod: str, **seconds: float) -> None:
        response = await self.http.post(
            f"http://{await self.address(pod)}/_sandbox/stall", json=seconds
        )
        response.raise_for_status()

    async def calls(self, pod: str, hook: str) -> int:
        response = await self.http.get(f"http://{await self.address(pod)}/_sandbox/stall")
        return int(response.json()["calls"][hook])

    async def file(self, pod: str) -> str:
        url = f"http://{await self.address(pod)}/files/{WORK['path']}"
        return (await self.http.get(url)).text

    async def session(self, leader: Replica, session_id: str) -> dict[str, Any]:
        body: dict[str, Any] = (await leader.client.get(f"/sessions/{session_id}")).json()
        return body

    async def until(self, leader: Replica, session_id: str, state: str) -> dict[str, Any]:
        seen: dict[str, Any] = {}

        async def reached() -> bool:
            try:
                seen.update(await self.session(leader, session_id))
            except httpx.TransportError:
                return False
            return seen.get("state") == state

        await eventually(reached, within=40, what=f"{session_id} {state} on {leader.name}")
        return seen

    def archive_files(self) -> list[str]:
        """Archives the store holds (its temporary parts aside)."""
        if not self.archives.exists():
            return []
        found = (p for p in self.archives.rglob("*") if p.is_file())
        return sorted(str(p.relative_to(self.archives)) for p in found if p.name[0] != ".")

    async def only_pod(self, session_id: str, pod: str) -> bool:
        return await self.pods_of(session_id) == [pod]

    async def gone(self, pod: str) -> bool:
        return pod not in await self.pods()

    async def pods_of(self, session_id: str) -> list[str]:
        """Pods labelled for this session and not being deleted."""
        return [
            name
            for name, pod in (await self.pods()).items()
            if pod["metadata"].get("labels", {}).get(LABEL_SESSION) == session_label(session_id)
            and not pod["metadata"].get("deletionTimestamp")
        ]

    async def open_with_work(self, user: str) -> dict[str, Any]:
        response = await self.a.client.post(
            "/sessions",
            json={"user_id": user, "thread_id": "t1", "wait_seconds": 20, "files": [WORK]},
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        assert body["state"] == "ready", body
        return body


@pytest.fixture
async def drill(tmp_path: Path) -> AsyncIterator[Drill]:
    archives = tmp_path / "archives"
    async with fresh_postgres() as url:
        ha = HA(tmp_path, url)
        ha.env.update(
            {
                "SANDBOX_PREWARM_POOL_SIZE": "2",
                "SANDBOX_IDLE_ACTION": "suspend",
                "SANDBOX_SNAPSHOT_STORE": archives.as_uri(),  # both replicas' store
                "SANDBOX_SNAPSHOT_TIMEOUT": "60s",
            }
        )
        try:
            await ha.start_kubesim(*REPLICAS)
            a = await ha.start_replica(REPLICAS[0])
            await ha.leader([a])
            b = await ha.start_replica(REPLICAS[1])
            await ha.wait_idle(a, 2)
            yield Drill(ha, archives, a, b)
        finally:
            await ha.close()


async def test_a_leader_killed_mid_snapshot_has_the_new_leader_take_it_anew(
    drill: Drill,
) -> None:
    opened = await drill.open_with_work("ann")
    sid, pod = opened["id"], opened["pod"]
    await drill.stall(pod, snapshot=60)
    response = await drill.a.client.post(f"/sessions/{sid}/suspend")
    assert response.status_code == 202, response.text
    await eventually(lambda: drill.calls(pod, "snapshot"), within=20, what="the snapshot call")

    drill.a.signal(signal.SIGKILL)  # mid-snapshot: nothing uploaded, nothing recorded
    assert drill.archive_files() == []
    await drill.stall(pod, snapshot=0)  # the next snapshot call is answered at once
    assert await drill.ha.leader([drill.b]) is drill.b

    # The new leader adopts the session's pod and takes its snapshot anew at once (ready
    # again for even a round, it would count toward its user's limit beside a session
    # that may have taken its seat): the work is archived, once.
    suspended = await drill.until(drill.b, sid, "suspended")
    assert len(drill.archive_files()) == 1 and drill.archive_files()[0].startswith(sid)
    assert suspended["snapshot"]["bytes"] > 0 and suspended["pod"] is None

    async def pod_deleted_by_b() -> bool:
        assert drill.ha.kubesim is not None
        calls = await drill.ha.kubesim.calls(drill.http)
        deletes = [c for c in writes_by(calls, "replica-b", 0) if c["verb"] == "delete"]
        return any(c["path"].endswith(f"/pods/{pod}") for c in deletes)

    await eventually(pod_deleted_by_b, within=30, what=f"{pod} deleted by the new leader")
    assert await drill.pods_of(sid) == []


async def test_a_leader_killed_mid_restore_is_finished_by_the_new_leader(drill: Drill) -> None:
    opened = await drill.open_with_work("ben")
    sid, first_pod = opened["id"], opened["pod"]
    response = await drill.a.client.post(f"/sessions/{sid}/suspend")
    assert response.status_code == 202, response.text
    await drill.until(drill.a, sid, "suspended")
    [archive] = drill.archive_files()
    await eventually(lambda: drill.gone(first_pod), within=30, what="its pod gone")
    await drill.ha.wait_idle(drill.a, 2)
    warm = [name for name in await drill.pods() if name != first_pod]
    for name in warm:
        await drill.stall(name, restore=15)

    response = await drill.a.client.post(f"/sessions/{sid}/resume", json={"wait_seconds": 0})
    assert response.status_code == 200, response.text
    restoring: list[str] = []

    async def restore_began() -> bool:
        restoring[:] = [name for name in warm if await drill.calls(name, "restore")]
        return bool(restoring)

    await eventually(restore_began, within=20, what="the restore call")
    drill.a.signal(signal.SIGKILL)  # mid-restore: the archive is in the store, recorded
    assert archive in drill.archive_files()
    assert await drill.ha.leader([drill.b]) is drill.b

    resumed = await drill.until(drill.b, sid, "ready")
    assert resumed["pod"] not in (None, first_pod)
    assert await drill.file(resumed["pod"]) == WORK["content"]
    # Never two pods for one session: the one it was being restored into is gone.
    await eventually(
        lambda: drill.only_pod(sid, resumed["pod"]), within=30, what="one pod for the session"
    )
    # The archive goes once its restore is done and recorded, and only then.
    await eventually(lambda: drill.archive_files() == [], within=30, what="the archive deleted")
