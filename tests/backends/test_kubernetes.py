"""KubernetesBackend against kubesim over real HTTP, through the real client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox_controller.backends.base import (
    LABEL_MANAGED_BY,
    LABEL_STATE,
    LABEL_TEMPLATE_HASH,
    MANAGED_BY,
    PodEvent,
    PodPhase,
)
from sandbox_controller.backends.kubernetes import KubernetesBackend
from sandbox_controller.config import Settings
from sandbox_controller.kubesim import KubeSim

from ..eventually import eventually

NS = "default"
TEMPLATE = """
apiVersion: v1
kind: Pod
metadata:
  labels: {team: sandbox}
spec:
  restartPolicy: Never
  containers:
  - name: sandbox
    image: devsandbox
    ports: [{containerPort: 8080}]
    resources: {requests: {cpu: "1", memory: 2Gi}}
"""


class EventLog:
    """Everything backend.events() yields, gathered by a task of the test's own."""

    def __init__(self, backend: KubernetesBackend) -> None:
        self.events: list[PodEvent] = []
        self._task = asyncio.create_task(self._consume(backend))

    async def _consume(self, backend: KubernetesBackend) -> None:
        async for event in backend.events():
            self.events.append(event)

    def seen(self, name: str, pred: Callable[[PodEvent], bool]) -> bool:
        return any(e.pod.name == name and pred(e) for e in self.events)

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def make_sim(tmp_path: Path, **kw: Any) -> KubeSim:
    options: dict[str, Any] = {
        "kubeconfig": tmp_path / "kubeconfig",
        "startup_delay": 0.05,
        "termination_delay": 0.05,
        "bookmark_interval": 0.5,
        "seed": 3,
    }
    return KubeSim(**{**options, **kw})


async def make_backend(sim: KubeSim, tmp_path: Path, **kw: Any) -> KubernetesBackend:
    template = tmp_path / "pod.yaml"
    template.write_text(kw.pop("template_text", TEMPLATE))
    configmap = kw.pop("configmap", "agent-sandbox-pod-template")
    sim.create_configmap(configmap)
    settings = Settings(
        kubeconfig=str(sim.kubeconfig_path),
        pod_template_path=str(template),
        pod_template_configmap=configmap,
        kube_qps=kw.pop("qps", 200.0),
        kube_burst=kw.pop("burst", 100),
        max_concurrent_creates=kw.pop("max_concurrent_creates", 3),
    )
    # Retries in tenths of a second, so fault tests recover quickly.
    options = replace(settings.kube_options(), retry_base=0.02, retry_cap=0.3)
    backend = await KubernetesBackend.connect(options, **kw)
    await backend.start()
    return backend


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[KubeSim]:
    async with make_sim(tmp_path) as running:
        yield running


@pytest.fixture
async def backend(sim: KubeSim, tmp_path: Path) -> AsyncIterator[KubernetesBackend]:
    b = await make_backend(sim, tmp_path)
    yield b
    await b.close()


@pytest.fixture
async def log(backend: KubernetesBackend) -> AsyncIterator[EventLog]:
    events = EventLog(backend)
    yield events
    await events.close()


def ready(e: PodEvent) -> bool:
    return e.pod.phase is PodPhase.READY and not e.deleted


async def test_created_pod_labels_owner_and_readiness(
    sim: KubeSim, backend: KubernetesBackend, log: EventLog
) -> None:
    name = await backend.create_pod({LABEL_STATE: "pending"})
    assert name.startswith("agent-sandbox-job-")
    raw = sim.store.get("pods", NS, name)
    labels = raw["metadata"]["labels"]
    assert labels[LABEL_MANAGED_BY] == MANAGED_BY
    assert labels[LABEL_STATE] == "pending" and labels["team"] == "sandbox"
    assert labels[LABEL_TEMPLATE_HASH] == backend.template_hash and len(backend.template_hash) == 10
    cm = sim.store.get("configmaps", NS, "agent-sandbox-pod-template")
    [owner] = raw["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "ConfigMap",
        cm["metadata"]["name"],
        cm["metadata"]["uid"],
    )
    await eventually(lambda: log.seen(name, ready))
    [status] = [s for s in await backend.resync() if s.name == name]
    assert status.address is not None and status.address.startswith("127.")
    assert status.address.endswith(":8080")

    await backend.set_labels(name, {LABEL_STATE: "idle"})
    await eventually(lambda: log.seen(name, lambda e: e.pod.labels.get(LABEL_STATE) == "idle"))
    await backend.delete_pod(name)
    await backend.delete_pod(name)  # idempotent, and 404 after it is gone
    await eventually(lambda: log.seen(name, lambda e: e.deleted))
    assert log.seen(name, lambda e: e.pod.terminating)
    await backend.delete_pod("never-existed")
    assert sim.count_calls("delete", "pods", 404) >= 1


async def test_unschedulable_detail_then_node_added(
    sim: KubeSim, backend: KubernetesBackend, log: EventLog
) -> None:
    names = [await backend.create_pod({}) for _ in range(13)]  # 3 nodes x 4 CPU = 12
    await eventually(lambda: any(log.seen(n, lambda e: e.pod.unschedulable) for n in names))
    [stuck] = [s for s in await backend.resync() if s.unschedulable]
    assert stuck.phase is PodPhase.PENDING
    assert stuck.detail == "0/3 nodes are available: 3 Insufficient cpu."
    sim.add_node("extra", cpu="2", memory="8Gi")
    await eventually(lambda: log.seen(stuck.name, ready))
    assert sim.max_pods_seen == 13


async def test_warning_event_is_the_detail(
    sim: KubeSim, backend: KubernetesBackend, log: EventLog
) -> None:
    sim.remove_node("kubesim-node-0")
    sim.remove_node("kubesim-node-1")
    sim.remove_node("kubesim-node-2")
    name = await backend.create_pod({})
    await eventually(lambda: log.seen(name, lambda e: e.pod.unschedulable))
    pod = sim.store.get("pods", NS, name)
    # Now a kubelet-side warning, with the pod scheduled but not started.
    sim.add_node("slow")
    sim.cluster.startup_delay = 60
    await eventually(lambda: log.seen(name, lambda e: not e.pod.unschedulable))
    sim.cluster.record_event(pod, "Warning", "Failed", 'Failed to pull image "devsandbox"')
    await eventually(
        lambda: log.seen(name, lambda e: e.pod.detail == 'Failed to pull image "devsandbox"')
    )


async def test_node_removed_and_container_exit(
    sim: KubeSim, backend: KubernetesBackend, log: EventLog
) -> None:
    names = [await backend.create_pod({}) for _ in range(4)]
    await eventually(lambda: all(log.seen(n, ready) for n in names))
    on_node0 = [
        n for n in names if sim.store.get("pods", NS, n)["spec"]["nodeName"] == "kubesim-node-0"
    ]
    assert sim.remove_node("kubesim-node-0") == sorted(on_node0)
    await eventually(lambda: all(log.seen(n, lambda e: e.deleted) for n in on_node0))
    survivor = next(n for n in names if n not in on_node0)
    sim.exit_container(survivor, exit_code=137)
    await eventually(lambda: log.seen(survivor, lambda e: e.pod.phase is PodPhase.FAILED))
    [failed] = [s for s in await backend.resync() if s.name == survivor]
    assert failed.detail == "container sandbox exited with code 137 (Error)"


async def test_created_pod_counts_before_the_watch_sees_it(
    sim: KubeSim, backend: KubernetesBackend, log: EventLog
) -> None:
    sim.set_faults(error_rate=1.0, error_codes=(500,), verbs=frozenset({"watch"}))
    sim.cut_watches()
    name = await backend.create_pod({})
    assert name in {s.name for s in await backend.resync()}
    sim.set_faults(error_rate=0.0)
    # The watch, once back, confirms the pod rather than dropping it as unknown.
    await eventually(lambda: log.seen(name, ready))
    assert not log.seen(name, lambda e: e.deleted)


async def test_relist_after_410_emits_the_diff(
    sim: KubeSim, backend: KubernetesBackend, log: EventLog
) -> None:
    a, b = await backend.create_pod({}), await backend.create_pod({})
    await eventually(lambda: log.seen(a, ready) and log.seen(b, ready))
    # Blind the backend, change the world, and forget the history it would resume from.
    sim.set_faults(error_rate=1.0, error_codes=(503,), verbs=frozenset({"watch"}))
    sim.cut_watches()
    sim.cluster.delete_pod(NS, a, grace=0)
    sim.store.mutate("pods", NS, b, lambda p: p["metadata"]["labels"].update({"x": "y"}))
    c = await backend.create_pod({})
    other = sim.store.create(
        "pods",
        NS,
        sim.admit_pod(
            {
                "metadata": {"name": "adopt-me", "labels": {LABEL_MANAGED_BY: MANAGED_BY}},
                "spec": {"containers": [{"name": "c", "image": "x"}]},
            }
        ),
    )
    sim.compact()
    relists = backend.relists
    mark = len(log.events)
    sim.set_faults(error_rate=0.0)
    await eventually(lambda: backend.relists > relists)
    await eventually(lambda: log.seen(other["metadata"]["name"], lambda e: not e.deleted))
    after = log.events[mark:]
    assert any(e.pod.name == a and e.deleted for e in after)
    assert any(e.pod.name == b and e.pod.labels.get("x") == "y" for e in after)
    assert not any(e.pod.name == c and e.deleted for e in after)
    live = {s.name for s in await backend.resync()}
    assert live == {p["metadata"]["name"] for p in sim.pods()}


async def test_survives_errors_and_cut_watches_without_duplicates(tmp_path: Path) -> None:
    async with make_sim(tmp_path, nodes=4) as sim:
        backend = await make_backend(sim, tmp_path, max_concurrent_creates=4)
        log = EventLog(backend)
        try:
            sim.set_faults(
                error_rate=0.2, error_codes=(500, 429), retry_after=0, cut_watches_every=0.15
            )
            names = await asyncio.gather(*[backend.create_pod({}) for _ in range(12)])
            await asyncio.gather(*[backend.set_labels(n, {LABEL_STATE: "idle"}) for n in names[:6]])
            await asyncio.gather(*[backend.delete_pod(n) for n in names[6:9]])
            sim.set_faults(error_rate=0.0, cut_watches_every=0.0)
            assert len(set(names)) == 12
            assert sim.count_calls("create", "pods", 201) == 12
            assert sim.max_pods_seen == 12

            def converged() -> bool:
                want = {p["metadata"]["name"]: p for p in sim.pods()}
                have = {s.name: s for s in backend._cache.statuses()}
                return set(want) == set(have) and all(
                    have[n].labels == want[n]["metadata"]["labels"] for n in want
                )

            await eventually(converged, within=10)
            for n in names[:6]:
                await eventually(lambda n=n: log.seen(n, ready))
            for n in names[6:9]:
                await eventually(lambda n=n: log.seen(n, lambda e: e.deleted))
            assert sim.count_calls(status=500) + sim.count_calls(status=429) > 0
        finally:
            await log.close()
            await backend.close()


async def test_rate_limit_is_honoured(sim: KubeSim, tmp_path: Path) -> None:
    backend = await make_backend(sim, tmp_path, qps=10.0, burst=2, max_concurrent_creates=8)
    try:
        start = len(sim.calls)
        await asyncio.gather(*[backend.create_pod({}) for _ in range(8)])
        creates = [c.at for c in sim.calls[start:] if c.verb == "create"]
        # start() spent the burst; 8 creates at 10/s need at least ~0.7 s.
        assert len(creates) == 8
        assert max(creates) - min(creates) >= 0.6
    finally:
        await backend.close()


async def test_workload_answers_at_the_pod_address(tmp_path: Path) -> None:
    async with make_sim(tmp_path, workload=True) as sim:
        backend = await make_backend(sim, tmp_path)
        log = EventLog(backend)
        try:
            name = await backend.create_pod({})
            await eventually(lambda: log.seen(name, ready))
            [status] = [s for s in await backend.resync() if s.name == name]
            async with httpx.AsyncClient() as http:
                response = await http.get(f"http://{status.address}/healthz")
            assert response.status_code == 200
        finally:
            await log.close()
            await backend.close()


async def test_a_create_whose_answer_is_lost_makes_one_pod_not_two(
    sim: KubeSim, backend: KubernetesBackend
) -> None:
    # The API server carried the create out but answered 504 (its deadline passed):
    # a blind retry would make a second pod, and the cap counts only one.
    sim.set_faults(timeout_after_write_rate=1.0)
    name = await backend.create_pod({LABEL_STATE: "pool"})
    sim.set_faults(timeout_after_write_rate=0.0)
    pods = [p["metadata"]["name"] for p in sim.store.query("pods", NS, lambda _: True)]
    assert pods == [name]
    assert sim.count_calls("create", "pods") == 1
    assert sim.count_calls("create", "pods", 504) == 1
    assert sim.max_pods_seen == 1


async def test_two_releases_in_one_namespace_each_see_only_their_own_pods(
    sim: KubeSim, tmp_path: Path
) -> None:
    # The chart labels sandbox pods with its release as app.kubernetes.io/instance. A
    # controller that saw the other release's pods would take them for strays and
    # delete them, sessions and all.
    backends: dict[str, KubernetesBackend] = {}
    for release in ("blue", "green"):
        folder = tmp_path / release
        folder.mkdir()
        labels = f"labels: {{team: sandbox, app.kubernetes.io/instance: {release}}}"
        template = TEMPLATE.replace("labels: {team: sandbox}", labels)
        backends[release] = await make_backend(
            sim, folder, template_text=template, configmap=f"{release}-pod-template"
        )
    try:
        blue = await backends["blue"].create_pod({LABEL_STATE: "pool"})
        green = await backends["green"].create_pod({LABEL_STATE: "pool"})
        expected = {"blue": {blue}, "green": {green}}
        async with asyncio.timeout(5):
            while True:
                seen = {r: {p.name for p in await b.resync()} for r, b in backends.items()}
                if seen == expected:
                    break
                await asyncio.sleep(0.02)
        # The watches keep them apart as the pods change, too.
        log = EventLog(backends["green"])
        try:
            await backends["green"].set_labels(green, {LABEL_STATE: "assigned"})
            await eventually(
                lambda: log.seen(green, lambda e: e.pod.labels.get(LABEL_STATE) == "assigned")
            )
        finally:
            await log.close()
        assert {p.name for p in await backends["blue"].resync()} == {blue}
    finally:
        for b in backends.values():
            await b.close()


async def test_resync_is_the_list_and_drops_the_older_events_waiting(
    sim: KubeSim, backend: KubernetesBackend, tmp_path: Path
) -> None:
    first = await backend.create_pod({LABEL_STATE: "pool"})
    await eventually(lambda: any(p["metadata"]["name"] == first and _ready(p) for p in sim.pods()))
    # A new term: its start lists the pod, and that event waits in its queue.
    successor = await make_backend(sim, tmp_path, configmap="successor-template")
    try:
        [listed] = await successor.resync()
        assert listed.name == first and listed.phase is PodPhase.READY
        second = await successor.create_pod({LABEL_STATE: "pool"})
        events = successor.events()
        event = await asyncio.wait_for(anext(events), 10)
        # The first event after the resync is news, not the list replayed.
        assert event.pod.name == second
        await events.aclose()
    finally:
        await successor.close()


def _ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
