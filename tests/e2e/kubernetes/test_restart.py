"""A controller stopped and another started against the same cluster and database:
live sessions keep their pods, and nothing is leaked (docs/architecture.md invariant 5)."""

from __future__ import annotations

import asyncio

import httpx

from ...eventually import eventually
from .conftest import Kube, Obj, live_pods, managed_pods, pod_names


def uids(sim_pods: list[Obj]) -> dict[str, str]:
    return {p["metadata"]["name"]: p["metadata"]["uid"] for p in sim_pods}


async def test_a_restarted_controller_adopts_live_pods_and_leaks_none(
    kube: Kube, postgres_url: str
) -> None:
    sim = await kube.sim()
    first = await kube.controller(sim, database_url=postgres_url, prewarm_pool_size=3)
    await first.wait_idle_pods(3)
    ready = [(await first.open(f"u{i}", f"t{i}")).json() for i in range(4)]
    assert all(s["state"] == "ready" for s in ready)
    # Requests still arriving as the controller goes down; some may be answered.
    late = [asyncio.create_task(first.open(f"late{i}", f"l{i}", wait=5)) for i in range(5)]
    await asyncio.sleep(0.01)
    await first.stop()
    answers = await asyncio.gather(*late, return_exceptions=True)
    promised = [a.json() for a in answers if isinstance(a, httpx.Response) and a.status_code == 201]
    before = uids(managed_pods(sim))
    creates_before = sim.count_calls("create", "pods", 201)

    # While no controller runs, one session's pod dies with its node's kubelet.
    lost = ready[3]
    sim.cluster.delete_pod(sim.namespace, lost["pod"], grace=0)
    kept = ready[:3] + [s for s in promised if s["state"] == "ready"]
    calls_before = len(sim.calls)

    second = await kube.controller(sim, database_url=postgres_url, prewarm_pool_size=3)
    for s in kept:
        got = (await second.client.get(f"/sessions/{s['id']}")).json()
        assert (got["state"], got["pod"]) == ("ready", s["pod"]), got
        route = (await second.client.get(f"/internal/routes/{s['id']}")).json()
        assert route["address"] and route["address"].startswith("127.")
    gone = (await second.client.get(f"/sessions/{lost['id']}")).json()
    assert (gone["state"], gone["end_reason"]) == ("ended", "pod_failed")
    for s in promised:  # whatever a caller was told, the new controller knows
        assert (await second.client.get(f"/sessions/{s['id']}")).status_code == 200

    await second.wait_idle_pods(3)
    assert second.controller.scheduler is not None
    pool = second.controller.scheduler._pool  # a look inside, for the test
    assert pool is not None

    def converged() -> bool:
        return {p["metadata"]["name"] for p in live_pods(sim)} == {
            name for name, pod in pool.pods.items() if pod.state.value != "terminating"
        } and len(managed_pods(sim)) == len(live_pods(sim))

    await eventually(converged, within=15, what="kubesim and the pool to agree")
    counts = (await second.pool())["pods"]
    # Every healthy warm pod is kept (docs/architecture.md invariant 16), also those the first
    # controller created in its last second, before their rows were written.
    assert counts["assigned"] == len(kept) and counts["idle"] >= 3
    assert len(live_pods(sim)) == len(kept) + counts["idle"]  # nothing leaked
    now = uids(managed_pods(sim))
    for s in kept:  # the very same pod objects, never deleted
        assert now[s["pod"]] == before[s["pod"]]
        assert not any(
            c.verb == "delete" and c.path.split("?")[0].endswith("/" + s["pod"])
            for c in sim.calls[calls_before:]
        )
    # Warm pods of the first controller are adopted, not replaced (only the lost
    # session's refill and any creates the first one left unrecorded are new).
    assert sim.count_calls("create", "pods", 201) - creates_before <= 1 + len(late)
    assert pod_names(sim) >= {s["pod"] for s in kept}
