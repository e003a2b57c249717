"""Issue 19 on Docker: with egress on, the backend puts sandboxes on an internal network
(no route out). A sandbox that ignores HTTP_PROXY and connects straight to a server
outside reaches nothing, while a container on both networks (where the egress proxy
runs) carries the same request out. Real dockerd, a real network namespace as "outside"
(an address of this machine, never the internet), real sockets. And the CA bundle:
uploaded into each sandbox before it starts, where SSL_CERT_FILE points."""

from __future__ import annotations

import random
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandbox_controller.backends.base import BackendError, PodPhase
from sandbox_controller.backends.docker import DockerBackend
from sandbox_controller.backends.docker_spec import bridge_name
from sandbox_controller.config import Settings
from sandbox_controller.controller import sandbox_egress
from sandbox_controller.egress_ca import CA_SUBJECT, ensure_ca
from sandbox_controller.egress_env import CA_BUNDLE_VARIABLES, DOCKER_BUNDLE

from ..dockerhost import (
    REPO,
    docker,
    inspect,
    new_instance,
    options,
    remove_all,
    require_docker,
)
from ..eventually import eventually

pytestmark = pytest.mark.docker

# Sandboxes print what their connection attempt did: "reached <body>" or "refused <error>".
PROBE = """
import sys, socket
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
    s.sendall(b"GET / HTTP/1.0\\r\\nHost: outside\\r\\n\\r\\n")
    print("reached", s.recv(4096).decode(errors="replace").split("\\r\\n\\r\\n", 1)[-1])
except OSError as exc:
    print("refused", exc)
"""

# A TCP relay: what the egress proxy does for an allowed CONNECT, in a dozen lines.
RELAY = """
import socket, sys, threading
listen, target = int(sys.argv[1]), (sys.argv[2], int(sys.argv[3]))
server = socket.create_server(("0.0.0.0", listen))
def pipe(a, b):
    while data := a.recv(65536):
        b.sendall(data)
    b.shutdown(socket.SHUT_WR)
while True:
    client, _ = server.accept()
    upstream = socket.create_connection(target, timeout=5)
    threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
    threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
"""


def run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=30)


@dataclass
class Outside:
    """A web server in a network namespace of its own, routed from this host: an
    address outside every Docker network, reachable only through forwarding."""

    address: str
    port: int


@pytest.fixture
def outside() -> Iterator[Outside]:
    tag = uuid.uuid4().hex[:8]
    netns, host_if, ns_if = f"e3out-{tag}", f"e3h{tag}", f"e3n{tag}"
    # A /30 of its own in the benchmarking range (198.18.0.0/15), so two runs never meet.
    base = 0xC6120000 + random.randrange(1, 2**15 // 4) * 4
    host_ip, ns_ip = (
        f"198.{(base >> 16) & 255}.{(base >> 8) & 255}.{(base & 255) + i}" for i in (1, 2)
    )
    run("ip", "netns", "add", netns)
    try:
        run("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        run("ip", "link", "set", ns_if, "netns", netns)
        run("ip", "addr", "add", f"{host_ip}/30", "dev", host_if)
        run("ip", "link", "set", host_if, "up")
        run("ip", "netns", "exec", netns, "ip", "addr", "add", f"{ns_ip}/30", "dev", ns_if)
        run("ip", "netns", "exec", netns, "ip", "link", "set", ns_if, "up")
        run("ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up")
        run("ip", "netns", "exec", netns, "ip", "route", "add", "default", "via", host_ip)
        root = f"/tmp/{netns}"
        subprocess.run(["mkdir", "-p", root], check=True)
        with open(f"{root}/index.html", "w") as page:
            page.write("hello from outside")
        server = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                netns,
                "python3",
                "-m",
                "http.server",
                "8000",
                "--bind",
                ns_ip,
                "--directory",
                root,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:

            def listening() -> bool:
                probe = subprocess.run(
                    ["curl", "-s", "--noproxy", "*", "-m", "2", f"http://{ns_ip}:8000/"],
                    capture_output=True,
                    text=True,
                )
                return "hello from outside" in probe.stdout

            for _ in range(100):  # a start-up wait, not a timing assertion
                if listening():
                    break
                time.sleep(0.1)
            assert listening(), "the outside server did not come up"
            yield Outside(ns_ip, 8000)
        finally:
            server.terminate()
            server.wait(10)
            subprocess.run(["rm", "-rf", root])
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)


@pytest.fixture
async def internal_backend() -> AsyncIterator[DockerBackend]:
    image = require_docker()
    instance = new_instance()
    network = f"sbx-egress-{uuid.uuid4().hex[:8]}"
    backend = await DockerBackend.connect(
        options(image, instance, network=network, internal=True, publish=False)
    )
    await backend.start()
    try:
        yield backend
    finally:
        await backend.close()
        remove_all(instance)
        docker("network", "rm", network, check=False)


def probe(container: str, address: str, port: int) -> str:
    done = subprocess.run(
        ["docker", "exec", container, "python", "-c", PROBE, address, str(port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.stdout.strip() or done.stderr.strip()


async def test_a_sandbox_ignoring_the_proxy_reaches_nothing_outside(
    internal_backend: DockerBackend, outside: Outside
) -> None:
    backend = internal_backend
    network = backend.options.network
    assert inspect(network)["Internal"] is True  # made internal by the backend

    name = await backend.create_pod({})

    async def ready() -> bool:
        found = next((p for p in await backend.resync() if p.name == name), None)
        return found is not None and found.phase is PodPhase.READY

    # Ready through its address on the internal network: the controller still reaches it.
    await eventually(ready, within=60, what=f"{name} ready")
    assert list(inspect(name)["NetworkSettings"]["Networks"]) == [network]

    # Straight out, as code that ignores HTTP_PROXY would: nothing answers.
    direct = probe(name, outside.address, outside.port)
    print(f"direct from the sandbox: {direct}")
    assert direct.startswith("refused"), direct

    # The egress path: a container on the internal network and on one with a route out
    # (where the egress proxy runs) carries the same request out and back.
    routed = f"sbx-routed-{uuid.uuid4().hex[:8]}"
    relay = f"sbx-relay-{uuid.uuid4().hex[:8]}"
    docker("network", "create", routed)
    try:
        docker(
            "create",
            "--name",
            relay,
            "--network",
            routed,
            "--entrypoint",
            "python",
            backend.options.image,
            "-c",
            RELAY,
            "3128",
            outside.address,
            str(outside.port),
        )
        docker("network", "connect", network, relay)
        docker("start", relay)
        relay_ip = inspect(relay)["NetworkSettings"]["Networks"][network]["IPAddress"]
        through: list[str] = []

        def relayed() -> bool:
            through.append(probe(name, relay_ip, 3128))
            return "hello from outside" in through[-1]

        await eventually(relayed, within=30, what="the request through the relay")
        print(f"through the container on both networks: {through[-1]}")
    finally:
        docker("rm", "-f", relay, check=False)
        docker("network", "rm", routed, check=False)


async def test_an_existing_network_with_a_route_out_is_refused() -> None:
    image = require_docker()
    network = f"sbx-open-{uuid.uuid4().hex[:8]}"
    docker("network", "create", network)
    try:
        with pytest.raises(BackendError, match="not internal"):
            await DockerBackend.connect(
                options(image, new_instance(), network=network, internal=True)
            )
    finally:
        docker("network", "rm", network, check=False)


async def test_the_compose_layout_a_host_proxy_on_the_gateway_is_the_one_way_out(
    internal_backend: DockerBackend, outside: Outside
) -> None:
    """As deploy/compose runs it: the egress proxy is a process in the host's network
    namespace on the host's address of the internal network, and the egress guard lets
    sandboxes open that one port of the host. Here a relay process stands in for it."""
    backend = internal_backend
    network = backend.options.network
    gateway = inspect(network)["IPAM"]["Config"][0]["Gateway"]
    name = await backend.create_pod({})

    async def ready() -> bool:
        found = next((p for p in await backend.resync() if p.name == name), None)
        return found is not None and found.phase is PodPhase.READY

    await eventually(ready, within=60, what=f"{name} ready")
    guard = [
        "sh", str(REPO / "deploy/docker/egress-guard.sh"),
        "--stack", f"e3-{uuid.uuid4().hex[:8]}", "--allow-port", "3128", bridge_name(network),
    ]  # fmt: skip
    run(*guard)
    relay = subprocess.Popen(
        ["python3", "-c", RELAY.replace('"0.0.0.0"', repr(gateway)), "3128",
         outside.address, str(outside.port)],
    )  # fmt: skip
    # Another service of the host, on every address (an sshd, a database, an API).
    other = subprocess.Popen(
        ["python3", "-m", "http.server", "3129", "--bind", "0.0.0.0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        through: list[str] = []

        def relayed() -> bool:
            through.append(probe(name, gateway, 3128))
            return "hello from outside" in through[-1]

        await eventually(relayed, within=30, what="the request through the host's proxy port")
        print(f"through the host's egress port: {through[-1]}")
        direct = probe(name, outside.address, outside.port)
        host_service = probe(name, gateway, 3129)
        print(f"direct: {direct}; the host's other port: {host_service}")
        assert direct.startswith("refused"), direct
        assert host_service.startswith("refused"), host_service
    finally:
        relay.terminate()
        other.terminate()
        relay.wait(10)
        other.wait(10)
        subprocess.run([*guard[:4], "--down", bridge_name(network)], capture_output=True)


async def test_a_sandbox_trusts_the_deployment_ca_through_its_bundle(tmp_path: Path) -> None:
    """Straight to dockerd, as `dev` runs the Docker backend: the bundle the controller
    built is in the container before it starts, where SSL_CERT_FILE (and the others)
    point, and a TLS client in the sandbox (Python's ssl) trusts the CA through it."""
    image, instance = require_docker(), new_instance()
    network = f"sbx-ca-{uuid.uuid4().hex[:8]}"
    cert, _ = ensure_ca(tmp_path / "ca")
    settings = Settings(
        backend="docker", egress="enforce", egress_ca_cert_file=str(cert), state_dir=str(tmp_path)
    )
    egress = sandbox_egress(settings, b"k" * 32)
    backend = await DockerBackend.connect(
        options(image, instance, network=network, internal=True, publish=False), egress=egress
    )
    try:
        await backend.start()
        name = await backend.create_pod({})

        async def ready() -> bool:
            found = next((p for p in await backend.resync() if p.name == name), None)
            return found is not None and found.phase is PodPhase.READY

        await eventually(ready, within=60, what=f"{name} ready")
        env = dict(e.split("=", 1) for e in inspect(name)["Config"]["Env"])
        assert {env[v] for v in CA_BUNDLE_VARIABLES} == {DOCKER_BUNDLE}
        # Python's ssl in the sandbox loads the bundle SSL_CERT_FILE names: the
        # deployment CA is among the certificates it trusts.
        subject = docker(
            "exec", name, "python", "-c",
            "import ssl; print([dict(x[0] for x in c['subject']).get('commonName')"
            " for c in ssl.create_default_context().get_ca_certs()])",
        )  # fmt: skip
        print(f"CAs the sandbox trusts: {subject.count(',') + 1}")
        assert CA_SUBJECT in subject
    finally:
        await backend.close()
        remove_all(instance)
        docker("network", "rm", network, check=False)
