"""The Docker backend's pure parts: the container a sandbox runs in, the host's room for
one more, a sandbox's status read from ``docker inspect``, and the backend's record of
each container. No I/O here."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..config import DockerOptions
from ..egress_env import BUNDLE_NAME, DOCKER_BUNDLE_DIR
from ..model import Resources
from ..quantities import cpu_millis, memory_bytes
from ..sandbox_contract import POD_PORT
from .base import (
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_TEMPLATE_HASH,
    MANAGED_BY,
    PodPhase,
    PodStatus,
)

Obj = dict[str, Any]

_DOCKER_TIME = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?Z")
# A fork bomb in one sandbox must not take the host's pid space from the others.
PIDS_LIMIT = 1024
# The CA bundle's largest size (a system store is about 200 KiB); the socket proxy
# refuses a larger upload, so the backend refuses to start with one.
MAX_BUNDLE = 1 << 19
GIB = 2**30


def container_spec(options: DockerOptions, image_id: str) -> Obj:
    """Everything about a sandbox container but its name and labels. Hardened as the
    chart's pod template: non-root, no capabilities, no new privileges, a read-only root
    with a tmpfs workspace (it counts against the memory limit, and goes with the
    container: sandboxes are never reused)."""
    host: Obj = {
        "NanoCpus": int(options.cpus * 1e9),
        "Memory": options.memory,
        "MemorySwap": options.memory,  # no swap on top of the limit
        "PidsLimit": PIDS_LIMIT,
        "CapDrop": ["ALL"],
        "SecurityOpt": ["no-new-privileges:true"],
        "ReadonlyRootfs": True,
        "Tmpfs": {
            # Its mode comes from the image's /workspace (Docker copies it up, not the owner):
            # the image makes it 1777 (deploy/docker/devsandbox.Dockerfile).
            "/workspace": f"rw,nosuid,nodev,exec,size={options.workspace_size}",
            "/tmp": f"rw,nosuid,nodev,size={options.workspace_size},mode=1777",
        },
        # A real init as pid 1: signals reach the sandbox, zombies are reaped.
        "Init": True,
        "NetworkMode": options.network,
        "RestartPolicy": {"Name": "no"},  # a dead sandbox is replaced, never restarted
        "LogConfig": {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "2"}},
    }
    if options.runtime:
        host["Runtime"] = options.runtime
    if options.publish:
        host["PortBindings"] = {f"{POD_PORT}/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}
    spec: Obj = {
        "Image": image_id,
        "User": options.user,
        "ExposedPorts": {f"{POD_PORT}/tcp": {}},
        "HostConfig": host,
    }
    if options.internal:
        # Egress on: an anonymous volume (the container's own, removed with it) for the
        # CA bundle, uploaded before start (bundle_archive): the root is read-only, and
        # Docker takes no upload into a tmpfs. Root-owned, so the sandbox cannot write it.
        spec["Volumes"] = {DOCKER_BUNDLE_DIR: {}}
    return spec


def bundle_archive(pem: bytes) -> bytes:
    """The tar the backend uploads to DOCKER_BUNDLE_DIR (and the socket proxy rebuilds
    from what it checked): one regular file, root's, read-only for everyone."""
    # TarInfo's owner is root (uid and gid 0) unless set otherwise.
    entry = tarfile.TarInfo(BUNDLE_NAME)
    entry.size, entry.mode = len(pem), 0o444
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        archive.addfile(entry, io.BytesIO(pem))
    return out.getvalue()


def create_template(network: str, user: str, runtime: str | None, internal: bool = False) -> Obj:
    """A container create as docker.py sends it, for the socket proxy to hold every
    create against (socketproxy_policy.py): it lets through only the keys here. The
    values the controller's settings or each create fill in (image, limits, the
    workspace size, labels, environment) are placeholders."""
    options = DockerOptions(
        url=None,
        image="",
        cpus=1.0,
        memory=GIB,
        runtime=runtime,
        network=network,
        publish=False,  # the proxy never lets a port be published
        instance="",
        reserved_memory=0,
        workspace_size=GIB,
        user=user,
        max_concurrent_creates=1,
        internal=internal,
    )
    return {**container_spec(options, ""), "Labels": {}, "Env": []}


def network_spec(network: str, internal: bool = False, subnet: str | None = None) -> Obj:
    """The sandbox network, made by the backend when it is missing; the socket proxy
    creates no network of another shape. Internal (egress on): Docker gives it no route
    out, so a sandbox reaches only what is on it, the egress proxy among them."""
    spec: Obj = {
        "Name": network,
        "Driver": "bridge",
        "Labels": {LABEL_MANAGED_BY: MANAGED_BY},
        "Options": {"com.docker.network.bridge.name": bridge_name(network)},
    }
    if internal:
        spec["Internal"] = True
    if subnet:
        spec["IPAM"] = {"Config": [{"Subnet": subnet}]}
    return spec


def sized(options: DockerOptions, resources: Resources) -> DockerOptions:
    """The options with a template's or a session's CPU and memory in place."""
    cpus = cpu_millis(resources.cpu) / 1000 if resources.cpu else options.cpus
    memory = memory_bytes(resources.memory) if resources.memory else options.memory
    return dataclasses.replace(options, cpus=cpus, memory=memory)


def template_hash(spec: Obj) -> str:
    """Changes with the image (by id, so a rebuilt tag counts) and every setting."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]


def base_labels(options: DockerOptions, template: str) -> dict[str, str]:
    return {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_INSTANCE: options.instance,
        LABEL_TEMPLATE_HASH: template,
    }


def label_filters(options: DockerOptions) -> str:
    """The containers (and their events) that are this controller's."""
    labels = [f"{LABEL_MANAGED_BY}={MANAGED_BY}", f"{LABEL_INSTANCE}={options.instance}"]
    return json.dumps({"label": labels})


@dataclass(frozen=True)
class Host:
    """The VM, from ``docker info``: what the sandboxes may share."""

    cpus: int
    memory: int  # bytes
    reserved_memory: int

    @classmethod
    def from_info(cls, info: Mapping[str, Any], reserved_memory: int) -> Host:
        return cls(int(info.get("NCPU") or 1), int(info.get("MemTotal") or 0), reserved_memory)

    @property
    def sandbox_memory(self) -> int:
        return max(0, self.memory - self.reserved_memory)

    def capacity(self, memory: int) -> int:
        """How many sandboxes of ``memory`` bytes the host holds."""
        return self.sandbox_memory // memory if memory > 0 else 0

    def why_not(self, cpus: float, memory: int, held_memory: int, running: int) -> str | None:
        """Why one more sandbox does not fit now (Kubernetes' words, so the API shows
        the same ``detail`` on either platform), or None if it does. Memory is held:
        limits are summed, since memory cannot be taken back without killing. CPU is
        shared: a limit only caps a sandbox, so it must fit the host, not the sum."""
        problems = []
        if cpus > self.cpus:
            problems.append("Insufficient cpu")
        if held_memory + memory > self.sandbox_memory:
            problems.append("Insufficient memory")
        if not problems:
            return None
        return (
            f"0/1 nodes are available: {', '.join(f'1 {p}' for p in problems)}. "
            f"(this host: {self.cpus} CPUs, {_gib(self.memory)} memory, "
            f"{_gib(self.reserved_memory)} reserved, {_gib(held_memory)} held by "
            f"{running} sandboxes; one more needs {cpus:g} CPU and {_gib(memory)})"
        )


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


@dataclass(frozen=True)
class Observed:
    """What ``docker inspect`` says about a sandbox container."""

    state: str  # created, running, paused, restarting, removing, exited, dead
    started: bool  # ever started (a created container waiting for room was not)
    exit_code: int
    oom_killed: bool
    health: str | None  # the image's healthcheck: starting, healthy, unhealthy; or none
    address: str | None

    @property
    def holds_memory(self) -> bool:
        return self.state in ("running", "paused", "restarting")

    def phase(self) -> PodPhase | None:
        """FAILED or READY when inspect alone decides; None when a probe must."""
        if self.started and self.state in ("exited", "dead"):
            return PodPhase.FAILED
        if self.health == "healthy":
            return PodPhase.READY
        return None

    def failure(self) -> str:
        if self.oom_killed:
            return f"sandbox container was killed: out of memory (exit {self.exit_code})"
        return f"sandbox container exited ({self.exit_code})"


def observe(info: Obj, options: DockerOptions) -> Observed:
    state: Obj = info.get("State") or {}
    health = (state.get("Health") or {}).get("Status")
    # A container never started says StartedAt "0001-01-01T00:00:00Z" (Go's zero time).
    started_at = str(state.get("StartedAt") or "")
    started = bool(started_at) and not started_at.startswith("0001")
    return Observed(
        state=str(state.get("Status") or "created"),
        started=started,
        exit_code=int(state.get("ExitCode") or 0),
        oom_killed=bool(state.get("OOMKilled")),
        health=str(health) if health else None,
        address=_address(info, options) if state.get("Status") == "running" else None,
    )


def _address(info: Obj, options: DockerOptions) -> str | None:
    settings: Obj = info.get("NetworkSettings") or {}
    if options.publish:
        bindings = (settings.get("Ports") or {}).get(f"{POD_PORT}/tcp") or []
        for binding in bindings:
            if binding.get("HostPort"):
                return f"127.0.0.1:{binding['HostPort']}"
        return None
    network = (settings.get("Networks") or {}).get(options.network) or {}
    ip = network.get("IPAddress")
    return f"{ip}:{POD_PORT}" if ip else None


def bridge_name(network: str) -> str:
    """The Linux bridge of the sandbox network, named so that the egress guard
    (deploy/docker/egress-guard.sh) finds it; at most 15 characters."""
    return "sbx-" + hashlib.sha256(network.encode()).hexdigest()[:10]


@dataclass
class SandboxContainer:
    name: str
    id: str
    created_at: float
    labels: dict[str, str]
    memory: int
    observed: Observed | None = None
    start_requested: bool = False
    ready: bool = False
    failure: str | None = None
    unschedulable: bool = False
    detail: str | None = "starting"
    deleting: bool = False
    probing: bool = False
    last: PodStatus | None = field(default=None, repr=False)

    @property
    def holds_memory(self) -> bool:
        observed = self.observed
        if observed is not None and observed.state in ("exited", "dead"):
            return False
        return self.start_requested or (observed is not None and observed.holds_memory)

    @property
    def address(self) -> str | None:
        return self.observed.address if self.observed else None

    def status(self) -> PodStatus:
        if self.failure is not None:
            phase, detail = PodPhase.FAILED, self.failure
        elif self.ready:
            phase, detail = PodPhase.READY, None
        else:
            phase, detail = PodPhase.PENDING, self.detail
        return PodStatus(
            self.name,
            phase,
            dict(self.labels),
            self.created_at,
            self.address,
            detail,
            unschedulable=self.unschedulable and not self.deleting,
            terminating=self.deleting,
        )


def timestamp(text: str) -> float | None:
    """Docker's times are RFC 3339 in UTC with up to nanoseconds, which fromisoformat
    does not take. None when ``text`` is not such a time: the caller decides."""
    match = _DOCKER_TIME.fullmatch(text)
    if match is None:
        return None
    head, fraction = match.groups()
    try:
        return datetime.fromisoformat(f"{head}.{(fraction or '0')[:6]}+00:00").timestamp()
    except ValueError:  # the right shape, not a date (month 13, say)
        return None
