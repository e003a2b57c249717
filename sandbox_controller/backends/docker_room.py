"""Room on the Docker host: which created sandboxes start, and when.

Docker has no scheduler. A sandbox that the host cannot hold is created but not
started, and reported unschedulable with Kubernetes' words (docker_spec.Host), so the
scheduler sees the same ``capacity_blocked`` and ``detail``; the waiting ones start,
oldest first, once room frees. A start the write guard refuses (the leader lease) is
merely late, and tried again a moment later.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiodocker

from ..aiotasks import TaskGroup
from ..aiotime import sleep_or_stop
from ..clock import Clock
from ..config import DockerOptions
from .base import BackendError, WriteGuard
from .docker_events import CONNECTION_ERRORS
from .docker_spec import Host, SandboxContainer
from .kit import EventFeed

# A start the write guard refused is tried again this much later.
ADMIT_RETRY = 0.5


class HostRoom:
    """Mixed into docker.DockerBackend, which sets these attributes and keeps the cache
    (``_emit``, ``_refresh``)."""

    docker: aiodocker.Docker
    options: DockerOptions
    host: Host
    clock: Clock
    write_guard: WriteGuard
    _containers: dict[str, SandboxContainer]
    _waiting: list[str]  # created, not started for want of room; oldest first
    _feed: EventFeed
    _tasks: TaskGroup
    _closing: asyncio.Event
    _admit: asyncio.Lock  # held while starting, so two starts never share the last room
    _retry_pending: bool

    def _emit(self, entry: SandboxContainer) -> None:
        raise NotImplementedError

    async def _refresh(self, name: str, *, probe_first: bool = False) -> None:
        raise NotImplementedError

    async def _before_start(self, entry: SandboxContainer) -> None:
        """What a created container needs before it first starts (the CA bundle)."""
        raise NotImplementedError

    def _held(self) -> tuple[int, int]:
        holding = [c for c in self._containers.values() if c.holds_memory]
        return sum(c.memory for c in holding), len(holding)

    async def _try_start(self, entry: SandboxContainer) -> bool:
        """Start the container if the host holds it; False if it must wait for room.
        Called with the admission lock held, so two starts never share the last room."""
        held, running = self._held()
        why = self.host.why_not(self.options.cpus, entry.memory, held, running)
        if why is not None:
            entry.unschedulable, entry.detail = True, why
            return False
        self.write_guard()
        entry.unschedulable, entry.detail, entry.start_requested = False, "starting", True
        try:
            await self._before_start(entry)
            await self.docker.containers.container(entry.id).start()
        except (aiodocker.DockerError, *CONNECTION_ERRORS) as exc:
            entry.start_requested = False
            entry.failure = f"sandbox container did not start: {exc}"
            self._emit(entry)
            return True
        with contextlib.suppress(aiodocker.DockerError, *CONNECTION_ERRORS):
            await self._refresh(entry.name)  # else the event stream brings it
        return True

    def _wait_for_room(self, entry: SandboxContainer, *, held_back: bool = False) -> None:
        """Queue a created container to start later. Unschedulable only if the host has
        no room for it: one held back by the lease, or queued behind others that wait
        for the lease, is merely late."""
        if entry.name not in self._waiting:
            self._waiting.append(entry.name)
        held, running = self._held()
        why = self.host.why_not(self.options.cpus, entry.memory, held, running)
        entry.unschedulable = why is not None and not held_back
        if held_back:
            entry.detail = "waiting to start until the leader lease is confirmed"
            self._retry_admission()
        else:
            entry.detail = why or "waiting to start: sandboxes created earlier start first"
        self._emit(entry)

    async def _admit_waiting(self) -> None:
        """Room freed: start waiting sandboxes, oldest first, while they fit."""
        async with self._admit:
            while self._waiting and self._feed.open:
                entry = self._containers.get(self._waiting[0])
                if entry is None or entry.deleting:
                    self._waiting.pop(0)
                    continue
                try:
                    started = await self._try_start(entry)
                except BackendError:  # the lease: try again in a moment
                    self._retry_admission()
                    return
                if not started:
                    self._emit(entry)
                    return
                self._waiting.pop(0)

    def _room_freed(self) -> None:
        if self._waiting and self._feed.open:
            self._tasks.start(self._admit_waiting(), "admit")

    def _retry_admission(self) -> None:
        if self._retry_pending or not self._feed.open:
            return
        self._retry_pending = True

        async def later() -> None:
            stopped = await sleep_or_stop(self.clock, ADMIT_RETRY, self._closing)
            self._retry_pending = False
            if not stopped:
                await self._admit_waiting()

        self._tasks.start(later(), "admit-retry")
