"""The scheduler loop: the one task that owns the pool.

API calls, pod events and timers become commands on one queue. Each round takes
every command waiting, applies them to the pool (pure decisions), commits the
round's writes in one transaction, then answers callers and starts backend calls.
Batching the commit is what lets one writer keep up with many callers: a burst of
100 requests costs one commit, not 100.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..aiotasks import TaskGroup
from ..backends.base import LABEL_STATE, Backend, BackendError, PodEvent
from ..clock import Clock
from ..errors import NotLeader, SandboxError, SessionNotFound, StoreUnavailable
from ..metrics import ControllerMetrics
from ..model import EndReason, Limits, Session
from ..store import Batch, Deposed, Fence, Store
from .effects import Answer, Outbox
from .pool import Pool
from .recovery import restore

log = logging.getLogger(__name__)

MAX_ROUND = 1000  # commands per round: bounds one transaction's size
ENDED_IN_MEMORY = 600.0  # ended sessions stay in memory this long, then only in the store
PRUNE_EVERY = 60.0
POD_ROWS_DELAY = 1.0


@dataclass
class _Command:
    apply: Callable[[Pool, float], Any]
    future: asyncio.Future[Any] | None = None


class Scheduler:
    def __init__(
        self,
        *,
        limits: Limits,
        store: Store,
        backend: Backend,
        clock: Clock,
        metrics: ControllerMetrics | None = None,
        fence: Fence | None = None,
    ) -> None:
        self.limits = limits
        self.store = store
        self.backend = backend
        self.clock = clock
        self.metrics = metrics
        self.fence = fence
        self.pool: Pool | None = None
        self.running = False
        self.failed: BaseException | None = None
        self._queue: asyncio.Queue[_Command] = asyncio.Queue()
        self._answers: dict[int, asyncio.Future[Answer]] = {}
        self._tasks = TaskGroup("scheduler")
        self._effects = TaskGroup("scheduler-effects")
        self._stopped = asyncio.Event()
        self._next_prune = 0.0
        # Pod rows waiting to be written with the next commit (see _commit).
        self._pod_rows: set[str] = set()
        self._forgotten_rows: set[str] = set()
        self._pod_rows_due = float("inf")

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Rebuild from the store and the backend, then start the loop."""
        await self._recover()
        self.running = True
        self._tasks.start(self._feed_events(), "events")
        self._tasks.start(self._run(), "loop")

    async def stop(self) -> None:
        self.running = False
        self._stopped.set()
        await self._tasks.stop()
        if self.pool is not None and (self._pod_rows or self._forgotten_rows):
            try:  # best effort: a clean stop leaves no pool pod unaccounted for
                await self._commit(Outbox(), force=True)
            except Exception as exc:
                log.warning("could not write the last pod rows: %s", exc)
        await self._effects.stop()
        self._fail_waiters(NotLeader("the controller is shutting down"))

    async def _recover(self) -> None:
        sessions, pod_rows = await self.store.load()
        backend_pods = await self.backend.list_pods()
        now = self.clock.now()
        pool = Pool(self.limits, self.backend.template_hash)
        restore(pool, sessions, pod_rows, backend_pods, now)
        pool.tick(now)
        self.pool = pool
        self._pod_rows, self._forgotten_rows = set(), set()
        self._pod_rows_due = float("inf")
        await self._commit(pool.take_outbox(), force=True)
        log.info(
            "recovered %d live sessions and %d pods (%d pods in the backend)",
            len(pool.live_by_thread),
            len(pool.pods),
            len(backend_pods),
        )

    # ------------------------------------------------------------ API-facing

    def _submit(
        self, apply: Callable[[Pool, float], Any], future: asyncio.Future[Any] | None = None
    ) -> None:
        if not self.running:
            raise NotLeader("this replica is not scheduling (not the leader, or starting)")
        self._queue.put_nowait(_Command(apply, future))

    async def _call(self, apply: Callable[[Pool, float], Any]) -> Any:
        """Submit and wait until the round that applied it has committed."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._submit(apply, future)
        return await future

    async def open_session(
        self, user_id: str, thread_id: str, wait_seconds: float
    ) -> tuple[Answer, Session | None]:
        assert self.pool is not None
        request_id = self.pool.next_request_id()

        def apply(pool: Pool, now: float) -> None:
            pool.open_session(request_id, user_id, thread_id, wait_seconds, now)

        self._submit(apply)  # applied in a later round, so registering after is safe
        answer: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._answers[request_id] = answer
        result = await answer
        session = self.pool.sessions.get(result.session_id) if result.session_id else None
        return result, session

    async def end_session(self, session_id: str) -> None:
        """End a session on request (reason ``deleted``); idempotent for ended ones."""

        def apply(pool: Pool, now: float) -> bool:
            return pool.end_session(session_id, EndReason.DELETED, now)

        await self._call(apply)

    def touch(self, session_id: str, at: float) -> None:
        """Activity; persisted with the next round, not awaited (DESIGN: may be batched)."""
        self._submit(lambda pool, now: pool.touch(session_id, min(at, now)))

    async def settle(self) -> None:
        """Return once every command queued so far has been applied and committed."""
        await self._call(lambda pool, now: None)

    def lookup(self, session_id: str) -> Session:
        if self.pool is None:
            raise NotLeader("this replica is not scheduling")
        session = self.pool.sessions.get(session_id)
        if session is None:
            raise SessionNotFound(f"no session {session_id}")
        return session

    def route(self, session_id: str) -> tuple[Session, str | None]:
        """A session and, if it is ready, its pod's address, leased to the asking proxy
        (Pool.lease_route). No await in here: no round can end the session between
        reading its state and taking the lease."""
        session = self.lookup(session_id)
        assert self.pool is not None
        pod = self.pool.lease_route(session_id, self.clock.now())
        return session, pod.address if pod is not None else None

    # ------------------------------------------------------------ the loop

    async def _feed_events(self) -> None:
        async for event in self.backend.events():
            self._queue.put_nowait(_Command(_event_command(event)))

    async def _next_round(self) -> list[_Command]:
        assert self.pool is not None
        if self._queue.empty():
            pool_due = self.pool.next_deadline()
            due = min(float("inf") if pool_due is None else pool_due, self._pod_rows_due)
            deadline = None if due == float("inf") else due
            getter = asyncio.ensure_future(self._queue.get())
            waits: set[asyncio.Future[Any]] = {getter}
            sleeper = None
            if deadline is not None:
                sleeper = asyncio.ensure_future(self.clock.sleep(deadline - self.clock.now()))
                waits.add(sleeper)
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if sleeper is not None:
                    sleeper.cancel()
                if not getter.done():
                    getter.cancel()
            commands = [getter.result()] if getter.done() and not getter.cancelled() else []
        else:
            commands = []
        while len(commands) < MAX_ROUND and not self._queue.empty():
            commands.append(self._queue.get_nowait())
        return commands

    async def _run(self) -> None:
        try:
            while not self._stopped.is_set():
                await self._round(await self._next_round())
        except Deposed as exc:
            log.error("deposed: %s", exc)
            self.failed = exc
        except Exception as exc:
            log.exception("scheduler loop failed")
            self.failed = exc
        finally:
            self.running = False
            self._fail_waiters(NotLeader("the scheduler stopped"))

    async def _round(self, commands: list[_Command]) -> None:
        pool = self.pool
        assert pool is not None
        now = self.clock.now()
        results: list[Any] = []
        for command in commands:
            try:
                results.append(command.apply(pool, now))
            except Exception as exc:  # a bug in one decision must not stop the loop
                log.exception("scheduler command failed")
                results.append(exc)
        pool.tick(now)
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_EVERY
            pool.prune_ended(now - ENDED_IN_MEMORY)
        outbox = pool.take_outbox()
        try:
            await self._commit(outbox)
        except Deposed:
            raise
        except Exception as exc:
            log.exception("store write failed; rebuilding state from the store")
            if self.metrics:
                self.metrics.store_errors.inc()
            error = StoreUnavailable("the store is unavailable; try again")
            self._fail_waiters(error)
            for command in commands:
                if command.future is not None and not command.future.done():
                    command.future.set_exception(error)
            await self._recover_after_failure(exc)
            return
        for command, result in zip(commands, results, strict=True):
            if command.future is not None and not command.future.done():
                if isinstance(result, Exception):
                    command.future.set_exception(result)
                else:
                    command.future.set_result(result)
        if self.metrics is not None:
            self.metrics.batch_size.observe(len(commands))

    async def _commit(self, outbox: Outbox, *, force: bool = False) -> None:
        """Persist the round, then tell callers and start backend calls: in that order,
        so nobody hears of a session that a crash could still lose.

        Rows of pool pods alone (created, ready, gone) are not a promise to anyone: they
        wait up to POD_ROWS_DELAY and go with the next commit. Lost in a crash, they
        only make the restarted controller delete a fresh pool pod it cannot account
        for. At one claim at a time this is two commits fewer per claim (the
        replacement's create and its readiness)."""
        pool = self.pool
        assert pool is not None
        batch = Batch()
        for sid in outbox.dirty_sessions:
            session = pool.sessions.get(sid)
            if session is None:
                continue
            if session.reply_deadline is not None:
                pool.outbox.dirty_sessions.add(sid)  # not promised to anyone yet
                continue
            batch.sessions.append(session)
        self._pod_rows |= outbox.dirty_pods
        self._forgotten_rows |= outbox.forgotten_pods
        if self._pod_rows or self._forgotten_rows:
            self._pod_rows_due = min(self._pod_rows_due, self.clock.now() + POD_ROWS_DELAY)
        if batch.sessions or force or self.clock.now() >= self._pod_rows_due:
            batch.pods = [pool.pods[n] for n in self._pod_rows if n in pool.pods]
            batch.forgotten_pods = sorted(self._forgotten_rows)
            if batch:
                await self.store.write(batch, self.fence)
            self._pod_rows, self._forgotten_rows = set(), set()
            self._pod_rows_due = float("inf")
        for answer in outbox.answers:
            future = self._answers.pop(answer.request_id, None)
            if future is not None and not future.done():
                future.set_result(answer)
        self._start_effects(outbox)

    def _start_effects(self, outbox: Outbox) -> None:
        for _ in range(outbox.creates):
            self._effects.start(self._create(), "create")
        for name in outbox.deletes:
            self._effects.start(self._delete(name), f"delete:{name}")
        for name, labels in outbox.labels.items():
            self._effects.start(self._label(name, labels), f"label:{name}")
        if self.metrics is not None:
            for seconds in outbox.startup_seconds:
                self.metrics.startup_seconds.observe(seconds)
            for reason in outbox.ended:
                self.metrics.ended(reason)

    async def _recover_after_failure(self, exc: Exception) -> None:
        """The pool may now disagree with the store; the store wins. Retry until it
        answers, since nothing can be promised without it."""
        delay = 0.5
        while not self._stopped.is_set():
            try:
                await self._recover()
                return
            except Deposed:
                raise
            except Exception:
                log.warning("store still unavailable; retrying in %.1fs", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _fail_waiters(self, error: SandboxError) -> None:
        answers, self._answers = self._answers, {}
        for future in answers.values():
            if not future.done():
                future.set_exception(error)

    # ------------------------------------------------------------ backend effects

    async def _create(self) -> None:
        try:
            # "pool" until assigned: readiness shows in the pod's own status, and a
            # second patch when it turns ready would cost an API call per pod.
            name = await self.backend.create_pod({LABEL_STATE: "pool"})
        except Exception as exc:
            log.warning("creating a sandbox pod failed: %s", exc)
            if self.metrics:
                self.metrics.backend_errors.labels("create").inc()
            self._queue.put_nowait(_Command(lambda pool, now: pool.create_failed(now)))
            return
        self._queue.put_nowait(_Command(lambda pool, now: pool.pod_created(name, now)))

    async def _delete(self, name: str) -> None:
        try:
            await self.backend.delete_pod(name)
        except Exception as exc:
            log.warning("deleting pod %s failed: %s", name, exc)
            if self.metrics:
                self.metrics.backend_errors.labels("delete").inc()
            self._queue.put_nowait(_Command(lambda pool, now: pool.delete_failed(name, now)))

    async def _label(self, name: str, labels: dict[str, str]) -> None:
        try:
            await self.backend.set_labels(name, labels)
        except BackendError as exc:
            # Labels are for operators and a second opinion at recovery; the store
            # is the record, so a lost label is logged, not retried forever.
            log.info("labelling pod %s failed: %s", name, exc)
            if self.metrics:
                self.metrics.backend_errors.labels("label").inc()


def _event_command(event: PodEvent) -> Callable[[Pool, float], None]:
    if event.deleted:
        name = event.pod.name
        return lambda pool, now: pool.pod_gone(name, now)
    status = event.pod
    return lambda pool, now: pool.pod_observed(status, now)
