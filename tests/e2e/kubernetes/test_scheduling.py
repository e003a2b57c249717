"""The scheduler scenarios of the core issue, end to end: HTTP API -> scheduler ->
KubernetesBackend -> kubernetes-asyncio -> kubesim, and back through the watch."""

from __future__ import annotations

import asyncio
from typing import Any

from sandbox_controller.backends.base import (
    LABEL_SESSION,
    LABEL_STATE,
    LABEL_TEMPLATE_HASH,
    session_label,
)
from sandbox_controller.clock import ManualClock

from ...eventually import eventually
from .conftest import Kube, Obj, is_pending, live_pods, managed_pods, pod_names

START = 2_000_000_000.0


def labels_of(sim_pods: list[Obj], name: str) -> dict[str, str]:
    [pod] = [p for p in sim_pods if p["metadata"]["name"] == name]
    return dict(pod["metadata"]["labels"])


async def test_pool_fills_to_prewarm_size_and_refills_after_a_claim(kube: Kube) -> None:
    sim = await kube.sim()
    ctl = await kube.controller(sim, prewarm_pool_size=3)
    await ctl.wait_idle_pods(3)
    backend = ctl.controller.backend
    for pod in managed_pods(sim):
        labels = pod["metadata"]["labels"]
        assert labels[LABEL_TEMPLATE_HASH] == backend.template_hash
        assert LABEL_SESSION not in labels and pod["status"]["phase"] == "Running"

    response = await ctl.open("alice", "t1")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["state"] == "ready" and body["pod"] in pod_names(sim)
    await ctl.wait_idle_pods(3)
    await eventually(
        lambda: (
            labels_of(managed_pods(sim), body["pod"]).get(LABEL_SESSION)
            == session_label(body["id"])
        ),
        within=15,
        what="the claimed pod labelled with its session",
    )
    assert labels_of(managed_pods(sim), body["pod"])[LABEL_STATE] == "assigned"
    pool = await ctl.pool()
    assert pool["pods"] == {"pending": 0, "idle": 3, "assigned": 1, "terminating": 0}
    # Three for the pool, one refill: a stale cache never made anything twice.
    assert sim.count_calls("create", "pods", 201) == 4 and len(managed_pods(sim)) == 4


async def test_cap_holds_and_an_extra_request_is_refused(kube: Kube) -> None:
    sim = await kube.sim()
    ctl = await kube.controller(sim, prewarm_pool_size=2, max_total_jobs=3)
    await ctl.wait_idle_pods(2)
    opened = [await ctl.open(f"u{i}", f"t{i}", wait=10) for i in range(3)]
    assert [r.status_code for r in opened] == [201, 201, 201], [r.text for r in opened]
    assert all(r.json()["state"] == "ready" for r in opened)
    refused = await ctl.open("u9", "t9", wait=0)
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "capacity_exhausted"
    assert int(refused.headers["Retry-After"]) >= 1
    await ctl.settle()
    assert "sandbox_cap_reached 1.0" in (await ctl.client.get("/metrics")).text
    assert len(managed_pods(sim)) == 3 and sim.max_pods_seen == 3

    # A freed slot is refilled, still within the cap.
    await ctl.client.delete(f"/sessions/{opened[0].json()['id']}")
    await ctl.wait_idle_pods(1)
    assert sim.max_pods_seen == 3


async def test_user_limit_then_the_oldest_idle_session_is_reclaimed(kube: Kube) -> None:
    clock = ManualClock(start=START)
    sim = await kube.sim()
    ctl = await kube.controller(
        sim, clock=clock, prewarm_pool_size=5, max_sessions_per_user=5, startup_timeout="1h"
    )
    await ctl.wait_idle_pods(5)
    sessions = []
    for i in range(5):
        response = await ctl.open("carol", f"t{i}")
        assert response.status_code == 201 and response.json()["state"] == "ready"
        sessions.append(response.json())
        clock.advance(10)
    refused = await ctl.open("carol", "t5")
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "user_session_limit"
    assert int(refused.headers["Retry-After"]) >= 1

    await ctl.wait_idle_pods(5)  # the refill, before time moves
    clock.advance(400)  # every session quiet past idleAfter; the oldest is then active
    assert (await ctl.client.post(f"/sessions/{sessions[0]['id']}/touch")).status_code == 204
    response = await ctl.open("carol", "t5")
    assert response.status_code == 201, response.text
    new = response.json()
    assert new["state"] == "ready" and new["pod"] in pod_names(sim)  # at once, warm
    assert new["reclaimed_session_id"] == sessions[1]["id"]  # the oldest *idle* one
    await ctl.settle()
    old = (await ctl.client.get(f"/sessions/{sessions[1]['id']}")).json()
    assert (old["state"], old["end_reason"]) == ("ended", "reclaimed")
    first = (await ctl.client.get(f"/sessions/{sessions[0]['id']}")).json()
    assert first["state"] == "ready"
    await eventually(
        lambda: sessions[1]["pod"] not in pod_names(sim), within=15, what="reclaimed pod gone"
    )
    metrics = (await ctl.client.get("/metrics")).text
    assert 'sandbox_session_requests_total{outcome="warm"} 6.0' in metrics
    assert 'sandbox_reclaims_total{reason="reclaimed"} 1.0' in metrics


async def test_idle_timeout_ends_the_session_after_exactly_idle_timeout(kube: Kube) -> None:
    clock = ManualClock(start=START)
    sim = await kube.sim()
    ctl = await kube.controller(
        sim, clock=clock, prewarm_pool_size=1, idle_timeout="2h30m", startup_timeout="3h"
    )
    await ctl.wait_idle_pods(1)
    body = (await ctl.open("dana", "t1")).json()
    await ctl.wait_idle_pods(1)
    clock.advance(9000 - 1)
    await ctl.settle()
    assert (await ctl.client.get(f"/sessions/{body['id']}")).json()["state"] == "ready"
    assert body["pod"] in pod_names(sim)
    clock.advance(1)
    ended: dict[str, Any] = {}

    async def has_ended() -> bool:
        ended.update((await ctl.client.get(f"/sessions/{body['id']}")).json())
        return bool(ended["state"] == "ended")

    # With the hooks on, its sandbox is asked whether it is busy first (in real time).
    await eventually(has_ended, within=15, what="the idle session to end")
    assert ended["end_reason"] == "idle_timeout"
    await eventually(
        lambda: body["pod"] not in pod_names(sim), within=15, what="the idle session's pod gone"
    )
    assert (await ctl.pool())["pods"]["assigned"] == 0


async def test_a_pod_not_ready_within_startup_timeout_is_replaced(kube: Kube) -> None:
    clock = ManualClock(start=START)
    sim = await kube.sim(startup_delay=3600)  # the kubelet never gets there
    ctl = await kube.controller(sim, clock=clock, prewarm_pool_size=1, startup_timeout="60s")
    await eventually(
        lambda: len(managed_pods(sim)) == 1 and bool(managed_pods(sim)[0]["spec"].get("nodeName")),
        within=15,
        what="one scheduled pod",
    )
    [stuck] = pod_names(sim)

    async def pool_knows_it() -> bool:  # its start-up clock runs from when the pool saw it
        return int((await ctl.pool())["pods"]["pending"]) == 1

    await eventually(pool_knows_it, within=15, what="the pool to record the pending pod")
    sim.cluster.startup_delay = 0.05  # the replacement starts normally
    clock.advance(59)
    await ctl.settle()
    assert pod_names(sim) == {stuck} and (await ctl.pool())["pods"]["pending"] == 1
    clock.advance(1)
    await ctl.settle()
    try:
        await ctl.wait_idle_pods(1, within=15)
    except AssertionError:
        seen = [(p["metadata"]["name"], p["status"], p["metadata"]) for p in managed_pods(sim)]
        raise AssertionError(f"{await ctl.pool()} {seen}") from None
    await eventually(lambda: stuck not in pod_names(sim), within=15, what="the stuck pod deleted")
    assert len(live_pods(sim)) == 1 and not is_pending(live_pods(sim)[0])
    assert sim.count_calls("create", "pods", 201) == 2


async def test_waiters_at_the_cap_are_served_in_order(kube: Kube) -> None:
    sim = await kube.sim()
    ctl = await kube.controller(sim, prewarm_pool_size=0, max_total_jobs=2)
    a = (await ctl.open("u1", "a", wait=20)).json()
    b = (await ctl.open("u2", "b", wait=20)).json()
    assert a["state"] == b["state"] == "ready"

    async def waiters(n: int) -> bool:
        return int((await ctl.pool())["waiters"]) == n

    first = asyncio.create_task(ctl.open("u3", "c", wait=30))
    await eventually(lambda: waiters(1), within=10, what="one waiter")
    second = asyncio.create_task(ctl.open("u4", "d", wait=30))
    await eventually(lambda: waiters(2), within=10, what="two waiters")

    await ctl.client.delete(f"/sessions/{a['id']}")
    c = await asyncio.wait_for(first, 20)
    assert c.status_code == 201 and c.json()["state"] == "ready"
    assert not second.done() and await waiters(1)  # the later one still waits
    await ctl.client.delete(f"/sessions/{b['id']}")
    d = await asyncio.wait_for(second, 20)
    assert d.status_code == 201 and d.json()["state"] == "ready"
    assert sim.max_pods_seen <= 2
    assert a["pod"] not in pod_names(sim) and b["pod"] not in pod_names(sim)
