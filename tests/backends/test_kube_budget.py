"""The Kubernetes backend's part in disruption: the do-not-evict annotations only on
leased pods, and the sandboxes' PodDisruptionBudget kept equal to them, in few writes
(kubesim over real HTTP, the real client)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from sandbox_controller.backends.base import (
    LABEL_INSTANCE,
    LABEL_STATE,
    LeaseLost,
    assigned_labels,
    pool_labels,
)
from sandbox_controller.backends.kube_template import ASSIGNED_ANNOTATIONS
from sandbox_controller.backends.kubernetes import KubernetesBackend
from sandbox_controller.config import Settings
from sandbox_controller.kubesim import KubeSim

from ..eventually import eventually

NS = "default"
BUDGET = "agent-sandbox-sandboxes"
TEMPLATE = """
apiVersion: v1
kind: Pod
metadata:
  labels: {app.kubernetes.io/instance: rel}
  annotations:
    karpenter.sh/do-not-disrupt: "true"
    cluster-autoscaler.kubernetes.io/safe-to-evict: "false"
    team: sandbox
spec:
  restartPolicy: Never
  containers:
  - name: sandbox
    image: devsandbox
    resources: {requests: {cpu: "100m"}}
"""


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[KubeSim]:
    async with KubeSim(
        kubeconfig=tmp_path / "kubeconfig", startup_delay=0.05, termination_delay=0.05, seed=5
    ) as running:
        selector = {"matchLabels": {LABEL_STATE: "assigned", LABEL_INSTANCE: "rel"}}
        budget = {"metadata": {"name": BUDGET}, "spec": {"minAvailable": 0, "selector": selector}}
        running.store.create("poddisruptionbudgets", NS, budget)
        yield running


async def connect(sim: KubeSim, tmp_path: Path, interval: float, **kw: object) -> KubernetesBackend:
    template = tmp_path / "pod.yaml"
    template.write_text(TEMPLATE)
    settings = Settings(
        kubeconfig=str(sim.kubeconfig_path),
        pod_template_path=str(template),
        kube_disruption_budget=BUDGET,
        kube_qps=200.0,
        kube_burst=100,
    )
    options = replace(settings.kube_options(), budget_interval=interval, retry_base=0.02)
    backend = await KubernetesBackend.connect(options, **kw)  # type: ignore[arg-type]
    await backend.start()
    return backend


def min_available(sim: KubeSim) -> int:
    return int(sim.store.get("poddisruptionbudgets", NS, BUDGET)["spec"]["minAvailable"])


def patches(sim: KubeSim) -> int:
    return sim.count_calls("patch", "poddisruptionbudgets")


async def test_only_leased_pods_carry_the_do_not_evict_annotations(
    sim: KubeSim, tmp_path: Path
) -> None:
    backend = await connect(sim, tmp_path, interval=0.05)
    try:
        warm = await backend.create_pod(pool_labels())
        leased = await backend.create_pod(pool_labels())
        await backend.set_labels(leased, assigned_labels("session-1"))
        warm_notes = sim.store.get("pods", NS, warm)["metadata"]["annotations"]
        # The template's do-not-evict annotations are not kept on a warm pod.
        assert warm_notes == {
            "team": "sandbox",
            "cluster-autoscaler.kubernetes.io/safe-to-evict": "true",
        }
        leased_notes = sim.store.get("pods", NS, leased)["metadata"]["annotations"]
        assert leased_notes == {"team": "sandbox", **ASSIGNED_ANNOTATIONS}
    finally:
        await backend.close()


async def test_the_budget_follows_the_assigned_pods_in_coalesced_writes(
    sim: KubeSim, tmp_path: Path
) -> None:
    # A long interval: the first change is written at once, the rest wait for it.
    backend = await connect(sim, tmp_path, interval=3.0)
    try:
        await eventually(lambda: patches(sim) == 1, what="the term's first write")
        names = [await backend.create_pod(pool_labels()) for _ in range(6)]
        for i, name in enumerate(names[:5]):
            await backend.set_labels(name, assigned_labels(f"s{i}"))
        await eventually(lambda: min_available(sim) == 5, what="minAvailable 5")
        # Five leases within one interval: at most a leading and a trailing write.
        assert patches(sim) <= 3
        await backend.delete_pod(names[0])  # a session ended: its pod goes
        await eventually(lambda: min_available(sim) == 4, what="minAvailable 4")
        assert backend._assigned == set(names[1:5])
    finally:
        await backend.close()


async def test_a_budget_write_passes_the_write_guard(sim: KubeSim, tmp_path: Path) -> None:
    def refuse() -> None:
        raise LeaseLost()

    sim.store.mutate("poddisruptionbudgets", NS, BUDGET, lambda b: b["spec"].update(minAvailable=7))
    backend = await connect(sim, tmp_path, interval=0.05, write_guard=refuse)
    try:
        await eventually(lambda: backend._budget is not None and backend._budget._failed)
        assert min_available(sim) == 7 and patches(sim) == 0
    finally:
        await backend.close()
