"""A leader that goes in the middle of a snapshot, with a standby on the same store and
the same sandboxes (in process, on one fake clock): the new leader adopts the session's
pod, takes its snapshot anew, and resumes it as usual."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from sandbox_controller.clock import ManualClock

from ..conftest import ControllerFactory, sandbox_processes
from ..eventually import eventually
from .test_suspend import START, archives, claimed, open_with_work, session, start, until_state


async def test_a_leader_gone_mid_snapshot_has_the_next_one_take_it_anew(
    start_controller: ControllerFactory, tmp_path: Path
) -> None:
    clock = ManualClock(start=START)
    shared = {
        "database_url": f"sqlite+aiosqlite:///{tmp_path}/shared.db",
        "state_dir": str(tmp_path / "state"),
        "leader_renew_interval": "1s",
        "leader_lease_ttl": "4s",
    }
    first = await start(start_controller, clock, tmp_path, **shared)
    opened = await open_with_work(first, "ann", "t1")
    sid, pod = opened["id"], opened["pod"]
    second = await start_controller(
        clock=clock,
        idle_action="suspend",
        snapshot_store=f"file://{tmp_path}/archives",
        snapshot_timeout="10s",
        **shared,
    )
    assert not second.controller.is_leader

    (pid,) = sandbox_processes(pod)
    os.kill(pid, signal.SIGSTOP)  # its snapshot hangs: the leader goes meanwhile
    try:
        asked = await first.client.post(f"/sessions/{sid}/suspend")
        assert asked.status_code == 202 and asked.json()["state"] == "suspending"
        first.controller._retiring = True  # as step_down does: it never leads again
        await first.controller._step_down(release=True)  # its snapshot call cancelled
    finally:
        os.kill(pid, signal.SIGCONT)

    async def took_over() -> bool:
        clock.advance(0.5)
        return second.controller.is_leader

    await eventually(took_over, within=20, what="the standby to take over")
    # The new leader adopts the pod and takes the snapshot anew at once: ready again
    # for even a round, the session would count toward its user's limit beside one
    # that may have taken its seat meanwhile.
    await until_state(second, sid, "suspended")
    after = await session(second, sid)
    assert after["pod"] is None and after["snapshot"]["bytes"] > 0
    assert len(archives(tmp_path)) == 1  # the new one: none left by the first leader
    back = await second.open("ann", "t1")
    assert back.status_code == 200, back.text
    assert back.json()["resumed"] is True and back.json()["pod"] != pod
    workdir = Path((await claimed(second, back.json()["pod"]))["workdir"])
    assert (workdir / "src" / "main.py").exists()
