"""The Docker socket proxy of the Compose deployment: what it lets through, and a real
DockerBackend working through it against dockerd."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from sandbox_controller.backends.base import LABEL_STATE, PodPhase
from sandbox_controller.backends.docker import DockerBackend
from sandbox_controller.backends.docker_spec import (
    base_labels,
    container_spec,
    network_spec,
    template_hash,
)
from sandbox_controller.socketproxy import make_app
from sandbox_controller.socketproxy_policy import (
    Policy,
    Refused,
    allowed,
    check_create,
    check_network,
    decode,
    encode,
)

from .dockerhost import (
    NETWORK,
    containers,
    docker,
    new_instance,
    options,
    remove_all,
    require_docker,
)
from .eventually import eventually


@pytest.mark.parametrize(
    ("method", "path", "ok"),
    [
        ("GET", "/v1.41/_ping", True),
        ("GET", "/v1.41/events", True),
        ("POST", "/v1.41/containers/create", True),
        ("POST", "/v1.41/containers/agent-sandbox-job-x1/start", True),
        ("DELETE", "/v1.41/containers/abc123", True),
        ("GET", "/v1.41/images/agent-sandbox/devsandbox:dev/json", True),
        ("POST", "/v1.41/containers/abc/exec", False),
        ("POST", "/v1.41/exec/abc/start", False),
        ("GET", "/v1.41/containers/abc/archive", False),
        ("PUT", "/v1.41/containers/abc/archive", False),
        ("POST", "/v1.41/containers/abc/attach", False),
        ("POST", "/v1.41/images/create", False),
        ("POST", "/v1.41/build", False),
        ("GET", "/v1.41/volumes", False),
        ("POST", "/v1.41/swarm/init", False),
        ("DELETE", "/v1.41/networks/bridge", False),
        ("GET", "/v1.41/containers/../../info", False),
    ],
)
def test_only_the_backends_calls_pass(method: str, path: str, ok: bool) -> None:
    assert allowed(method, path) is ok


POLICY = Policy("test-x", "10001:10001", NETWORK, "agent-sandbox/devsandbox:dev")


def test_the_backends_own_create_passes_the_policy() -> None:
    """The proxy's allow-list is the backend's spec: what the backend sends passes."""
    opts = options("img", "test-x", publish=False)
    spec = container_spec(opts, "sha256:abc")
    labels = base_labels(opts, template_hash(spec))
    body = {**spec, "Labels": labels, "Env": ["SANDBOX_POD_NAME=x"]}
    assert check_create(decode(encode(body)), POLICY, "sha256:abc") == body
    assert check_network(network_spec(NETWORK), POLICY) == network_spec(NETWORK)


@contextlib.asynccontextmanager
async def serving_proxy(policy: Policy) -> AsyncIterator[str]:
    """The socket proxy in front of the real dockerd, on a free port: its base URL."""
    runner = web.AppRunner(make_app("/var/run/docker.sock", policy), handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.mark.docker
async def test_the_backend_works_through_the_proxy_and_nothing_else_does() -> None:
    image, instance = require_docker(), new_instance()
    policy = Policy(instance, "10001:10001", NETWORK, image)
    async with serving_proxy(policy) as base:
        url = base.replace("http://", "tcp://")
        backend = await DockerBackend.connect(options(image, instance, url=url, publish=False))
        try:
            await backend.start()
            name = await backend.create_pod({LABEL_STATE: "pool"})

            async def ready() -> bool:
                return any(p.phase is PodPhase.READY for p in await backend.resync())

            await eventually(ready, within=30, what="a sandbox ready through the proxy")
            async with httpx.AsyncClient(base_url=base, trust_env=False) as http:
                refused = await http.post(f"/containers/{name}/exec", json={"Cmd": ["id"]})
                assert refused.status_code == 403, refused.text
                bad = {**backend.spec, "Labels": base_labels(backend.options, "x"), "Env": []}
                bad["HostConfig"] = {**bad["HostConfig"], "Privileged": True}
                refused = await http.post("/containers/create", content=json.dumps(bad))
                assert refused.status_code == 403
                assert "HostConfig.Privileged: not allowed" in refused.json()["message"]
            await backend.delete_pod(name)
            assert containers(instance) == set()
        finally:
            await backend.close()
            remove_all(instance)


def test_with_egress_on_only_the_internal_network_may_be_created() -> None:
    # A compromised controller must not give sandboxes a network with a route out.
    policy = Policy(
        "test-x", "10001:10001", "sbx-out", "img", internal=True, subnet="10.250.1.0/24"
    )
    internal = network_spec("sbx-out", internal=True, subnet="10.250.1.0/24")
    assert check_network(decode(encode(internal)), policy) == internal
    for routed in (network_spec("sbx-out"), network_spec("sbx-out", subnet="10.250.1.0/24")):
        with pytest.raises(Refused):
            check_network(decode(encode(routed)), policy)


@pytest.mark.docker
async def test_with_egress_on_the_backend_makes_its_internal_network_through_the_proxy() -> None:
    image, instance = require_docker(), new_instance()
    network = f"sbx-egress-{instance}"
    bits = uuid.uuid4().int
    subnet = f"10.{200 + bits % 50}.{(bits >> 8) % 256}.0/24"
    policy = Policy(instance, "10001:10001", network, image, internal=True, subnet=subnet)
    async with serving_proxy(policy) as base:
        url = base.replace("http://", "tcp://")
        backend = await DockerBackend.connect(
            options(
                image,
                instance,
                url=url,
                publish=False,
                network=network,
                internal=True,
                subnet=subnet,
            )
        )
        try:
            made = json.loads(docker("network", "inspect", network))[0]
            assert made["Internal"] is True
            assert made["IPAM"]["Config"][0]["Subnet"] == subnet
            await backend.start()
            await backend.create_pod({LABEL_STATE: "pool"})

            async def ready() -> bool:
                return any(p.phase is PodPhase.READY for p in await backend.resync())

            await eventually(ready, within=30, what="a sandbox ready on the internal network")
        finally:
            await backend.close()
            remove_all(instance)
            docker("network", "rm", network, check=False)
