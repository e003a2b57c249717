"""The scheduler: the only way in to the pool.

Every write is a command applied by the loop's task (rounds.py), which carries out
what each round decided (effect_calls.py); callers get copies and data (model.py) or
a domain error (errors.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any, TypeVar

from .. import tracing
from ..aiotime import sleep_or_stop
from ..errors import (
    NotLeader,
    SandboxError,
    SessionEnded,
    SessionNotFound,
    SessionNotReady,
    StoreUnavailable,
    SuspensionDisabled,
)
from ..hooks import ClaimPayload
from ..model import (
    ActivitySource,
    BusyAnswer,
    EndReason,
    Opened,
    Pod,
    PoolStatus,
    Provisioning,
    Resources,
    Route,
    Session,
    SessionQuery,
    SessionState,
    SessionView,
    UserDeletion,
)
from ..templates import resolve_shape
from .admission import unknown_plan
from .effect_calls import Command, busy_command
from .effects import Outbox
from .egress import OpenSecret
from .lifecycle import ROUTE_LEASE
from .pool import Pool
from .ports import Loaded
from .rounds import Rounds, session_copy

log = logging.getLogger(__name__)

# A stop lets the round in progress finish (its commit, its answers) this long, and
# gives its last write of pod rows as long.
STOP_GRACE = 2.0
# The egress denials kept per session (GET /sessions/{id}/egress shows them).
DENIALS_KEPT = 100
# How often archives no session owns are looked for (and once at the start of a term).
SWEEP_EVERY = 3600.0

T = TypeVar("T")


class Scheduler(Rounds):
    """The only way in to the pool. Every write is a command applied by the loop's
    task; callers get copies and data (model.py) or a domain error (errors.py)."""

    # ------------------------------------------------------------ lifecycle

    async def start(self, loaded: Loaded | None = None) -> None:
        """Rebuild from the store and the backend, then start the loop. ``loaded``:
        the store's rows, read already (the controller reads them while the backend
        lists its pods); else they are read here."""
        await self._recover(loaded)
        self.running = True
        self._tasks.start(self._feed_events(), "events")
        self._loop = self._tasks.start(self._run(), "loop")
        if self.snapshot_store is not None:
            self._tasks.start(self._sweep_archives(), "archive-sweep")

    async def stop(self) -> None:
        """Take no more work, let the round in progress finish (up to STOP_GRACE),
        then cancel the rest: queued commands and backend calls in flight are dropped
        (a deposed leader's intentions die with its term)."""
        self.running = False
        self._stopped.set()
        if self._loop is not None and not self._loop.done():
            self._queue.put_nowait(Command(lambda pool, now: None))  # wake it
            await asyncio.wait({self._loop}, timeout=STOP_GRACE)
        await self._tasks.stop()
        if self._pool is not None and self._pod_rows:
            try:  # best effort: a clean stop leaves no pool pod unaccounted for
                async with asyncio.timeout(STOP_GRACE):
                    while self._pod_rows:  # a chunk a commit (pod_rows.py)
                        await self._commit(Outbox(), force=True)
            except Exception as exc:
                log.warning("could not write the last pod rows: %s", exc)
        await self._effects.stop()
        self._held.clear()
        self._payloads.clear()
        self._fail_queued(NotLeader)  # nobody waits forever on a command never applied

    # ------------------------------------------------------------ commands

    def _leading_pool(self) -> Pool:
        if not self.running or self._pool is None:
            raise NotLeader()
        if self.store_down:
            raise StoreUnavailable()
        return self._pool

    def _submit(
        self,
        apply: Callable[[Pool, float], Any],
        future: asyncio.Future[Any] | None = None,
        caller: str | None = None,
    ) -> None:
        self._leading_pool()
        self._queue.put_nowait(Command(apply, future, caller))

    async def _call(self, apply: Callable[[Pool, float], T], caller: str | None = None) -> T:
        """Submit and wait until the round that applied it has committed."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._submit(apply, future, caller)
        return await future

    async def open_session(
        self,
        user_id: str,
        thread_id: str,
        wait_seconds: float,
        payload: ClaimPayload | None = None,
        caller: str | None = None,
        *,
        org_id: str = "",
        plan: str | None = None,
        template: str | None = None,
        resources: Resources | None = None,
        egress_allow: tuple[str, ...] = (),
        secrets: tuple[OpenSecret, ...] = (),
    ) -> Opened:
        """A session for this thread of this org's user, new or the one it has;
        refusals are raised (UnknownPlan, UnknownTemplate, ResourcesOutOfBounds,
        UserSessionLimit, OrgSessionLimit, OrgRateLimited, CapacityExhausted, ...). The
        payload's metadata is stored with a new session; its env and files go to the
        sandbox's claim hook only, and are never sent for a thread that has a session.
        ``egress_allow`` (grants) and ``secrets`` are a new session's; a retry for a
        thread with a session changes neither (PATCH .../egress changes grants).
        ``caller``: who asks (a token id), for the audit log."""
        pool = self._leading_pool()
        if pool.limits.plan(plan) is None:
            raise unknown_plan(pool.limits, plan or "")
        # Checked first: an unknown template or resources out of its bounds are refused
        # before anything is queued (templates.py).
        shape = resolve_shape(self.limits, template, resources)
        request_id = pool.next_request_id()
        metadata = dict(payload.metadata) if payload else {}
        await self._ask_before_reclaim(user_id, thread_id, org_id, plan)
        self._leading_pool()  # still leading after the status calls

        def apply(pool: Pool, now: float) -> None:
            thread = (org_id, user_id, thread_id)
            before = pool.live_by_thread.get(thread)
            pool.open_session(
                request_id,
                user_id,
                thread_id,
                wait_seconds,
                now,
                metadata,
                org_id=org_id,
                plan=plan,
                shape=shape,
                secrets=tuple(s.ref for s in secrets),
            )
            sid = pool.live_by_thread.get(thread)
            if (egress_allow or secrets) and sid is not None and sid != before:  # a new one
                session = pool.sessions[sid]
                session.egress_allow = egress_allow
                self.egress.opened(session, secrets)

        return await self._request(request_id, apply, payload, caller)

    async def _request(
        self,
        request_id: int,
        apply: Callable[[Pool, float], None],
        payload: ClaimPayload | None,
        caller: str | None,
    ) -> Opened:
        """Queue an open (or a resume) and wait for its answer, given once the round that
        decided it has committed; its env and files are held for its claim meanwhile."""
        trace = tracing.context_now()  # the API's span: the round and its calls join it
        if trace is not None:
            self._traces[request_id] = trace
        # Applied in a later round: registering the answer after is safe.
        self._queue.put_nowait(Command(apply, None, caller, trace))
        if payload is not None and (payload.env or payload.files):
            self._payloads[request_id] = ClaimPayload(env=payload.env, files=payload.files)
        answer: asyncio.Future[Opened] = asyncio.get_running_loop().create_future()
        self._answers[request_id] = answer
        try:
            return await answer
        finally:
            self._traces.pop(request_id, None)
            if not self.running:
                self._payloads.pop(request_id, None)

    async def _ask_before_reclaim(
        self, user_id: str, thread_id: str, org_id: str, plan: str | None
    ) -> None:
        """At the user's limit (or their org's), ask the sandboxes a reclaim could pick
        whether they are busy (concurrently, each bounded by hook_timeout), and feed the
        answers in before the open: a busy one counts as active and is not reclaimed;
        the pool records the answer of the one it reclaims. Read-only until then, so the
        open itself stays one synchronous decision (the limit and a single reclaim hold
        for any number of concurrent opens, as without hooks)."""
        if self.hooks is None:
            return
        now = self.clock.monotonic()
        pool = self._leading_pool()
        checks = pool.reclaim_checks(user_id, thread_id, now, org_id=org_id, plan=plan)
        if not checks:
            return
        # Shielded: the calls are shared, and one caller giving up must not cancel them.
        calls = (asyncio.shield(self._status(c)) for c in checks)
        answers = await asyncio.gather(*calls, return_exceptions=True)
        for check, answer in zip(checks, answers, strict=True):
            if isinstance(answer, BaseException):  # cancelled by a stop: none to give
                answer = BusyAnswer(False, "no answer", answered=False)
            self._submit(busy_command(check, answer))

    async def resume_session(
        self,
        session_id: str,
        wait_seconds: float,
        payload: ClaimPayload | None = None,
        caller: str | None = None,
    ) -> Opened:
        """Resume a suspended session (POST /sessions/{id}/resume, and the proxy's
        internal resume): as an open of its thread would, with the same refusals, and
        SessionRestoreFailed if its archive could not be restored (it stays suspended).
        A session not suspended is answered as it is (EXISTING)."""
        pool = self._leading_pool()
        session = pool.sessions.get(session_id)
        if session is None:
            stored = await self.store.get_session(session_id)
            if stored is None:
                raise SessionNotFound(session_id)
            raise SessionEnded(session_id, stored.end_reason)
        await self._ask_before_reclaim(
            session.user_id, session.thread_id, session.org_id, session.plan
        )
        self._leading_pool()
        request_id = pool.next_request_id()

        def apply(pool: Pool, now: float) -> None:
            pool.resume(request_id, session_id, wait_seconds, now)

        return await self._request(request_id, apply, payload, caller)

    async def suspend_session(self, session_id: str, caller: str | None = None) -> SessionView:
        """POST /sessions/{id}/suspend: a ready session's snapshot is taken and its pod
        given back (it is ended ``deleted`` if no archive can be kept); a suspending or
        suspended one is left as it is. The session as the round left it."""
        if not self.limits.snapshots:
            raise SuspensionDisabled()

        def apply(pool: Pool, now: float) -> Session | None:
            session = pool.suspend_session(session_id, now)
            return session_copy(session) if session is not None else None

        found = await self._call(apply, caller)
        if found is None:
            stored = await self.store.get_session(session_id)
            if stored is None:
                raise SessionNotFound(session_id)
            raise SessionEnded(session_id, stored.end_reason)
        if found.state is SessionState.PROVISIONING:
            raise SessionNotReady(session_id, found.state.value)
        return SessionView(found)

    async def sweep_archives(self) -> list[str]:
        """Delete the archives no session owns (a crash between an upload and its
        record, a delete that failed); their keys."""
        store = self.snapshot_store
        if store is None:
            return []
        keys = await store.keys()
        if not keys:
            return []
        # Listed first, then the pool's own: an archive listed is either recorded or
        # about to be (a snapshot in flight) by then, or no session will ever own it.
        known = await self._call(lambda pool, now: pool.archive_keys())
        orphans = sorted(set(keys) - known)
        for key in orphans:
            await store.delete(key)
        if orphans:
            log.info("deleted %d archives no session owns", len(orphans))
        return orphans

    async def _sweep_archives(self) -> None:
        while not self._stopped.is_set():
            try:
                await self.sweep_archives()
            except SandboxError:
                pass  # not leading any more, or the store is down: the next term's sweep
            except Exception as exc:
                log.warning("sweeping archives no session owns failed: %s", exc)
            if await sleep_or_stop(self.clock, SWEEP_EVERY, self._stopped):
                return

    async def end_session(self, session_id: str, caller: str | None = None) -> None:
        """End a session on request (reason ``deleted``); idempotent for ended ones.
        ``caller``: who asks (a token id, "console:operator"), for the audit log."""

        def apply(pool: Pool, now: float) -> bool:
            pool.end_session(session_id, EndReason.DELETED, now)
            return session_id in pool.sessions

        ended = await self._call(apply, caller)
        if not ended and await self.store.get_session(session_id) is None:
            raise SessionNotFound(session_id)

    async def end_all_sessions(self, reason: EndReason) -> int:
        """End every live session with ``reason`` (their pods deleted); how many ended."""

        def apply(pool: Pool, now: float) -> int:
            # A suspended session has no sandbox to lose: it stays, with its archive.
            live = [
                sid
                for sid, session in pool.sessions.items()
                if session.live and session.state is not SessionState.SUSPENDED
            ]
            return sum(pool.end_session(sid, reason, now) for sid in live)

        return await self._call(apply)

    async def delete_user(self, user_id: str) -> UserDeletion:
        """End the user's live sessions (``deleted``, as DELETE /sessions/{id} does: the
        release hook, then each pod deleted) and purge every row of theirs, ended ones
        included. Idempotent: a user with nothing left gets zero counts.

        Opens for the user are refused (UserBeingDeleted) from the round that ends
        their sessions until this returns, so a session opened concurrently is either
        ended here or refused: none of the user's is live when the caller hears back."""
        ended, pods = await self._call(lambda pool, now: pool.end_user(user_id, now))
        try:
            # Forgotten in memory first, then purged: no later round can write one back.
            await self._call(lambda pool, now: pool.forget_user(user_id))
            # Their archives went with the round that ended them (suspension.py).
            purged = await self.store.purge_user(user_id)
        finally:
            # Not awaited: applied in a later round than this caller's answer.
            with contextlib.suppress(SandboxError):
                self._submit(lambda pool, now: pool.allow_user(user_id))
        return UserDeletion(user_id, ended, purged, pods)

    async def confirm_recovery(self) -> list[str]:
        """An operator confirms: the pods recovery holds (orphans.py) are deleted, as any
        pod that served is. Their names; none when nothing is held."""

        def apply(pool: Pool, now: float) -> list[str]:
            names = pool.release_orphans(now)
            self._confirmed_orphans.update(names)
            return names

        names = await self._call(apply)
        if names:
            log.warning(
                "recovery confirmed: deleting %d held pods: %s", len(names), " ".join(names)
            )
        return names

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
        """A proxy's batch of last-activity times (wall time, unix seconds); sessions it
        does not know are skipped. A time ahead of ours counts as now: a proxy's clock
        running fast must not keep a session alive beyond its idle timeout."""

        def apply(pool: Pool, now: float) -> None:
            for session_id, at in activity.items():
                pool.touch(session_id, min(pool.from_wall(at), now), ActivitySource.PROXY)

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
                return Route(session_id, session.state, resuming=session.resuming)
            return Route(session_id, session.state, pod.address, ROUTE_LEASE)

        route = await self._call(apply)
        if route is not None:
            return route
        stored = await self.store.get_session(session_id)  # ended long ago, or never was
        if stored is None:
            raise SessionNotFound(session_id)
        return Route(session_id, stored.state)

    # ------------------------------------------------------------ egress

    async def set_egress(self, session_id: str, allow: tuple[str, ...]) -> Session:
        """Replace a live session's egress grants (PATCH /sessions/{id}/egress); the
        egress proxy sees them at its next authorize (its answers live a second)."""

        def apply(pool: Pool, now: float) -> Session | None:
            session = pool.sessions.get(session_id)
            if session is None or not session.live:
                return session_copy(session) if session is not None else None
            session.egress_allow = allow
            pool.outbox.dirty_sessions.add(session_id)
            return session_copy(session)

        found = await self._call(apply)
        if found is None:
            found = await self.store.get_session(session_id)
            if found is None:
                raise SessionNotFound(session_id)
        if not found.live:
            raise SessionEnded(session_id, found.end_reason)
        return found

    def egress_pod(self, create_id: str) -> tuple[Pod | None, Session | None, bool]:
        """The pod made by ``create_id`` (None: not in the pool, yet or any more), the
        session it serves, if any (possibly ended), and whether it has left the pool:
        copies, read at once."""
        pool = self._leading_pool()
        pod = self.egress.pod_of(create_id, pool.pods)
        if pod is None:
            return None, None, self.egress.gone(create_id)
        session = pool.sessions.get(pod.session_id) if pod.session_id else None
        return replace(pod), session_copy(session) if session is not None else None, False

    def known_sessions(self, ids: Iterable[str]) -> set[str]:
        """Which of these sessions the pool holds (live, or lately ended)."""
        sessions = self._leading_pool().sessions
        return {sid for sid in ids if sid in sessions}

    async def egress_secrets(self, session_id: str) -> tuple[OpenSecret, ...]:
        """A live session's secrets with their values (for the egress proxy only)."""
        known = self.egress.known(session_id)
        if known is not None:
            return known
        rows = await self.store.session_secrets(session_id)
        return self.egress.opened_rows(session_id, rows)

    async def record_denials(self, rows: list[dict[str, Any]]) -> None:
        await self.store.record_denials(rows, DENIALS_KEPT)

    async def denials(self, session_id: str) -> list[dict[str, Any]]:
        return await self.store.denials(session_id, DENIALS_KEPT)

    async def view(self, session_id: str) -> SessionView | None:
        pool = self._leading_pool()
        session = pool.sessions.get(session_id)
        if session is not None:
            return SessionView(session_copy(session), pool.provisioning(session_id))
        stored = await self.store.get_session(session_id)
        return SessionView(stored) if stored is not None else None

    async def list_sessions(
        self, query: SessionQuery
    ) -> tuple[list[SessionView], tuple[float, str] | None]:
        """A page of every session (an operator's listing), newest first, and the
        cursor of the next page. The store decides the page; a session still in memory
        is shown as it is now, so the page never lags the live state."""
        self._leading_pool()
        page = await self.store.query_sessions(query)
        pool = self._leading_pool()
        views = []
        for stored in page.sessions:
            live = pool.sessions.get(stored.id)
            if live is None:
                views.append(SessionView(stored))
            elif not query.states or live.state in query.states:
                views.append(SessionView(session_copy(live), pool.provisioning(live.id)))
        return views, page.next

    def read_sessions(
        self,
        read: Callable[[Session, Provisioning | None], T],
        ids: Iterable[str] | None = None,
    ) -> list[T]:
        """``read`` applied to every live session, or to those of ``ids`` still in
        memory (live or lately ended), with why a provisioning one waits: at once and
        without copies, so a watcher of thousands of sessions costs the loop nothing.
        ``read`` returns data of its own and keeps no reference to the session."""
        pool = self._leading_pool()
        sessions = pool.sessions
        chosen = pool.live_by_thread.values() if ids is None else ids
        out = []
        for sid in chosen:
            session = sessions.get(sid)
            if session is not None:
                waiting = session.state is SessionState.PROVISIONING
                out.append(read(session, pool.provisioning(sid) if waiting else None))
        return out

    def waiters(self) -> list[SessionView]:
        """Sessions waiting for a sandbox, first come first."""
        pool = self._leading_pool()
        return [self._view(pool, pool.sessions[sid]) for sid in pool.waiting]

    async def recent_ended(self, limit: int) -> list[Session]:
        """The last sessions to end, the latest first (every ending is committed)."""
        self._leading_pool()
        return await self.store.recent_ended(limit)

    @staticmethod
    def _view(pool: Pool, session: Session) -> SessionView:
        return SessionView(session_copy(session), pool.provisioning(session.id))

    def snapshot(self, now: float, *, sessions_by_activity: bool = True) -> PoolStatus:
        """The pool at ``now``, a time of this clock's monotonic part. Without
        ``sessions_by_activity``, ``sessions`` counts none (a pass over every live
        session spared: the console's feed and GET /pool do not show them)."""
        return self._leading_pool().status(now, sessions_by_activity=sessions_by_activity)

    def pod_labels(self) -> list[tuple[str, dict[str, str]]]:
        """Each session's pod and the labels that attribute it (views.py)."""
        return self._leading_pool().pod_labels()

    async def settle(self) -> None:
        """Return once every command queued so far has been applied and committed."""
        await self._call(lambda pool, now: None)
