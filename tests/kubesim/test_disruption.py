"""PodDisruptionBudgets and the Eviction API through the real kubernetes-asyncio client:
an eviction is allowed while a budget can spare a pod and refused 429 once it cannot,
as a drain meets it; cordoned nodes take no new pods."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from sandbox_controller.kubesim import KubeSim
from sandbox_controller.kubesim.testing import pod_body

from ..eventually import eventually

NS = "default"


def budget(name: str, min_available: Any, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name},
        "spec": {"minAvailable": min_available, "selector": {"matchLabels": labels}},
    }


def eviction(name: str) -> dict[str, Any]:
    return {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name}}


async def running(sim: KubeSim, *names: str) -> None:
    def ready() -> bool:
        pods = {p["metadata"]["name"]: p for p in sim.pods(NS)}
        return all(pods.get(n, {}).get("status", {}).get("podIP") for n in names)

    await eventually(ready, what=f"pods {names} running")


@pytest.fixture
async def policy(sim: KubeSim, core: client.CoreV1Api) -> client.PolicyV1Api:
    return client.PolicyV1Api(core.api_client)


async def test_eviction_honours_the_budget(
    sim: KubeSim, core: client.CoreV1Api, policy: client.PolicyV1Api
) -> None:
    held = {"state": "assigned"}
    for name in ("a", "b"):
        await core.create_namespaced_pod(NS, pod_body(name, held))
    await core.create_namespaced_pod(NS, pod_body("free", {"state": "pool"}))
    await running(sim, "a", "b", "free")
    await policy.create_namespaced_pod_disruption_budget(NS, budget("sandboxes", 2, held))

    # Not covered: goes at once, marked as evicted.
    await core.create_namespaced_pod_eviction("free", NS, eviction("free"))
    evicted = await core.read_namespaced_pod("free", NS)
    assert evicted.metadata.deletion_timestamp is not None
    target = [c for c in evicted.status.conditions if c.type == "DisruptionTarget"]
    assert target and target[0].reason == "EvictionByEvictionAPI"

    # Covered, and the budget needs both: 429, the pod untouched.
    with pytest.raises(ApiException) as refused:
        await core.create_namespaced_pod_eviction("a", NS, eviction("a"))
    assert refused.value.status == 429
    status = json.loads(refused.value.body)
    assert status["details"]["causes"][0]["reason"] == "DisruptionBudget"
    assert "needs 2 healthy pods and has 2 currently" in status["details"]["causes"][0]["message"]
    assert (await core.read_namespaced_pod("a", NS)).metadata.deletion_timestamp is None
    shown = await policy.read_namespaced_pod_disruption_budget("sandboxes", NS)
    assert shown.status.disruptions_allowed == 0 and shown.status.current_healthy == 2

    # The budget lowered to one: one eviction may pass, the next may not.
    await policy.patch_namespaced_pod_disruption_budget(
        "sandboxes", NS, {"spec": {"minAvailable": 1}}
    )
    await core.create_namespaced_pod_eviction("a", NS, eviction("a"))
    with pytest.raises(ApiException) as second:
        await core.create_namespaced_pod_eviction("b", NS, eviction("b"))
    assert second.value.status == 429
    await eventually(lambda: sim.store.find("pods", NS, "a") is None, what="a gone")
    assert sim.count_calls("create", "pods/eviction", 429) == 2


async def test_two_budgets_and_a_percentage_refuse(
    sim: KubeSim, core: client.CoreV1Api, policy: client.PolicyV1Api
) -> None:
    await core.create_namespaced_pod(NS, pod_body("p", {"state": "assigned", "app": "x"}))
    await running(sim, "p")
    await policy.create_namespaced_pod_disruption_budget(
        NS, budget("pct", "50%", {"state": "assigned"})
    )
    with pytest.raises(ApiException) as pct:
        await core.create_namespaced_pod_eviction("p", NS, eviction("p"))
    assert pct.value.status == 500 and "integer" in json.loads(pct.value.body)["message"]
    await policy.create_namespaced_pod_disruption_budget(NS, budget("two", 0, {"app": "x"}))
    with pytest.raises(ApiException) as two:
        await core.create_namespaced_pod_eviction("p", NS, eviction("p"))
    assert "more than one PodDisruptionBudget" in json.loads(two.value.body)["message"]


async def test_a_pending_pod_is_evicted_whatever_the_budget(
    sim: KubeSim, core: client.CoreV1Api, policy: client.PolicyV1Api
) -> None:
    big = pod_body("big", {"state": "assigned"}, cpu="64")  # no node can take it
    await core.create_namespaced_pod(NS, big)
    await policy.create_namespaced_pod_disruption_budget(NS, budget("b", 1, {"state": "assigned"}))
    await core.create_namespaced_pod_eviction("big", NS, eviction("big"))
    assert sim.store.find("pods", NS, "big") is None


async def test_cordoned_node_takes_no_pods(sim: KubeSim, core: client.CoreV1Api) -> None:
    for node in sim.store.query("nodes", None, lambda o: True)[1:]:
        await core.patch_node(node["metadata"]["name"], {"spec": {"unschedulable": True}})
    first = sim.store.query("nodes", None, lambda o: True)[0]["metadata"]["name"]
    for i in range(3):
        await core.create_namespaced_pod(NS, pod_body(f"p{i}"))
    await running(sim, "p0", "p1", "p2")
    assert {p["spec"]["nodeName"] for p in sim.pods(NS)} == {first}


async def test_kubelet_eviction_fails_the_pod(sim: KubeSim, core: client.CoreV1Api) -> None:
    await core.create_namespaced_pod(NS, pod_body("disk"))
    await running(sim, "disk")
    message = "Pod ephemeral local storage usage exceeds the total limit of containers 22Gi."
    async with httpx.AsyncClient() as admin:  # as an out-of-process kubesim is driven
        answer = await admin.post(f"{sim.url}/_kubesim/pods/disk/evict", json={"message": message})
    assert answer.status_code == 200, answer.text
    pod = await core.read_namespaced_pod("disk", NS)
    assert pod.status.phase == "Failed" and pod.status.reason == "Evicted"
    assert pod.status.message == message
