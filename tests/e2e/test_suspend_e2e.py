"""Suspend and resume end to end, the same tests over each backend: ``local``
(processes), ``kubernetes`` (kubesim with devsandbox workloads, through the real client)
and ``docker`` (a real dockerd), with the real proxy in front of the real controller.

A file is written into the sandbox through the proxy, as an agent would; the session is
suspended (idle timeout on the controller's ManualClock, or reclaim at the per-user
limit); the platform is asked from outside that its pod is gone; then it comes back on
another pod, with the file, by ``POST /sessions`` for its thread, by a proxied HTTP
request and by a WebSocket upgrade.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from proxy import ProxyProcess
from sandbox_controller.clock import ManualClock
from sandbox_controller.scheduler.lifecycle import ROUTE_LEASE
from sandbox_controller.serving import serve

from ..conftest import ControllerFactory, RunningController
from ..dockerhost import containers, new_instance, remove_all, require_docker
from ..dockerhost import settings_overrides as docker_settings
from ..eventually import eventually
from .kubernetes.conftest import Kube, live_pods
from .test_dev_crash import free_port
from .test_proxy_e2e import SharedNow

START = 2_000_000_000.0
IDLE_AFTER = 300.0
IDLE_TIMEOUT = 3600.0
WORK = b"print('written before the suspend')\n"


@dataclass
class Platform:
    name: str
    start: Callable[..., Any]  # (**overrides) -> RunningController
    pods: Callable[[], set[str]]  # sandbox pods that exist, as the platform says


@pytest.fixture(params=["local", "kubernetes", pytest.param("docker", marks=pytest.mark.docker)])
async def platform(
    request: pytest.FixtureRequest, tmp_path: Path, start_controller: ControllerFactory
) -> AsyncIterator[Platform]:
    if request.param == "local":
        from .test_backend_scenarios import _local_pods

        before = _local_pods()
        yield Platform("local", start_controller, lambda: _local_pods() - before)
        return
    if request.param == "kubernetes":
        kube = Kube(tmp_path, start_controller)
        sim = await kube.sim(workload=True)
        try:
            yield Platform(
                "kubernetes",
                lambda **o: kube.controller(sim, **o),
                lambda: {p["metadata"]["name"] for p in live_pods(sim)},
            )
        finally:
            await kube.close()
        return
    image = require_docker()
    instance = new_instance()
    started: list[RunningController] = []

    async def start(**overrides: Any) -> RunningController:
        ctl = await start_controller(**{**docker_settings(image, instance), **overrides})
        started.append(ctl)
        return ctl

    try:
        yield Platform("docker", start, lambda: containers(instance))
    finally:
        for ctl in started:
            await ctl.stop()
        remove_all(instance)


@dataclass
class Suspending:
    ctl: RunningController
    clock: ManualClock
    http: httpx.AsyncClient
    archives: Path
    platform: Platform

    async def open(self, user: str, thread: str) -> dict[str, Any]:
        response = await self.ctl.open(user, thread)
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        assert body["state"] == "ready", body
        await self.ctl.wait_idle_pods(1)  # refilled before time moves
        return body

    async def write(self, session: dict[str, Any], path: str, content: bytes) -> None:
        url = session["connect"]["url"] + "files/" + path
        response = await self.http.put(url, content=content, headers=bearer(session))
        assert response.status_code == 204, response.text

    async def read(self, session: dict[str, Any], path: str) -> httpx.Response:
        url = session["connect"]["url"] + "files/" + path
        return await self.http.get(url, headers=bearer(session))

    async def session(self, session_id: str) -> dict[str, Any]:
        body: dict[str, Any] = (await self.ctl.client.get(f"/sessions/{session_id}")).json()
        return body

    async def until_state(self, session_id: str, state: str) -> dict[str, Any]:
        seen: dict[str, Any] = {}

        async def reached() -> bool:
            seen.update(await self.session(session_id))
            return bool(seen["state"] == state)

        await eventually(reached, within=30, what=f"session {session_id} to be {state}")
        return seen

    async def suspend(self, session: dict[str, Any]) -> dict[str, Any]:
        response = await self.ctl.client.post(f"/sessions/{session['id']}/suspend")
        assert response.status_code == 202, response.text
        suspended = await self.until_state(session["id"], "suspended")
        # The pod outlives the route lease the proxy holds on its address, then goes.
        self.clock.advance(ROUTE_LEASE + 1)
        await self.gone(session["pod"])
        return suspended

    async def gone(self, pod: str) -> None:
        await eventually(lambda: pod not in self.platform.pods(), within=30, what=f"{pod} gone")

    def archive_files(self) -> list[Path]:
        if not self.archives.exists():
            return []
        return [p for p in self.archives.rglob("*") if p.is_file() and p.name[0] != "."]


def bearer(session: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {session['connect']['token']}"}


@pytest.fixture
async def suspending(platform: Platform, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Starts the platform's controller with suspension on (file store) and the real
    proxy in front of it, the proxy's timestamps on the controller's ManualClock."""
    running: list[tuple[asyncio.Event, asyncio.Task[None]]] = []
    http = httpx.AsyncClient(timeout=60, trust_env=False)

    async def start(**overrides: Any) -> Suspending:
        clock = ManualClock(start=START)
        port = free_port()
        archives = tmp_path / "archives"
        values: dict[str, Any] = {
            "prewarm_pool_size": 1,
            "idle_after": IDLE_AFTER,
            "idle_timeout": IDLE_TIMEOUT,
            "startup_timeout": "3h",  # time jumps: a pod still starting must not time out
            "idle_action": "suspend",
            "snapshot_store": archives.as_uri(),
            "snapshot_timeout": "30s",
            "proxy_public_url": f"http://127.0.0.1:{port}",
            "activity_flush_interval": 0.1,
        }
        values.update(overrides)
        ctl = await platform.start(clock=clock, **values)
        settings = ctl.settings.model_copy(
            update={"controller_url": ctl.url, "proxy_port": port, "log_level": "warning"}
        )
        shutdown, ready = asyncio.Event(), asyncio.Event()
        proxy = ProxyProcess(settings, clock=SharedNow(clock))
        task = asyncio.create_task(serve(proxy, shutdown, ready.set))
        running.append((shutdown, task))
        await eventually(lambda: ready.is_set() or task.done(), within=10, what="the proxy")
        if task.done():
            task.result()
        await ctl.wait_idle_pods(1)
        return Suspending(ctl, clock, http, archives, platform)

    yield start
    await http.aclose()
    for shutdown, task in reversed(running):
        shutdown.set()
        await asyncio.wait_for(task, 15)


async def test_an_idle_session_is_suspended_and_post_sessions_brings_its_files_back(
    suspending: Callable[..., Any],
) -> None:
    s: Suspending = await suspending(max_total_jobs=2)
    opened = await s.open("ann", "t1")
    await s.write(opened, "src/main.py", WORK)

    s.clock.advance(IDLE_TIMEOUT + 1)  # its sandbox is asked if busy (no), then suspended
    suspended = await s.until_state(opened["id"], "suspended")
    assert suspended["pod"] is None and suspended["snapshot"]["bytes"] > 0
    await s.gone(opened["pod"])
    assert len(s.archive_files()) >= 1
    pool = await s.ctl.pool()
    assert pool["pods"]["assigned"] == 0  # its cap slot is free: another user gets it
    other = await s.ctl.open("bob", "t9")
    assert other.status_code == 201, other.text

    await s.ctl.client.delete(f"/sessions/{other.json()['id']}")
    await s.gone(other.json()["pod"])
    again = await s.ctl.open("ann", "t1")  # the editor's usual call for the thread
    assert again.status_code == 200, again.text
    resumed = again.json()
    assert (resumed["id"], resumed["state"], resumed["resumed"]) == (opened["id"], "ready", True)
    assert resumed["pod"] not in (None, opened["pod"])
    assert (await s.read(resumed, "src/main.py")).content == WORK


async def test_a_proxied_request_and_a_websocket_wake_a_suspended_session(
    suspending: Callable[..., Any],
) -> None:
    s: Suspending = await suspending()
    opened = await s.open("cat", "t1")
    await s.write(opened, "notes.txt", b"kept")
    await s.suspend(opened)

    # An HTTP request for it is held while it resumes, then served by the new pod.
    woken = await s.read(opened, "notes.txt")
    assert (woken.status_code, woken.content) == (200, b"kept")
    first = await s.session(opened["id"])
    assert first["state"] == "ready" and first["pod"] not in (None, opened["pod"])

    await s.ctl.wait_idle_pods(1)
    await s.suspend(first)
    url = "ws" + opened["connect"]["url"].removeprefix("http") + "ws"
    async with connect(url, additional_headers=bearer(opened), proxy=None) as ws:
        await ws.send("after the wake")
        assert await ws.recv() == "after the wake"
    second = await s.session(opened["id"])
    assert second["state"] == "ready" and second["pod"] not in (None, first["pod"])
    assert (await s.read(opened, "notes.txt")).content == b"kept"


async def test_reclaim_at_the_user_limit_suspends_the_oldest_idle_session(
    suspending: Callable[..., Any],
) -> None:
    s: Suspending = await suspending(max_sessions_per_user=2)
    first = await s.open("dan", "t0")
    await s.write(first, "a.txt", b"first thread's work")
    s.clock.advance(10)
    await s.open("dan", "t1")
    s.clock.advance(IDLE_AFTER + 100)  # both quiet past idleAfter
    response = await s.ctl.open("dan", "t2")
    assert response.status_code == 201, response.text
    assert response.json()["reclaimed_session_id"] == first["id"]
    reclaimed = await s.until_state(first["id"], "suspended")
    assert reclaimed["end_reason"] is None  # suspended, not ended: nothing was lost
    await s.gone(first["pod"])


async def test_no_write_acknowledged_during_a_suspend_is_lost(
    suspending: Callable[..., Any],
) -> None:
    """Writes keep coming through the proxy (its route to the old pod cached) while the
    session is suspended: each is either in the resumed workspace or answered with an
    error, never a success then lost with the old pod. The old pod serves nothing after
    its snapshot (503 X-Sandbox-Suspending), so the proxy wakes the session and sends the
    write to its new pod."""
    s: Suspending = await suspending()
    opened = await s.open("eve", "t1")
    await s.write(opened, "before.txt", b"before")  # the proxy now holds the route
    acked: dict[str, bytes] = {"before.txt": b"before"}
    refused: list[int] = []
    stop = asyncio.Event()

    async def writer() -> None:
        n = 0
        while not stop.is_set():
            name, content = f"w{n}.txt", f"write {n}".encode()
            n += 1
            url = opened["connect"]["url"] + "files/" + name
            response = await s.http.put(url, content=content, headers=bearer(opened))
            if response.status_code < 300:
                acked[name] = content
            else:
                refused.append(response.status_code)
            await asyncio.sleep(0.005)

    writing = asyncio.create_task(writer())
    asked = await s.ctl.client.post(f"/sessions/{opened['id']}/suspend")
    assert asked.status_code == 202, asked.text

    async def snapshot_kept() -> bool:
        now = await s.session(opened["id"])
        return bool(now["state"] == "suspended" or now["pod"] not in (None, opened["pod"]))

    await eventually(snapshot_kept, within=30, what="the snapshot to be kept")
    tried = len(acked) + len(refused)
    await eventually(lambda: len(acked) + len(refused) >= tried + 3, what="writes after it")
    stop.set()
    await writing
    print(f"{len(acked)} writes acknowledged, {len(refused)} refused ({sorted(set(refused))})")

    s.clock.advance(ROUTE_LEASE + 1)  # the old pod outlives the proxy's route, then goes
    await s.gone(opened["pod"])
    for name, content in acked.items():
        response = await s.read(opened, name)
        assert (response.status_code, response.content) == (200, content), name
