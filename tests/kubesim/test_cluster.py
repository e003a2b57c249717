"""The simulated scheduler, kubelet and node lifecycle, seen through the real client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from kubernetes_asyncio import client, config

from sandbox_controller.kubesim import KubeSim
from sandbox_controller.kubesim.testing import pod_body

from ..eventually import eventually

NS = "default"


@pytest.fixture
async def small(tmp_path: Path) -> AsyncIterator[KubeSim]:
    """One node with room for one 1-CPU pod; pods run a devsandbox at their IP."""
    async with KubeSim(
        kubeconfig=tmp_path / "kubeconfig",
        nodes=1,
        node_cpu="1500m",
        node_memory="4Gi",
        startup_delay=0.05,
        termination_delay=0.05,
        workload=True,
    ) as sim:
        yield sim


@pytest.fixture
async def api(small: KubeSim) -> AsyncIterator[client.CoreV1Api]:
    configuration = client.Configuration()
    await config.load_kube_config(
        config_file=str(small.kubeconfig_path), client_configuration=configuration
    )
    async with client.ApiClient(configuration) as api_client:
        yield client.CoreV1Api(api_client)


def condition(sim: KubeSim, name: str, type_: str) -> dict[str, str]:
    pod = sim.store.find("pods", NS, name) or {"status": {}}
    return next((c for c in pod["status"].get("conditions", []) if c["type"] == type_), {})


async def test_unschedulable_then_node_added(small: KubeSim, api: client.CoreV1Api) -> None:
    await api.create_namespaced_pod(NS, pod_body("fits"))
    await api.create_namespaced_pod(NS, pod_body("waits"))
    await eventually(lambda: condition(small, "waits", "PodScheduled").get("status") == "False")
    cond = condition(small, "waits", "PodScheduled")
    assert cond["reason"] == "Unschedulable"
    assert cond["message"] == "0/1 nodes are available: 1 Insufficient cpu."
    events = await api.list_namespaced_event(NS, field_selector="involvedObject.name=waits")
    failed = [e for e in events.items if e.reason == "FailedScheduling"]
    assert [(e.type, e.message) for e in failed] == [
        ("Warning", "0/1 nodes are available: 1 Insufficient cpu.")
    ]

    small.add_node("big", cpu="8", memory="32Gi")
    await eventually(lambda: condition(small, "waits", "Ready").get("status") == "True")
    pod = await api.read_namespaced_pod("waits", NS)
    assert pod.spec.node_name == "big"
    ip = pod.status.pod_ip
    assert ip.startswith("127.") and ip != "127.0.0.1"
    assert {c.type for c in pod.status.conditions} >= {
        "PodScheduled",
        "Initialized",
        "ContainersReady",
        "Ready",
    }
    assert pod.status.container_statuses[0].ready
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"http://{ip}:8080/healthz")).status_code == 200


async def test_capacity_freed_by_delete(small: KubeSim, api: client.CoreV1Api) -> None:
    await api.create_namespaced_pod(NS, pod_body("one"))
    await api.create_namespaced_pod(NS, pod_body("two"))
    await eventually(lambda: condition(small, "two", "PodScheduled").get("status") == "False")
    await api.delete_namespaced_pod("one", NS)
    await eventually(lambda: condition(small, "two", "Ready").get("status") == "True")
    assert small.max_pods_seen == 2


async def test_memory_and_selector_reasons(small: KubeSim, api: client.CoreV1Api) -> None:
    body = pod_body("fat", cpu="100m")
    body["spec"]["containers"][0]["resources"]["requests"]["memory"] = "8Gi"
    await api.create_namespaced_pod(NS, body)
    await eventually(lambda: condition(small, "fat", "PodScheduled").get("status") == "False")
    assert condition(small, "fat", "PodScheduled")["message"] == (
        "0/1 nodes are available: 1 Insufficient memory."
    )


async def test_node_removed_takes_its_pods(small: KubeSim, api: client.CoreV1Api) -> None:
    await api.create_namespaced_pod(NS, pod_body("doomed"))
    await eventually(lambda: condition(small, "doomed", "Ready").get("status") == "True")
    ip = small.store.get("pods", NS, "doomed")["status"]["podIP"]
    assert small.remove_node("kubesim-node-0") == ["doomed"]
    assert (await api.list_namespaced_pod(NS)).items == []
    async with httpx.AsyncClient() as http:
        with pytest.raises(httpx.TransportError):
            for _ in range(20):  # the workload stops in the background
                await http.get(f"http://{ip}:8080/healthz", timeout=0.5)
                await asyncio.sleep(0.05)


@pytest.mark.parametrize(("policy", "phase"), [("Never", "Failed"), ("Always", "Running")])
async def test_container_exit(
    small: KubeSim, api: client.CoreV1Api, policy: str, phase: str
) -> None:
    body = pod_body("crash")
    body["spec"]["restartPolicy"] = policy
    await api.create_namespaced_pod(NS, body)
    await eventually(lambda: condition(small, "crash", "Ready").get("status") == "True")
    small.exit_container("crash", exit_code=3)
    pod = await api.read_namespaced_pod("crash", NS)
    assert pod.status.phase == phase
    state = pod.status.container_statuses[0].state
    if policy == "Never":
        assert state.terminated.exit_code == 3
    else:
        assert state.waiting.reason == "CrashLoopBackOff"
    assert condition(small, "crash", "Ready")["status"] == "False"


async def test_failed_pod_frees_capacity(small: KubeSim, api: client.CoreV1Api) -> None:
    first = pod_body("first")
    first["spec"]["restartPolicy"] = "Never"
    await api.create_namespaced_pod(NS, first)
    await api.create_namespaced_pod(NS, pod_body("second"))
    await eventually(lambda: condition(small, "second", "PodScheduled").get("status") == "False")
    await eventually(lambda: condition(small, "first", "Ready").get("status") == "True")
    small.exit_container("first")
    await eventually(lambda: condition(small, "second", "Ready").get("status") == "True")
