"""A minute of churn while the API server misbehaves: 20% of calls fail (500, and 429
with Retry-After), one create in ten is carried out but answered 504, every watch is
cut every few seconds, and once the watch history is compacted (410 Gone). Afterwards
nothing is leaked and every promise was kept."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from typing import Any

import pytest

from sandbox_controller.backends.kubernetes import KubernetesBackend
from sandbox_controller.model import EndReason

from ...eventually import eventually
from .conftest import Kube, live_pods, managed_pods

CHURN_SECONDS = float(os.environ.get("SANDBOX_CHAOS_SECONDS", "60"))
MAX_TOTAL = 10
PREWARM = 3
USERS = 8

pytestmark = pytest.mark.slow


async def test_a_minute_of_churn_under_api_faults_leaks_nothing(kube: Kube) -> None:
    sim = await kube.sim(nodes=4, seed=23)
    ctl = await kube.controller(
        sim,
        prewarm_pool_size=PREWARM,
        max_total_jobs=MAX_TOTAL,
        max_sessions_per_user=3,
        idle_after="1s",
        idle_timeout="4s",
        startup_timeout="30s",
        kube_qps=50.0,
        kube_burst=100,
    )
    await ctl.wait_idle_pods(PREWARM)
    backend = ctl.controller.backend
    assert isinstance(backend, KubernetesBackend)
    sim.set_faults(
        error_rate=0.2,
        error_codes=(500, 429),
        retry_after=1,
        cut_watches_every=3.0,
        timeout_after_write_rate=0.1,
    )

    sessions: dict[str, dict[str, Any]] = {}
    we_deleted: set[str] = set()
    codes: Counter[int] = Counter()
    stop = time.monotonic() + CHURN_SECONDS

    async def use(rng: random.Random, session_id: str) -> None:
        plan = rng.random()
        if plan < 0.3:
            return  # abandoned: left for the idle timeout (or a reclaim)
        for _ in range(rng.randint(1, 4)):
            await asyncio.sleep(rng.uniform(0.2, 1.5))
            touched = await ctl.client.post(f"/sessions/{session_id}/touch")
            assert touched.status_code in (204, 410), touched.text
        if plan < 0.9:
            deleted = await ctl.client.delete(f"/sessions/{session_id}")
            assert deleted.status_code == 204, deleted.text
            we_deleted.add(session_id)

    async def user(name: str) -> None:
        rng = random.Random(name)
        users: list[asyncio.Task[None]] = []
        n = 0
        while time.monotonic() < stop:
            n += 1
            response = await ctl.open(name, f"{name}-{n}", wait=rng.choice([0, 2, 10]))
            codes[response.status_code] += 1
            if response.status_code in (200, 201):
                body = response.json()
                sessions[body["id"]] = body
                users.append(asyncio.create_task(use(rng, body["id"])))
            else:
                error = response.json()["error"]["code"]
                assert (response.status_code, error) in (
                    (429, "user_session_limit"),
                    (503, "capacity_exhausted"),
                ), response.text
            await asyncio.sleep(rng.uniform(0.1, 1.0))
        await asyncio.gather(*users)

    async def compact_once() -> int:
        await asyncio.sleep(CHURN_SECONDS / 2)
        relists = backend.relists
        # With no await in between, so the watches cannot resume before the history
        # is gone: cut them, move the resourceVersion on, and compact. Resuming from
        # where they were cut is then 410 Gone, and the backend must relist.
        sim.cut_watches()
        sim.create_configmap("chaos-marker")
        sim.compact()
        await eventually(lambda: backend.relists > relists, within=30, what="a relist after 410")
        return int(backend.relists - relists)

    compaction = asyncio.create_task(compact_once())
    await asyncio.gather(*(user(f"user{i}") for i in range(USERS)))
    assert await compaction >= 1
    sim.set_faults(error_rate=0.0, cut_watches_every=0.0, timeout_after_write_rate=0.0)

    injected = sim.count_calls(status=500) + sim.count_calls(status=429)
    api_calls = len([c for c in sim.calls if c.verb != "discovery"])
    assert injected >= 0.15 * api_calls, sim.stats()["by_call"]  # the faults really bit
    assert sim.count_calls("create", "pods", 504) >= 3  # creates done, answers lost
    assert codes[201] > 60 and set(codes) <= {200, 201, 429, 503}, codes
    assert sim.max_pods_seen <= MAX_TOTAL, sim.max_pods_seen

    # Every session is ready, or ended with a reason; none stuck provisioning.
    async def resolved() -> bool:
        for sid in sessions:
            body = (await ctl.client.get(f"/sessions/{sid}")).json()
            sessions[sid] = body
            if body["state"] == "provisioning":
                return False
        return True

    try:
        await eventually(resolved, within=40, what="every session ready or ended")
    except AssertionError:
        stuck = [s for s in sessions.values() if s["state"] == "provisioning"]
        raise AssertionError(f"stuck: {stuck}\n{await ctl.pool()}\n{sim.stats()}") from None
    reasons = Counter(s["end_reason"] for s in sessions.values() if s["state"] == "ended")
    assert all(s["state"] in ("ready", "ended") for s in sessions.values())
    assert set(reasons) <= {r.value for r in EndReason}, reasons
    assert reasons["deleted"] >= 1 and reasons["idle_timeout"] >= 1, reasons
    assert all(sessions[sid]["state"] == "ended" for sid in we_deleted)

    # Close everything: the cluster is left with the warm pool, each pod known.
    for sid, body in sessions.items():
        if body["state"] == "ready":
            assert (await ctl.client.delete(f"/sessions/{sid}")).status_code == 204
    try:
        await ctl.wait_idle_pods(PREWARM, within=30)
    except AssertionError:
        phases = [(p["metadata"]["name"], p["status"].get("phase")) for p in managed_pods(sim)]
        raise AssertionError(f"{await ctl.pool()}\n{phases}") from None
    assert ctl.controller.scheduler is not None and ctl.controller.scheduler._pool is not None
    pool = ctl.controller.scheduler._pool  # a look inside, for the test

    def converged() -> bool:
        names = {p["metadata"]["name"] for p in managed_pods(sim)}
        return names == set(pool.pods) and len(names) == PREWARM

    await eventually(converged, within=30, what="kubesim to hold exactly the warm pool")
    assert (await ctl.pool())["pods"] == {
        "pending": 0,
        "idle": PREWARM,
        "assigned": 0,
        "terminating": 0,
    }
    assert len(live_pods(sim)) == PREWARM
    assert sim.max_pods_seen <= MAX_TOTAL
    print(f"\nchaos: {dict(codes)} {dict(reasons)} injected={injected} {sim.stats()['by_call']}")
