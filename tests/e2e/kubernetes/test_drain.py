"""A node drain with live and warm sessions, on kubesim, through the Eviction API.

The drain is done as ``kubectl drain`` does it: cordon the node, then evict every pod
on it, retrying each refused (429) eviction until its budget lets it go. The
controller keeps the sandboxes' PodDisruptionBudget at the number of live sessions'
pods: warm pods go at once (and are made again on another node), live sessions' pods
wait while the budget holds, and a session whose pod is evicted after all ends
``evicted`` (its release hook called first), never ``pod_failed``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from sandbox_controller.backends.base import LABEL_MANAGED_BY, LABEL_STATE, MANAGED_BY
from sandbox_controller.backends.kube_template import ASSIGNED_ANNOTATIONS
from sandbox_controller.kubesim import KubeSim
from sandbox_controller.sandbox_contract import claim_secret, hook_key

from ...eventually import eventually
from .conftest import NAMESPACE, Kube, live_pods

BUDGET = "sandboxes"
DRAIN_DETAIL = "EvictionByEvictionAPI: Eviction API: evicting"


class Drain:
    """``kubectl drain NODE --force --delete-emptydir-data`` through the real client:
    cordon, then evict each pod on the node; a 429 (a budget holds) is tried again
    on the next pass (kubectl waits 5 s between tries; a test, a tenth of that)."""

    def __init__(self, api: client.ApiClient, node: str) -> None:
        self.core = client.CoreV1Api(api)
        self.node = node
        self.refused: dict[str, int] = {}  # pod -> 429s so far
        self.evicted: set[str] = set()

    async def cordon(self) -> None:
        await self.core.patch_node(self.node, {"spec": {"unschedulable": True}})

    async def evict_pass(self) -> set[str]:
        """One pass over the pods still on the node: those not evicted yet."""
        pods = await self.core.list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={self.node}"
        )
        waiting = set()
        for pod in pods.items:
            name = pod.metadata.name
            if pod.metadata.deletion_timestamp is not None:
                continue
            body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name}}
            try:
                await self.core.create_namespaced_pod_eviction(name, pod.metadata.namespace, body)
                self.evicted.add(name)
            except ApiException as exc:
                assert exc.status == 429, exc.body  # the only answer a drain retries
                self.refused[name] = self.refused.get(name, 0) + 1
                waiting.add(name)
        return waiting

    async def run(self, passes: int) -> set[str]:
        waiting: set[str] = set()
        for _ in range(passes):
            waiting = await self.evict_pass()
            if not waiting:
                break
            await asyncio.sleep(0.5)
        return waiting


async def kube_api(sim: KubeSim) -> client.ApiClient:
    configuration = client.Configuration()
    await config.load_kube_config(
        config_file=str(sim.kubeconfig_path), client_configuration=configuration
    )
    return client.ApiClient(configuration)


def budget_body() -> dict[str, Any]:
    selector = {LABEL_STATE: "assigned", LABEL_MANAGED_BY: MANAGED_BY}
    return {
        "metadata": {"name": BUDGET},
        "spec": {"minAvailable": 0, "selector": {"matchLabels": selector}},
    }


def min_available(sim: KubeSim) -> int:
    return int(sim.store.get("poddisruptionbudgets", NAMESPACE, BUDGET)["spec"]["minAvailable"])


async def session(ctl: Any, sid: str) -> dict[str, Any]:
    response = await ctl.client.get(f"/sessions/{sid}")
    body: dict[str, Any] = response.json()
    return body


async def test_a_drain_takes_warm_pods_and_waits_for_live_sessions(kube: Kube) -> None:
    # Two nodes; pods take 1.5 s to stop after SIGTERM, time for the release hook.
    sim = await kube.sim(workload=True, nodes=2, termination_delay=1.5)
    sim.store.create("poddisruptionbudgets", NAMESPACE, budget_body())
    ctl = await kube.controller(sim, prewarm_pool_size=2, kube_disruption_budget=BUDGET)
    await ctl.wait_idle_pods(2)
    opened = [await ctl.open("ada", f"t{i}") for i in range(2)]
    assert all(r.status_code == 201 and r.json()["state"] == "ready" for r in opened)
    live = {r.json()["pod"]: r.json()["id"] for r in opened}
    await ctl.wait_idle_pods(2)
    await eventually(lambda: min_available(sim) == 2, what="the budget at 2 live sessions")

    pods = {p["metadata"]["name"]: p for p in live_pods(sim)}
    warm = set(pods) - set(live)
    for name in live:  # leased: the autoscalers must leave their nodes alone
        assert pods[name]["metadata"]["annotations"].items() >= ASSIGNED_ANNOTATIONS.items()
    for name in warm:  # warm: nothing pins a node
        notes = pods[name]["metadata"].get("annotations") or {}
        assert "karpenter.sh/do-not-disrupt" not in notes
        assert notes.get("cluster-autoscaler.kubernetes.io/safe-to-evict") == "true"

    # Drain the node of the first live session (it holds warm pods too, or not).
    first_pod, first_sid = next(iter(live.items()))
    node = pods[first_pod]["spec"]["nodeName"]
    on_node = {n for n, p in pods.items() if p["spec"]["nodeName"] == node}
    api = await kube_api(sim)
    try:
        drain = Drain(api, node)
        await drain.cordon()
        waiting = await drain.run(passes=4)
        # Warm pods went at once; each live one was refused on every pass and stays.
        assert drain.evicted == on_node & warm
        assert waiting == on_node & set(live)
        assert all(drain.refused[n] == 4 for n in waiting)
        for name in waiting:
            assert (
                sim.store.get("pods", NAMESPACE, name)["metadata"].get("deletionTimestamp") is None
            )
        for sid in live.values():
            assert (await session(ctl, sid))["state"] == "ready"
        # The warm pool is made whole again, off the cordoned node.
        await ctl.wait_idle_pods(2)
        await eventually(
            lambda: all(
                p["spec"].get("nodeName") != node
                for p in live_pods(sim)
                if p["metadata"]["name"] not in live
            ),
            what="new warm pods on the other node",
        )

        # A live session ends: its pod goes (deleted by the controller, not evicted)
        # and the budget follows.
        other_sid = list(live.values())[1]
        assert (await ctl.client.delete(f"/sessions/{other_sid}")).status_code == 204
        await eventually(lambda: min_available(sim) == 1, what="the budget at 1")
        assert await drain.run(passes=2) == {first_pod}

        # The operator lets the drain go on (the budget deleted): the live session's
        # pod is evicted; its sandbox hears of the end while it stops, and the session
        # ends evicted, saying so.
        secret = claim_secret(
            hook_key(b"test-token-secret"),
            pods[first_pod]["metadata"]["labels"]["agent-sandbox/create-id"],
        )
        address = f"http://{pods[first_pod]['status']['podIP']}:8080/_sandbox/claim"
        sim.store.delete("poddisruptionbudgets", NAMESPACE, BUDGET)
        assert await drain.run(passes=1) == set()
        released = False
        async with httpx.AsyncClient() as direct:

            async def release_heard() -> bool:
                nonlocal released
                try:
                    answer = await direct.get(
                        address, headers={"Authorization": f"Bearer {secret}"}
                    )
                except httpx.HTTPError:
                    return False
                released = released or bool(answer.json().get("released"))
                return released

            await eventually(release_heard, what="the release hook on the evicted pod")
        ended = await session(ctl, first_sid)
        assert ended["state"] == "ended" and ended["end_reason"] == "evicted"
        assert ended["end_detail"]["eviction"] == DRAIN_DETAIL
        metrics = (await ctl.client.get("/metrics")).text
        assert 'sandbox_sessions_ended_total{reason="evicted"} 1.0' in metrics
        assert 'sandbox_sessions_ended_total{reason="pod_failed"}' not in metrics
    finally:
        await api.close()


async def test_a_sandbox_over_its_disk_limit_ends_evicted(kube: Kube) -> None:
    sim = await kube.sim(workload=True)
    ctl = await kube.controller(sim, prewarm_pool_size=1)
    await ctl.wait_idle_pods(1)
    opened = (await ctl.open("ada", "t1")).json()
    message = "Pod ephemeral local storage usage exceeds the total limit of containers 22Gi."
    sim.cluster.evict_for_pressure(NAMESPACE, opened["pod"], message)

    async def ended() -> bool:
        return (await session(ctl, opened["id"]))["state"] == "ended"

    await eventually(ended, what="the session ended")
    body = await session(ctl, opened["id"])
    assert body["end_reason"] == "evicted"
    assert body["end_detail"]["eviction"] == f"TerminationByKubelet: {message}"
