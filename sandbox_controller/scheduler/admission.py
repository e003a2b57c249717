"""Admission and reclaim: who gets a session when a builder opens a thread, who is
refused (the user's limit, the org's plan, no capacity in time), which of a user's idle
sessions is reclaimed to make room, and what each caller is told.

Pure decisions on the pool's shared state (core.py), ``now`` passed in; the answers
go to the outbox, for the loop to deliver once the round is committed.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterable

from ..errors import (
    CapacityExhausted,
    OrgRateLimited,
    OrgSessionLimit,
    SandboxError,
    SessionEnded,
    SessionNotFound,
    UnknownPlan,
    UserBeingDeleted,
    UserSessionLimit,
)
from ..model import (
    AuditAction,
    Limits,
    Outcome,
    Plan,
    PodState,
    Provisioning,
    SecretRef,
    Session,
    SessionState,
    Shape,
    WaitReason,
)
from .core import PoolCore
from .deadlines import DeadlineKind
from .effects import Answer

# When a caller refused for capacity may try again.
CAPACITY_RETRY_AFTER = 5.0


def unknown_plan(limits: Limits, name: str) -> UnknownPlan:
    return UnknownPlan(name, tuple(p.name for p in limits.plans))


class Admission:
    def __init__(self, pool: PoolCore, new_id: Callable[[], str]) -> None:
        self.pool = pool
        self._new_id = new_id
        self._request_ids = itertools.count(1)

    def next_request_id(self) -> int:
        return next(self._request_ids)

    def open_session(
        self,
        request_id: int,
        user_id: str,
        thread_id: str,
        wait_seconds: float,
        now: float,
        metadata: dict[str, str] | None = None,
        *,
        org_id: str = "",
        plan: str | None = None,
        shape: Shape | None = None,
        secrets: tuple[SecretRef, ...] = (),
    ) -> None:
        """A builder opened an agent thread. The answer arrives via the outbox. A retry
        for a thread with a live session gets that session; its metadata (and plan) is
        not changed. A thread is one user's within one org: another user's thread of
        the same id is another thread."""
        pool = self.pool
        if user_id in pool.deleting_users:
            # DELETE /users/{id} ended their sessions; none may start until it answers.
            self._refuse(request_id, Outcome.ERROR, UserBeingDeleted(user_id))
            return
        existing_id = pool.live_by_thread.get((org_id, user_id, thread_id))
        if existing_id is not None:
            self._ask_existing(pool.sessions[existing_id], request_id, wait_seconds, now)
            return
        terms = pool.limits.plan(plan)
        if terms is None:
            self._refuse(request_id, Outcome.ERROR, unknown_plan(pool.limits, plan or ""))
            return
        if org_id and terms.sessions_per_minute is not None:
            refusal = self._org_rate(org_id, terms.name, terms.sessions_per_minute, now)
            if refusal is not None:
                self._refuse(request_id, Outcome.ORG_RATE, refusal)
                return

        room = self._make_room(user_id, org_id, terms, now)
        if isinstance(room, SandboxError):
            self._refuse(request_id, room.outcome, room)
            return
        reclaimed = room

        if org_id:
            pool.orgs.started(org_id, now)
        shape = shape or Shape(pool.limits.default_template)
        prewarm = pool.prewarms.get(shape.template)
        if prewarm is not None and shape.resources is None:
            prewarm.arrival(now)  # demand for its warm pool (another size is served cold)
        session = Session(
            id=self._new_id(),
            user_id=user_id,
            thread_id=thread_id,
            state=SessionState.PROVISIONING,
            created_at=pool.wall(now),
            last_active_at=pool.wall(now),
            requests=[request_id],
            reclaimed_session_id=reclaimed.id if reclaimed else None,
            metadata=dict(metadata or {}),
            org_id=org_id,
            plan=plan,
            created_mono=now,
            active_mono=now,
            template=shape.template,
            resources=shape.resources,
            opened_by=pool.caller,
            secrets=secrets,
        )
        pool.track_live(session)
        self._seat(session, request_id, wait_seconds, now)

    def _seat(self, session: Session, request_id: int, wait_seconds: float, now: float) -> None:
        """A seated session (new, or resuming) takes a warm pod of its shape, or waits."""
        pool = self.pool
        if pool.limits.hooks:
            pool.hold_payload(session.id, request_id)
        session.reply_deadline = now + wait_seconds
        pod = pool.inventory.oldest_fresh_idle(session.shape)
        if pod is not None and (not session.org_id or self.may_take_warm(session)):
            if session.org_id:
                self.took_warm(session)
            pool.lease(pod, session, now, warm=True)
            if session.state is SessionState.PROVISIONING:
                # A claim in flight: answered when the hook accepts, or at the reply
                # deadline as provisioning (claiming), whichever comes first.
                pool.watch_session_deadlines(session)
                pool.deadlines.push(session.reply_deadline, DeadlineKind.REPLY, session.id)
            return
        pool.waiting[session.id] = None
        pool.watch_session_deadlines(session)
        if wait_seconds <= 0:
            # Decided now, not at the round's end: a refused request must not count
            # toward its user's limit for the next request in the same round.
            self.reply_due(session.id, now)
        else:
            pool.deadlines.push(session.reply_deadline, DeadlineKind.REPLY, session.id)

    def _make_room(
        self, user_id: str, org_id: str, terms: Plan, now: float
    ) -> Session | SandboxError | None:
        """Whether one more session of this user fits their limit and their org's: the
        session reclaimed to make room for it (None: none needed), or the refusal."""
        pool = self.pool
        live = pool.live_by_user.get((org_id, user_id), ())
        user_limit = terms.max_sessions_per_user or pool.limits.max_sessions_per_user
        org_limit = terms.max_pods_per_org if org_id else None
        at_org_limit = org_limit is not None and len(pool.live_by_org.get(org_id, ())) >= org_limit
        if len(live) < user_limit and not at_org_limit:
            return None
        # Reclaim stays per user: only this user's own oldest idle session makes room,
        # for their own limit or their org's.
        reclaimed = self.oldest_idle(live, now)
        if reclaimed is None:
            if len(live) >= user_limit:
                retry_after = self._user_retry_after(live, now)
                return UserSessionLimit(user_limit, len(live), retry_after)
            assert org_limit is not None
            retry_after = self._org_retry_after(pool.live_by_org[org_id], now)
            return OrgSessionLimit(org_id, terms.name, org_limit, retry_after)
        answer = pool.recent_busy_answer(reclaimed.id, now)  # loop.py asked just before
        pool.reclaim(reclaimed, now, answer)  # suspended or ended: no longer seated
        return reclaimed

    # ------------------------------------------------------------ resuming

    def _ask_existing(
        self, session: Session, request_id: int, wait_seconds: float, now: float
    ) -> None:
        """An open (or a resume) for a thread with a live session: that session, resumed
        first if it is suspended, once its snapshot is kept if it is being suspended."""
        if session.state is SessionState.SUSPENDED:
            session.requests = [request_id]
            self._payload_for_resume(session, request_id)
            self.resume(session, now, wait_seconds)
            return
        if session.state is SessionState.SUSPENDING:
            # Answered once its snapshot is kept (then resumed) or not (then ended).
            session.requests.append(request_id)
            if session.reply_deadline is None:
                session.reply_deadline = now + wait_seconds
                self._payload_for_resume(session, request_id)
        elif session.reply_deadline is None:
            self._answer(request_id, Outcome.EXISTING, session.id)
        else:
            session.requests.append(request_id)  # answered with the first caller

    def _payload_for_resume(self, session: Session, request_id: int) -> None:
        # Env and files go to the new pod's claim only if this caller sent them again.
        if self.pool.limits.hooks:
            self.pool.hold_payload(session.id, request_id)

    def resume(self, session: Session, now: float, wait_seconds: float | None = None) -> None:
        """Seat a suspended session again, as an open: its user's limit and the cap
        apply, with the same refusals (then it stays suspended). Its callers are in
        ``session.requests``; the first one's wait decides (``wait_seconds``, else the
        reply deadline a caller was given while it was being suspended)."""
        pool = self.pool
        requests, session.requests = list(session.requests), []
        if wait_seconds is None:
            wait_seconds = max(0.0, (session.reply_deadline or now) - now)
        session.reply_deadline = None
        terms = pool.limits.plan(session.plan) or pool.limits.default_plan
        room = self._make_room(session.user_id, session.org_id, terms, now)
        if isinstance(room, SandboxError):
            for request_id in requests:
                self._refuse(request_id, room.outcome, room)
            pool.release_payload(session.id)
            return
        session.reclaimed_session_id = room.id if room else None
        session.state = SessionState.PROVISIONING
        session.resume_mono = now
        session.opened_by = pool.caller
        pool.seat(session)
        pool.outbox.dirty_sessions.add(session.id)
        session.requests = requests
        self._seat(session, requests[0], wait_seconds, now)

    def resume_session(
        self, request_id: int, session_id: str, wait_seconds: float, now: float
    ) -> None:
        """POST /sessions/{id}/resume: as an open of its thread, by the session's id."""
        session = self.pool.sessions.get(session_id)
        if session is None or not session.live:
            error: SandboxError = (
                SessionEnded(session_id, session.end_reason)
                if session is not None
                else SessionNotFound(session_id)
            )
            self._refuse(request_id, Outcome.ERROR, error)
            return
        self._ask_existing(session, request_id, wait_seconds, now)

    # ------------------------------------------------------------ orgs (orgs.py)

    def _org_rate(
        self, org_id: str, plan: str, per_minute: int, now: float
    ) -> OrgRateLimited | None:
        retry_after = self.pool.orgs.rate_retry_after(org_id, per_minute, now)
        if retry_after is None:
            return None
        return OrgRateLimited(org_id, plan, per_minute, retry_after)

    def _org_retry_after(self, session_ids: Iterable[str], now: float) -> float:
        """When the first of the org's sessions could end on its own (idle timeout or
        lifetime), at the earliest."""
        limits = self.pool.limits
        ends = []
        for sid in session_ids:
            session = self.pool.sessions[sid]
            ends.append(session.active_mono + limits.idle_timeout)
            if limits.max_lifetime > 0:
                ends.append(session.created_mono + limits.max_lifetime)
        return max(1.0, min(ends, default=now) - now)

    def may_take_warm(self, session: Session) -> bool:
        """Whether this session may have a warm pod now: always, unless its org is past
        its plan's share of the warm pool while the pool refills (orgs.py)."""
        if not session.org_id:
            return True
        terms = self.pool.limits.plan(session.plan)
        if terms is None or not terms.shares_warm_pool:
            return True
        prewarm = self.pool.prewarms.get(session.template)
        target = prewarm.current.target if prewarm is not None else 0
        return self.pool.orgs.may_take_warm(
            session.template, session.org_id, terms.warm_share, target
        )

    def took_warm(self, session: Session) -> None:
        if session.org_id:
            self.pool.orgs.took_warm(session.template, session.org_id)

    def oldest_idle(self, session_ids: Iterable[str], now: float) -> Session | None:
        """The least recently active idle session among these, if any (never an active one)."""
        sessions, reclaim_after = self.pool.sessions, self.pool.limits.reclaim_after
        candidates = [s for sid in session_ids if (s := sessions[sid]).is_idle(now, reclaim_after)]
        return min(candidates, key=lambda s: (s.active_mono, s.created_mono), default=None)

    def _user_retry_after(self, session_ids: Iterable[str], now: float) -> float:
        """When the first of these sessions could become idle, at the earliest."""
        quiet_at = [
            self.pool.sessions[sid].active_mono + self.pool.limits.reclaim_after
            for sid in session_ids
        ]
        return max(1.0, min(quiet_at, default=now) - now)

    # ------------------------------------------------------------ the reply deadline

    def reply_due(self, session_id: str, now: float) -> None:
        """A caller's wait may be over: answer it if a pod is coming, refuse it if none
        can (capacity), or wait on if the deadline moved."""
        pool = self.pool
        session = pool.sessions.get(session_id)
        if session is None or session.reply_deadline is None or not session.live:
            return
        if session.state is not SessionState.PROVISIONING:
            return  # suspending: answered once its snapshot is done (suspension.py)
        if session.reply_deadline > now:
            pool.deadlines.push(session.reply_deadline, DeadlineKind.REPLY, session_id)
        elif pool.claiming_session(session_id) or pool.restoring(session_id):
            self.answer_session(session, Outcome.COLD, now)  # provisioning: claiming
        elif self._covered(session_id):
            self.answer_session(session, Outcome.COLD, now)
        elif (pod := pool.inventory.oldest_fresh_idle(session.shape)) is not None:
            # Held back from the warm pool by its org's share, and no new pod can come
            # in time: a warm pod rather than a refusal while pods stand idle.
            self.took_warm(session)
            pool.lease(pod, session, now, warm=False)
            if session.reply_deadline is not None:  # its claim is in flight
                self.answer_session(session, Outcome.COLD, now)
        else:
            self._refuse_capacity(session, now)

    def _covered(self, session_id: str) -> bool:
        """Whether this waiting session has a slot (FCFS): a pod on its way will reach
        it, or the cap leaves room to create one (the create window only delays it)."""
        pool = self.pool
        room = max(0, pool.limits.max_total_jobs - pool.total_pods)
        coming: Counter[Shape] = Counter(pool.lifecycle_in_flight)
        for shape, counts in pool.inventory.shape_counts.items():
            coming[shape] += counts[PodState.PENDING]
        for waiting_id in pool.waiting:
            shape = pool.sessions[waiting_id].shape
            if coming[shape] > 0:
                coming[shape] -= 1  # a pod of its shape on its way reaches it
            elif room > 0:
                room -= 1  # the cap leaves room to create one
            else:
                return False
            if waiting_id == session_id:
                return True
        return False

    def provisioning(self, session_id: str) -> Provisioning | None:
        """Why a provisioning session has no sandbox yet (None once it has one)."""
        pool = self.pool
        session = pool.sessions.get(session_id)
        if session is None or session.state is not SessionState.PROVISIONING:
            return None
        if pool.claiming_session(session_id):
            return Provisioning(WaitReason.CLAIMING)
        if pool.restoring(session_id):
            return Provisioning(WaitReason.RESTORING)
        rejected = pool.create_rejected
        if rejected is not None:
            return Provisioning(WaitReason.POOL_CONDITION, condition=rejected)
        pending = [p for p in pool.pods.values() if p.state is PodState.PENDING]
        reasons = sorted((p for p in pending if p.detail), key=lambda p: p.created_at)
        if reasons:
            return Provisioning(WaitReason.POD_REPORTS, pod_detail=reasons[-1].detail)
        if pool.cap_blocked:
            return Provisioning(WaitReason.CAP_REACHED, max_total_jobs=pool.limits.max_total_jobs)
        if pending or pool.creates_in_flight:
            return Provisioning(WaitReason.POD_STARTING)
        return Provisioning(WaitReason.NO_POD_YET)

    # ------------------------------------------------------------ answers

    def _answer(
        self,
        request_id: int,
        outcome: Outcome,
        session_id: str | None = None,
        *,
        reclaimed: str | None = None,
    ) -> None:
        self.pool.outbox.answers.append(Answer(request_id, outcome, session_id, reclaimed))

    def _refuse(self, request_id: int, outcome: Outcome, error: SandboxError) -> None:
        self.pool.outbox.answers.append(Answer(request_id, outcome, error=error))

    def answer_session(self, session: Session, outcome: Outcome, now: float) -> None:
        """Answer everyone who asked for this thread: the first creates, the rest retry.
        The open is audited now, when its caller is given the session."""
        session.reply_deadline = None
        opener, session.opened_by = session.opened_by, ""
        self.pool.audit(AuditAction.OPEN, session, now, reason=outcome.value, caller=opener)
        for i, request_id in enumerate(session.requests):
            self._answer(
                request_id,
                outcome if i == 0 else Outcome.EXISTING,
                session.id,
                reclaimed=session.reclaimed_session_id if i == 0 else None,
            )
        session.requests.clear()
        self.pool.outbox.dirty_sessions.add(session.id)

    def _refuse_capacity(self, session: Session, now: float) -> None:
        """No slot freed in time: the request fails and leaves no session behind (a
        resuming one is suspended again, with its archive)."""
        pool = self.pool
        for request_id in session.requests:
            error = CapacityExhausted(pool.limits.max_total_jobs, CAPACITY_RETRY_AFTER)
            self._refuse(request_id, Outcome.CAPACITY, error)
        session.requests.clear()
        session.reply_deadline = None
        if session.resuming:
            pool.back_to_suspended(session, now)
            return
        pool.untrack_live(session)
        pool.release_payload(session.id)
        del pool.sessions[session.id]
        pool.outbox.dirty_sessions.discard(session.id)
