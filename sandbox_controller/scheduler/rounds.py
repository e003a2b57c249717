"""The scheduler's rounds: the one task that owns the pool.

API calls, pod events and timers become commands on one queue. Each round takes
every command waiting, applies them to the pool (pure decisions), commits the
round's writes in one transaction, then answers callers and starts backend calls
(effect_calls.py). Batching the commit is what lets one writer keep up with many
callers: a burst of 100 requests costs one commit, not 100. A failed commit rebuilds
the pool from the store (the store wins). So does a decision that raises (a bug):
its round is not committed, every caller waiting hears ``internal_error`` at once,
and the loop goes on with the rebuilt pool.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from opentelemetry.context import Context

from .. import tracing
from ..aiotasks import TaskGroup
from ..aiotime import Backoff, sleep_or_stop
from ..audit import AuditSink, send
from ..backends.base import Backend, HurriesForWaiters
from ..clock import Clock
from ..errors import (
    DecisionFailed,
    NotLeader,
    SandboxError,
    SessionNotFound,
    StoreUnavailable,
)
from ..hooks import SandboxHooks
from ..model import CONTROLLER_CALLER, Limits, Opened, Outcome, Session, SessionState
from ..snapshots import SnapshotStore
from ..store import Batch, Deposed, Fence, same_pod_row
from .changes import ChangeFeed
from .effect_calls import Command, EffectCalls, event_command
from .effects import Answer, Outbox
from .egress import EgressBook
from .pod_rows import PendingPodRows
from .pool import Pool
from .ports import Loaded, LoopObserver, NoObserver, SchedulerStore
from .recovery import restore

# The loop's parts log as the loop: one logger for operators to tune.
log = logging.getLogger("sandbox_controller.scheduler.loop")

MAX_ROUND = 1000  # commands per round: bounds one transaction's size
ENDED_IN_MEMORY = 600.0  # ended sessions stay in memory this long, then only in the store
PRUNE_EVERY = 60.0
# Rebuilding after a failed commit: retried until the store answers again. Capped low:
# callers are refused (store_unavailable) until it succeeds.
RECOVERY_BACKOFF = Backoff(0.25, 2.0)


class Rounds(EffectCalls):
    """The loop's task: rounds of commands, each committed before anyone hears of it,
    and the rebuild from the store when a commit or a decision fails."""

    # What every (re)build makes the pool of: the seam where a test puts a Pool whose
    # decision raises.
    pool_type: type[Pool] = Pool

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
        audit: AuditSink = send,
        snapshot_store: SnapshotStore | None = None,
        snapshot_max_bytes: int = 1024**3,
    ) -> None:
        super().__init__(backend, hooks, observer or NoObserver(), audit)
        self.limits = limits
        self.snapshot_store = snapshot_store
        self.snapshot_max_bytes = snapshot_max_bytes
        self.snapshot_timeout = limits.snapshot_timeout
        self.store = store
        self.clock = clock
        self.fence = fence
        self._pool: Pool | None = None
        # The last commit failed and the state is being rebuilt from the store:
        # callers are refused at once (StoreUnavailable) rather than queued.
        self.store_down = False
        self.failed: BaseException | None = None
        self._answers: dict[int, asyncio.Future[Opened]] = {}
        self._tasks = TaskGroup("scheduler")
        self._stopped = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._next_prune = 0.0
        # Pod rows waiting to be written with the next commits (see _commit).
        self._pod_rows = PendingPodRows()
        # Watchers (the console) learn of each committed round here.
        self.changes = ChangeFeed()
        # A backend that can see a pod serve sooner while sessions wait is told how
        # many do, after each round (only when the number changes).
        self._hurries = backend if isinstance(backend, HurriesForWaiters) else None
        self._told_waiting = -1
        # Orphans an operator let go this term: a rebuild does not hold them again.
        self._confirmed_orphans: set[str] = set()
        # Sessions' egress secrets and the create-id index (scheduler/egress.py).
        self.egress = EgressBook()

    async def _recover(self, loaded: Loaded | None = None) -> None:
        sessions, pod_rows = loaded if loaded is not None else await self.store.load()
        backend_pods = await self.backend.resync()
        now = self.clock.monotonic()
        pool = self.pool_type(
            self.limits,
            self.backend.template_hash,
            # A backend made before templates (a test's fake) knows one hash.
            template_hashes=getattr(self.backend, "template_hashes", None),
        )
        pool.wall_offset = self.clock.now() - now
        # The rebuilt pool knows of no claim in flight: their env and files are lost,
        # and so are the secrets of sessions never committed.
        self._payloads.clear()
        self.egress.clear()
        restore(
            pool, sessions, pod_rows, backend_pods, now, self._handed_out, self._confirmed_orphans
        )
        self._handed_out = {name for name in self._handed_out if name in pool.pods}
        pool.tick(now)
        self._pool = pool
        self._pod_rows.clear()
        outbox = pool.take_outbox()
        # Rows the store already has as they are need no write: at 10,000 pods that
        # rewrite was most of a restart's time to its first claim.
        stored = {row.name: row for row in pod_rows}
        outbox.dirty_pods = {
            name
            for name in outbox.dirty_pods
            if name not in stored
            or name not in pool.pods
            or not same_pod_row(pool.pods[name], stored[name])
        }
        await self._commit(outbox, force=True)
        self.changes.rebuilt()
        self._told_waiting = -1
        self._tell_waiting(pool)
        log.info(
            "recovered %d live sessions and %d pods (%d pods in the backend)",
            len(pool.live_by_thread),
            len(pool.pods),
            len(backend_pods),
        )
        if pool.orphans.held:
            log.warning(
                "holding %d of %d pods that served sessions the store does not know (a "
                "database older than the cluster?); nothing is deleted until an operator "
                "runs `sandbox-controller recover --confirm`. Would delete: %s",
                len(pool.orphans.held),
                len(backend_pods),
                " ".join(sorted(pool.orphans.held)),
            )

    # ------------------------------------------------------------ the loop

    async def _feed_events(self) -> None:
        async for event in self.backend.events():
            self._queue.put_nowait(Command(event_command(event)))

    async def _next_round(self) -> list[Command]:
        assert self._pool is not None
        if self._queue.empty():
            pool_due = self._pool.next_deadline()
            due = min(float("inf") if pool_due is None else pool_due, self._pod_rows.due)
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
        await self.clock.sleep(when - self.clock.monotonic())

    async def _run(self) -> None:
        commands: list[Command] = []
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

    async def _round(self, commands: list[Command]) -> None:
        pool = self._pool
        assert pool is not None
        now = self.clock.monotonic()
        # Deadlines run on ``now``; stored and shown times follow the wall clock, even
        # one stepped since the last round.
        pool.wall_offset = self.clock.now() - now
        try:
            results = []
            for command in commands:
                pool.caller = command.caller or CONTROLLER_CALLER
                if command.trace is None:
                    results.append(command.apply(pool, now))
                    continue
                with tracing.span("scheduler.decide", command.trace):
                    results.append(command.apply(pool, now))
            pool.caller = CONTROLLER_CALLER
            pool.tick(now)
            if now >= self._next_prune:
                self._next_prune = now + PRUNE_EVERY
                pool.prune_ended(pool.wall(now) - ENDED_IN_MEMORY)
                self.egress.forget(pool.sessions)
        except Exception:
            pool.caller = CONTROLLER_CALLER
            await self._decision_failed(commands)
            return
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
                command.future.set_result(result)
        self.observer.round_committed(len(commands))
        self.changes.committed(outbox.dirty_sessions)
        self._tell_waiting(pool)

    def _tell_waiting(self, pool: Pool) -> None:
        if self._hurries is not None and len(pool.waiting) != self._told_waiting:
            self._told_waiting = len(pool.waiting)
            self._hurries.sessions_waiting(self._told_waiting)

    async def _decision_failed(self, commands: list[Command]) -> None:
        """A decision raised: the pool is half-changed, so nothing of this round may be
        committed. Everyone waiting hears so now, with an id that names this log line,
        and the pool is rebuilt from the store, as after a failed commit.

        That includes callers waiting from earlier rounds for a pod: their sessions are
        in memory only until they are answered (see _commit), so the rebuilt pool has
        none of them, and a caller left waiting would wait forever. None of them was
        told of a success; what callers were told is in the store and rebuilt from it.
        The env and files of every claim not yet delivered go too (the rebuilt pool
        knows of no claim in flight)."""
        request_id = uuid.uuid4().hex[:16]
        log.exception(
            "a scheduling decision failed (request id %s): nothing of its round "
            "(%d commands) is committed; rebuilding the state from the store",
            request_id,
            len(commands),
        )

        def error() -> SandboxError:
            return DecisionFailed(request_id)

        for command in commands:
            if command.future is not None and not command.future.done():
                command.future.set_exception(error())
        self._fail_waiters(error)
        self._payloads.clear()
        await self._recover_after_failure(error)

    async def _commit(self, outbox: Outbox, *, force: bool = False) -> None:
        """Persist the round, then tell callers and start backend calls: in that order,
        so nobody hears of a session that a crash could still lose.

        Rows of pool pods alone (created, ready, gone) are not a promise to anyone: they
        wait up to POD_ROWS_DELAY and go with the next commit, a bounded chunk at a time
        (pod_rows.py). Lost in a crash, they only make the restarted controller delete a
        fresh pool pod it cannot account for. At one claim at a time this is two commits
        fewer per claim (the replacement's create and its readiness)."""
        pool = self._pool
        assert pool is not None
        batch = Batch()
        for sid in outbox.dirty_sessions:
            session = pool.sessions.get(sid)
            if session is None:
                continue
            if session.reply_deadline is not None and session.snapshot is None:
                # Not promised to anyone yet. (A resuming session is written: its row,
                # and the archive it records, exist already.)
                pool.outbox.dirty_sessions.add(sid)
                continue
            batch.sessions.append(session)
        # A new session's secrets go with its first row, sealed.
        self.egress.seal_into(batch, pool.sessions)
        now = self.clock.monotonic()
        self._pod_rows.add(outbox.dirty_pods, outbox.forgotten_pods, now)
        self._handed_out -= outbox.forgotten_pods
        # The trace each pod's calls join, and the traces this commit serves (the first
        # is the commit span's parent, the rest are linked): none unless tracing is on.
        pod_traces, commit_traces = self._round_traces(outbox) if self._traces else ({}, [])
        if batch.sessions or force or now >= self._pod_rows.due:
            claimed = (s.pod_name for s in batch.sessions if s.pod_name)
            batch.pods, batch.forgotten_pods = self._pod_rows.take(pool.pods, claimed, now)
            if batch and commit_traces:
                parent, *linked = commit_traces
                with tracing.span("store.write", parent, links=linked):
                    await self.store.write(batch, self.fence)
            elif batch:
                await self.store.write(batch, self.fence)
        for answer in outbox.answers:
            if answer.outcome not in (Outcome.WARM, Outcome.COLD):
                # Refused, or a retry for a thread with a session: nothing to deliver.
                self._payloads.pop(answer.request_id, None)
            future = self._answers.pop(answer.request_id, None)
            if future is not None and not future.done():
                _resolve(future, pool, answer)
        for request_id in outbox.payloads_done:
            self._payloads.pop(request_id, None)
        self._start_effects(outbox, pod_traces)

    def _round_traces(self, outbox: Outbox) -> tuple[dict[str, Context], list[Context]]:
        """Which traced requests this round serves: by the pods it claims or hands out,
        and in order, for the commit's span."""
        pool = self._pool
        assert pool is not None
        pods: dict[str, Context] = {}
        served: dict[int, Context] = {}
        for call in outbox.claims:
            trace = self._traces.get(call.request_id) if call.request_id is not None else None
            if trace is not None:
                pods[call.pod_name] = served[call.request_id or 0] = trace
        for answer in outbox.answers:
            trace = self._traces.get(answer.request_id)
            if trace is None:
                continue
            served[answer.request_id] = trace
            session = pool.sessions.get(answer.session_id or "")
            if session is not None and session.pod_name is not None:
                pods.setdefault(session.pod_name, trace)
        return pods, list(served.values())

    async def _recover_after_failure(
        self, refuse: Callable[[], SandboxError] = StoreUnavailable
    ) -> None:
        """The pool may now disagree with the store; the store wins. Retry until it
        answers, since nothing can be promised without it. Commands queued meanwhile
        were meant for the pool being dropped: their callers hear ``refuse``."""
        self.store_down = True
        self._fail_queued(refuse)
        attempt = 0
        while not self._stopped.is_set():
            try:
                await self._recover()
                self.store_down = False
                return
            except Deposed:
                raise
            except Exception as exc:
                delay = RECOVERY_BACKOFF.delay(attempt)
                attempt += 1
                log.warning(
                    "rebuilding from the store failed (%s); retrying in %.1fs",
                    exc,
                    delay,
                    exc_info=attempt == 1,  # the first time: a bug shows its traceback
                )
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


def session_copy(session: Session) -> Session:
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
    future.set_result(
        Opened(session_copy(session), answer.outcome, answer.reclaimed_session_id, detail)
    )
