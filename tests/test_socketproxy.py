"""The Docker socket proxy of the Compose deployment: what it lets through, and a real
DockerBackend working through it against dockerd."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import subprocess
import tarfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from sandbox_controller.backends.base import LABEL_STATE, PodPhase
from sandbox_controller.backends.docker import DockerBackend
from sandbox_controller.backends.docker_spec import (
    MAX_BUNDLE,
    base_labels,
    bundle_archive,
    container_spec,
    network_spec,
    template_hash,
)
from sandbox_controller.config import Settings
from sandbox_controller.controller import sandbox_egress
from sandbox_controller.egress_ca import ensure_ca
from sandbox_controller.egress_env import (
    BUNDLE_NAME,
    CA_BUNDLE_VARIABLES,
    DOCKER_BUNDLE,
    DOCKER_BUNDLE_DIR,
)
from sandbox_controller.socketproxy import make_app
from sandbox_controller.socketproxy_policy import (
    Policy,
    Refused,
    allowed,
    check_archive,
    check_create,
    check_network,
    decode,
    encode,
)

from .dockerhost import (
    NETWORK,
    containers,
    docker,
    inspect,
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
        ("HEAD", "/v1.41/containers/abc/archive", False),
        ("PUT", "/v1.41/containers/abc/archive", True),  # the bundle only: check_archive
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


# -- the CA bundle (egress on): one file, one directory, created sandboxes only ----------

EGRESS_POLICY = Policy(
    "test-x", "10001:10001", "sbx-e", "img", internal=True, subnet="10.250.1.0/24"
)
PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def tar_of(*entries: tarfile.TarInfo, data: bytes = PEM) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        for entry in entries:
            if entry.isreg():
                entry.size = len(data)
                archive.addfile(entry, io.BytesIO(data))
            else:
                archive.addfile(entry)
    return out.getvalue()


def entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.uid = kind, link, 0o4755, 10001
    return info


def test_the_bundle_is_rebuilt_root_owned_and_read_only() -> None:
    forwarded = check_archive(DOCKER_BUNDLE_DIR, tar_of(entry(BUNDLE_NAME)), EGRESS_POLICY)
    assert forwarded == bundle_archive(PEM)
    with tarfile.open(fileobj=io.BytesIO(forwarded)) as archive:
        (member,) = archive.getmembers()
        assert (member.name, member.mode, member.uid, member.gid) == (BUNDLE_NAME, 0o444, 0, 0)


@pytest.mark.parametrize(
    ("path", "body", "policy", "why"),
    [
        (DOCKER_BUNDLE_DIR, tar_of(entry(BUNDLE_NAME)), POLICY, "egress off"),
        ("/etc", tar_of(entry(BUNDLE_NAME)), EGRESS_POLICY, "only to /egress"),
        ("/egress/", tar_of(entry(BUNDLE_NAME)), EGRESS_POLICY, "only to /egress"),
        (None, tar_of(entry(BUNDLE_NAME)), EGRESS_POLICY, "only to /egress"),
        (DOCKER_BUNDLE_DIR, tar_of(entry("../../etc/passwd")), EGRESS_POLICY, "one regular"),
        (DOCKER_BUNDLE_DIR, tar_of(entry("x.pem")), EGRESS_POLICY, "one regular"),
        (
            DOCKER_BUNDLE_DIR,
            tar_of(entry(BUNDLE_NAME, tarfile.SYMTYPE, "/etc/shadow")),
            EGRESS_POLICY,
            "one regular",
        ),
        (
            DOCKER_BUNDLE_DIR,
            tar_of(entry(BUNDLE_NAME), entry("run.sh")),
            EGRESS_POLICY,
            "one regular",
        ),
        (
            DOCKER_BUNDLE_DIR,
            tar_of(entry(BUNDLE_NAME), data=b"\x7fELF\x02\x01"),
            EGRESS_POLICY,
            "PEM",
        ),
        (DOCKER_BUNDLE_DIR, gzip.compress(tar_of(entry(BUNDLE_NAME))), EGRESS_POLICY, "tar"),
        (
            DOCKER_BUNDLE_DIR,
            tar_of(entry(BUNDLE_NAME), data=PEM * (MAX_BUNDLE // len(PEM) + 1)),
            EGRESS_POLICY,
            "larger than",
        ),
    ],
)
def test_an_upload_that_is_not_the_bundle_is_refused(
    path: str | None, body: bytes, policy: Policy, why: str
) -> None:
    with pytest.raises(Refused, match=why):
        check_archive(path, body, policy)


def test_with_egress_on_a_create_has_exactly_the_bundle_volume() -> None:
    opts = options("img", "test-x", publish=False, network="sbx-e", internal=True)
    spec = container_spec(opts, "sha256:abc")
    body = {**spec, "Labels": base_labels(opts, template_hash(spec)), "Env": []}
    assert body["Volumes"] == {DOCKER_BUNDLE_DIR: {}}
    assert check_create(decode(encode(body)), EGRESS_POLICY, "sha256:abc") == body
    for volumes in ({"/": {}}, {DOCKER_BUNDLE_DIR: {}, "/data": {}}, {"/var/run": {}}):
        with pytest.raises(Refused, match="Volumes must be"):
            check_create(decode(encode({**body, "Volumes": volumes})), EGRESS_POLICY, "sha256:abc")
    without = {k: v for k, v in body.items() if k != "Volumes"}
    with pytest.raises(Refused, match="Volumes: missing"):
        check_create(decode(encode(without)), EGRESS_POLICY, "sha256:abc")
    with pytest.raises(Refused, match="Volumes: not allowed"):  # egress off: no volume
        check_create(decode(encode(body)), POLICY, "sha256:abc")


@pytest.mark.docker
async def test_with_egress_on_sandboxes_get_the_bundle_and_nothing_else_is_uploaded(
    tmp_path: Path,
) -> None:
    """Through the socket proxy, as Compose runs it: a sandbox created with egress on has
    the bundle (system roots + the deployment CA) at the path SSL_CERT_FILE names; an
    upload elsewhere, into a container of no stack, or into a started one is refused."""
    image, instance = require_docker(), new_instance()
    network = f"sbx-ca-{instance}"
    bits = uuid.uuid4().int
    subnet = f"10.{200 + bits % 50}.{(bits >> 8) % 256}.0/24"
    policy = Policy(instance, "10001:10001", network, image, internal=True, subnet=subnet)
    cert, _ = ensure_ca(tmp_path / "ca")
    settings = Settings(
        backend="docker", egress="enforce", egress_ca_cert_file=str(cert), state_dir=str(tmp_path)
    )
    egress = sandbox_egress(settings, b"k" * 32)
    assert egress is not None and egress.bundle_pem is not None
    stranger = f"sbx-stranger-{instance}"
    async with serving_proxy(policy) as base:
        backend = await DockerBackend.connect(
            options(
                image,
                instance,
                url=base.replace("http://", "tcp://"),
                publish=False,
                network=network,
                internal=True,
                subnet=subnet,
            ),
            egress=egress,
        )
        try:
            await backend.start()
            name = await backend.create_pod({LABEL_STATE: "pool"})

            async def ready() -> bool:
                return any(p.phase is PodPhase.READY for p in await backend.resync())

            await eventually(ready, within=60, what="a sandbox with the bundle ready")
            env = dict(e.split("=", 1) for e in inspect(name)["Config"]["Env"])
            assert {env[v] for v in CA_BUNDLE_VARIABLES} == {DOCKER_BUNDLE}
            held = docker("exec", name, "cat", env["SSL_CERT_FILE"])
            assert cert.read_text() in held  # the deployment CA
            assert held.count("BEGIN CERTIFICATE") > 1  # and the system's roots
            print(f"bundle in the sandbox: {len(held)} bytes, {held.count('BEGIN')} certs")
            # The sandbox (uid 10001) cannot change what it trusts.
            write = subprocess.run(
                ["docker", "exec", name, "sh", "-c", f"echo x >> {DOCKER_BUNDLE}"],
                capture_output=True,
                text=True,
            )
            assert write.returncode != 0, write.stdout

            good = bundle_archive(egress.bundle_pem)
            docker("create", "--name", stranger, image)  # no labels: not this stack's
            async with httpx.AsyncClient(base_url=base, trust_env=False) as http:

                async def put(ref: str, path: str) -> httpx.Response:
                    return await http.put(
                        f"/v1.41/containers/{ref}/archive", params={"path": path}, content=good
                    )

                elsewhere = await put(name, "/tmp")
                assert elsewhere.status_code == 403, elsewhere.text
                assert "only to /egress" in elsewhere.json()["message"]
                foreign = await put(stranger, DOCKER_BUNDLE_DIR)
                assert foreign.status_code == 404, foreign.text
                started = await put(name, DOCKER_BUNDLE_DIR)
                assert started.status_code == 409, started.text
            await backend.delete_pod(name)
        finally:
            await backend.close()
            docker("rm", "-f", "-v", stranger, check=False)
            remove_all(instance)
            docker("network", "rm", network, check=False)
