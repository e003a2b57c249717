"""Drills: the platform refuses every create for good, on each backend. Kubernetes
(kubesim answering 403 forbidden, then 422 invalid), Docker (an image that is not on
the host, and is never pulled), local (a sandbox command that does not exist).

Each shows CreateRejected in GET /pool within 5 s, names it in a waiting session's
``detail``, sends no more creates than the backoff allows, counted where the platform
sees them (kubesim's call log, the Docker API socket, spawn attempts), and clears the
condition by itself once the fault is fixed and a create succeeds. The scheduler runs on
a ManualClock, so the backoff is stepped exactly; the platforms run in real time."""

from __future__ import annotations

import asyncio
import re
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiodocker
import pytest

from sandbox_controller.backends.docker import DockerBackend
from sandbox_controller.backends.docker_spec import Host
from sandbox_controller.backends.local import LocalBackend
from sandbox_controller.clock import ManualClock

from ..conftest import ControllerFactory, RunningController
from ..dockerhost import docker, new_instance, options, remove_all, require_docker
from ..dockerhost import settings_overrides as docker_settings
from ..eventually import eventually
from .kubernetes.conftest import Kube

START = 2_000_000_000.0
PREWARM = 2  # the first window: two creates, refused at once
# Two refusals in a row at START: the next create may go out 5 s, then 10 s, after them.
FIRST_PROBE = 10.0
SECOND_PROBE = 20.0  # after the third refusal


@dataclass
class Drill:
    creates: Callable[[], int]  # create attempts, as the platform's side counts them
    fix: Callable[[], None]  # remove the fault
    words: str  # what the platform's refusal says


async def conditions(ctl: RunningController) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = (await ctl.pool())["conditions"]
    return found


async def run_drill(ctl: RunningController, clock: ManualClock, drill: Drill) -> None:
    async def rejected() -> bool:
        return [c["type"] for c in await conditions(ctl)] == ["CreateRejected"]

    await eventually(rejected, within=5, what="CreateRejected in GET /pool")
    [condition] = await conditions(ctl)
    assert drill.words in condition["message"], condition
    assert condition["since"].startswith("2033-05-18T03:33:20")  # START: the first refusal

    async def window_refused() -> bool:
        return drill.creates() == PREWARM and (await ctl.pool())["creating"] == 0

    await eventually(window_refused, within=10, what="the first window refused")
    opened = await ctl.open("ada", "t1", wait=0)
    assert opened.status_code == 201, opened.text
    session = opened.json()
    assert session["state"] == "provisioning"
    assert session["detail"].startswith("CreateRejected: "), session
    assert drill.words in session["detail"]
    metrics = (await ctl.client.get("/metrics")).text
    assert 'sandbox_pool_condition{type="CreateRejected"} 1.0' in metrics
    assert (
        f'sandbox_backend_errors_total{{kind="permanent",operation="create"}} {PREWARM}.0'
        in metrics
    )

    clock.advance(FIRST_PROBE - 0.5)
    await ctl.settle()
    # The pool counts a create it decided at once, before the platform hears of it.
    assert (await ctl.pool())["creating"] == 0, "a create before the backoff ran out"
    assert drill.creates() == PREWARM
    clock.advance(0.5)

    async def probed() -> bool:
        return drill.creates() == PREWARM + 1 and (await ctl.pool())["creating"] == 0

    await eventually(probed, within=10, what="one probe, refused")
    await ctl.settle()
    assert (await ctl.pool())["creating"] == 0
    assert drill.creates() == PREWARM + 1  # one probe, not a window of three
    assert [c["type"] for c in await conditions(ctl)] == ["CreateRejected"]

    drill.fix()
    clock.advance(SECOND_PROBE)

    async def ready() -> bool:
        body = (await ctl.client.get(f"/sessions/{session['id']}")).json()
        return bool(body["state"] == "ready")

    await eventually(ready, within=30, what="the waiting session to get a sandbox")
    assert await conditions(ctl) == []
    metrics = (await ctl.client.get("/metrics")).text
    assert 'sandbox_pool_condition{type="CreateRejected"} 0.0' in metrics


# -- Kubernetes: kubesim refuses pod creates


@pytest.mark.parametrize(
    ("status", "words"),
    [(403, "pods is forbidden"), (422, 'Pod "agent-sandbox-job-" is invalid: spec.containers')],
)
async def test_kubernetes_refusing_creates_raises_the_condition_and_stops_the_storm(
    tmp_path: Path, start_controller: ControllerFactory, status: int, words: str
) -> None:
    kube = Kube(tmp_path, start_controller)
    try:
        sim = await kube.sim()
        sim.set_faults(refuse_pod_creates=status)
        clock = ManualClock(start=START)
        ctl = await kube.controller(sim, clock=clock, prewarm_pool_size=PREWARM)
        drill = Drill(
            creates=lambda: sim.count_calls("create", "pods"),
            fix=lambda: sim.set_faults(refuse_pod_creates=0),
            words=f"kubernetes API {status}: " + words,
        )
        await run_drill(ctl, clock, drill)
        assert sim.count_calls("create", "pods", status) == PREWARM + 1
    finally:
        await kube.close()


# -- Docker: an image that is not on the host


REQUEST_LINE = re.compile(rb"(?:GET|POST|PUT|DELETE|HEAD) (/\S*) HTTP/1\.[01]$")


class DockerSocketWitness:
    """A relay in front of dockerd's socket that notes every request line it passes:
    what the backend asked dockerd, seen from outside the controller."""

    def __init__(self, path: Path, upstream: str = "/var/run/docker.sock") -> None:
        self.path = path
        self.upstream = upstream
        self.requests: list[str] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._relay, path=str(self.path))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def count(self, fragment: str) -> int:
        return sum(1 for r in self.requests if fragment in r)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(self.upstream)
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer, note=True)),
            asyncio.create_task(self._pump(up_reader, writer, note=False)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
                self._tasks.discard(task)
            writer.close()
            up_writer.close()

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, note: bool
    ) -> None:
        partial = b""
        while data := await source.read(65536):
            if note:
                *lines, partial = (partial + data).split(b"\r\n")
                partial = partial[-65536:]  # a body without line breaks: only its end
                for line in lines:
                    found = REQUEST_LINE.search(line)  # a body may run into the next line
                    if found:
                        self.requests.append(found.group(1).decode())
            sink.write(data)
            await sink.drain()


@pytest.fixture
async def docker_witness(tmp_path: Path) -> AsyncIterator[DockerSocketWitness]:
    witness = DockerSocketWitness(tmp_path / "docker.sock")
    await witness.start()
    yield witness
    await witness.close()


@pytest.mark.docker
async def test_docker_without_the_image_raises_the_condition_and_never_pulls(
    start_controller: ControllerFactory, docker_witness: DockerSocketWitness
) -> None:
    image = require_docker()
    instance = new_instance()
    missing = f"agent-sandbox/drill-missing:{uuid.uuid4().hex[:12]}"
    url = f"unix://{docker_witness.path}"
    client = aiodocker.Docker(url=url)
    ctl: RunningController | None = None
    try:
        settings = options(image, instance, url=url)
        host = Host.from_info(await client.system.info(), settings.reserved_memory)
        # The image as the backend holds it after start-up: a reference dockerd lacks
        # (removed since, or never there); creating from it must not pull.
        backend = DockerBackend(client, settings, missing, host, stop_on_close=True)
        clock = ManualClock(start=START)
        ctl = await start_controller(
            clock=clock,
            backend_object=backend,
            **docker_settings(image, instance),
            hooks=False,
            prewarm_pool_size=PREWARM,
        )
        drill = Drill(
            creates=lambda: docker_witness.count("/containers/create"),
            fix=lambda: docker("tag", image, missing) and None,  # the image arrives
            words=f"No such image: {missing}",
        )
        await run_drill(ctl, clock, drill)
        assert docker_witness.count("/images/create") == 0, "the backend pulled an image"
    finally:
        if ctl is not None:
            await ctl.stop()
        await client.close()
        remove_all(instance)
        docker("rmi", missing, check=False)  # the tag only: the image keeps its own


# -- local: a sandbox command that does not exist


class CountingLocalBackend(LocalBackend):
    """Counts spawn attempts: each create_pod spawns exactly one process."""

    spawns = 0

    async def create_pod(self, labels: Mapping[str, str]) -> str:
        self.spawns += 1
        return await super().create_pod(labels)


async def test_local_without_the_sandbox_command_raises_the_condition(
    tmp_path: Path, start_controller: ControllerFactory
) -> None:
    command = tmp_path / "bin" / "sandbox-python"  # not there (yet)
    backend = CountingLocalBackend(tmp_path / "state", stop_on_close=True, python=str(command))
    clock = ManualClock(start=START)
    ctl = await start_controller(
        clock=clock, backend_object=backend, hooks=False, prewarm_pool_size=PREWARM
    )

    def install() -> None:
        command.parent.mkdir()
        command.symlink_to(sys.executable)

    drill = Drill(creates=lambda: backend.spawns, fix=install, words="No such file or directory")
    await run_drill(ctl, clock, drill)
