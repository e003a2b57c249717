"""The scheduler's scenarios, the same test over each backend: ``local`` (processes),
``kubernetes`` (kubesim, through the real client) and ``docker`` (a real dockerd).

Each platform is asked from outside what exists (process table, kubesim's store,
``docker ps``), never the controller's own word."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sandbox_controller.clock import ManualClock

from ..conftest import ControllerFactory, RunningController, sandbox_processes
from ..dockerhost import containers, docker, new_instance, remove_all, require_docker
from ..dockerhost import settings_overrides as docker_settings
from ..eventually import eventually
from .kubernetes.conftest import NAMESPACE, Kube, live_pods

START = 2_000_000_000.0


@dataclass
class Platform:
    name: str
    start: Callable[..., Any]  # (**overrides) -> RunningController
    pods: Callable[[], set[str]]  # sandbox pods that exist, as the platform says
    kill: Callable[[str], None]  # the pod's sandbox dies, from outside
    sim: Any = None  # kubernetes: the KubeSim, to read pods from outside

    async def controller(self, **overrides: Any) -> RunningController:
        ctl: RunningController = await self.start(**overrides)
        return ctl


def _local_pods() -> set[str]:
    """Sandbox processes this test process started (the controller runs in it): other
    sessions on the machine run devsandbox processes of their own."""
    names = set()
    for pid in sandbox_processes():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent == os.getpid() and b"--name" in argv:
            names.add(argv[argv.index(b"--name") + 1].decode())
    return names


def _local_kill(pod: str) -> None:
    for pid in sandbox_processes(pod):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture(params=["local", "kubernetes", pytest.param("docker", marks=pytest.mark.docker)])
async def platform(
    request: pytest.FixtureRequest, tmp_path: Path, start_controller: ControllerFactory
) -> AsyncIterator[Platform]:
    if request.param == "local":
        before = _local_pods()
        yield Platform("local", start_controller, lambda: _local_pods() - before, _local_kill)
        return
    if request.param == "kubernetes":
        kube = Kube(tmp_path, start_controller)
        sim = await kube.sim()
        try:
            yield Platform(
                "kubernetes",
                lambda **o: kube.controller(sim, **o),
                lambda: {p["metadata"]["name"] for p in live_pods(sim)},
                lambda pod: sim.exit_container(pod, 137, namespace=NAMESPACE) and None,
                sim,
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
        yield Platform(
            "docker",
            start,
            lambda: containers(instance),
            lambda pod: docker("kill", pod) and None,
        )
    finally:
        for ctl in started:  # first, or a controller still running refills the pool
            await ctl.stop()
        remove_all(instance)


async def gone(platform: Platform, pod: str) -> None:
    await eventually(lambda: pod not in platform.pods(), within=30, what=f"{pod} gone")


async def test_the_pool_fills_and_a_claim_is_refilled(platform: Platform) -> None:
    ctl = await platform.controller(prewarm_pool_size=2)
    await ctl.wait_idle_pods(2)
    assert len(platform.pods()) == 2
    response = await ctl.open("alice", "t1")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["state"] == "ready" and body["pod"] in platform.pods()
    await ctl.wait_idle_pods(2)
    assert (await ctl.pool())["pods"] == {"pending": 0, "idle": 2, "assigned": 1, "terminating": 0}
    assert len(platform.pods()) == 3


async def test_the_cap_holds(platform: Platform) -> None:
    ctl = await platform.controller(prewarm_pool_size=1, max_total_jobs=2)
    await ctl.wait_idle_pods(1)
    opened = [await ctl.open(f"u{i}", f"t{i}", wait=20) for i in range(2)]
    assert [r.status_code for r in opened] == [201, 201], [r.text for r in opened]
    refused = await ctl.open("u9", "t9", wait=0)
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "capacity_exhausted"
    assert len(platform.pods()) <= 2
    await ctl.client.delete(f"/sessions/{opened[0].json()['id']}")
    await gone(platform, opened[0].json()["pod"])
    await ctl.wait_idle_pods(1)
    assert len(platform.pods()) == 2


async def test_at_the_user_limit_the_oldest_idle_session_is_reclaimed(
    platform: Platform,
) -> None:
    clock = ManualClock(start=START)
    ctl = await platform.controller(
        clock=clock, prewarm_pool_size=2, max_sessions_per_user=2, startup_timeout="1h"
    )
    await ctl.wait_idle_pods(2)
    first = (await ctl.open("carol", "t0")).json()
    await ctl.wait_idle_pods(2)  # each refill before time moves: a jump holds writes
    clock.advance(10)
    second = (await ctl.open("carol", "t1")).json()
    await ctl.wait_idle_pods(2)
    clock.advance(400)  # both quiet past idleAfter
    response = await ctl.open("carol", "t2")
    assert response.status_code == 201, response.text
    assert response.json()["reclaimed_session_id"] == first["id"]
    await ctl.settle()
    ended = (await ctl.client.get(f"/sessions/{first['id']}")).json()
    assert (ended["state"], ended["end_reason"]) == ("ended", "reclaimed")
    assert (await ctl.client.get(f"/sessions/{second['id']}")).json()["state"] == "ready"
    await gone(platform, first["pod"])


async def test_idle_timeout_ends_the_session_and_removes_its_pod(platform: Platform) -> None:
    clock = ManualClock(start=START)
    ctl = await platform.controller(
        clock=clock, prewarm_pool_size=1, idle_timeout="2h30m", startup_timeout="3h"
    )
    await ctl.wait_idle_pods(1)
    body = (await ctl.open("dana", "t1")).json()
    await ctl.wait_idle_pods(1)
    clock.advance(9000 - 1)
    await ctl.settle()
    assert (await ctl.client.get(f"/sessions/{body['id']}")).json()["state"] == "ready"
    clock.advance(1)
    ended: dict[str, Any] = {}

    async def has_ended() -> bool:
        ended.update((await ctl.client.get(f"/sessions/{body['id']}")).json())
        return bool(ended["state"] == "ended")

    # With the hooks on, its sandbox is asked whether it is busy first (in real time).
    await eventually(has_ended, within=15, what="the idle session to end")
    assert ended["end_reason"] == "idle_timeout"
    await gone(platform, body["pod"])


async def test_a_sandbox_killed_from_outside_ends_its_session_pod_failed(
    platform: Platform,
) -> None:
    ctl = await platform.controller(prewarm_pool_size=1)
    await ctl.wait_idle_pods(1)
    body = (await ctl.open("erin", "t1")).json()
    assert body["state"] == "ready"
    platform.kill(body["pod"])

    async def failed() -> bool:
        session = (await ctl.client.get(f"/sessions/{body['id']}")).json()
        return bool(session["end_reason"] == "pod_failed")

    await eventually(failed, within=30, what="the session to end pod_failed")
    await gone(platform, body["pod"])
    await ctl.wait_idle_pods(1)
