"""What the cluster does to the pool: no room for pods, and nodes that go away."""

from __future__ import annotations

import asyncio
from typing import Any

from sandbox_controller.kubesim import KubeSim

from ...eventually import eventually
from .conftest import Kube, is_pending, live_pods, managed_pods

NO_ROOM = "0/3 nodes are available: 3 Insufficient cpu."


def pending_count(sim: KubeSim) -> int:
    return sum(1 for p in live_pods(sim) if is_pending(p))


async def test_a_full_cluster_reports_why_and_recovers_when_a_node_is_added(kube: Kube) -> None:
    # Three nodes of one CPU each: room for exactly the three warm pods.
    sim = await kube.sim(node_cpu="1")
    ctl = await kube.controller(sim, prewarm_pool_size=3, max_total_jobs=50)
    await ctl.wait_idle_pods(3)
    warm = [(await ctl.open(f"w{i}", f"w{i}")).json() for i in range(3)]
    assert all(s["state"] == "ready" for s in warm)

    opened = await asyncio.gather(*(ctl.open(f"u{i}", f"t{i}", wait=0) for i in range(10)))
    assert {r.status_code for r in opened} == {201}
    sessions = [r.json() for r in opened]
    assert all(s["state"] == "provisioning" for s in sessions)

    async def detail_shown() -> bool:
        got = (await ctl.client.get(f"/sessions/{sessions[-1]['id']}")).json()
        return bool(got["state"] == "provisioning" and got["detail"] == NO_ROOM)

    await eventually(
        detail_shown, within=15, what="the scheduler's message as the session's detail"
    )
    metrics = (await ctl.client.get("/metrics")).text
    assert "sandbox_capacity_blocked 1.0" in metrics
    assert (await ctl.pool())["capacity_blocked"] is True

    # Thirteen pods are wanted (ten waiters, three warm), but while one cannot be
    # placed the pool stops creating: no pile of pending pods behind it.
    most_pending = 0
    for _ in range(20):
        most_pending = max(most_pending, pending_count(sim))
        await asyncio.sleep(0.05)
    assert 1 <= most_pending <= 3, most_pending
    assert len(managed_pods(sim)) <= 6

    sim.add_node("big", cpu="16", memory="64Gi")

    async def all_ready() -> bool:
        for s in sessions:
            got = (await ctl.client.get(f"/sessions/{s['id']}")).json()
            if got["state"] != "ready":
                return False
        return True

    await eventually(all_ready, within=20, what="every waiting session ready once a node is added")
    await ctl.wait_idle_pods(3)
    await ctl.settle()
    assert "sandbox_capacity_blocked 0.0" in (await ctl.client.get("/metrics")).text
    assert pending_count(sim) == 0 and len(live_pods(sim)) == 16


async def test_a_removed_node_ends_its_sessions_and_the_pool_refills(kube: Kube) -> None:
    sim = await kube.sim()
    ctl = await kube.controller(sim, prewarm_pool_size=3)
    await ctl.wait_idle_pods(3)
    sessions = [(await ctl.open(f"u{i}", f"t{i}")).json() for i in range(3)]
    await ctl.wait_idle_pods(3)

    def node_of(pod: str) -> str:
        [raw] = [p for p in managed_pods(sim) if p["metadata"]["name"] == pod]
        return str(raw["spec"]["nodeName"])

    node = node_of(sessions[0]["pod"])
    on_node = {s["id"] for s in sessions if node_of(s["pod"]) == node}
    gone = sim.remove_node(node)
    assert {s["pod"] for s in sessions if s["id"] in on_node} <= set(gone)

    async def ended_on_node() -> bool:
        states: dict[str, Any] = {}
        for s in sessions:
            states[s["id"]] = (await ctl.client.get(f"/sessions/{s['id']}")).json()
        return all(
            (states[sid]["state"], states[sid]["end_reason"]) == ("ended", "pod_failed")
            for sid in on_node
        ) and all(states[s["id"]]["state"] == "ready" for s in sessions if s["id"] not in on_node)

    await eventually(
        ended_on_node, within=15, what="sessions on the removed node ended with pod_failed"
    )
    await ctl.wait_idle_pods(3)
    pool = await ctl.pool()
    assert pool["pods"]["assigned"] == 3 - len(on_node)
    assert pool["pods"]["idle"] == 3
    assert all(p["spec"].get("nodeName") != node for p in live_pods(sim))
    metrics = (await ctl.client.get("/metrics")).text
    assert f'sandbox_reclaims_total{{reason="pod_failed"}} {len(on_node)}.0' in metrics
