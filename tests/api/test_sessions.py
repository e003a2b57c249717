"""The session API over real HTTP, with real sandbox processes (local backend)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx

from sandbox_controller.clock import ManualClock
from sandbox_controller.scheduler.lifecycle import ROUTE_LEASE
from sandbox_controller.tokens import load_public_key, public_key, verify_token

from ..conftest import ControllerFactory, RunningController, sandbox_processes
from ..eventually import eventually


async def test_a_warm_session_is_ready_with_a_working_sandbox(
    start_controller: ControllerFactory,
) -> None:
    clock = ManualClock(start=2_000_000_000.0)
    ctl = await start_controller(clock=clock, prewarm_pool_size=2)
    await ctl.wait_idle_pods(2)
    response = await ctl.open("alice", "thread-1")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["state"] == "ready" and body["pod"].startswith("agent-sandbox-job-")
    assert body["connect"]["url"].endswith(f"/s/{body['id']}/")
    keys = [load_public_key(public_key(b"test-token-secret"))]
    claims = verify_token(keys, body["connect"]["token"], 0)
    assert claims.session_id == body["id"]
    assert body["reclaimed_session_id"] is None and body["end_reason"] is None

    route = (await ctl.client.get(f"/internal/routes/{body['id']}")).json()
    assert route["state"] == "ready" and route["lease_seconds"] == ROUTE_LEASE
    async with httpx.AsyncClient() as direct:  # the sandbox really answers there
        echoed = await direct.post(f"http://{route['address']}/echo", content=b"hi")
    assert echoed.content == b"hi"

    fetched = await ctl.client.get(f"/sessions/{body['id']}")
    assert fetched.status_code == 200 and fetched.json()["pod"] == body["pod"]
    listed = await ctl.client.get("/sessions", params={"user_id": "alice"})
    assert [s["id"] for s in listed.json()["sessions"]] == [body["id"]]

    assert (await ctl.client.delete(f"/sessions/{body['id']}")).status_code == 204
    ended = (await ctl.client.get(f"/sessions/{body['id']}")).json()
    assert ended["state"] == "ended" and ended["end_reason"] == "deleted"
    assert ended["connect"] is None
    gone = (await ctl.client.get(f"/internal/routes/{body['id']}")).json()
    assert gone["address"] is None and gone["lease_seconds"] is None
    await ctl.wait_idle_pods(2)  # refilled with a fresh pod

    # The route handed out above is leased: until the lease ends the pod keeps its
    # address (and no other sandbox can take it); then it is deleted.
    clock.advance(ROUTE_LEASE - 1.0)
    await ctl.settle()
    async with httpx.AsyncClient() as direct:
        assert (await direct.get(f"http://{route['address']}/healthz")).status_code == 200

    async def pod_deleted() -> bool:
        return body["pod"] not in ctl.sandboxes()

    assert not await pod_deleted()
    clock.advance(1.0)
    await eventually(pod_deleted, within=15, what="the ended session's pod to be deleted")
    assert (await ctl.pool())["pods"]["assigned"] == 0


async def test_retrying_a_thread_returns_the_same_session(
    start_controller: ControllerFactory,
) -> None:
    ctl = await start_controller(prewarm_pool_size=1)
    await ctl.wait_idle_pods(1)
    first = await ctl.open("bob", "t1")
    again = await ctl.open("bob", "t1")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    # A thread id is unique per user (and org): mallory's "t1" is her own thread.
    other_user = await ctl.open("mallory", "t1")
    assert other_user.status_code == 201
    assert other_user.json()["id"] != first.json()["id"]
    assert other_user.json()["user_id"] == "mallory"


async def test_user_limit_then_reclaim_of_the_oldest_idle_session(
    start_controller: ControllerFactory,
) -> None:
    clock = ManualClock(start=2_000_000_000.0)
    ctl = await start_controller(
        clock=clock, prewarm_pool_size=3, max_sessions_per_user=2, idle_after=300
    )
    await ctl.wait_idle_pods(3)
    a = (await ctl.open("carol", "t1")).json()
    clock.advance(10)
    b = (await ctl.open("carol", "t2")).json()
    refused = await ctl.open("carol", "t3")
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "user_session_limit"
    assert int(refused.headers["Retry-After"]) >= 1

    clock.advance(400)  # both quiet past idle_after; b is then touched again
    assert (await ctl.client.post(f"/sessions/{b['id']}/touch")).status_code == 204
    await ctl.wait_idle_pods(1)
    new = await ctl.open("carol", "t3")
    assert new.status_code == 201, new.text
    assert new.json()["state"] == "ready"  # at once, from the warm pool
    assert new.json()["reclaimed_session_id"] == a["id"]
    await ctl.settle()
    old = (await ctl.client.get(f"/sessions/{a['id']}")).json()
    assert old["state"] == "ended" and old["end_reason"] == "reclaimed"
    assert (await ctl.client.get(f"/sessions/{b['id']}")).json()["state"] == "ready"


async def test_idle_timeout_ends_the_session_and_stops_its_sandbox(
    start_controller: ControllerFactory,
) -> None:
    clock = ManualClock(start=2_000_000_000.0)
    ctl = await start_controller(clock=clock, idle_timeout="2h30m")
    await ctl.wait_idle_pods(1)
    body = (await ctl.open("dana", "t1")).json()
    pod = body["pod"]
    clock.advance(9000 - 1)
    await ctl.settle()
    assert (await ctl.client.get(f"/sessions/{body['id']}")).json()["state"] == "ready"
    clock.advance(1)

    seen: dict[str, Any] = {}

    async def ended() -> bool:
        seen.update((await ctl.client.get(f"/sessions/{body['id']}")).json())
        return bool(seen["state"] == "ended")

    # First its sandbox is asked whether it is busy (it is not), then it ends.
    await eventually(ended, within=15, what="the idle session to end")
    gone = seen
    assert gone["end_reason"] == "idle_timeout"
    assert gone["end_detail"] == {
        "last_active_at": body["last_active_at"],
        "activity_source": "handover",
        "busy_answer": "not busy",
        "claim_answer": None,
        "eviction": None,
    }

    async def process_gone() -> bool:
        return not sandbox_processes(pod)

    await eventually(process_gone, within=15, what=f"sandbox process of {pod} to exit")
    touched = await ctl.client.post(f"/sessions/{body['id']}/touch")
    assert touched.status_code == 410 and touched.json()["error"]["code"] == "session_ended"


async def test_capacity_exhausted_is_loud(start_controller: ControllerFactory) -> None:
    ctl = await start_controller(prewarm_pool_size=0, max_total_jobs=1)
    first = await ctl.open("erin", "t1", wait=30)
    assert first.status_code == 201 and first.json()["state"] == "ready"
    refused = await ctl.open("frank", "t2", wait=0)
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "capacity_exhausted"
    assert int(refused.headers["Retry-After"]) >= 1
    metrics = (await ctl.client.get("/metrics")).text
    assert 'sandbox_session_requests_total{outcome="capacity"} 1.0' in metrics
    assert "sandbox_cap_reached 1.0" in metrics
    listed = await ctl.client.get("/sessions", params={"user_id": "frank"})
    assert listed.json()["sessions"] == []  # a refusal leaves nothing behind


async def test_provisioning_session_reports_why_and_becomes_ready(
    start_controller: ControllerFactory,
) -> None:
    ctl = await start_controller(prewarm_pool_size=0)
    response = await ctl.open("gus", "t1", wait=0)
    assert response.status_code == 201
    body = response.json()
    assert body["state"] == "provisioning" and body["detail"]

    async def ready() -> bool:
        got = await ctl.client.get(f"/sessions/{body['id']}")
        return bool(got.json()["state"] == "ready")

    await eventually(ready, within=30, what="the cold session to become ready")


async def test_health_readiness_and_pool_status(start_controller: ControllerFactory) -> None:
    ctl = await start_controller(prewarm_pool_size=1, max_total_jobs=7)
    async with httpx.AsyncClient(base_url=ctl.url) as anonymous:
        assert (await anonymous.get("/healthz")).status_code == 200
        assert (await anonymous.get("/readyz")).json()["leader"] is True
        assert (await anonymous.get("/metrics")).status_code == 200
        assert (await anonymous.get("/pool")).status_code == 401
    pool = await ctl.pool()
    assert set(pool["pods"]) == {"pending", "idle", "assigned", "terminating"}
    assert pool["max_total_jobs"] == 7 and pool["prewarm_pool_size"] == 1
    assert pool["max_sessions_per_user"] == 5 and pool["capacity_blocked"] is False


# 10 heavy users ask for 8 threads each, 50 light users for 2 or 3: 200 requests.
BURST_PLAN = [(f"heavy{u}", f"h{u}-{t}") for u in range(10) for t in range(8)]
BURST_PLAN += [(f"light{u}", f"l{u}-{t}") for u in range(50) for t in range(3 if u < 20 else 2)]


async def _burst(ctl: RunningController) -> list[httpx.Response]:
    assert len(BURST_PLAN) == 200 and len({u for u, _ in BURST_PLAN}) == 60
    return await asyncio.gather(*(ctl.open(u, t, wait=0) for u, t in BURST_PLAN))


async def test_two_hundred_simultaneous_requests_keep_every_promise(
    start_controller: ControllerFactory,
) -> None:
    ctl = await start_controller(prewarm_pool_size=5, max_total_jobs=50)
    await ctl.wait_idle_pods(5)
    most_pods = 0
    sampling = True

    async def sample() -> None:
        nonlocal most_pods
        while sampling:
            pods = (await ctl.pool())["pods"]
            most_pods = max(most_pods, sum(pods.values()))
            await asyncio.sleep(0.005)

    sampler = asyncio.create_task(sample())
    responses = await _burst(ctl)
    sampling = False
    await sampler

    codes = [r.status_code for r in responses]
    assert 500 not in codes and set(codes) <= {201, 429, 503}, codes
    for r in responses:
        if r.status_code == 429:
            assert r.json()["error"]["code"] == "user_session_limit"
        if r.status_code == 503:
            assert r.json()["error"]["code"] == "capacity_exhausted"
    created = [r.json() for r in responses if r.status_code == 201]
    assert len(created) == 50  # exactly the cap: every slot used, none beyond
    # Whatever order the requests arrived in: a user hears 429 only once it holds 5
    # sessions, and then for every request after; anyone with fewer was refused 503.
    by_user: dict[str, Counter[int]] = {}
    for (user, _), code in zip(BURST_PLAN, codes, strict=True):
        by_user.setdefault(user, Counter())[code] += 1
    for user, outcome in by_user.items():
        asked = outcome.total()
        if outcome[201] == 5:
            assert outcome[429] == asked - 5, (user, outcome)
        else:
            assert outcome[201] < 5 and outcome[429] == 0, (user, outcome)
    assert codes.count(429) > 0  # the heavy users, sent first, reach their limit
    assert most_pods <= 50
    assert len(ctl.sandboxes()) <= 50
    for body in created:  # everything promised is recorded
        stored = await ctl.controller.store.get_session(body["id"])
        assert stored is not None and stored.thread_id == body["thread_id"]


async def test_pool_pod_rows_wait_but_a_claimed_pod_is_committed_with_its_session(
    start_controller: ControllerFactory,
) -> None:
    clock = ManualClock(start=2_000_000_000.0)
    ctl = await start_controller(clock=clock, prewarm_pool_size=1)
    await ctl.wait_idle_pods(1)
    clock.advance(1.0)  # pool pod rows are written within a second, with no claim
    await ctl.settle()
    _, rows = await ctl.controller.store.load()
    assert [r.state.value for r in rows] == ["idle"]

    body = (await ctl.open("rhea", "t1")).json()
    # Committed before the reply, with no time passing: a crash now would still know
    # that this pod served a session and must never rejoin the pool.
    sessions, rows = await ctl.controller.store.load()
    assert [s.id for s in sessions] == [body["id"]]
    held = [r for r in rows if r.name == body["pod"]]
    assert held and held[0].state.value == "assigned" and held[0].session_id == body["id"]
