"""The Docker backend: each sandbox is a container on one VM's Docker Engine.

For platforms that run on a single VM (Docker Compose): the Engine API through
aiodocker, behind the same protocol as the Kubernetes backend. The container is built by
docker_spec (limits, hardening, the dedicated network); this module creates, starts,
deletes, lists and watches.

Like the Kubernetes backend it keeps a cache, fed by one list per term and then by
Docker's event stream (docker_events.py); any gap in the stream (an error, a daemon
restart, a closed connection) is followed by a full relist. Every write passes the
write guard immediately before it is sent (docs/architecture.md invariant 14).

Two things differ from Kubernetes:
- Docker has no scheduler. A sandbox that the host cannot hold is created but not
  started, and reported unschedulable with Kubernetes' words, so the scheduler sees the
  same ``capacity_blocked`` and ``detail``; it starts, oldest first, once room frees
  (docker_room.py).
- Container labels are fixed at creation. The labels the scheduler sets later (state,
  session) live in this process's cache only. Nothing depends on them surviving a
  restart: recovery trusts the store's pod rows, and a claimed pod's row is committed
  before its label would be set (scheduler/recovery.py), so a container whose creation
  labels still say ``state=pool`` but that served a session is never taken for fresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Mapping

import aiodocker
import httpx

from ..aiotasks import TaskGroup
from ..aiotime import Backoff
from ..clock import Clock, SystemClock
from ..config import DockerOptions
from ..egress_env import DOCKER_BUNDLE_DIR, SandboxEgress
from ..model import DEFAULT_TEMPLATE, TemplateLimits
from ..sandbox_contract import ENV_POD_NAME, claim_env
from ..templates import Template
from .base import (
    LABEL_CREATE_ID,
    LABEL_TEMPLATE,
    BackendError,
    ErrorKind,
    PodEvent,
    PodStatus,
    WriteGuard,
    new_pod_name,
    no_guard,
    shape_env,
    shape_of,
)
from .docker_cache import ContainerCache
from .docker_events import CONNECTION_ERRORS
from .docker_spec import (
    MAX_BUNDLE,
    Host,
    Obj,
    SandboxContainer,
    base_labels,
    bundle_archive,
    container_spec,
    label_filters,
    network_spec,
    observe,
    sized,
    template_hash,
)
from .kit import EventFeed

log = logging.getLogger(__name__)

NAME_ATTEMPTS = 3
# aiodocker's status for "nothing answers at the address" (no HTTP status came back).
NO_DAEMON = 900


def _no_daemon(url: str | None) -> BackendError:
    where = url or os.environ.get("DOCKER_HOST") or "the default socket"
    return BackendError(
        f"no Docker daemon answers at {where} (SANDBOX_DOCKER_URL, else DOCKER_HOST): "
        "start dockerd, or set SANDBOX_BACKEND=local to run sandboxes as local processes",
        retryable=False,
        kind=ErrorKind.PERMANENT,
    )


def error_kind(exc: aiodocker.DockerError) -> ErrorKind:
    """A 4xx other than a conflict is the Engine refusing the request as made: no such
    image (404: the Engine API never pulls on create), a bad config (400). A 409 or a
    5xx may pass later."""
    if 400 <= exc.status < 500 and exc.status != 409:
        return ErrorKind.PERMANENT
    return ErrorKind.TEMPORARY


class DockerBackend(ContainerCache):
    def __init__(
        self,
        docker: aiodocker.Docker,
        options: DockerOptions,
        image_id: str,
        host: Host,
        *,
        image_ids: Mapping[str, str] | None = None,
        clock: Clock | None = None,
        write_guard: WriteGuard = no_guard,
        stop_on_close: bool = False,
        claim_key: bytes | None = None,
        egress: SandboxEgress | None = None,
    ) -> None:
        self.docker = docker
        # Each sandbox's claim secret derives from it and the create id (claim_env);
        # None: sandboxes get none, and refuse claims.
        self.claim_key = claim_key
        # With egress on: each sandbox's proxy env (egress_env.py), and the CA bundle's
        # tar, made once and uploaded into each container before it starts.
        self.egress = egress
        bundle = egress.bundle_pem if egress is not None else None
        if bundle is not None and len(bundle) > MAX_BUNDLE:
            raise BackendError(
                f"the egress CA bundle is {len(bundle)} bytes, more than {MAX_BUNDLE} "
                "(this machine's system roots and SANDBOX_EGRESS_CA_CERT_FILE)",
                retryable=False,
                kind=ErrorKind.PERMANENT,
            )
        self._bundle_tar = bundle_archive(bundle) if bundle else None
        self.stop_on_close = stop_on_close
        self.options = options
        self.host = host
        self.clock: Clock = clock or SystemClock()
        self.write_guard = write_guard
        # Each template's container (image, CPU, memory, env), the default first; the
        # image ids by image name (connect() inspects each template's image).
        ids = dict(image_ids or {options.image: image_id})
        templates = options.templates or (
            Template(DEFAULT_TEMPLATE, TemplateLimits(DEFAULT_TEMPLATE)),
        )
        self.default_template = templates[0].name
        self.templates = {t.name: t for t in templates}
        self.specs = {
            t.name: container_spec(
                sized(options, t.resources), ids[t.docker_image or options.image]
            )
            for t in templates
        }
        self.template_hashes = {
            name: template_hash({**spec, "Env": sorted(self.templates[name].env.items())})
            if self.templates[name].env
            else template_hash(spec)
            for name, spec in self.specs.items()
        }
        self.spec = self.specs[self.default_template]
        self.template_hash = self.template_hashes[self.default_template]
        self.backoff = Backoff(options.retry_base, options.retry_cap)
        self._owns_docker = False
        self._filters = label_filters(options)
        self._containers: dict[str, SandboxContainer] = {}
        self._waiting: list[str] = []  # created, not started for want of room; oldest first
        self._feed = EventFeed()  # open while following: from start() to stop()
        self._closing = asyncio.Event()
        self._tasks = TaskGroup("docker-backend")
        self._create_slots = asyncio.Semaphore(options.max_concurrent_creates)
        self._admit = asyncio.Lock()
        self._retry_pending = False
        self._http = httpx.AsyncClient(timeout=2.0)
        # Resyncs after a gap in the event stream; tests read it.
        self.relists = 0

    @classmethod
    async def connect(
        cls,
        options: DockerOptions,
        *,
        clock: Clock | None = None,
        write_guard: WriteGuard = no_guard,
        stop_on_close: bool = False,
        claim_key: bytes | None = None,
        egress: SandboxEgress | None = None,
    ) -> DockerBackend:
        """A backend with a Docker client of its own: the image must be on the host, and
        the host's size comes from ``docker info``."""
        try:
            docker = aiodocker.Docker(url=options.url)
        except (ValueError, AssertionError):  # aiodocker's way of saying no socket found
            raise _no_daemon(options.url) from None
        try:
            images = [options.image] + [t.docker_image for t in options.templates if t.docker_image]
            image_ids = {name: await _image_id(docker, options, name) for name in images}
            host = Host.from_info(await docker.system.info(), options.reserved_memory)
            backend = cls(
                docker,
                options,
                image_ids[options.image],
                host,
                image_ids=image_ids,
                clock=clock,
                write_guard=write_guard,
                stop_on_close=stop_on_close,
                claim_key=claim_key,
                egress=egress,
            )
            await backend._ensure_network()
        except BaseException:
            await docker.close()
            raise
        backend._owns_docker = True
        return backend

    async def _ensure_network(self) -> None:
        """The dedicated network, made here when the operator (or Compose) has not."""
        network = self.options.network
        if network in ("bridge", "host", "none"):
            if self.options.internal:
                raise BackendError(
                    f"egress is on but sandboxes would join Docker's {network!r} network, "
                    "which has a route out: set SANDBOX_DOCKER_EGRESS_NETWORK to a name of "
                    "its own",
                    retryable=False,
                    kind=ErrorKind.PERMANENT,
                )
            return
        try:
            # Inspected by name: the socket proxy passes only the sandbox network's.
            named = aiodocker.networks.DockerNetwork(self.docker, network)  # type: ignore[no-untyped-call]
            found = await named.show()
        except aiodocker.DockerError as exc:
            if exc.status != 404:
                raise
        else:
            self._refuse_a_route_out(bool(found.get("Internal")))
            return
        with contextlib.suppress(aiodocker.DockerError):  # made meanwhile: fine
            await self.docker.networks.create(
                network_spec(network, self.options.internal, self.options.subnet)
            )

    def _refuse_a_route_out(self, internal: bool) -> None:
        # An existing network keeps its shape (Docker cannot make it internal later): a
        # sandbox on one with a route out would bypass the egress proxy, so refuse.
        if self.options.internal and not internal:
            raise BackendError(
                f"egress is on but the Docker network {self.options.network!r} is not "
                "internal (it has a route out): remove it (docker network rm) or name "
                "another in SANDBOX_DOCKER_EGRESS_NETWORK",
                retryable=False,
                kind=ErrorKind.PERMANENT,
            )

    # -- the protocol ------------------------------------------------------------------

    async def start(self) -> None:
        self._feed.begin()
        self._containers, self._waiting = {}, []
        self._retry_pending = False  # stop() cancelled any retry of the last term
        since = await self._relist()
        self._tasks.start(self._follow(since), "events")

    async def stop(self) -> None:
        self._feed.end()
        await self._tasks.stop()
        self._containers, self._waiting = {}, []

    async def close(self) -> None:
        await self.stop()
        if self.stop_on_close:
            # Not a scheduling decision: ``dev`` removes the sandboxes it ran as it
            # exits, lease or no lease, so none outlives it.
            with contextlib.suppress(aiodocker.DockerError, *CONNECTION_ERRORS):
                found = await self.docker.containers.list(all=True, filters=self._filters)
                await asyncio.gather(*(self._remove(c) for c in found), return_exceptions=True)
        self._closing.set()
        await self._http.aclose()
        if self._owns_docker:
            await self.docker.close()

    def events(self) -> AsyncIterator[PodEvent]:
        return self._feed.events()

    async def resync(self) -> list[PodStatus]:
        return self._feed.resync([c.status() for c in self._containers.values()])

    async def set_labels(self, name: str, labels: Mapping[str, str]) -> None:
        entry = self._containers.get(name)
        if entry is not None and not entry.deleting:
            entry.labels.update(labels)
            self._emit(entry)

    async def create_pod(self, labels: Mapping[str, str]) -> str:
        create_id = uuid.uuid4().hex
        shape = shape_of(labels, self.default_template)
        template = self.templates.get(shape.template)
        if template is None:
            raise BackendError(f"no template {shape.template}", kind=ErrorKind.PERMANENT)
        all_labels = {
            **labels,
            **base_labels(self.options, self.template_hashes[shape.template]),
            LABEL_TEMPLATE: shape.template,
            LABEL_CREATE_ID: create_id,
        }
        spec = self.specs[shape.template]
        options = sized(self.options, template.resources)
        if shape.resources is not None:
            options = sized(options, shape.resources)
            spec = container_spec(options, spec["Image"])
        env = {**template.env, **shape_env(shape)}
        async with self._create_slots:
            name, container_id = await self._create(all_labels, spec, env)
            entry = self._containers.get(name)
            if entry is None:  # else the event stream saw it first
                entry = SandboxContainer(
                    name, container_id, time.time(), all_labels, options.memory
                )
                self._containers[name] = entry
            async with self._admit:
                try:
                    if self._waiting or not await self._try_start(entry):
                        self._wait_for_room(entry)
                except BackendError:
                    # Created, not started (the lease, most likely): the pod exists, so
                    # this create succeeded; it starts once the lease allows.
                    self._wait_for_room(entry, held_back=True)
        return name

    async def _create(
        self, labels: dict[str, str], spec: Obj, own_env: Mapping[str, str]
    ) -> tuple[str, str]:
        for attempt in range(NAME_ATTEMPTS):
            name = new_pod_name(8)  # Docker names are host-wide: a longer draw
            env = {
                **own_env,
                ENV_POD_NAME: name,
                **claim_env(self.claim_key, labels[LABEL_CREATE_ID]),
                **(self.egress.env(labels[LABEL_CREATE_ID]) if self.egress else {}),
            }
            config = {**spec, "Labels": labels, "Env": [f"{k}={v}" for k, v in env.items()]}
            self.write_guard()
            try:
                container = await self.docker.containers.create(config, name=name)
                return name, container.id
            except aiodocker.DockerError as exc:
                if exc.status == 409 and attempt < NAME_ATTEMPTS - 1:
                    continue  # the name is taken: draw another
                raise BackendError(
                    f"docker create: {exc}", retryable=exc.status >= 500, kind=error_kind(exc)
                ) from exc
            except CONNECTION_ERRORS as exc:
                # The answer was lost; the create may have happened all the same.
                found = await self._find(labels[LABEL_CREATE_ID])
                if found is not None:
                    return found
                raise BackendError(f"docker create: {type(exc).__name__}: {exc}") from exc
        raise AssertionError("unreachable")

    async def _find(self, create_id: str) -> tuple[str, str] | None:
        with contextlib.suppress(aiodocker.DockerError, *CONNECTION_ERRORS):
            found = await self.docker.containers.list(
                all=True, filters=json.dumps({"label": [f"{LABEL_CREATE_ID}={create_id}"]})
            )
            for container in found:
                return str(container["Names"][0]).lstrip("/"), container.id
        return None

    async def delete_pod(self, name: str) -> None:
        entry = self._containers.get(name)
        if entry is not None:
            entry.deleting = True
            if name in self._waiting:
                self._waiting.remove(name)
            self._emit(entry)
        container = self.docker.containers.container(entry.id if entry else name)
        try:
            if entry is None or entry.holds_memory:
                # Stop first: the sandbox gets SIGTERM and a grace period, as a pod does.
                self.write_guard()
                await container.stop(t=int(self.options.stop_grace))
            self.write_guard()
            await container.delete(force=True, v=True)
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                pass  # gone already
            elif exc.status == 409 and "in progress" in exc.message:
                return  # another delete is under way; its destroy event follows
            else:
                raise BackendError(
                    f"docker delete {name}: {exc}",
                    retryable=exc.status >= 500,
                    kind=error_kind(exc),
                ) from exc
        except CONNECTION_ERRORS as exc:
            raise BackendError(f"docker delete {name}: {type(exc).__name__}: {exc}") from exc
        self._forget(name)

    async def _remove(self, container: aiodocker.docker.DockerContainer) -> None:
        await container.stop(t=int(self.options.stop_grace))
        await container.delete(force=True, v=True)

    async def _before_start(self, entry: SandboxContainer) -> None:
        # Into the container's own volume (docker_spec.container_spec), before its first
        # start, so nothing in the sandbox ever runs without it. Every start, not only
        # after create: a container adopted unstarted may have missed it in a crash.
        if self._bundle_tar is None or not self.options.internal:
            return
        container = self.docker.containers.container(entry.id)
        try:
            await container.put_archive(DOCKER_BUNDLE_DIR, self._bundle_tar)  # type: ignore[no-untyped-call]
        except aiodocker.DockerError as exc:
            # Started meanwhile (a relist queued it while create_pod started it): the
            # start that won uploaded it first; the socket proxy refuses a second upload
            # into a started container (409), and a start of it again does nothing.
            if exc.status == 409 and observe(await container.show(), self.options).started:
                return
            raise


async def _image_id(docker: aiodocker.Docker, options: DockerOptions, image: str) -> str:
    """The id of a sandbox image on the host (the backend never pulls)."""
    try:
        found = await docker.images.inspect(image)
    except aiodocker.DockerError as exc:
        if exc.status == NO_DAEMON:
            raise _no_daemon(options.url) from None
        if exc.status != 404:
            raise
        raise BackendError(
            f"sandbox image {image} is not on the Docker host "
            "(build or pull it: see deploy/docker/devsandbox.Dockerfile)",
            retryable=False,
            kind=ErrorKind.PERMANENT,
        ) from None
    return str(found["Id"])
