"""The controller's leadership as a caller and a probe see it: a standby is a healthy
replica but not ready, answers 503 not_leader with Retry-After, and takes over when the
leader steps down; a schema from a newer version is left alone."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from sandbox_controller.clock import ManualClock
from sandbox_controller.store import Store

from .conftest import ControllerFactory
from .eventually import eventually


async def status(client: httpx.AsyncClient, path: str) -> int:
    return (await client.get(path)).status_code


async def test_a_standby_is_a_healthy_replica_that_takes_over_a_released_lease(
    start_controller: ControllerFactory,
) -> None:
    leader = await start_controller(leader_renew_interval="1s", leader_lease_ttl="4s")
    standby = await start_controller(leader_renew_interval="1s", leader_lease_ttl="4s")
    assert leader.controller.is_leader and not standby.controller.is_leader

    unready = await standby.client.get("/readyz")
    assert unready.status_code == 503 and unready.headers["Retry-After"] == "1"
    assert unready.json() == {"status": "standby", "leader": False}
    assert await status(standby.client, "/readyz?role=replica") == 200
    assert await status(leader.client, "/readyz?role=replica") == 200
    refused = await standby.client.post("/sessions", json={"user_id": "u", "thread_id": "t"})
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "not_leader"
    assert refused.headers["Retry-After"] == "1"

    await leader.controller.step_down()  # what SIGTERM does first
    await eventually(lambda: standby.controller.is_leader, within=10.0, what="takeover")
    assert await status(standby.client, "/readyz") == 200


async def test_a_schema_newer_than_this_version_is_left_alone(
    start_controller: ControllerFactory, tmp_path: Path
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/sandbox.db"
    store = Store.open(url)
    await store.migrate()
    await store.run(lambda c: c.execute(sa.text("UPDATE alembic_version SET version_num='9z'")))

    running = await start_controller(database_url=url)

    assert not running.controller.is_leader
    assert await status(running.client, "/readyz") == 503
    assert await status(running.client, "/readyz?role=replica") == 503
    refused = await running.client.post("/sessions", json={"user_id": "u", "thread_id": "t"})
    assert refused.status_code == 503 and "Retry-After" in refused.headers
    leases = await store.run(
        lambda c: c.execute(sa.text("SELECT count(*) FROM leader_lease")).scalar()
    )
    assert leases == 0  # never took the lease, never wrote
    await store.close()


async def test_a_lease_release_that_fails_is_logged_and_the_lease_ends_at_its_ttl(
    start_controller: ControllerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/sandbox.db"
    leader = await start_controller(database_url=url)
    assert leader.controller.is_leader
    outside = Store.open(url)
    try:
        # The lease table is out of reach, as in a store outage: the release fails.
        await outside.run(
            lambda c: c.execute(sa.text("ALTER TABLE leader_lease RENAME TO leader_lease_away"))
        )
        with caplog.at_level(logging.WARNING, logger="sandbox_controller.controller"):
            await leader.controller.step_down()
        assert not leader.controller.is_leader
        [line] = [r for r in caplog.records if "could not release the leader lease" in r.message]
        assert "leader_lease" in line.getMessage() and "ends at its TTL" in line.getMessage()
    finally:
        await outside.run(
            lambda c: c.execute(sa.text("ALTER TABLE leader_lease_away RENAME TO leader_lease"))
        )
        await outside.close()


async def test_a_leader_that_stepped_down_never_takes_the_lease_back(
    start_controller: ControllerFactory, tmp_path: Path
) -> None:
    """Between SIGTERM's step-down and the end of the drain the old leader's lease loop
    goes on ticking; were it to take the released lease again, the standby would find
    it held and the hand-over would wait for the drain and then the lease's TTL."""
    clock = ManualClock(start=time.time(), monotonic_start=time.monotonic())
    url = f"sqlite+aiosqlite:///{tmp_path}/sandbox.db"
    leader = await start_controller(
        clock=clock, database_url=url, leader_renew_interval="1s", leader_lease_ttl="4s"
    )
    assert leader.controller.is_leader
    await leader.controller.step_down()

    outside = Store.open(url)
    try:
        for _ in range(5):  # five turns of the lease loop, each past a renew interval
            await clock.until_sleeping()
            clock.advance(1.0)
            await asyncio.sleep(0.05)
        await clock.until_sleeping()
        held = await outside.lease_holder()
    finally:
        await outside.close()
    assert not leader.controller.is_leader
    assert held is not None and held.expires_at == 0.0  # still released: free to take


async def test_a_restarted_pod_leads_at_once_and_another_pod_waits_for_the_ttl(
    start_controller: ControllerFactory, tmp_path: Path
) -> None:
    """A controller killed without releasing its lease (SIGKILL, OOM) restarts in the
    same pod: its container restarts only after the old process is gone, so the new
    process takes the lease at once (a new epoch) instead of waiting out the TTL. A
    replica in another pod still waits: it cannot know the holder is dead."""
    url = f"sqlite+aiosqlite:///{tmp_path}/sandbox.db"
    store = Store.open(url)
    await store.migrate()
    dead = await store.acquire_lease("ctl-0/1-dead", 3600.0, time.time())  # held an hour
    assert dead is not None

    other_pod = await start_controller(database_url=url, pod_name="ctl-1")
    assert not other_pod.controller.is_leader
    same_pod = await start_controller(database_url=url, pod_name="ctl-0")
    assert same_pod.controller.is_leader
    held = await store.lease_holder()
    await store.close()
    assert held is not None and held.holder.startswith("ctl-0/") and held.epoch == dead + 1
