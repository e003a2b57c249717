"""The Docker backend against a real dockerd: limits, hardening, readiness, events, a
gap in the event stream, room on the host, adoption, and the egress guard."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from sandbox_controller.backends.base import (
    LABEL_CREATE_ID,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_STATE,
    LABEL_TEMPLATE_HASH,
    MANAGED_BY,
    PodPhase,
    PodStatus,
)
from sandbox_controller.backends.docker import DockerBackend
from sandbox_controller.egress_env import PROXY_VARIABLES, SandboxEgress
from sandbox_controller.sandbox_contract import ENV_CLAIM_SECRET, claim_secret, egress_credential

from ..dockerhost import (
    MIB,
    NETWORK,
    containers,
    docker,
    inspect,
    new_instance,
    options,
    remove_all,
    require_docker,
)
from ..eventually import eventually

pytestmark = pytest.mark.docker

Factory = Callable[..., Awaitable[DockerBackend]]


@pytest.fixture
async def instance() -> AsyncIterator[str]:
    name = new_instance()
    yield name
    remove_all(name)


@pytest.fixture
async def connect(instance: str) -> AsyncIterator[Factory]:
    image = require_docker()
    opened: list[DockerBackend] = []

    async def open_backend(**overrides: Any) -> DockerBackend:
        settings = options(overrides.pop("image", image), instance, **overrides)
        backend = await DockerBackend.connect(settings)
        await backend.start()
        opened.append(backend)
        return backend

    yield open_backend
    for backend in opened:
        await backend.close()


async def status(backend: DockerBackend, name: str) -> PodStatus | None:
    return next((p for p in await backend.resync() if p.name == name), None)


async def wait_phase(backend: DockerBackend, name: str, phase: PodPhase) -> PodStatus:
    async def reached() -> bool:
        found = await status(backend, name)
        return found is not None and found.phase is phase

    await eventually(reached, within=30, what=f"{name} {phase}")
    found = await status(backend, name)
    assert found is not None
    return found


async def test_a_sandbox_is_a_hardened_container_with_its_limits(connect: Factory) -> None:
    backend = await connect(cpus=0.5, memory=300 * MIB)
    name = await backend.create_pod({LABEL_STATE: "pool"})
    ready = await wait_phase(backend, name, PodPhase.READY)
    assert ready.address is not None and ready.address.startswith("127.0.0.1:")
    assert ready.labels[LABEL_TEMPLATE_HASH] == backend.template_hash

    info = inspect(name)  # read back from dockerd, not from the backend
    host = info["HostConfig"]
    assert (host["NanoCpus"], host["Memory"], host["MemorySwap"]) == (
        500_000_000,
        300 * MIB,
        300 * MIB,
    )
    assert host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"] and host["Init"]
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert info["Config"]["User"] == "10001:10001"
    assert NETWORK in info["NetworkSettings"]["Networks"]
    labels = info["Config"]["Labels"]
    assert (
        labels[LABEL_MANAGED_BY] == MANAGED_BY
        and labels[LABEL_INSTANCE] == backend.options.instance
    )

    # Inside: not root, a read-only root, a writable workspace.
    probe = (
        "import os; print(os.getuid());open('/workspace/x', 'w').write('ok');open('/etc/x', 'w')"
    )
    done = await asyncio.create_subprocess_exec(
        "docker",
        "exec",
        name,
        "python",
        "-c",
        probe,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await done.communicate()
    assert out.decode().split() == ["10001"]
    assert b"Read-only file system" in err

    await backend.delete_pod(name)
    assert name not in containers(backend.options.instance)
    assert await status(backend, name) is None
    await backend.delete_pod(name)  # again: already gone is not an error


async def test_each_sandbox_gets_its_own_claim_secret(instance: str) -> None:
    backend = await DockerBackend.connect(
        options(require_docker(), instance), claim_key=b"the controller's key"
    )
    try:
        await backend.start()
        name = await backend.create_pod({LABEL_STATE: "pool"})
        info = inspect(name)
        create_id = info["Config"]["Labels"][LABEL_CREATE_ID]
        secret = claim_secret(b"the controller's key", create_id)
        assert f"{ENV_CLAIM_SECRET}={secret}" in info["Config"]["Env"]
        assert secret not in str(info["Config"]["Labels"])
    finally:
        await backend.close()


HEALTHCHECKED = "agent-sandbox/devsandbox-healthcheck:dev"


async def test_an_image_healthcheck_decides_readiness(connect: Factory) -> None:
    image = require_docker()
    dockerfile = (
        f"FROM {image}\n"
        "HEALTHCHECK --interval=1s --timeout=2s CMD python -c "
        "\"import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz')\"\n"
    )
    built = subprocess.run(
        ["docker", "build", "-q", "-t", HEALTHCHECKED, "-"],
        input=dockerfile,
        text=True,
        capture_output=True,
        env={**os.environ, "DOCKER_BUILDKIT": "0"},
    )
    assert built.returncode == 0, built.stderr
    backend = await connect(image=HEALTHCHECKED)
    name = await backend.create_pod({LABEL_STATE: "pool"})
    await wait_phase(backend, name, PodPhase.READY)
    # Ready on the daemon's word: the health check had passed by then.
    assert inspect(name)["State"]["Health"]["Status"] == "healthy"


async def test_a_container_killed_from_outside_is_reported_failed(connect: Factory) -> None:
    backend = await connect()
    name = await backend.create_pod({LABEL_STATE: "pool"})
    await wait_phase(backend, name, PodPhase.READY)
    docker("kill", name)
    failed = await wait_phase(backend, name, PodPhase.FAILED)
    assert failed.detail == "sandbox container exited (137)"


async def test_a_sandbox_the_host_cannot_hold_waits_unschedulable_until_room_frees(
    connect: Factory,
) -> None:
    probe = await connect()
    room = probe.host.sandbox_memory
    # Two of these do not fit the host's memory; one does.
    backend = await connect(memory=room // 2 + 64 * MIB)
    first = await backend.create_pod({LABEL_STATE: "pool"})
    second = await backend.create_pod({LABEL_STATE: "pool"})
    await wait_phase(backend, first, PodPhase.READY)
    waiting = await status(backend, second)
    assert waiting is not None and waiting.phase is PodPhase.PENDING and waiting.unschedulable
    assert waiting.detail is not None
    assert waiting.detail.startswith("0/1 nodes are available: 1 Insufficient memory.")
    assert inspect(second)["State"]["Status"] == "created"  # never started

    await backend.delete_pod(first)
    started = await wait_phase(backend, second, PodPhase.READY)
    assert not started.unschedulable


async def test_a_new_term_adopts_the_containers_of_the_last(
    connect: Factory, instance: str
) -> None:
    first = await connect()
    names = {await first.create_pod({LABEL_STATE: "pool"}) for _ in range(2)}
    for name in names:
        await wait_phase(first, name, PodPhase.READY)
    await first.close()  # a controller gone: its containers stay
    assert containers(instance) == names

    second = await connect()
    adopted = {p.name: p for p in await second.resync()}
    assert adopted.keys() == names
    # Ready in the list itself, as a listed pod's Ready condition is: reported pending
    # first, a warm pod could look to the scheduler as if it had stopped serving.
    assert {p.phase for p in adopted.values()} == {PodPhase.READY}


class SocketRelay:
    """TCP on loopback to dockerd's socket, with a switch that cuts every connection:
    a gap in the event stream, as a daemon restart or a network blip makes one."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.open: set[asyncio.StreamWriter] = set()
        self.down = False

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"tcp://127.0.0.1:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_unix_connection("/var/run/docker.sock")
        self.open.update({writer, up_writer})

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self.open.difference_update({writer, up_writer})

    def cut(self) -> None:
        for writer in list(self.open):
            writer.close()

    async def stop(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()


async def test_a_gap_in_the_event_stream_is_followed_by_a_full_relist(
    connect: Factory,
) -> None:
    relay = SocketRelay()
    url = await relay.start()
    try:
        backend = await connect(url=url)
        name = await backend.create_pod({LABEL_STATE: "pool"})
        gone = await backend.create_pod({LABEL_STATE: "pool"})
        await wait_phase(backend, name, PodPhase.READY)
        await wait_phase(backend, gone, PodPhase.READY)
        relists = backend.relists
        relay.down = True
        relay.cut()
        # While the backend cannot see: one sandbox dies, another is removed.
        docker("kill", name)
        docker("rm", "-f", gone)
        relay.down = False
        await wait_phase(backend, name, PodPhase.FAILED)

        async def forgotten() -> bool:
            return await status(backend, gone) is None

        await eventually(forgotten, within=30, what="the removed container reported gone")
        assert backend.relists > relists
    finally:
        await relay.stop()


def _listener() -> tuple[socket.socket, int]:
    server = socket.socket()
    server.bind(("0.0.0.0", 0))
    server.listen()
    return server, server.getsockname()[1]


CONNECT = """
import socket, sys
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect((host, int(port)))
        print(target, "open")
    except OSError as exc:
        print(target, "blocked", exc)
"""


async def reach(container: str, *targets: str) -> dict[str, str]:
    out = docker("exec", container, "python", "-c", CONNECT, *targets)
    return {line.split()[0]: line.split()[1] for line in out.splitlines()}


async def test_a_sandbox_cannot_reach_the_host_private_ranges_or_other_sandboxes(
    connect: Factory, instance: str
) -> None:
    backend = await connect()
    a = await backend.create_pod({LABEL_STATE: "pool"})
    b = await backend.create_pod({LABEL_STATE: "pool"})
    await wait_phase(backend, a, PodPhase.READY)
    await wait_phase(backend, b, PodPhase.READY)
    server, port = _listener()  # a service on every address of the host
    try:
        gateway = inspect(a)["NetworkSettings"]["Networks"][NETWORK]["Gateway"]
        host_ip = socket.gethostbyname(socket.gethostname())
        other = inspect(b)["NetworkSettings"]["Networks"][NETWORK]["IPAddress"]
        targets = [f"{gateway}:{port}", f"{host_ip}:{port}", f"{other}:8080", "169.254.169.254:80"]
        assert await reach(a, *targets) == dict.fromkeys(targets, "blocked")

        # The same container on Docker's default network reaches the host: the test
        # would notice a missing guard.
        control = f"{instance}-control"
        docker(
            "run",
            "-d",
            "--rm",
            "--name",
            control,
            "--label",
            f"{LABEL_INSTANCE}={instance}",
            backend.options.image,
            "sleep",
            "60",
        )
        bridge_gateway = inspect(control)["NetworkSettings"]["Networks"]["bridge"]["Gateway"]
        assert await reach(control, f"{bridge_gateway}:{port}") == {
            f"{bridge_gateway}:{port}": "open"
        }
    finally:
        server.close()


async def test_with_egress_on_each_sandbox_gets_its_proxy_env(instance: str) -> None:
    key = b"the controller's key"
    egress = SandboxEgress(key, "http://egress:3128", ("internal.example",))
    backend = await DockerBackend.connect(
        options(require_docker(), instance), claim_key=key, egress=egress
    )
    try:
        await backend.start()
        name = await backend.create_pod({LABEL_STATE: "pool"})
        info = inspect(name)
        create_id = info["Config"]["Labels"][LABEL_CREATE_ID]
        env = dict(item.split("=", 1) for item in info["Config"]["Env"])
        password = egress_credential(key, create_id)
        for variable in PROXY_VARIABLES:
            assert env[variable] == f"http://{create_id}:{password}@egress:3128"
        assert env["NO_PROXY"] == "localhost,127.0.0.1,::1,internal.example"
    finally:
        await backend.close()
