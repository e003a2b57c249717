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
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from ..aiotasks import TaskGroup
from ..aiotime import Backoff, sleep_or_stop
from ..backends.base import Backend, BackendError, LeaseLost, PodEvent, pool_labels
from ..clock import Clock
from ..errors import (
    NotLeader,
    SandboxError,
    SessionEnded,
    SessionNotFound,
    StoreUnavailable,
)
from ..hooks import BusyAnswer, ClaimPayload, SandboxHooks
from ..model import (
    ActivitySource,
    EndReason,
    Limits,
    Opened,
    Outcome,
    PoolStatus,
    Route,
    Session,
    SessionState,
    SessionView,
)
from ..store import Batch, Deposed, Fence
from .claiming import ClaimCall
from .effects import Answer, Outbox
from .idling import Release, StatusCheck
from .pool import ROUTE_LEASE, Pool
from .ports import LoopObserver, NoObserver, SchedulerStore, StatusAnswer
from .recovery import restore

log = logging.getLogger(__name__)

MAX_ROUND = 1000  # commands per round: bounds one transaction's size
ENDED_IN_MEMORY = 600.0  # ended sessions stay in memory this long, then only in the store
PRUNE_EVERY = 60.0
POD_ROWS_DELAY = 1.0
# Rebuilding after a failed commit: retried until the store answers again. Capped low:
# callers are refused (store_unavailable) until it succeeds.
RECOVERY_BACKOFF = Backoff(0.25, 2.0)
# A stop lets the round in progress finish (its commit, its answers) this long, and
# gives its last write of pod rows as long.
STOP_GRACE = 2.0

T = TypeVar("T")


@dataclass
class _Command:
    apply: Callable[[Pool, float], Any]
    future: asyncio.Future[Any] | None = None


class Scheduler:
    """The only way in to the pool. Every write is a command applied by the loop's
    task; callers get copies and data (model.py) or a domain error (errors.py)."""

    def __init__(
        self,
        *,
        limits: Limits,
        store: SchedulerStore,
        backend: Backend,
        clock: Clock,
        observer: LoopObserver | None = None,
        fence: Fence | None = None,
        hooks: SandboxHooks | None = None,
    ) -> None:
        self.limits = limits
        # Calls the sandbox contract's hooks; None when limits.hooks is off.
        self.hooks = hooks
        self.store = store
        self.backend = backend
        self.clock = clock
        self.observer: LoopObserver = observer or NoObserver()
        self.fence = fence
        self._pool: Pool | None = None
        self.running = False
        # The last commit failed and the state is being rebuilt from the store:
        # callers are refused at once (StoreUnavailable) rather than queued.
        self.store_down = False
        self.failed: BaseException | None = None
        self._queue: asyncio.Queue[_Command] = asyncio.Queue()
        self._answers: dict[int, asyncio.Future[Opened]] = {}
        self._tasks = TaskGroup("scheduler")
        self._effects = TaskGroup("scheduler-effects")
        self._stopped = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._next_prune = 0.0
        # Pod rows waiting to be written with the next commit (see _commit).
        self._pod_rows: set[str] = set()
        self._forgotten_rows: set[str] = set()
        self._pod_rows_due = float("inf")
        # Backend calls the write guard refused because the lease was not confirmed at
        # that moment (after a pause, say): this leader's decisions still, sent when the
        # lease is confirmed again (lease_confirmed), dropped if it is lost (stop).
        self._held: list[tuple[Callable[[], Coroutine[Any, Any, None]], str]] = []
        # The env and files of POST /sessions calls whose claims may still need them,
        # by request id: in memory only, never in the store or a log (claiming.py).
        self._payloads: dict[int, ClaimPayload] = {}
        # Status calls in flight, by session: concurrent opens of one user share them.
        self._status_calls: dict[str, asyncio.Task[BusyAnswer]] = {}

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Rebuild from the store and the backend, then start the loop."""
        await self._recover()
        self.running = True
        self._tasks.start(self._feed_events(), "events")
        self._loop = self._tasks.start(self._run(), "loop")

    async def stop(self) -> None:
        """Take no more work, let the round in progress finish (up to STOP_GRACE),
        then cancel the rest: queued commands and backend calls in flight are dropped
        (a deposed leader's intentions die with its term)."""
        self.running = False
        self._stopped.set()
        if self._loop is not None and not self._loop.done():
            self._queue.put_nowait(_Command(lambda pool, now: None))  # wake it
            await asyncio.wait({self._loop}, timeout=STOP_GRACE)
        await self._tasks.stop()
        if self._pool is not None and (self._pod_rows or self._forgotten_rows):
            try:  # best effort: a clean stop leaves no pool pod unaccounted for
                async with asyncio.timeout(STOP_GRACE):
                    await self._commit(Outbox(), force=True)
            except Exception as exc:
                log.warning("could not write the last pod rows: %s", exc)
        await self._effects.stop()
        self._held.clear()
        self._payloads.clear()
        self._fail_queued(NotLeader)  # nobody waits forever on a command never applied

    async def _recover(self) -> None:
        sessions, pod_rows = await self.store.load()
        backend_pods = await self.backend.resync()
        now = self.clock.now()
        pool = Pool(self.limits, self.backend.template_hash)
        # The rebuilt pool knows of no claim in flight: their env and files are lost.
        self._payloads.clear()
        restore(pool, sessions, pod_rows, backend_pods, now)
        pool.tick(now)
        self._pool = pool
        self._pod_rows, self._forgotten_rows = set(), set()
        self._pod_rows_due = float("inf")
        await self._commit(pool.take_outbox(), force=True)
        log.info(
            "recovered %d live sessions and %d pods (%d pods in the backend)",
            len(pool.live_by_thread),
            len(pool.pods),
            len(backend_pods),
        )

    # ------------------------------------------------------------ commands

    def _leading_pool(self) -> Pool:
        if not self.running or self._pool is None:
            raise NotLeader()
        if self.store_down:
            raise StoreUnavailable()
        return self._pool

    def _submit(
        self, apply: Callable[[Pool, float], Any], future: asyncio.Future[Any] | None = None
    ) -> None:
        self._leading_pool()
        self._queue.put_nowait(_Command(apply, future))

    async def _call(self, apply: Callable[[Pool, float], T]) -> T:
        """Submit and wait until the round that applied it has committed."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._submit(apply, future)
        return await future

    async def open_session(
        self,
        user_id: str,
        thread_id: str,
        wait_seconds: float,
        payload: ClaimPayload | None = None,
    ) -> Opened:
        """A session for this thread, new or the one it has; refusals are raised
        (UserSessionLimit, CapacityExhausted, ThreadOwnedByOtherUser, ...). The
        payload's metadata is stored with a new session; its env and files go to the
        sandbox's claim hook only, and are never sent for a thread that has a session."""
        request_id = self._leading_pool().next_request_id()
        metadata = dict(payload.metadata) if payload else {}
        await self._ask_before_reclaim(user_id, thread_id)

        def apply(pool: Pool, now: float) -> None:
            pool.open_session(request_id, user_id, thread_id, wait_seconds, now, metadata)

        self._submit(apply)  # applied in a later round, so registering after is safe
        if payload is not None and (payload.env or payload.files):
            self._payloads[request_id] = ClaimPayload(env=payload.env, files=payload.files)
        answer: asyncio.Future[Opened] = asyncio.get_running_loop().create_future()
        self._answers[request_id] = answer
        try:
            return await answer
        finally:
            if not self.running:
                self._payloads.pop(request_id, None)

    async def _ask_before_reclaim(self, user_id: str, thread_id: str) -> None:
        """At the user's limit, ask the sandboxes a reclaim could pick whether they are
        busy (concurrently, each bounded by hook_timeout), and feed the answers in
        before the open: a busy one counts as active and is not reclaimed; the pool
        records the answer of the one it reclaims. Read-only until then, so the open
        itself stays one synchronous decision (the limit and a single reclaim hold for
        any number of concurrent opens, as without hooks)."""
        if self.hooks is None:
            return
        checks = self._leading_pool().reclaim_checks(user_id, thread_id, self.clock.now())
        if not checks:
            return
        # Shielded: the calls are shared, and one caller giving up must not cancel them.
        calls = (asyncio.shield(self._status(c)) for c in checks)
        answers = await asyncio.gather(*calls, return_exceptions=True)
        for check, answer in zip(checks, answers, strict=True):
            if isinstance(answer, BaseException):  # cancelled by a stop: none to give
                answer = BusyAnswer(False, "no answer", answered=False)
            self._submit(_busy_command(check, answer))

    async def end_session(self, session_id: str) -> None:
        """End a session on request (reason ``deleted``); idempotent for ended ones."""

        def apply(pool: Pool, now: float) -> bool:
            pool.end_session(session_id, EndReason.DELETED, now)
            return session_id in pool.sessions

        if not await self._call(apply) and await self.store.get_session(session_id) is None:
            raise SessionNotFound(session_id)

    async def touch(self, session_id: str) -> None:
        """Activity on a live session (an agent at work); persisted with the next round,
        not awaited."""
        session = self._leading_pool().sessions.get(session_id)
        if session is None:
            session = await self.store.get_session(session_id)
        if session is None:
            raise SessionNotFound(session_id)
        if not session.live:
            raise SessionEnded(session_id, session.end_reason)
        self._submit(lambda pool, now: pool.touch(session_id, now, ActivitySource.TOUCH))

    def record_activity(self, activity: Mapping[str, float]) -> None:
        """A proxy's batch of last-activity times; sessions it does not know are skipped."""

        def apply(pool: Pool, now: float) -> None:
            for session_id, at in activity.items():
                pool.touch(session_id, min(at, now), ActivitySource.PROXY)

        self._submit(apply)

    async def route(self, session_id: str) -> Route:
        """Where a proxy may send this session's traffic. A ready session's pod address
        is leased for ROUTE_LEASE: the pod keeps it that long, even if the session ends
        at once. A command like any other, so the loop stays the pool's one writer."""

        def apply(pool: Pool, now: float) -> Route | None:
            session = pool.sessions.get(session_id)
            if session is None:
                return None
            pod = pool.lease_route(session_id, now)
            if pod is None:
                return Route(session_id, session.state)
            return Route(session_id, session.state, pod.address, ROUTE_LEASE)

        route = await self._call(apply)
        if route is not None:
            return route
        stored = await self.store.get_session(session_id)  # ended long ago, or never was
        if stored is None:
            raise SessionNotFound(session_id)
        return Route(session_id, stored.state)

    async def view(self, session_id: str) -> SessionView | None:
        pool = self._leading_pool()
        session = pool.sessions.get(session_id)
        if session is not None:
            return SessionView(_copy(session), pool.provisioning(session_id))
        stored = await self.store.get_session(session_id)
        return SessionView(stored) if stored is not None else None

    async def list_for_user(self, user_id: str) -> list[SessionView]:
        """The user's sessions, newest first: live ones from memory, the rest stored."""
        self._leading_pool()
        stored = {s.id: s for s in await self.store.list_sessions(user_id)}
        pool = self._leading_pool()  # again: leadership may have gone during the read
        views = {sid: SessionView(s) for sid, s in stored.items()}
        for sid in pool.live_by_user.get(user_id, ()):
            session = pool.sessions[sid]
            if session.reply_deadline is None:  # not yet promised to its caller
                views[sid] = SessionView(_copy(session), pool.provisioning(sid))
        return sorted(views.values(), key=lambda v: v.session.created_at, reverse=True)

    def snapshot(self, now: float) -> PoolStatus:
        return self._leading_pool().status(now)

    async def settle(self) -> None:
        """Return once every command queued so far has been applied and committed."""
        await self._call(lambda pool, now: None)

    # ------------------------------------------------------------ the loop

    async def _feed_events(self) -> None:
        async for event in self.backend.events():
            self._queue.put_nowait(_Command(_event_command(event)))

    async def _next_round(self) -> list[_Command]:
        assert self._pool is not None
        if self._queue.empty():
            pool_due = self._pool.next_deadline()
            due = min(float("inf") if pool_due is None else pool_due, self._pod_rows_due)
            deadline = None if due == float("inf") else due
            getter = asyncio.ensure_future(self._queue.get())
            waits: set[asyncio.Future[Any]] = {getter}
            sleeper = None
            if deadline is not None:
                sleeper = asyncio.ensure_future(self._sleep_until(deadline))
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

    async def _sleep_until(self, when: float) -> None:
        # The delay is taken when the sleep begins, not when it was asked for: a clock
        # that moves in between (a test's jump) must not push the wake-up later.
        await self.clock.sleep(when - self.clock.now())

    async def _run(self) -> None:
        commands: list[_Command] = []
        try:
            while not self._stopped.is_set():
                commands = await self._next_round()
                await self._round(commands)
                commands = []
        except Deposed as exc:
            log.error("deposed: %s", exc)
            self.failed = exc
        except Exception as exc:
            log.exception("scheduler loop failed")
            self.failed = exc
        finally:
            self.running = False
            # The round cut short (deposed, or cancelled by a stop) promised nothing.
            for command in commands:
                if command.future is not None and not command.future.done():
                    command.future.set_exception(NotLeader())
            self._fail_waiters(NotLeader)

    async def _round(self, commands: list[_Command]) -> None:
        pool = self._pool
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
        except Exception:
            log.exception("store write failed; rebuilding state from the store")
            self.observer.store_failed()
            # Nothing of this round was promised: every caller waiting hears so.
            self._fail_waiters(StoreUnavailable)
            for command in commands:
                if command.future is not None and not command.future.done():
                    command.future.set_exception(StoreUnavailable())
            await self._recover_after_failure()
            return
        for command, result in zip(commands, results, strict=True):
            if command.future is not None and not command.future.done():
                if isinstance(result, Exception):
                    command.future.set_exception(result)
                else:
                    command.future.set_result(result)
        self.observer.round_committed(len(commands))

    async def _commit(self, outbox: Outbox, *, force: bool = False) -> None:
        """Persist the round, then tell callers and start backend calls: in that order,
        so nobody hears of a session that a crash could still lose.

        Rows of pool pods alone (created, ready, gone) are not a promise to anyone: they
        wait up to POD_ROWS_DELAY and go with the next commit. Lost in a crash, they
        only make the restarted controller delete a fresh pool pod it cannot account
        for. At one claim at a time this is two commits fewer per claim (the
        replacement's create and its readiness)."""
        pool = self._pool
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
            if answer.outcome not in (Outcome.WARM, Outcome.COLD):
                # Refused, or a retry for a thread with a session: nothing to deliver.
                self._payloads.pop(answer.request_id, None)
            future = self._answers.pop(answer.request_id, None)
            if future is not None and not future.done():
                _resolve(future, pool, answer)
        for request_id in outbox.payloads_done:
            self._payloads.pop(request_id, None)
        self._start_effects(outbox)

    def _start_effects(self, outbox: Outbox) -> None:
        for _ in range(outbox.creates):
            self._effects.start(self._create(), "create")
        for name in outbox.deletes:
            release = outbox.releases.get(name)
            self._effects.start(self._delete(name, release), f"delete:{name}")
        for check in outbox.status_checks:
            self._effects.start(self._check_busy(check), f"status:{check.session_id}")
        for name, labels in outbox.labels.items():
            self._effects.start(self._label(name, labels), f"label:{name}")
        for seconds in outbox.startup_seconds:
            self.observer.pod_started(seconds)
        for reason in outbox.ended:
            self.observer.session_ended(reason)
        for call in outbox.claims:
            self._effects.start(self._claim(call), f"claim:{call.pod_name}")
        for _ in range(outbox.claim_failures):
            self.observer.claim_hook_failed()

    async def _recover_after_failure(self) -> None:
        """The pool may now disagree with the store; the store wins. Retry until it
        answers, since nothing can be promised without it."""
        self.store_down = True
        self._fail_queued(StoreUnavailable)
        attempt = 0
        while not self._stopped.is_set():
            try:
                await self._recover()
                self.store_down = False
                return
            except Deposed:
                raise
            except Exception:
                delay = RECOVERY_BACKOFF.delay(attempt)
                attempt += 1
                log.warning("store still unavailable; retrying in %.1fs", delay)
                await sleep_or_stop(self.clock, delay, self._stopped)
                self._fail_queued(StoreUnavailable)

    def _fail_queued(self, error: Callable[[], SandboxError]) -> None:
        """Drop every queued command: the rebuilt state will not include them, and a
        caller waiting on one hears ``error`` now, not after the outage."""
        while not self._queue.empty():
            command = self._queue.get_nowait()
            if command.future is not None and not command.future.done():
                command.future.set_exception(error())
        self._fail_waiters(error)

    def _fail_waiters(self, error: Callable[[], SandboxError]) -> None:
        answers, self._answers = self._answers, {}
        for future in answers.values():
            if not future.done():
                future.set_exception(error())

    # ------------------------------------------------------------ backend effects

    def lease_confirmed(self) -> None:
        """The database confirmed the lease again: send what waited for it."""
        if not self.running:
            return
        held, self._held = self._held, []
        for call, name in held:
            self._effects.start(call(), name)

    def _hold(self, call: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        # Not a failure of the platform: no backoff, no error count, no retry storm.
        log.info("%s waits until the leader lease is confirmed again", name)
        self._held.append((call, name))

    async def _create(self) -> None:
        try:
            # "pool" until assigned: readiness shows in the pod's own status, and a
            # second patch when it turns ready would cost an API call per pod.
            name = await self.backend.create_pod(pool_labels())
        except LeaseLost:
            self._hold(self._create, "create")
            return
        except Exception as exc:
            log.warning("creating a sandbox pod failed: %s", exc)
            self.observer.backend_failed("create")
            self._queue.put_nowait(_Command(lambda pool, now: pool.create_failed(now)))
            return
        self._queue.put_nowait(_Command(lambda pool, now: pool.pod_created(name, now)))

    async def _delete(self, name: str, release: Release | None = None) -> None:
        if release is not None:
            await self._release(name, release)  # whatever its answer, the delete follows
        try:
            await self.backend.delete_pod(name)
        except LeaseLost:
            self._hold(lambda: self._delete(name), f"delete:{name}")
        except Exception as exc:
            log.warning("deleting pod %s failed: %s", name, exc)
            self.observer.backend_failed("delete")
            self._queue.put_nowait(_Command(lambda pool, now: pool.delete_failed(name, now)))

    async def _claim(self, call: ClaimCall) -> None:
        """Deliver the session to its pod's claim hook; the answer goes back to the pool
        as a command. No write guard: a hook call is no Kubernetes write, and the
        round that decided it committed under this leader's fence."""
        accepted = True
        if self.hooks is not None:
            held = self._payloads.get(call.request_id) if call.request_id is not None else None
            payload = ClaimPayload(
                metadata=call.metadata,
                env=held.env if held else {},
                files=held.files if held else (),
            )
            session = (call.session_id, call.user_id, call.thread_id)
            result = await self.hooks.claim(call.address, call.create_id, session, payload)
            accepted = result.ok
            if not accepted:
                log.warning(
                    "claim hook of pod %s failed for session %s: %s; trying another pod",
                    call.pod_name,
                    call.session_id,
                    result.detail,
                )

        def apply(pool: Pool, now: float) -> None:
            pool.claim_answered(call.session_id, call.attempt, accepted, now)

        self._queue.put_nowait(_Command(apply))

    # ------------------------------------------------------------ hook effects

    def _status(self, check: StatusCheck) -> asyncio.Task[BusyAnswer]:
        """The session's status call in flight, or a new one."""
        task = self._status_calls.get(check.session_id)
        if task is None:
            task = self._effects.start(self._ask_status(check), f"status:{check.session_id}")
            self._status_calls[check.session_id] = task
            task.add_done_callback(lambda _: self._status_calls.pop(check.session_id, None))
        return task

    async def _ask_status(self, check: StatusCheck) -> BusyAnswer:
        assert self.hooks is not None
        try:
            # The client's timeout bounds each phase; this bounds the whole call.
            async with asyncio.timeout(self.hooks.timeout):
                answer = await self.hooks.status(check.address, check.create_id)
        except TimeoutError:
            answer = BusyAnswer(False, "timed out", answered=False)
        kind: StatusAnswer = "busy" if answer.busy else "not_busy"
        self.observer.status_answered(kind if answer.answered else "no_answer")
        return answer

    async def _check_busy(self, check: StatusCheck) -> None:
        """An idle session's check: its answer goes back to the pool, which waits for
        it (or for its fallback deadline, should this answer be lost)."""
        if self.hooks is None:
            return  # the pool's fallback deadline decides
        answer = await self._status(check)
        if self.running:
            self._queue.put_nowait(_Command(_busy_command(check, answer)))

    async def _release(self, name: str, release: Release) -> None:
        if self.hooks is None:
            return
        try:
            async with asyncio.timeout(self.hooks.release_timeout):
                result = await self.hooks.release(
                    release.address, release.create_id, release.session_id, release.reason
                )
        except TimeoutError:
            log.info("pod %s: release hook timed out; deleting it anyway", name)
            return
        if not result.ok:
            log.info("pod %s: release hook failed (%s); deleting it anyway", name, result.detail)

    async def _label(self, name: str, labels: dict[str, str]) -> None:
        try:
            await self.backend.set_labels(name, labels)
        except LeaseLost:
            self._hold(lambda: self._label(name, labels), f"label:{name}")
        except BackendError as exc:
            # Labels are for operators and a second opinion at recovery; the store
            # is the record, so a lost label is logged, not retried forever.
            log.info("labelling pod %s failed: %s", name, exc)
            self.observer.backend_failed("label")


def _event_command(event: PodEvent) -> Callable[[Pool, float], None]:
    if event.deleted:
        name = event.pod.name
        return lambda pool, now: pool.pod_gone(name, now)
    status = event.pod
    return lambda pool, now: pool.pod_observed(status, now)


def _busy_command(check: StatusCheck, answer: BusyAnswer) -> Callable[[Pool, float], None]:
    return lambda pool, now: pool.busy_answer(check.session_id, answer, now)


def _copy(session: Session) -> Session:
    """A snapshot for a caller: the pool's own object never leaves the scheduler."""
    return replace(session, requests=[])


def _resolve(future: asyncio.Future[Opened], pool: Pool, answer: Answer) -> None:
    if answer.error is not None:
        future.set_exception(answer.error)
        return
    session = pool.sessions.get(answer.session_id or "")
    if session is None:  # cannot happen: answered sessions are kept in memory
        future.set_exception(SessionNotFound(answer.session_id or ""))
        return
    detail = pool.provisioning(session.id) if session.state is SessionState.PROVISIONING else None
    future.set_result(Opened(_copy(session), answer.outcome, answer.reclaimed_session_id, detail))
