"""The Docker socket proxy of the Compose deployment: what it lets through, and a real
DockerBackend working through it against dockerd."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp import web

from sandbox_controller.backends.base import LABEL_STATE, PodPhase
from sandbox_controller.backends.docker import DockerBackend
from sandbox_controller.backends.docker_spec import container_spec
from sandbox_controller.socketproxy import allowed, make_app, unsafe_create

from .dockerhost import containers, new_instance, options, remove_all, require_docker
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


def sandbox_config() -> dict[str, Any]:
    return {**container_spec(options("img", "x"), "sha256:abc"), "Labels": {}}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"Privileged": True}, "privileged"),
        ({"CapAdd": ["SYS_ADMIN"]}, "capabilities"),
        ({"CapDrop": []}, "dropped"),
        ({"ReadonlyRootfs": False}, "read-only"),
        ({"Binds": ["/:/host"]}, "bind mounts"),
        ({"Mounts": [{"Type": "bind", "Source": "/", "Target": "/host"}]}, "tmpfs"),
        ({"Devices": [{"PathOnHost": "/dev/sda"}]}, "devices"),
        ({"NetworkMode": "host"}, "NetworkMode"),
        ({"PidMode": "host"}, "PidMode"),
        ({"SecurityOpt": ["seccomp=unconfined"]}, "unconfined"),
    ],
)
def test_a_create_that_is_not_sandbox_shaped_is_refused(
    change: dict[str, Any], reason: str
) -> None:
    config = sandbox_config()
    assert unsafe_create(config) is None
    config["HostConfig"].update(change)
    why = unsafe_create(config)
    assert why is not None and reason in why


def test_a_root_container_is_refused() -> None:
    config = sandbox_config()
    config["User"] = "0:0"
    assert unsafe_create(config) == "containers must run as a non-root user"


@pytest.fixture
async def proxy_url() -> AsyncIterator[str]:
    require_docker()
    runner = web.AppRunner(make_app("/var/run/docker.sock"), handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"tcp://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.mark.docker
async def test_the_backend_works_through_the_proxy_and_nothing_else_does(
    proxy_url: str,
) -> None:
    instance = new_instance()
    backend = await DockerBackend.connect(options(require_docker(), instance, url=proxy_url))
    try:
        await backend.start()
        name = await backend.create_pod({LABEL_STATE: "pool"})

        async def ready() -> bool:
            return any(p.phase is PodPhase.READY for p in await backend.resync())

        await eventually(ready, within=30, what="a sandbox ready through the proxy")
        base = proxy_url.replace("tcp://", "http://")
        async with httpx.AsyncClient(base_url=base, trust_env=False) as http:
            refused = await http.post(f"/containers/{name}/exec", json={"Cmd": ["id"]})
            assert refused.status_code == 403, refused.text
            bad = {**sandbox_config(), "Image": backend.spec["Image"]}
            bad["HostConfig"]["Privileged"] = True
            refused = await http.post("/containers/create", content=json.dumps(bad))
            assert refused.status_code == 403 and "privileged" in refused.json()["message"]
        await backend.delete_pod(name)
        assert containers(instance) == set()
    finally:
        await backend.close()
        remove_all(instance)
