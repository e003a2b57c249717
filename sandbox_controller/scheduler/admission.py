"""Admission and reclaim: who gets a session when a builder opens a thread, who is
refused (the user's limit, no capacity in time, a thread of another user), which of a
user's idle sessions is reclaimed to make room, and what each caller is told.

Pure decisions on the pool's shared state (core.py), ``now`` passed in; the answers
go to the outbox, for the loop to deliver once the round is committed.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

from ..errors import CapacityExhausted, SandboxError, ThreadOwnedByOtherUser, UserSessionLimit
from ..model import (
    AuditAction,
    EndReason,
    Outcome,
    PodState,
    Provisioning,
    Session,
    SessionState,
    WaitReason,
)
from .core import PoolCore
from .deadlines import DeadlineKind
from .effects import Answer

# When a caller refused for capacity may try again.
CAPACITY_RETRY_AFTER = 5.0


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
    ) -> None:
        """A builder opened an agent thread. The answer arrives via the outbox. A retry
        for a thread with a live session gets that session; its metadata is not changed."""
        pool = self.pool
        existing_id = pool.live_by_thread.get(thread_id)
        if existing_id is not None:
            existing = pool.sessions[existing_id]
            if existing.user_id != user_id:
                self._refuse(request_id, Outcome.ERROR, ThreadOwnedByOtherUser(thread_id))
                return
            existing.requests.append(request_id)
            if existing.reply_deadline is None:
                self._answer(request_id, Outcome.EXISTING, existing.id)
            return

        reclaimed: Session | None = None
        live = pool.live_by_user.get(user_id, ())
        if len(live) >= pool.limits.max_sessions_per_user:
            reclaimed = self.oldest_idle(live, now)
            if reclaimed is None:
                limit = pool.limits.max_sessions_per_user
                retry_after = self._user_retry_after(live, now)
                error = UserSessionLimit(limit, len(live), retry_after)
                self._refuse(request_id, Outcome.USER_LIMIT, error)
                return
            answer = pool.recent_busy_answer(reclaimed.id, now)  # loop.py asked just before
            pool.end_session(reclaimed.id, EndReason.RECLAIMED, now, answer)

        pool.prewarm.arrival(now)
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
            created_mono=now,
            active_mono=now,
            opened_by=pool.caller,
        )
        pool.track_live(session)
        if pool.limits.hooks:
            pool.hold_payload(session.id, request_id)
        session.reply_deadline = now + wait_seconds
        pod = pool.inventory.oldest_fresh_idle()
        if pod is not None:
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
        if session.reply_deadline > now:
            pool.deadlines.push(session.reply_deadline, DeadlineKind.REPLY, session_id)
        elif pool.claiming_session(session_id):
            self.answer_session(session, Outcome.COLD, now)  # provisioning: claiming
        elif self._covered(session_id):
            self.answer_session(session, Outcome.COLD, now)
        else:
            self._refuse_capacity(session)

    def _covered(self, session_id: str) -> bool:
        """Whether this waiting session has a slot (FCFS): a pod on its way will reach
        it, or the cap leaves room to create one (the create window only delays it)."""
        pool = self.pool
        room = max(0, pool.limits.max_total_jobs - pool.total_pods)
        coming = pool.counts[PodState.PENDING] + pool.creates_in_flight + room
        for position, waiting_id in enumerate(pool.waiting):
            if position >= coming:
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

    def _refuse_capacity(self, session: Session) -> None:
        """No slot freed in time: the request fails and leaves no session behind."""
        pool = self.pool
        for request_id in session.requests:
            error = CapacityExhausted(pool.limits.max_total_jobs, CAPACITY_RETRY_AFTER)
            self._refuse(request_id, Outcome.CAPACITY, error)
        session.requests.clear()
        session.reply_deadline = None
        pool.untrack_live(session)
        pool.release_payload(session.id)
        del pool.sessions[session.id]
        pool.outbox.dirty_sessions.discard(session.id)
