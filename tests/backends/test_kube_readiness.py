"""Readiness seen directly: the Kubernetes backend probes a running, unready pod itself
while sessions wait, and leaves it to the kubelet while none do.

kubesim's kubelet and app run on one ManualClock, the backend's probes on another, so
which probe (ours or the kubelet's tick) made a pod ready is decided by the test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from sandbox_controller.backends.base import PodPhase
from sandbox_controller.backends.kube_readiness import DirectReadiness, ProbeTarget, probe_target
from sandbox_controller.backends.kube_template import DEFAULT_TEMPLATE
from sandbox_controller.backends.kubernetes import KubernetesBackend
from sandbox_controller.clock import ManualClock
from sandbox_controller.config import Settings
from sandbox_controller.kubesim import KubeSim
from sandbox_controller.kubesim.probes import KUBE_PROBE_AGENT

from ..eventually import eventually
from .test_kubernetes import EventLog, make_sim

NS = "default"
TEMPLATE = """
apiVersion: v1
kind: Pod
spec:
  restartPolicy: Never
  containers:
  - name: sandbox
    image: devsandbox
    ports: [{name: http, containerPort: 8080}]
    resources: {requests: {cpu: "1", memory: 2Gi}}
    readinessProbe:
      httpGet: {path: /healthz, port: http}
      periodSeconds: 2
"""
APP_DELAY = 0.7


@dataclass
class World:
    sim: KubeSim
    kubelet: ManualClock  # kubesim's kubelet and the apps' start
    clock: ManualClock  # the backend's
    backend: KubernetesBackend
    log: EventLog

    async def running_pod(self) -> str:
        """A new pod whose container runs, its app not answering yet, and the kubelet's
        first probe (failed) behind it."""
        name = await self.backend.create_pod({})
        await eventually(lambda: len(self.ticks(name)) == 1)
        assert self.ticks(name) == [(False, False)]
        return name

    def ticks(self, name: str) -> list[tuple[bool, bool]]:
        return [(t.ok, t.ready) for t in self.sim.cluster.probe_ticks if t.pod == name]

    async def app_answers(self, name: str) -> None:
        await self.kubelet.until_sleeping(2)  # the app's start, the kubelet's next tick
        self.kubelet.advance(APP_DELAY)
        await eventually(lambda: name in self.sim.cluster.app_answered)

    async def our_probes(self, intervals: int) -> None:
        """Let the backend's probe interval pass ``intervals`` times."""
        for _ in range(intervals):
            self.clock.advance(0.1)
            await asyncio.sleep(0.02)  # real time for a probe's round trip

    def ready(self, name: str) -> bool:
        return self.log.seen(name, lambda e: e.pod.phase is PodPhase.READY)

    def probed_by_us(self, name: str) -> int:
        requests = self.sim.cluster.app_requests.get(name, [])
        return sum(1 for _, agent, _ in requests if agent != KUBE_PROBE_AGENT)

    def kubelet_ready(self, name: str) -> bool:
        pod = self.sim.store.get("pods", NS, name)
        return any(
            c["type"] == "Ready" and c["status"] == "True" for c in pod["status"]["conditions"]
        )


@asynccontextmanager
async def make_world(tmp_path: Path, **settings: Any) -> AsyncIterator[World]:
    kubelet, clock = ManualClock(), ManualClock()
    async with make_sim(tmp_path, workload=True, app_delay=APP_DELAY, clock=kubelet) as sim:
        template = tmp_path / "pod.yaml"
        template.write_text(TEMPLATE)
        values = Settings(
            kubeconfig=str(sim.kubeconfig_path),
            pod_template_path=str(template),
            kube_qps=200.0,
            kube_burst=100,
            **settings,
        )
        options = replace(values.kube_options(), retry_base=0.02, retry_cap=0.3)
        backend = await KubernetesBackend.connect(options, clock=clock)
        await backend.start()
        log = EventLog(backend)
        try:
            yield World(sim, kubelet, clock, backend, log)
        finally:
            await log.close()
            await backend.close()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with make_world(tmp_path) as w:
        yield w


async def test_a_waited_for_pod_is_ready_at_our_probe_before_the_kubelets_tick(
    world: World,
) -> None:
    world.backend.sessions_waiting(1)
    name = await world.running_pod()
    await world.our_probes(3)
    assert not world.ready(name)  # refused: its app does not listen yet
    await world.app_answers(name)
    await world.our_probes(1)
    await eventually(lambda: world.ready(name))
    # The kubelet's clock has not reached its next tick: it never saw the app answer.
    assert world.ticks(name) == [(False, False)]
    assert not world.kubelet_ready(name)
    [status] = [s for s in await world.backend.resync() if s.name == name]
    assert status.phase is PodPhase.READY and status.address is not None
    # The kubelet agrees at its tick; nothing changes for the scheduler.
    events = len(world.log.events)
    world.kubelet.advance(2 - APP_DELAY)
    await eventually(lambda: world.kubelet_ready(name))
    await world.our_probes(2)
    assert [e.pod.phase for e in world.log.events[events:]] in ([], [PodPhase.READY])


async def test_a_pod_nobody_waits_for_is_ready_at_the_kubelets_tick(world: World) -> None:
    name = await world.running_pod()
    await world.app_answers(name)
    await world.our_probes(10)
    assert not world.ready(name)
    assert world.probed_by_us(name) == 0
    world.kubelet.advance(2 - APP_DELAY)
    await eventually(lambda: world.ready(name))
    assert world.ticks(name) == [(False, False), (True, True)]
    assert world.probed_by_us(name) == 0


async def test_probing_stops_when_nobody_waits_any_more(world: World) -> None:
    world.backend.sessions_waiting(1)
    name = await world.running_pod()
    await world.our_probes(2)  # refused: its app does not listen yet
    world.backend.sessions_waiting(0)
    await world.app_answers(name)
    await world.our_probes(5)
    assert not world.ready(name)
    assert world.probed_by_us(name) == 0


async def test_an_answer_the_kubelet_never_confirms_is_taken_back(world: World) -> None:
    world.backend.sessions_waiting(1)
    name = await world.running_pod()
    await world.app_answers(name)
    await world.our_probes(1)
    await eventually(lambda: world.ready(name))
    world.sim.app_down(name)
    await eventually(lambda: not world.sim.cluster._servers)
    world.kubelet.advance(2 - APP_DELAY)  # the kubelet's tick: refused
    await eventually(lambda: len(world.ticks(name)) == 2)
    assert world.ticks(name) == [(False, False), (False, False)]
    target = probe_target(world.backend.template)
    assert target is not None
    events = len(world.log.events)
    world.clock.advance(target.confirm_within)
    await eventually(lambda: len(world.log.events) > events)
    assert world.log.events[-1].pod.phase is PodPhase.PENDING
    # Not probed again (it would only flap), though sessions still wait.
    probes = world.probed_by_us(name)
    await world.our_probes(3)
    assert world.probed_by_us(name) == probes


async def test_more_pods_than_the_rate_allows_are_each_probed_less_often() -> None:
    hits: list[str] = []

    async def not_ready(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(status=503)

    app = web.Application()
    app.router.add_get("/{tail:.*}", not_ready)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    clock = ManualClock()
    prober = DirectReadiness(
        ProbeTarget("/healthz", runner.addresses[0][1], {}, 1.0, 60.0),
        clock=clock,
        answered=lambda name: None,
        unconfirmed=lambda name: None,
        interval=0.05,
        rate=40,
    )
    try:
        for i in range(4):
            prober.unready(f"pod-{i}", "127.0.0.1")
        prober.set_waiting(1)
        assert prober.period() == 4 / 40  # not the 50 ms interval: 80 probes a second
        await eventually(lambda: len(hits) == 4)
        await clock.until_sleeping(4)
        clock.advance(0.05)
        await asyncio.sleep(0.05)
        assert len(hits) == 4
        clock.advance(0.05)
        await eventually(lambda: len(hits) == 8)
        prober.settled("pod-0")
        prober.settled("pod-1")
        assert prober.period() == 0.05  # two pods: the interval again
        prober.set_waiting(0)
        assert prober.period() == 0.05
    finally:
        await prober.stop()
        await runner.cleanup()


async def test_with_direct_readiness_off_only_the_kubelet_decides(tmp_path: Path) -> None:
    async with make_world(tmp_path, kube_direct_readiness=False) as world:
        world.backend.sessions_waiting(1)
        name = await world.running_pod()
        await world.app_answers(name)
        await world.our_probes(5)
        assert not world.ready(name)
        assert world.probed_by_us(name) == 0
        world.kubelet.advance(2 - APP_DELAY)
        await eventually(lambda: world.ready(name))


def test_the_probe_is_the_templates_own() -> None:
    target = probe_target(DEFAULT_TEMPLATE)
    assert target is not None
    assert (target.url("10.0.0.7"), target.timeout) == ("http://10.0.0.7:8080/healthz", 1.0)
    # initialDelay 0 + period 2 s x (successThreshold 1 + 1) + timeout 1 s + the margin
    assert target.confirm_within == 4 + 1 + 10

    def with_probe(probe: dict[str, Any]) -> dict[str, Any]:
        return {"spec": {"containers": [{"name": "c", "readinessProbe": probe}]}}

    assert probe_target({"spec": {"containers": [{"name": "c"}]}}) is None
    assert probe_target(with_probe({"exec": {"command": ["true"]}})) is None
    assert probe_target(with_probe({"httpGet": {"port": 8080, "scheme": "HTTPS"}})) is None
    assert probe_target(with_probe({"httpGet": {"port": 8080, "host": "example.com"}})) is None
    assert probe_target(with_probe({"httpGet": {"port": "missing"}})) is None
    headers = [{"name": "X-Probe", "value": "1"}]
    custom = probe_target(with_probe({"httpGet": {"port": 9000, "httpHeaders": headers}}))
    assert custom is not None
    assert (custom.url("ip"), dict(custom.headers)) == ("http://ip:9000/", {"X-Probe": "1"})
