"""The real kubectl against kubesim: discovery, get, watch, delete."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from sandbox_controller.backends.base import LABEL_MANAGED_BY, MANAGED_BY
from sandbox_controller.kubesim import KubeSim
from sandbox_controller.kubesim.testing import pod_body

from ..eventually import eventually

REPO = Path(__file__).resolve().parents[2]


def find_kubectl() -> str | None:
    """$KUBECTL, then the one scripts/fetch-kubectl.sh puts in .cache/tools, then PATH."""
    for candidate in (os.environ.get("KUBECTL"), str(REPO / ".cache/tools/kubectl")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("kubectl")


KUBECTL = find_kubectl()
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="no kubectl: run scripts/fetch-kubectl.sh")


async def kubectl(sim: KubeSim, *args: str) -> str:
    assert KUBECTL is not None
    proc = await asyncio.create_subprocess_exec(
        KUBECTL,
        "--kubeconfig",
        str(sim.kubeconfig_path),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "HOME": str(sim.kubeconfig_path.parent)},  # no cache of ours
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, out.decode()
    return out.decode()


async def test_get_and_delete(sim: KubeSim) -> None:
    managed = {LABEL_MANAGED_BY: MANAGED_BY}
    sim.store.create("pods", "default", sim.admit_pod(pod_body("ours-1", managed)))
    sim.store.create("pods", "default", sim.admit_pod(pod_body("ours-2", managed)))
    sim.store.create("pods", "default", sim.admit_pod(pod_body("theirs")))
    out = await kubectl(sim, "get", "pods", "-l", f"{LABEL_MANAGED_BY}={MANAGED_BY}")
    names = [line.split()[0] for line in out.strip().splitlines()[1:]]
    assert names == ["ours-1", "ours-2"]

    out = await kubectl(sim, "delete", "pod", "ours-1")
    assert 'pod "ours-1" deleted' in out
    assert sim.store.find("pods", "default", "ours-1") is None


async def test_get_watch_shows_a_change(sim: KubeSim) -> None:
    assert KUBECTL is not None
    proc = await asyncio.create_subprocess_exec(
        KUBECTL,
        "--kubeconfig",
        str(sim.kubeconfig_path),
        "get",
        "pods",
        "-w",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "HOME": str(sim.kubeconfig_path.parent)},
    )
    assert proc.stdout is not None
    try:
        await eventually(lambda: sim.count_calls("watch", "pods", 200) > 0, within=15)
        sim.store.create("pods", "default", sim.admit_pod(pod_body("appears")))
        line = await asyncio.wait_for(proc.stdout.readline(), 10)
        while b"appears" not in line:
            line = await asyncio.wait_for(proc.stdout.readline(), 10)
    finally:
        proc.terminate()
        await proc.wait()


async def test_drain_evicts_and_meets_the_budget(sim: KubeSim) -> None:
    """The real `kubectl drain`: it cordons, evicts what no budget holds, and retries
    (429) a pod whose budget holds until its timeout."""
    node = sim.store.query("nodes", None, lambda o: True)[0]["metadata"]["name"]
    for other in sim.store.query("nodes", None, lambda o: True)[1:]:
        sim.store.mutate("nodes", "", other["metadata"]["name"], _cordon)
    sim.store.create("pods", "default", sim.admit_pod(pod_body("warm", {"state": "pool"})))
    sim.store.create("pods", "default", sim.admit_pod(pod_body("live", {"state": "assigned"})))
    await eventually(lambda: all(p["status"].get("podIP") for p in sim.pods("default")))
    for other in sim.store.query("nodes", None, lambda o: True)[1:]:
        sim.store.mutate("nodes", "", other["metadata"]["name"], _uncordon)
    budget = {
        "metadata": {"name": "sandboxes"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"state": "assigned"}}},
    }
    sim.store.create("poddisruptionbudgets", "default", budget)

    out = await kubectl_fails(
        sim, "drain", node, "--force", "--delete-emptydir-data", "--timeout=6s"
    )
    assert "evicting pod default/live" in out and "disruption budget" in out, out
    assert sim.store.find("pods", "default", "warm") is None
    assert sim.store.find("pods", "default", "live") is not None
    assert sim.store.get("nodes", "", node)["spec"]["unschedulable"] is True
    assert sim.count_calls("create", "pods/eviction", 429) >= 1


def _cordon(node: dict[str, object]) -> None:
    node["spec"] = {"unschedulable": True}


def _uncordon(node: dict[str, object]) -> None:
    node["spec"] = {}


async def kubectl_fails(sim: KubeSim, *args: str) -> str:
    assert KUBECTL is not None
    proc = await asyncio.create_subprocess_exec(
        KUBECTL,
        "--kubeconfig",
        str(sim.kubeconfig_path),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "HOME": str(sim.kubeconfig_path.parent)},
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode != 0, out.decode()
    return out.decode()
