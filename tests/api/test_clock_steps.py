"""The wall clock steps (NTP, a resumed VM) while sessions are live: the real
controller over HTTP, on the real store, with real sandbox processes, on a clock whose
wall and monotonic parts move separately. Timers run on monotonic time, so no session
ends early or late (idle timeout, max lifetime, start-up timeout, reclaim); what is
stored and shown (last_active_at, ended_at) follows the wall clock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sandbox_controller.api.schemas import iso
from sandbox_controller.clock import ManualClock

from ..conftest import ControllerFactory, RunningController, never_ready_backend
from ..eventually import eventually

WALL = 2_000_000_000.0
# Far from the wall part: a timer that mixes the two is off by ~2e9 s, not by nothing.
MONO = 50_000.0
HOUR = 3600.0
IDLE_AFTER = 300.0
RECLAIM_AFTER = IDLE_AFTER + 4.0  # idle_after plus the activity lag (2 x the 2 s flush)
IDLE_TIMEOUT = 600.0
MAX_LIFETIME = 900.0
STARTUP_TIMEOUT = 120.0


class Timeline:
    """Moves the clock to a point on the monotonic timeline, ``t`` seconds after the
    sessions were opened, and says what the wall clock reads then."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.t = 0.0
        self.step = 0.0

    def to(self, t: float) -> None:
        assert t >= self.t
        self.clock.advance(t - self.t)
        self.t = t

    def step_wall(self, seconds: float) -> None:
        self.clock.step_wall(seconds)
        self.step += seconds

    def wall(self, t: float) -> str | None:
        return iso(WALL + self.step + t)


async def open_ready(ctl: RunningController, user: str, thread: str) -> str:
    opened = await ctl.open(user, thread)
    assert opened.status_code == 201 and opened.json()["state"] == "ready", opened.text
    return str(opened.json()["id"])


async def session(ctl: RunningController, sid: str) -> dict[str, Any]:
    response = await ctl.client.get(f"/sessions/{sid}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def state(ctl: RunningController, sid: str) -> str:
    await ctl.settle()  # a round at the clock's time: every deadline due has fired
    return str((await session(ctl, sid))["state"])


async def until_ended(ctl: RunningController, sid: str) -> dict[str, Any]:
    """Ended at the clock's time (a status hook call may come first: real time)."""
    seen: dict[str, Any] = {}

    async def ended() -> bool:
        seen.update(await session(ctl, sid))
        return bool(seen["state"] == "ended")

    await eventually(ended, within=15, what=f"session {sid} to end")
    return seen


@pytest.mark.parametrize("step", [HOUR, -HOUR], ids=["wall+1h", "wall-1h"])
async def test_a_wall_clock_step_ends_no_session_early_or_late(
    start_controller: ControllerFactory, step: float
) -> None:
    clock = ManualClock(start=WALL, monotonic_start=MONO)
    ctl = await start_controller(
        clock=clock,
        prewarm_pool_size=3,
        max_sessions_per_user=1,
        idle_after=IDLE_AFTER,
        idle_timeout=IDLE_TIMEOUT,
        max_lifetime=MAX_LIFETIME,
    )
    await ctl.wait_idle_pods(3)
    time = Timeline(clock)
    idler = await open_ready(ctl, "ann", "ann-1")  # ends on its idle timeout
    elder = await open_ready(ctl, "bob", "bob-1")  # kept busy; ends at max lifetime
    quiet = await open_ready(ctl, "cid", "cid-1")  # reclaimed once quiet long enough

    time.step_wall(step)
    for sid in (idler, elder, quiet):
        assert await state(ctl, sid) == "ready", "a session ended when the wall clock stepped"
    refused = await ctl.open("cid", "cid-2")
    assert refused.status_code == 429, "a session just used was reclaimable after the step"

    # Activity is stamped with the wall clock as it reads now, stepped or not.
    time.to(100.0)
    assert (await ctl.client.post(f"/sessions/{idler}/touch")).status_code == 204
    # A proxy whose clock runs an hour fast: its time counts as now, never later.
    report = {"activity": {elder: clock.now() + HOUR}}
    assert (await ctl.client.post("/internal/activity", json=report)).status_code == 204
    await ctl.settle()
    for sid, source in ((idler, "touch"), (elder, "proxy")):
        shown = await session(ctl, sid)
        assert shown["last_active_at"] == time.wall(100.0), shown
        assert shown["last_activity"]["source"] == source

    # Reclaimable once quiet for reclaim_after since its hand-over (t=0), not sooner.
    time.to(RECLAIM_AFTER - 1.0)
    assert (await ctl.open("cid", "cid-2")).status_code == 429
    time.to(RECLAIM_AFTER)
    reclaimed = await ctl.open("cid", "cid-2")
    assert reclaimed.status_code == 201, reclaimed.text
    assert reclaimed.json()["reclaimed_session_id"] == quiet

    time.to(650.0)  # the elder's activity keeps it clear of its idle timeout
    report = {"activity": {elder: clock.now()}}
    assert (await ctl.client.post("/internal/activity", json=report)).status_code == 204

    # The idle timeout counts from the touch at t=100.
    time.to(100.0 + IDLE_TIMEOUT - 1.0)
    assert await state(ctl, idler) == "ready"
    time.to(100.0 + IDLE_TIMEOUT)
    ended = await until_ended(ctl, idler)
    assert ended["end_reason"] == "idle_timeout"
    assert ended["ended_at"] == time.wall(100.0 + IDLE_TIMEOUT)
    assert ended["end_detail"]["last_active_at"] == time.wall(100.0)

    # The max lifetime counts from the opening at t=0.
    time.to(MAX_LIFETIME - 1.0)
    assert await state(ctl, elder) == "ready"
    time.to(MAX_LIFETIME)
    ended = await until_ended(ctl, elder)
    assert ended["end_reason"] == "max_lifetime"
    assert ended["ended_at"] == time.wall(MAX_LIFETIME)
    assert ended["created_at"] == iso(WALL), "created_at is history: no step rewrites it"


@pytest.mark.parametrize("step", [HOUR, -HOUR], ids=["wall+1h", "wall-1h"])
async def test_a_wall_clock_step_moves_no_start_up_timeout(
    start_controller: ControllerFactory, tmp_path: Path, step: float
) -> None:
    backend = never_ready_backend(tmp_path)
    clock = ManualClock(start=WALL, monotonic_start=MONO)
    ctl = await start_controller(
        clock=clock,
        backend_object=backend,
        prewarm_pool_size=0,
        startup_timeout=STARTUP_TIMEOUT,
    )
    time = Timeline(clock)
    opened = await ctl.open("ann", "t1", wait=0)
    assert opened.status_code == 201 and opened.json()["state"] == "provisioning", opened.text
    sid = opened.json()["id"]

    time.step_wall(step)
    assert await state(ctl, sid) == "provisioning"
    time.to(STARTUP_TIMEOUT - 1.0)
    assert await state(ctl, sid) == "provisioning"
    time.to(STARTUP_TIMEOUT)
    ended = await until_ended(ctl, sid)
    assert ended["end_reason"] == "startup_timeout"
    assert ended["ended_at"] == time.wall(STARTUP_TIMEOUT)
