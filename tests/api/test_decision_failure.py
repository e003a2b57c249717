"""A scheduling decision that raises (a bug), through the real API on the real store
(SQLite and PostgreSQL) with real sandbox processes: the caller hears 500
``internal_error`` at once, with a request id that names the log line with the
traceback; nothing of the failed round is in the store; the controller serves on and
keeps its invariants. The fault is a real Pool with one decision armed to raise
(tests/scheduler/faults.py), put where the scheduler builds its pools."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from sandbox_controller.clock import ManualClock
from sandbox_controller.scheduler.lifecycle import ROUTE_LEASE
from sandbox_controller.scheduler.rounds import Rounds
from sandbox_controller.store import tables
from sandbox_controller.store.engines import open_engine

from ..conftest import ControllerFactory, RunningController
from ..eventually import eventually
from ..scheduler.faults import Faults

ANSWERED_WITHIN = 1.0  # seconds: the caller is answered at once, not after a timeout
LOGGER = "sandbox_controller.scheduler.loop"


@pytest.fixture
def faults(monkeypatch: pytest.MonkeyPatch) -> Faults:
    armed = Faults()
    monkeypatch.setattr(Rounds, "pool_type", armed.pool_type())
    return armed


async def stored(ctl: RunningController) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The sessions and pods tables, as they are."""

    def read(conn: sa.Connection) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        sessions = conn.execute(sa.select(tables.sessions)).mappings().all()
        pods = conn.execute(sa.select(tables.pods)).mappings().all()
        return [dict(s) for s in sessions], [dict(p) for p in pods]

    engine = open_engine(ctl.settings.database_url, timeout=10.0)
    try:
        return await engine.run(read)
    finally:
        await engine.close()


async def assert_invariants(ctl: RunningController) -> None:
    """No half-written record; the cap, the per-user limit, one session per pod."""
    sessions, pods = await stored(ctl)
    ids = {s["id"] for s in sessions}
    live = [s for s in sessions if s["state"] != "ended"]
    for pod in pods:
        assert pod["session_id"] is None or pod["session_id"] in ids, f"half-written: {pod}"
    on_pods = [s["pod_name"] for s in live if s["pod_name"]]
    assert len(on_pods) == len(set(on_pods)), "two live sessions on one pod"
    per_user = Counter(s["user_id"] for s in live)
    assert max(per_user.values(), default=0) <= ctl.settings.max_sessions_per_user
    status = await ctl.pool()
    assert sum(status["pods"].values()) + status["creating"] <= ctl.settings.max_total_jobs
    assert len(await ctl.controller.backend.resync()) <= ctl.settings.max_total_jobs


async def ready_again(ctl: RunningController) -> None:
    async def ready() -> bool:
        return (await ctl.client.get("/readyz")).status_code == 200

    await eventually(ready, within=10, what="the rebuilt controller to be ready")


def assert_internal_error(response: httpx.Response, caplog: pytest.LogCaptureFixture) -> str:
    assert response.status_code == 500, response.text
    error = response.json()["error"]
    assert error["code"] == "internal_error"
    request_id = response.headers["x-request-id"]
    assert request_id in error["message"]
    [logged] = [r for r in caplog.records if request_id in r.getMessage()]
    assert logged.levelno == logging.ERROR and logged.exc_info is not None  # the traceback
    return request_id


async def test_a_decision_that_raises_answers_500_and_commits_nothing(
    start_controller: ControllerFactory,
    database_url: str,
    faults: Faults,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger=LOGGER)
    clock = ManualClock(start=2_000_000_000.0)
    ctl = await start_controller(
        clock=clock,
        database_url=database_url,
        prewarm_pool_size=2,
        max_total_jobs=3,
        max_sessions_per_user=1,
    )
    await ctl.wait_idle_pods(2)
    first = await ctl.open("ann", "t1")
    assert first.status_code == 201, first.text

    # Ben's claim is accepted by his sandbox; handing the session over then raises.
    faults.handover_threads.add("boom")
    body = {"user_id": "ben", "thread_id": "boom", "wait_seconds": 30, "env": {"K": "s3cret"}}
    response = await asyncio.wait_for(ctl.client.post("/sessions", json=body), ANSWERED_WITHIN)
    assert_internal_error(response, caplog)
    assert faults.raised == 1
    assert "s3cret" not in caplog.text
    scheduler = ctl.controller.scheduler
    assert scheduler is not None and scheduler._payloads == {}  # the env is not kept

    await ready_again(ctl)
    sessions, _ = await stored(ctl)
    assert [s["thread_id"] for s in sessions] == ["t1"]  # nothing of ben's round
    promised = (await ctl.client.get(f"/sessions/{first.json()['id']}")).json()
    assert promised["state"] == "ready" and promised["pod"] == first.json()["pod"]
    await assert_invariants(ctl)

    # The controller serves on; ben's sandbox (it has his env) serves nobody else.
    [boom_pod] = await pods_claimed_for(ctl, "boom")
    later = await ctl.open("cat", "t3")
    assert later.status_code == 201, later.text
    assert later.json()["state"] == "ready" and later.json()["pod"] != boom_pod
    clock.advance(ROUTE_LEASE)  # then it is deleted, making room under the cap

    async def boom_pod_deleted() -> bool:
        return boom_pod not in {p.name for p in await ctl.controller.backend.resync()}

    await eventually(boom_pod_deleted, within=15, what="the sandbox with ben's env deleted")
    retried = await ctl.open("ben", "t4")
    assert retried.status_code == 201, retried.text
    assert retried.json()["pod"] != boom_pod
    await assert_invariants(ctl)


async def pods_claimed_for(ctl: RunningController, thread: str) -> list[str]:
    """The sandboxes whose claim hook received a session of this thread (their own
    index page says so)."""
    names = []
    async with httpx.AsyncClient(timeout=5.0) as direct:
        for pod in await ctl.controller.backend.resync():
            if pod.address is None:
                continue
            page = (await direct.get(f"http://{pod.address}/")).text
            if f"thread <code>{thread}</code>" in page:
                names.append(pod.name)
    return names


async def test_a_tick_that_raises_answers_the_waiting_caller_500(
    start_controller: ControllerFactory,
    database_url: str,
    faults: Faults,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger=LOGGER)
    clock = ManualClock(start=2_000_000_000.0)
    ctl = await start_controller(
        clock=clock, database_url=database_url, prewarm_pool_size=1, max_total_jobs=1
    )
    await ctl.wait_idle_pods(1)
    first = await ctl.open("ann", "t1")
    assert first.status_code == 201, first.text
    waiting = asyncio.create_task(ctl.open("ben", "t2", wait=30))

    async def ben_waits() -> bool:
        return int((await ctl.pool())["waiters"]) == 1

    await eventually(ben_waits, what="ben waiting for a pod (the cap is reached)")
    faults.tick_at = clock.now() + 30
    clock.advance(30)  # ben's wait is over: the tick that would answer him raises
    response = await asyncio.wait_for(waiting, ANSWERED_WITHIN)
    assert_internal_error(response, caplog)
    assert faults.raised == 1

    await ready_again(ctl)
    sessions, _ = await stored(ctl)
    assert [s["thread_id"] for s in sessions] == ["t1"]
    promised = (await ctl.client.get(f"/sessions/{first.json()['id']}")).json()
    assert promised["state"] == "ready" and promised["pod"] == first.json()["pod"]
    await assert_invariants(ctl)

    # The controller serves on: once ann's sandbox is gone, ben gets one.
    assert (await ctl.client.delete(f"/sessions/{first.json()['id']}")).status_code == 204
    clock.advance(ROUTE_LEASE)  # the rebuild took every pod that served for routed
    again = await ctl.open("ben", "t2", wait=30)
    assert again.status_code == 201, again.text
    await assert_invariants(ctl)
