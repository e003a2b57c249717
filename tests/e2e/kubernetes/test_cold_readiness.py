"""A cold claim is handed over when the pod's app answers, not at the kubelet's next
readiness probe; a pod nobody waits for is left to the kubelet.

kubesim's kubelet and the pods' apps run on a ManualClock that only the test moves,
with the pod template's probe every 2 s: the kubelet probes when the container starts
(refused: the app is not up) and next at 2 s. The app answers at a random moment in
between. Which of the two probes made the pod ready is then a matter of order, not of
timing: the kubelet's second probe cannot happen before the test moves its clock.
"""

from __future__ import annotations

import asyncio
import random

from sandbox_controller.clock import ManualClock
from sandbox_controller.kubesim import KubeSim
from sandbox_controller.kubesim.probes import KUBE_PROBE_AGENT

from ...eventually import eventually
from .conftest import NAMESPACE, Kube, managed_pods

PERIOD = 2.0  # the built-in template's readinessProbe.periodSeconds


def ticks(sim: KubeSim, name: str) -> list[tuple[bool, bool]]:
    """(answered, Ready after it) of each probe the kubelet ran on ``name``."""
    return [(t.ok, t.ready) for t in sim.cluster.probe_ticks if t.pod == name]


def the_pod(sim: KubeSim) -> str | None:
    pods = managed_pods(sim)
    return pods[0]["metadata"]["name"] if len(pods) == 1 else None


def kubelet_ready(sim: KubeSim, name: str) -> bool:
    pod = sim.store.get("pods", NAMESPACE, name)
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"]["conditions"])


def probes_not_by_kubelet(sim: KubeSim, name: str) -> int:
    return sum(
        1 for _, agent, _ in sim.cluster.app_requests.get(name, []) if agent != KUBE_PROBE_AGENT
    )


async def a_pod_whose_app_answers(sim: KubeSim, kubelet: ManualClock, app_delay: float) -> str:
    """The one pod, running, refused at the kubelet's first probe, then its app up."""
    await eventually(lambda: the_pod(sim) is not None and ticks(sim, the_pod(sim) or "") != [])
    name = the_pod(sim)
    assert name is not None
    assert ticks(sim, name) == [(False, False)]
    await kubelet.until_sleeping(2)  # the app's start, the kubelet's next probe
    kubelet.advance(app_delay)
    await eventually(lambda: name in sim.cluster.app_answered)
    return name


async def test_a_waiting_session_gets_the_pod_when_its_app_answers(kube: Kube) -> None:
    app_delay = random.uniform(0.05, PERIOD - 0.05)
    kubelet = ManualClock()
    sim = await kube.sim(workload=True, app_delay=app_delay, clock=kubelet)
    ctl = await kube.controller(sim, prewarm_pool_size=0)
    opening = asyncio.create_task(ctl.open("alice", "t1", wait=60))
    name = await a_pod_whose_app_answers(sim, kubelet, app_delay)
    response = await opening
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["state"], body["pod"]) == ("ready", name)
    # Handed over before the kubelet's next probe, which has not happened yet.
    assert ticks(sim, name) == [(False, False)], f"app answered at {app_delay:.3f}s"
    assert not kubelet_ready(sim, name)
    assert probes_not_by_kubelet(sim, name) >= 1
    metrics = (await ctl.client.get("/metrics")).text
    assert 'sandbox_session_requests_total{outcome="cold"} 1.0' in metrics
    # The kubelet agrees at its tick, and the session goes on as it was.
    kubelet.advance(PERIOD - app_delay)
    await eventually(lambda: kubelet_ready(sim, name))
    assert (await ctl.client.get(f"/sessions/{body['id']}")).json()["state"] == "ready"


async def test_a_pod_nobody_waits_for_is_ready_at_the_kubelets_probe(kube: Kube) -> None:
    app_delay = random.uniform(0.05, PERIOD - 0.05)
    kubelet = ManualClock()
    sim = await kube.sim(workload=True, app_delay=app_delay, clock=kubelet)
    ctl = await kube.controller(sim, prewarm_pool_size=1)
    name = await a_pod_whose_app_answers(sim, kubelet, app_delay)
    # Several of the controller's probe intervals: it does not probe a pool pod.
    await asyncio.sleep(0.5)
    assert (await ctl.pool())["pods"]["idle"] == 0
    assert probes_not_by_kubelet(sim, name) == 0
    kubelet.advance(PERIOD - app_delay)
    await ctl.wait_idle_pods(1)
    assert ticks(sim, name) == [(False, False), (True, True)]
    assert probes_not_by_kubelet(sim, name) == 0
    response = await ctl.open("alice", "t1")
    assert (response.json()["state"], response.json()["pod"]) == ("ready", name)


async def test_with_direct_readiness_off_a_waiting_session_waits_for_the_kubelet(
    kube: Kube,
) -> None:
    app_delay = random.uniform(0.05, PERIOD - 0.05)
    kubelet = ManualClock()
    sim = await kube.sim(workload=True, app_delay=app_delay, clock=kubelet)
    ctl = await kube.controller(sim, prewarm_pool_size=0, kube_direct_readiness=False)
    opening = asyncio.create_task(ctl.open("alice", "t1", wait=60))
    name = await a_pod_whose_app_answers(sim, kubelet, app_delay)
    await asyncio.sleep(0.5)
    assert not opening.done()
    kubelet.advance(PERIOD - app_delay)
    response = await opening
    assert response.json()["state"] == "ready"
    assert ticks(sim, name) == [(False, False), (True, True)]
