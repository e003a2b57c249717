"""The Docker backend's cache of its containers, and how it is kept.

Fed by one list per term and then by Docker's event stream (docker_events.py); any gap
in the stream is followed by a full relist. Each container read afresh is applied here:
its status derived (docker_spec.observe), reported once per change, and a running
container without a healthcheck probed on /healthz until it serves.
"""

from __future__ import annotations

import logging
import time

import aiodocker
import httpx

from ..aiotime import Backoff
from .base import PodEvent, PodPhase
from .docker_events import follow_events
from .docker_room import HostRoom
from .docker_spec import Obj, SandboxContainer, observe, timestamp
from .probing import serves, wait_until_serving

log = logging.getLogger(__name__)

# A fresh sandbox answers /healthz within a second or so: ask soon, then less often.
HEALTH_POLL = Backoff(base=0.05, cap=0.5, jitter=False)


class ContainerCache(HostRoom):
    """Mixed into docker.DockerBackend, which sets these attributes and makes the calls
    that change containers; the room (HostRoom) is told when a container frees it."""

    backoff: Backoff
    relists: int
    _http: httpx.AsyncClient
    _filters: str  # docker_spec.label_filters: the label filter of ours, as JSON

    # -- the cache ---------------------------------------------------------------------

    def _emit(self, entry: SandboxContainer) -> None:
        status = entry.status()
        if self._feed.open and status != entry.last:
            entry.last = status
            self._feed.put(PodEvent(status))

    def _forget(self, name: str) -> None:
        entry = self._containers.pop(name, None)
        if entry is None:
            return
        if name in self._waiting:
            self._waiting.remove(name)
        self._feed.put(PodEvent(entry.status(), deleted=True))
        self._room_freed()

    async def _refresh(self, name: str, *, probe_first: bool = False) -> None:
        """Read one container afresh and apply what it says. ``probe_first``: a running
        container without a healthcheck is asked /healthz once before it is reported,
        so a listed sandbox that serves is reported ready at once, as a listed pod's
        Ready condition is. (Reported pending first, it could be reported ready before
        the scheduler read the list, and the stale "pending" after: the scheduler takes
        a warm pod that stops being ready for one to delete.)"""
        entry = self._containers.get(name)
        try:
            info = await self.docker.containers.container(entry.id if entry else name).show()
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                self._forget(name)
                return
            raise
        serving = False
        if probe_first and (entry is None or not entry.ready):
            observed = observe(info, self.options)
            if observed.state == "running" and observed.health is None and observed.address:
                serving = await serves(self._http, observed.address)
        self._apply(info, serving=serving)

    def _apply(self, info: Obj, *, serving: bool = False) -> None:
        name = str(info.get("Name") or "").lstrip("/")
        entry = self._containers.get(name)
        if entry is None:
            config: Obj = info.get("Config") or {}
            created = timestamp(str(info.get("Created") or ""))
            if created is None:
                # Taken as made now: an unknown age must not time its start-up out.
                log.warning("container %s has no readable creation time; taking now", name)
                created = time.time()
            entry = SandboxContainer(
                name,
                str(info["Id"]),
                created,
                dict(config.get("Labels") or {}),
                int((info.get("HostConfig") or {}).get("Memory") or 0),
            )
            self._containers[name] = entry
        was_holding = entry.holds_memory
        observed = entry.observed = observe(info, self.options)
        if observed.state != "created":
            entry.start_requested = False  # the daemon's word from here on
        phase = observed.phase()
        if phase is PodPhase.FAILED and not entry.deleting and entry.failure is None:
            entry.failure = observed.failure()
        elif phase is PodPhase.READY or serving:
            entry.ready = True
        elif observed.state == "running" and not entry.ready and not entry.probing:
            if observed.health is None:
                entry.probing = True
                self._tasks.start(self._probe(entry), f"probe:{name}")
            else:
                entry.detail = f"health check: {observed.health}"
        self._emit(entry)
        if was_holding and not entry.holds_memory:
            self._room_freed()

    async def _probe(self, entry: SandboxContainer) -> None:
        """No healthcheck in the image: ready when /healthz on its address answers 200."""

        def undecided() -> bool:
            current = self._containers.get(entry.name) is entry
            return current and not (entry.deleting or entry.failure is not None or entry.ready)

        def running() -> bool:
            return entry.observed is not None and entry.observed.state == "running"

        if await wait_until_serving(
            self._http,
            lambda: entry.address,
            wanted=lambda: undecided() and running(),
            clock=self.clock,
            backoff=HEALTH_POLL,
            closing=self._closing,
        ):
            entry.ready = True
            self._emit(entry)
        elif undecided() and not running():
            entry.probing = False  # probed again once it runs again

    # -- list and watch ----------------------------------------------------------------

    async def _relist(self) -> float:
        """Every container of ours, read afresh; those gone since are reported deleted.
        Returns when the list began, where the event stream resumes."""
        began = time.time()
        found = await self.docker.containers.list(all=True, filters=self._filters)
        names = set()
        for container in found:
            name = str(container["Names"][0]).lstrip("/")
            names.add(name)
            await self._refresh(name, probe_first=True)
        for name in list(self._containers.keys() - names):
            self._forget(name)
        # Adopted containers that never started wait for room like new ones.
        waiting = [
            c
            for c in self._containers.values()
            if c.observed is not None
            and c.observed.state == "created"
            and not c.observed.started
            and not c.deleting
            and c.name not in self._waiting
        ]
        for entry in sorted(waiting, key=lambda c: c.created_at):
            self._wait_for_room(entry)
        self._room_freed()
        return began

    async def _follow(self, since: float) -> None:
        await follow_events(
            self.docker,
            self._filters,
            since,
            self._on_event,
            self._relist_after_gap,
            backoff=self.backoff,
            clock=self.clock,
            closing=self._closing,
        )

    async def _relist_after_gap(self) -> float:
        since = await self._relist()
        self.relists += 1
        return since

    async def _on_event(self, action: str, name: str) -> None:
        if action == "destroy":
            self._forget(name)
            return
        await self._refresh(name)
