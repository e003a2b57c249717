"""The whole controller with SANDBOX_BACKEND=kubernetes against kubesim.

The controller builds its backend exactly as in production (``KubernetesBackend.
connect`` reading a kubeconfig), so every pod call goes through the real
kubernetes-asyncio client over real HTTP to kubesim's API server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sandbox_controller.backends.base import LABEL_MANAGED_BY, MANAGED_BY
from sandbox_controller.backends.kubernetes import KubernetesBackend
from sandbox_controller.clock import Clock
from sandbox_controller.kubesim import KubeSim

from ...conftest import ControllerFactory, RunningController

NAMESPACE = "sandboxes"
Obj = dict[str, Any]


class Kube:
    """Starts kubesims and controllers pointed at them; stops controllers first."""

    def __init__(self, tmp_path: Path, start_controller: ControllerFactory) -> None:
        self.tmp_path = tmp_path
        self._start_controller = start_controller
        self.sims: list[KubeSim] = []
        self.controllers: list[RunningController] = []

    async def sim(self, **options: Any) -> KubeSim:
        values: dict[str, Any] = {
            "kubeconfig": self.tmp_path / f"kubeconfig-{len(self.sims)}",
            "namespace": NAMESPACE,
            "startup_delay": 0.05,
            "termination_delay": 0.05,
            "bookmark_interval": 0.5,
            "seed": 17,
        }
        values.update(options)
        sim = await KubeSim(**values).start()
        self.sims.append(sim)
        return sim

    async def controller(
        self, sim: KubeSim, *, clock: Clock | None = None, **overrides: Any
    ) -> RunningController:
        values: dict[str, Any] = {
            "backend": "kubernetes",
            "kubeconfig": str(sim.kubeconfig_path),
            "namespace": NAMESPACE,
            # Generous: these tests are about the scheduler, not the client's pacing.
            "kube_qps": 500.0,
            "kube_burst": 1000,
            # A kubesim pod without a workload has nothing on its port: no hook could
            # answer, so every claim would fail. With a workload, devsandbox answers.
            "hooks": sim.cluster.workload,
        }
        values.update(overrides)
        ctl = await self._start_controller(clock=clock, **values)
        assert isinstance(ctl.controller.backend, KubernetesBackend)
        self.controllers.append(ctl)
        return ctl

    async def close(self) -> None:
        for ctl in reversed(self.controllers):
            await ctl.stop()
        for sim in reversed(self.sims):
            await sim.stop()


@pytest.fixture
async def kube(tmp_path: Path, start_controller: ControllerFactory) -> AsyncIterator[Kube]:
    harness = Kube(tmp_path, start_controller)
    try:
        yield harness
    finally:
        await harness.close()


def managed_pods(sim: KubeSim) -> list[Obj]:
    return [
        p
        for p in sim.pods(NAMESPACE)
        if p["metadata"].get("labels", {}).get(LABEL_MANAGED_BY) == MANAGED_BY
    ]


def pod_names(sim: KubeSim) -> set[str]:
    return {p["metadata"]["name"] for p in managed_pods(sim)}


def live_pods(sim: KubeSim) -> list[Obj]:
    """Managed pods not being deleted."""
    return [p for p in managed_pods(sim) if not p["metadata"].get("deletionTimestamp")]


def is_pending(pod: Obj) -> bool:
    return bool(pod["status"].get("phase") == "Pending")
