"""Issue 17, rows 1 and 3: a compromised controller talks to the Docker socket proxy in
front of the real dockerd. Every create below was answered 201 by the blacklist proxy
(Docker's decoder matches keys case-insensitively and the last duplicate wins); every
call on another container was forwarded. Now each is refused, and nothing reaches the
host."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from sandbox_controller.backends.docker_spec import base_labels, container_spec, network_spec
from sandbox_controller.socketproxy_policy import Policy

from ..dockerhost import (
    NETWORK,
    containers,
    docker,
    inspect,
    new_instance,
    options,
    remove_all,
    require_docker,
)
from ..test_socketproxy import serving_proxy

pytestmark = pytest.mark.docker


@dataclass
class Stack:
    http: httpx.AsyncClient
    policy: Policy
    body: dict[str, Any]  # the create the backend sends

    def create_text(self, top: str = "", host: str = "", **changes: Any) -> str:
        """The backend's create as JSON text, with ``changes`` made and raw ``top`` and
        ``host`` members appended to the body and to its HostConfig (so that they come
        after the keys they duplicate: in Docker, the last one wins)."""
        body = json.loads(json.dumps(self.body))
        host_changes = changes.pop("HostConfig", {})
        body.update(changes)
        body["HostConfig"].update(host_changes)
        text = json.dumps(body)
        if host:  # HostConfig closes just before "Labels"
            closing = text.rindex("}", 0, text.index('"Labels"'))
            text = f"{text[:closing]}, {host}{text[closing:]}"
        if top:
            text = f"{text[:-1]}, {top}}}"
        return text

    async def create(self, text: str, *, chunked: bool = False, chunk: int = 7) -> httpx.Response:
        name = f"attack-{uuid.uuid4().hex[:8]}"
        content: Any = text.encode()
        if chunked:

            async def chunks() -> AsyncIterator[bytes]:
                data = text.encode()
                for at in range(0, len(data), chunk):
                    yield data[at : at + chunk]

            content = chunks()
        try:
            return await self.http.post(
                "/v1.41/containers/create",
                params={"name": name},
                content=content,
                headers={"content-type": "application/json"},
            )
        finally:
            self.created = docker("ps", "-aq", "--filter", f"name=^{name}$").split()
            if self.created:
                docker("rm", "-f", *self.created, check=False)

    created: list[str] | None = None


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    image, instance = require_docker(), new_instance()
    policy = Policy(instance, "10001:10001", NETWORK, image)
    opts = options(image, instance, publish=False)
    spec = container_spec(opts, inspect(image)["Id"])
    body = {**spec, "Labels": base_labels(opts, "attack"), "Env": ["SANDBOX_POD_NAME=x"]}
    async with (
        serving_proxy(policy) as base,
        httpx.AsyncClient(base_url=base, trust_env=False, timeout=60) as http,
    ):
        try:
            yield Stack(http, policy, body)
        finally:
            remove_all(instance)


def refused(answer: httpx.Response, stack: Stack) -> bool:
    """Refused with a 4xx and a message, and no container was made."""
    return (
        400 <= answer.status_code < 500
        and "socket proxy" in answer.json()["message"]
        and not stack.created
        and containers(stack.policy.instance) == set()
    )


async def test_the_backends_own_create_passes_plain_and_chunked(stack: Stack) -> None:
    """The control: the body every attack below starts from is accepted."""
    for chunked in (False, True):
        answer = await stack.create(stack.create_text(), chunked=chunked)
        assert answer.status_code == 201, answer.text
        assert stack.created


ROW_1 = {
    # The table's payload: a second, lowercase User; lowercase host settings.
    "row 1 as filed": {
        "top": '"user": "0"',
        "host": '"binds": ["/:/host:ro"], "pidMode": "host", "capAdd": ["SYS_ADMIN"]',
    },
    "lowercase privileged": {"host": '"privileged": true'},
    "lowercase networkMode host": {"host": '"networkMode": "host"'},
    "ipcMode utsMode usernsMode host": {
        "host": '"ipcMode": "host", "utsMode": "host", "usernsMode": "host"'
    },
    "lowercase devices": {
        "host": '"devices": [{"PathOnHost": "/dev/mem", "PathInContainer": "/dev/mem", '
        '"CgroupPermissions": "rwm"}]'
    },
    "securityOpt unconfined": {"host": '"securityOpt": ["seccomp=unconfined"]'},
    "a second hostconfig block": {
        "top": '"hostconfig": {"Binds": ["/:/host"], "Privileged": true}'
    },
    "a mount both tmpfs and bind": {
        "host": '"Mounts": [{"Type": "tmpfs", "type": "bind", "Source": "/", "Target": "/host"}]'
    },
    "Binds": {"host": '"Binds": ["/:/host"]'},
    "PidMode host": {"host": '"PidMode": "host"'},
    "CapAdd": {"host": '"CapAdd": ["SYS_ADMIN"]'},
    "a Kelvin-sign key": {"host": '"\\u212aernelMemory": 1'},
}


@pytest.mark.parametrize("chunked", [False, True], ids=["plain", "chunked"])
@pytest.mark.parametrize("payload", list(ROW_1.values()), ids=list(ROW_1))
async def test_row_1_creates_are_refused(
    stack: Stack, payload: dict[str, str], chunked: bool
) -> None:
    answer = await stack.create(stack.create_text(**payload), chunked=chunked)
    assert refused(answer, stack), answer.text


@pytest.mark.parametrize("user", ["0", "00", "+0:0", "0:0", "root", "10001:0", "-1", " 10001"])
async def test_root_in_any_spelling_is_refused(stack: Stack, user: str) -> None:
    answer = await stack.create(stack.create_text(User=user))
    assert refused(answer, stack), answer.text


async def test_another_numeric_user_passes(stack: Stack) -> None:
    answer = await stack.create(stack.create_text(User="4242:4242"))
    assert answer.status_code == 201, answer.text


PERMISSIVE_SECCOMP = json.dumps({"defaultAction": "SCMP_ACT_ALLOW"})
ROW_3 = {
    "NetworkMode bridge": {"HostConfig": {"NetworkMode": "bridge"}},
    "NetworkMode of another container": {"HostConfig": {"NetworkMode": "container:postgres"}},
    "PortBindings on 0.0.0.0": {
        "HostConfig": {"PortBindings": {"8080/tcp": [{"HostIp": "0.0.0.0", "HostPort": "80"}]}}
    },
    "DeviceCgroupRules": {"HostConfig": {"DeviceCgroupRules": ["a *:* rwm"]}},
    "CgroupParent": {"HostConfig": {"CgroupParent": "/"}},
    "Sysctls": {"HostConfig": {"Sysctls": {"net.ipv4.ip_unprivileged_port_start": "0"}}},
    "a seccomp profile allowing everything": {
        "HostConfig": {"SecurityOpt": ["no-new-privileges:true", f"seccomp={PERMISSIVE_SECCOMP}"]}
    },
    "apparmor unconfined": {
        "HostConfig": {"SecurityOpt": ["no-new-privileges:true", "apparmor=unconfined"]}
    },
    "a writable root": {"HostConfig": {"ReadonlyRootfs": False}},
    "another image": {"Image": "agent-sandbox/postgres:dev"},
    "no instance label": {"Labels": {}},
    "another network attached": {
        "NetworkingConfig": {"EndpointsConfig": {"bridge": {}}},
    },
}


@pytest.mark.parametrize("payload", list(ROW_3.values()), ids=list(ROW_3))
async def test_row_3_creates_are_refused(stack: Stack, payload: dict[str, Any]) -> None:
    answer = await stack.create(stack.create_text(**payload))
    assert refused(answer, stack), answer.text


@pytest.fixture
def victim() -> Iterator[str]:
    """A container on the same host that is not the stack's, with a secret in its env."""
    name = f"victim-{uuid.uuid4().hex[:8]}"
    docker(
        "run", "-d", "--name", name, "--user", "10001", "-e", "VICTIM_DB_PASSWORD=s3cret",
        "--label", "app.kubernetes.io/instance=someone-else", require_docker(),
    )  # fmt: skip
    try:
        yield name
    finally:
        docker("rm", "-f", name, check=False)


async def test_another_container_cannot_be_read_or_touched(stack: Stack, victim: str) -> None:
    full_id = inspect(victim)["Id"]
    for ref in (victim, full_id, full_id[:12]):
        for method, path in [
            ("GET", f"/v1.41/containers/{ref}/json"),
            ("POST", f"/v1.41/containers/{ref}/kill"),
            ("POST", f"/v1.41/containers/{ref}/stop?t=0"),
            ("DELETE", f"/v1.41/containers/{ref}?force=1"),
        ]:
            answer = await stack.http.request(method, path)
            assert answer.status_code == 404, (method, path, answer.text)
            assert "s3cret" not in answer.text
    listed = await stack.http.get("/v1.41/containers/json", params={"all": "1"})
    assert listed.status_code == 200 and victim not in listed.text
    named = await stack.http.get(
        "/v1.41/containers/json", params={"all": "1", "filters": json.dumps({"name": [victim]})}
    )
    assert named.json() == []
    events = await stack.http.get(
        "/v1.41/events",
        params={"since": str(int(time.time()) - 120), "until": str(int(time.time()))},
    )
    assert events.status_code == 200 and victim not in events.text
    assert inspect(victim)["State"]["Running"] is True


async def test_a_container_of_the_stack_can_be_deleted(stack: Stack) -> None:
    """The control for the test above: the same calls on the stack's own container pass."""
    answer = await stack.http.post(
        "/v1.41/containers/create", params={"name": f"own-{uuid.uuid4().hex[:8]}"},
        content=stack.create_text(), headers={"content-type": "application/json"},
    )  # fmt: skip
    own = answer.json()["Id"]
    assert (await stack.http.get(f"/v1.41/containers/{own}/json")).status_code == 200
    assert (await stack.http.delete(f"/v1.41/containers/{own}?force=1")).status_code == 204
    assert containers(stack.policy.instance) == set()


@pytest.mark.parametrize(
    "body",
    [
        {"Name": "agent-sandbox-evil", "Driver": "bridge"},
        {**network_spec(NETWORK), "Options": {"com.docker.network.bridge.name": "docker0"}},
        {**network_spec(NETWORK), "Internal": False, "Driver": "macvlan"},
        {**network_spec(NETWORK), "IPAM": {"Config": [{"Subnet": "192.0.2.0/24"}]}},
        {**network_spec("another-network")},
    ],
)
async def test_only_the_sandbox_network_can_be_created(stack: Stack, body: dict[str, Any]) -> None:
    answer = await stack.http.post("/v1.41/networks/create", content=json.dumps(body))
    if answer.status_code < 300:
        docker("network", "rm", str(body["Name"]), check=False)
    assert answer.status_code == 403, answer.text


async def test_the_sandbox_network_itself_can_be_created() -> None:
    image = require_docker()
    network = f"agent-sandbox-net-{uuid.uuid4().hex[:8]}"
    async with (
        serving_proxy(Policy(new_instance(), "10001:10001", network, image)) as base,
        httpx.AsyncClient(base_url=base, trust_env=False) as http,
    ):
        try:
            answer = await http.post("/v1.41/networks/create", json=network_spec(network))
            assert answer.status_code == 201, answer.text
        finally:
            docker("network", "rm", network, check=False)


async def test_an_oversized_or_deeply_nested_body_is_a_4xx(stack: Stack) -> None:
    """Bodies are read bounded, chunked or not, and a hostile document is a 4xx."""
    big = stack.create_text(Env=["X=" + "x" * (2 << 20)])
    for chunked in (False, True):
        answer = await stack.create(big, chunked=chunked, chunk=1 << 16)
        assert answer.status_code == 413 and not stack.created
    answer = await stack.create("[" * 100_000 + "]" * 100_000)
    assert refused(answer, stack), answer.text
    assert (await stack.http.get("/_ping")).text == "OK"
