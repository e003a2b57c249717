"""What the lease means to the Kubernetes backend, against kubesim through the real
client: the write guard is asked before every attempt of every write, and the leader
label on the controller's own pod (what the controller Service selects) is set as leader
(clearing a stale one), removed on stepping down even without a lease, and never
written to a sandbox pod."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sandbox_controller.backends.base import (
    LABEL_LEADER,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    BackendError,
    LeaseLost,
)
from sandbox_controller.backends.kubernetes import KubernetesBackend
from sandbox_controller.kubesim import KubeSim

from .test_kubernetes import NS, make_backend, make_sim


class Lease:
    """A write guard the test switches: held, or lost."""

    def __init__(self) -> None:
        self.held = True

    def __call__(self) -> None:
        if not self.held:
            raise LeaseLost()


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[KubeSim]:
    async with make_sim(tmp_path) as running:
        yield running


@pytest.fixture
def lease() -> Lease:
    return Lease()


@pytest.fixture
async def backend(sim: KubeSim, tmp_path: Path, lease: Lease) -> AsyncIterator[KubernetesBackend]:
    b = await make_backend(sim, tmp_path, write_guard=lease)
    yield b
    await b.close()


async def controller_pod(backend: KubernetesBackend, name: str, **labels: str) -> None:
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "controller", **labels}},
        "spec": {"containers": [{"name": "c", "image": "controller"}]},
    }
    await backend.core.create_namespaced_pod(NS, body)


def leader_label(sim: KubeSim, name: str) -> str | None:
    labels: dict[str, str] = sim.store.get("pods", NS, name)["metadata"].get("labels") or {}
    return labels.get(LABEL_LEADER)


async def test_a_new_leader_takes_the_label_and_clears_a_stale_one(
    sim: KubeSim, backend: KubernetesBackend
) -> None:
    await controller_pod(backend, "ctl-old", **{LABEL_LEADER: "true"})  # killed or paused
    await controller_pod(backend, "ctl-new")
    sandbox = await backend.create_pod({})

    await backend.mark_leader("ctl-new", True)

    assert leader_label(sim, "ctl-new") == "true"
    assert leader_label(sim, "ctl-old") is None
    assert leader_label(sim, sandbox) is None


async def test_stepping_down_removes_its_own_label_without_a_lease(
    sim: KubeSim, backend: KubernetesBackend, lease: Lease
) -> None:
    await controller_pod(backend, "ctl-a")
    await backend.mark_leader("ctl-a", True)
    lease.held = False
    await controller_pod(backend, "ctl-b")

    with pytest.raises(LeaseLost):  # taking the label (and clearing ctl-a's) is a leader's
        await backend.mark_leader("ctl-b", True)
    assert leader_label(sim, "ctl-a") == "true"
    await backend.mark_leader("ctl-a", False)

    assert leader_label(sim, "ctl-a") is None
    assert leader_label(sim, "ctl-b") is None


async def test_a_sandbox_pod_is_never_labelled(sim: KubeSim, backend: KubernetesBackend) -> None:
    sandbox = await backend.create_pod({})
    assert sim.store.get("pods", NS, sandbox)["metadata"]["labels"][LABEL_MANAGED_BY] == MANAGED_BY

    with pytest.raises(BackendError):
        await backend.mark_leader(sandbox, True)
    with pytest.raises(BackendError):
        await backend.mark_leader(sandbox, False)
    assert leader_label(sim, sandbox) is None


class LeaseLostOnRetry:
    """A guard that holds for the first attempt only: the lease ends during the backoff."""

    def __init__(self) -> None:
        self.asked = 0

    def __call__(self) -> None:
        self.asked += 1
        if self.asked > 1:
            raise LeaseLost()


async def test_the_guard_is_asked_before_each_attempt_of_a_write(
    sim: KubeSim, tmp_path: Path
) -> None:
    guard = LeaseLostOnRetry()
    backend = await make_backend(sim, tmp_path, configmap="other-template", write_guard=guard)
    try:
        sim.set_faults(error_rate=1.0, error_codes=(503,), verbs=frozenset({"delete"}))
        with pytest.raises(LeaseLost):
            await backend.delete_pod("agent-sandbox-job-abcde")
        # One attempt went out (and failed); the retry was refused before it was sent.
        assert sim.count_calls(verb="delete") == 1
        assert guard.asked == 2
    finally:
        await backend.close()


async def test_no_write_leaves_once_the_lease_is_lost(
    sim: KubeSim, backend: KubernetesBackend, lease: Lease
) -> None:
    name = await backend.create_pod({})
    lease.held = False
    writes = sim.count_calls(verb="create") + sim.count_calls(verb="patch")

    for write in (
        backend.create_pod({}),
        backend.delete_pod(name),
        backend.set_labels(name, {"agent-sandbox/state": "idle"}),
    ):
        with pytest.raises(LeaseLost):
            await write
    assert sim.count_calls(verb="delete") == 0
    assert sim.count_calls(verb="create") + sim.count_calls(verb="patch") == writes
