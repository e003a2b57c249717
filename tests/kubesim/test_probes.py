"""The simulated kubelet's readiness probe: period, initial delay and thresholds from the
pod spec, on an injected clock, so a pod turns Ready only at a probe tick."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox_controller.clock import ManualClock
from sandbox_controller.kubesim import KubeSim
from sandbox_controller.kubesim.probes import KUBE_PROBE_AGENT, readiness_probe
from sandbox_controller.kubesim.testing import pod_body

from ..eventually import eventually

NS = "default"


def probed_pod(name: str, **probe: Any) -> dict[str, Any]:
    body = pod_body(name)
    container = body["spec"]["containers"][0]
    container["ports"] = [{"name": "http", "containerPort": 8080}]
    container["readinessProbe"] = {"httpGet": {"path": "/healthz", "port": "http"}, **probe}
    return body


def create(sim: KubeSim, body: dict[str, Any]) -> None:
    sim.store.create("pods", NS, sim.admit_pod(body))


def ready(sim: KubeSim, name: str) -> bool:
    pod = sim.store.get("pods", NS, name)
    return any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", [])
    )


def running(sim: KubeSim, name: str) -> bool:
    pod = sim.store.find("pods", NS, name)
    return pod is not None and pod["status"].get("phase") == "Running"


def ticks(sim: KubeSim, name: str) -> list[tuple[float, bool, bool]]:
    """(seconds since the clock's start, ok, ready) of each of the pod's probe ticks."""
    return [(t.at - START, t.ok, t.ready) for t in sim.cluster.probe_ticks if t.pod == name]


START = 1_000.0


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(monotonic_start=START)


@pytest.fixture
async def sim(tmp_path: Path, clock: ManualClock) -> AsyncIterator[KubeSim]:
    async with KubeSim(
        kubeconfig=tmp_path / "kubeconfig",
        startup_delay=0.01,
        workload=True,
        app_delay=0.7,
        clock=clock,
    ) as running_sim:
        yield running_sim


async def test_a_pod_turns_ready_at_the_first_probe_tick_after_its_app_answers(
    sim: KubeSim, clock: ManualClock
) -> None:
    create(sim, probed_pod("p", periodSeconds=2))
    await eventually(lambda: running(sim, "p") and len(ticks(sim, "p")) == 1)
    assert ticks(sim, "p") == [(0.0, False, False)]  # the container runs; its app does not
    await clock.until_sleeping(2)  # the app's start, the next probe
    clock.advance(0.7)
    await eventually(lambda: "p" in sim.cluster.app_answered)
    pod = sim.store.get("pods", NS, "p")
    async with httpx.AsyncClient() as http:
        answer = await http.get(f"http://{pod['status']['podIP']}:8080/healthz")
    assert answer.status_code == 200
    assert not ready(sim, "p")  # the app answers, the kubelet has not asked yet
    clock.advance(1.3)
    await eventually(lambda: ready(sim, "p"))
    assert ticks(sim, "p") == [(0.0, False, False), (2.0, True, True)]


async def test_initial_delay_and_success_threshold_without_a_workload(
    tmp_path: Path, clock: ManualClock
) -> None:
    async with KubeSim(kubeconfig=tmp_path / "kubeconfig", startup_delay=0.01, clock=clock) as sim:
        create(sim, probed_pod("p", initialDelaySeconds=3, periodSeconds=1, successThreshold=2))
        await eventually(lambda: running(sim, "p"))
        await clock.until_sleeping(1)  # the initial delay (the app answers at once)
        clock.advance(3)
        await clock.until_sleeping(1)
        assert ticks(sim, "p") == [(3.0, True, False)]
        clock.advance(1)
        await eventually(lambda: ready(sim, "p"))
        # Ready, and nothing can change that without a workload: probing stopped.
        assert ticks(sim, "p") == [(3.0, True, False), (4.0, True, True)]


async def test_a_ready_pod_whose_app_stops_answering_turns_unready_after_the_threshold(
    tmp_path: Path, clock: ManualClock
) -> None:
    async with KubeSim(
        kubeconfig=tmp_path / "kubeconfig", startup_delay=0.01, workload=True, clock=clock
    ) as sim:
        create(sim, probed_pod("p", periodSeconds=1, failureThreshold=2))
        await eventually(lambda: ready(sim, "p"))  # the first tick: the app answers at once
        sim.app_down("p")
        await eventually(lambda: not sim.cluster._servers)
        for _ in range(2):
            await clock.until_sleeping(1)
            clock.advance(1)
        await eventually(lambda: not ready(sim, "p"))
        assert [(ok, r) for _, ok, r in ticks(sim, "p")] == [
            (True, True),
            (False, True),
            (False, False),
        ]


async def test_a_pod_without_a_probe_is_ready_when_it_runs(sim: KubeSim) -> None:
    create(sim, pod_body("plain"))
    await eventually(lambda: running(sim, "plain"))
    assert ready(sim, "plain")
    assert ticks(sim, "plain") == []


def test_the_probe_is_read_with_kubernetes_defaults() -> None:
    probe = readiness_probe(probed_pod("p"))
    assert probe is not None
    assert (probe.path, probe.port, probe.period, probe.initial_delay) == ("/healthz", 8080, 10, 0)
    assert (probe.timeout, probe.success_threshold, probe.failure_threshold) == (1, 1, 3)
    assert readiness_probe(pod_body("plain")) is None
    assert KUBE_PROBE_AGENT.startswith("kube-probe/")
