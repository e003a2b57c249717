"""The controller process: store, backend, leader lease and scheduler, started and
stopped in order.

Only the lease holder schedules. A second replica keeps trying for the lease and
takes over when the leader stops renewing it; every write the leader makes carries
the lease epoch, so a deposed leader that wakes late cannot write (store.db).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket

from .aiotasks import TaskGroup
from .aiotime import sleep_or_stop
from .backends.base import Backend
from .clock import Clock, SystemClock
from .config import Settings
from .metrics import ControllerMetrics
from .model import PoolStatus
from .scheduler.loop import Scheduler
from .store import Fence, Store
from .store.db import wait_for_database

log = logging.getLogger(__name__)

RETENTION_EVERY = 3600.0


async def make_backend(settings: Settings, *, stop_on_close: bool = False) -> Backend:
    """The backend SANDBOX_BACKEND names. ``stop_on_close`` applies to local sandboxes
    (``dev`` stops what it started); pods in a cluster outlive a controller restart."""
    if settings.backend == "kubernetes":
        from .backends.kubernetes import KubernetesBackend

        backend: Backend = await KubernetesBackend.connect(settings.kube_options())
        return backend
    from .backends.local import LocalBackend

    return LocalBackend(settings.state_dir, stop_on_close=stop_on_close)


class Controller:
    def __init__(
        self,
        settings: Settings,
        *,
        backend: Backend | None = None,
        clock: Clock | None = None,
        store: Store | None = None,
        stop_sandboxes_on_exit: bool = False,
    ) -> None:
        self.settings = settings
        self._backend = backend
        self._stop_sandboxes_on_exit = stop_sandboxes_on_exit
        self.clock: Clock = clock or SystemClock()
        self.store = store or Store.open(settings.database_url)
        self.holder = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.token_secret = (settings.token_secret or "").encode()
        self.scheduler: Scheduler | None = None
        self.metrics = ControllerMetrics(self.pool_snapshot, lambda: self.is_leader)
        self._tasks = TaskGroup("controller")
        self._stopping = asyncio.Event()

    @property
    def backend(self) -> Backend:
        assert self._backend is not None, "the backend is made at start-up"
        return self._backend

    @property
    def is_leader(self) -> bool:
        return self.scheduler is not None and self.scheduler.running

    # ------------------------------------------------------------ lifecycle

    async def startup(self) -> None:
        if not self.token_secret:
            # Fine for one process (dev); a separate proxy needs the same secret.
            self.token_secret = secrets.token_bytes(32)
            log.warning("SANDBOX_TOKEN_SECRET is not set; using a random one for this process")
        await wait_for_database(self.store, self.clock, self._stopping, timeout=60.0)
        await self.store.migrate()
        if self._backend is None:
            self._backend = await make_backend(
                self.settings, stop_on_close=self._stop_sandboxes_on_exit
            )
        await self.backend.start()
        await self._try_to_lead()
        self._tasks.start(self._lease_loop(), "lease")
        self._tasks.start(self._retention_loop(), "retention")

    async def shutdown(self) -> None:
        self._stopping.set()
        await self._tasks.stop()
        await self._step_down(release=True)
        if self._backend is not None:
            await self._backend.close()
        await self.store.close()

    # ------------------------------------------------------------ leadership

    async def _try_to_lead(self) -> None:
        settings = self.settings
        try:
            epoch = await self.store.acquire_lease(
                self.holder, settings.leader_lease_ttl, self.clock.now()
            )
        except Exception as exc:
            log.warning("cannot reach the store for the leader lease: %s", exc)
            return
        if epoch is None:
            return
        log.info("leading with lease epoch %d as %s", epoch, self.holder)
        scheduler = Scheduler(
            limits=settings.limits(),
            store=self.store,
            backend=self.backend,
            clock=self.clock,
            observer=self.metrics,
            fence=Fence(self.holder, epoch),
        )
        try:
            await scheduler.start()
        except Exception:
            log.exception("could not start scheduling")
            await scheduler.stop()
            return
        self.scheduler = scheduler

    async def _step_down(self, *, release: bool) -> None:
        scheduler, self.scheduler = self.scheduler, None
        if scheduler is None:
            return
        await scheduler.stop()
        if release and scheduler.fence is not None:
            with contextlib.suppress(Exception):
                await self.store.release_lease(scheduler.fence.holder, scheduler.fence.epoch)

    async def _lease_loop(self) -> None:
        settings = self.settings
        last_renewed = self.clock.now()
        while not await sleep_or_stop(self.clock, settings.leader_renew_interval, self._stopping):
            scheduler = self.scheduler
            if scheduler is None:
                await self._try_to_lead()
                last_renewed = self.clock.now()
                continue
            if not scheduler.running:
                log.error("scheduler stopped (%s); stepping down", scheduler.failed)
                await self._step_down(release=True)
                continue
            assert scheduler.fence is not None
            try:
                epoch = await self.store.acquire_lease(
                    self.holder, settings.leader_lease_ttl, self.clock.now()
                )
            except Exception as exc:
                log.warning("renewing the leader lease failed: %s", exc)
                epoch = scheduler.fence.epoch
                if self.clock.now() - last_renewed < settings.leader_lease_ttl:
                    continue
                epoch = None
            if epoch != scheduler.fence.epoch:
                log.error("lost the leader lease; stepping down")
                await self._step_down(release=False)
            else:
                last_renewed = self.clock.now()

    async def _retention_loop(self) -> None:
        """Delete ended sessions past SANDBOX_ENDED_RETENTION, hourly, on the leader."""
        while True:
            if self.is_leader:
                cutoff = self.clock.now() - self.settings.ended_retention
                try:
                    purged = await self.store.delete_ended_before(cutoff)
                except Exception as exc:
                    log.warning("purging ended sessions failed: %s", exc)
                else:
                    if purged:
                        log.info("purged %d ended sessions", purged)
            if await sleep_or_stop(self.clock, RETENTION_EVERY, self._stopping):
                return

    # ------------------------------------------------------------ status

    def pool_snapshot(self) -> PoolStatus | None:
        """The pool now, as GET /pool and the metrics show it; None unless leading."""
        scheduler = self.scheduler
        if scheduler is None or not scheduler.running:
            return None
        return scheduler.snapshot(self.clock.now())
