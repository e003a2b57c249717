"""Busy-aware idling: the sandbox's status hook is asked before a session is ended for
its idle timeout or reclaimed, and its release hook before its pod is deleted.

``BusyChecks`` keeps the checks in flight and the answers; ``Idling`` decides (pure,
``now`` passed in) over the pool's shared state (core.py); the scheduler loop makes
the HTTP calls (hooks.py) and feeds the answers back as commands. A status
check the pool waits for has a fallback deadline, so a lost answer never strands a
session: unanswered means not busy, and a hung sandbox still ends.
"""

from __future__ import annotations

from ..model import (
    ActivitySource,
    BusyAnswer,
    Limits,
    Plan,
    Pod,
    Session,
    SessionState,
)
from .core import PoolCore
from .deadlines import DeadlineKind
from .effects import StatusCheck

# Beyond hook_timeout, how long the pool waits for an answer the loop's call (bounded
# by hook_timeout) should already have brought: a round's commit, a busy event loop.
CHECK_MARGIN = 1.0


def hook_target(pod: Pod | None) -> tuple[str, str] | None:
    """Where and with which create id a pod's hooks are called; None when they cannot
    be (no address yet, or a pod from a version that gave it no create id)."""
    if pod is None or not pod.address or not pod.create_id:
        return None
    return pod.address, pod.create_id


def unanswered(within: float) -> BusyAnswer:
    return BusyAnswer(False, f"none within {within:g}s", answered=False)


class BusyChecks:
    """Status checks in flight, and the latest not-busy answer of each session (what
    its end records, if it ends soon after)."""

    def __init__(self, limits: Limits) -> None:
        # How long an answer may take before it counts as none, and how long a not-busy
        # answer stays the reason a session is reclaimed.
        self.wait = limits.hook_timeout + CHECK_MARGIN
        self.pending: dict[str, float] = {}  # session id -> its fallback deadline
        self._answers: dict[str, tuple[BusyAnswer, float]] = {}

    def start(self, session_id: str, now: float) -> float:
        """A check is asked now: the deadline after which it counts as unanswered."""
        due = now + self.wait
        self.pending[session_id] = due
        return due

    def expired(self, session_id: str, now: float) -> bool:
        """The fallback deadline of this session's check has passed with no answer
        (a later check's deadline, pushed after an answer, is not yet due)."""
        due = self.pending.get(session_id)
        if due is None or due > now:
            return False
        del self.pending[session_id]
        return True

    def answered(self, session_id: str, answer: BusyAnswer, now: float) -> bool:
        """Record an answer; True if the pool was waiting for it (an idle check)."""
        if not answer.busy:
            self._answers[session_id] = (answer, now)
        else:
            self._answers.pop(session_id, None)
        return self.pending.pop(session_id, None) is not None

    def recent(self, session_id: str, now: float) -> BusyAnswer | None:
        """The not-busy answer given for this session just now, if any."""
        found = self._answers.get(session_id)
        if found is None or now - found[1] > self.wait:
            return None
        return found[0]

    def forget(self, session_id: str) -> None:
        self.pending.pop(session_id, None)
        self._answers.pop(session_id, None)


class Idling:
    def __init__(self, pool: PoolCore) -> None:
        self.pool = pool
        self.busy = BusyChecks(pool.limits)

    def reclaim_checks(
        self,
        user_id: str,
        thread_id: str,
        now: float,
        *,
        org_id: str = "",
        plan: str | None = None,
    ) -> list[StatusCheck]:
        """Which sandboxes to ask before a new thread of this user is opened: those of
        its sessions a reclaim could pick, counting those that turn idle while the
        answers come (so none is reclaimed unasked). Read-only."""
        pool = self.pool
        live = pool.live_by_user.get((org_id, user_id), ())
        terms = pool.limits.plan(plan)
        if (
            not pool.limits.hooks
            or terms is None
            or _seated(pool, (org_id, user_id, thread_id))
            or not _at_a_limit(pool, terms, org_id, len(live))
        ):
            return []
        by = now + self.busy.wait
        checks = []
        for sid in sorted(live):
            session = pool.sessions[sid]
            target = hook_target(pool.pods.get(session.pod_name or ""))
            if target is not None and session.is_idle(by, pool.limits.reclaim_after):
                checks.append(StatusCheck(sid, *target))
        return checks

    def busy_answer(self, session_id: str, answer: BusyAnswer, now: float) -> None:
        """A sandbox's status answer. Busy counts as activity; otherwise a session whose
        idle check this was ends now if it is still idle (activity may have come)."""
        session = self.pool.sessions.get(session_id)
        if session is None or session.state is not SessionState.READY:
            return
        if answer.busy:
            self.pool.touch(session_id, now, ActivitySource.BUSY, answer.detail)
        if self.busy.answered(session_id, answer, now):
            self._idle_due(session, answer, now)

    def idle_due(self, session_id: str, now: float) -> None:
        session = self.pool.sessions.get(session_id)
        if session is not None and session.state is SessionState.READY:
            self._idle_due(session, None, now)

    def check_due(self, session_id: str, now: float) -> None:
        session = self.pool.sessions.get(session_id)
        if session is None or session.state is not SessionState.READY:
            return
        if self.busy.expired(session_id, now):  # the sandbox did not answer in time
            self._idle_due(session, unanswered(self.busy.wait), now)

    def _idle_due(self, session: Session, answer: BusyAnswer | None, now: float) -> None:
        """End a session whose idle timeout passed, or watch its next one. With hooks,
        the first time it is due its sandbox is asked first (``answer`` None)."""
        pool = self.pool
        due = session.active_mono + pool.limits.idle_timeout
        if due > now:
            pool.deadlines.push(due, DeadlineKind.IDLE, session.id)  # activity moved it on
            return
        target = hook_target(pool.pods.get(session.pod_name or ""))
        if answer is None and pool.limits.hooks and target is not None:
            if session.id not in self.busy.pending:
                due = self.busy.start(session.id, now)
                pool.deadlines.push(due, DeadlineKind.BUSY_CHECK, session.id)
                pool.outbox.status_checks.append(StatusCheck(session.id, *target))
            return
        pool.idle_out(session, now, answer)


def _at_a_limit(pool: PoolCore, terms: Plan, org_id: str, live: int) -> bool:
    """The user at their plan's limit, or their org at its cap: a reclaim may follow."""
    if live >= (terms.max_sessions_per_user or pool.limits.max_sessions_per_user):
        return True
    cap = terms.max_pods_per_org
    return bool(org_id) and cap is not None and len(pool.live_by_org.get(org_id, ())) >= cap


def _seated(pool: PoolCore, thread: tuple[str, str, str]) -> bool:
    """The thread's session holds or awaits a pod (a suspended one would be resumed,
    which may reclaim as an open does)."""
    sid = pool.live_by_thread.get(thread)
    return sid is not None and pool.sessions[sid].seated
