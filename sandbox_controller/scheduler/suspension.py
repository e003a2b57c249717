"""Suspend and resume: a session gives its pod back and keeps its work as an archive in
the snapshot store; the next open of its thread (or a resume) restores it into a new pod
before the session is ready again.

Suspending: a ready session turns ``suspending`` (it keeps its pod, which nobody is
routed to, and no longer counts toward its user's limit); the loop streams the pod's
``POST /_sandbox/snapshot`` into the store; the answer comes back as a command. Kept:
the session turns ``suspended``, its archive recorded in the same round (``Snapshot``,
stored with the session), and its pod is deleted after that round commits. Not kept
(no hook, an error, a timeout, too large, the store down): the session ends as it would
have without suspension, ``end_detail.snapshot`` saying why, and its pod goes.

Resuming: a suspended session is seated again like a new open (the user's limit and
the cap apply, with the same refusals), takes a warm pod or waits for one, is claimed,
and then the loop streams the archive into the pod's ``POST /_sandbox/restore``. Done:
the session is ready (``resumed``), the archive's record is cleared in that round and
the object deleted after it. Failed (the restore, the claim, the pod, the start-up
timeout): that pod is deleted and the session is suspended again with its archive; its
callers hear 503 ``restore_failed``.

Which state survives a leader's crash is what the rounds committed: a ``suspending``
row is read back as ``ready`` on its adopted pod and suspended again at once (the
snapshot taken anew; an archive uploaded meanwhile has no record and the sweep takes
it); a resuming row (provisioning, with an archive) waits for a pod and is restored by
the new leader. An archive's object is deleted only after the round that removed its
record, so a crash leaves at worst an object without a record, never the reverse.

Pure decisions on the pool's shared state (core.py), ``now`` passed in.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from ..errors import RESTORE_RETRY_AFTER, SessionRestoreFailed
from ..model import (
    AuditAction,
    BusyAnswer,
    EndReason,
    Outcome,
    Pod,
    PodState,
    Session,
    SessionState,
    Snapshot,
    snapshot_key,
)
from .core import PoolCore
from .deadlines import DeadlineKind
from .effects import Answer, RestoreCall, SnapshotCall
from .idling import hook_target

# Beyond snapshot_timeout, how long the pool waits for an answer the loop's call (bounded
# by it) should already have brought.
CALL_MARGIN = 5.0
NO_HOOK = "not_supported: the sandbox cannot be called (no claim secret)"


@dataclass(frozen=True)
class Pending:
    """One snapshot or restore call in flight for a session."""

    attempt: int
    pod_name: str
    key: str
    started: float  # monotonic: the suspend's or resume's duration is measured from it
    due: float  # its fallback deadline
    taken_at: float = 0.0  # a snapshot's wall time (its record's taken_at)
    # A snapshot: how the session ends if no archive can be kept, and the status answer
    # that let it go. A restore: whether its pod came from the warm pool.
    reason: EndReason = EndReason.IDLE_TIMEOUT
    asked: BusyAnswer | None = None
    warm: bool = False


class Suspension:
    def __init__(self, pool: PoolCore) -> None:
        self.pool = pool
        self.snapshots: dict[str, Pending] = {}
        self.restores: dict[str, Pending] = {}
        self._attempts = itertools.count(1)

    # ------------------------------------------------------------ suspending

    def suspend(
        self, session: Session, reason: EndReason, now: float, asked: BusyAnswer | None = None
    ) -> None:
        """Take a ready session's snapshot, then give its pod back; if no archive can be
        kept, end it with ``reason`` (and ``asked``), as without suspension."""
        pool = self.pool
        pod = pool.pods.get(session.pod_name or "")
        target = hook_target(pod)
        if pod is None or target is None:
            pool.end_session(session.id, reason, now, asked, snapshot=NO_HOOK)
            return
        taken_at = pool.wall(now)
        key = snapshot_key(session.id, taken_at)
        due = now + pool.limits.snapshot_timeout + CALL_MARGIN
        attempt = next(self._attempts)
        self.snapshots[session.id] = Pending(
            attempt, pod.name, key, now, due, taken_at, reason, asked
        )
        session.state = SessionState.SUSPENDING
        pool.unseat(session)
        pool.outbox.dirty_sessions.add(session.id)
        pool.outbox.snapshots.append(SnapshotCall(attempt, session.id, pod.name, *target, key))
        pool.deadlines.push(due, DeadlineKind.SNAPSHOT, session.id)

    def snapshot_taken(
        self,
        session_id: str,
        attempt: int,
        key: str,
        size: int | None,
        failure: tuple[str, str] | None,
        now: float,
    ) -> None:
        """A snapshot call came back: ``size`` bytes kept under ``key``, or ``failure``
        (an outcome of sandbox_snapshots_total and words). An archive nobody will
        record (the attempt given up, the session ended meanwhile) is deleted."""
        pool = self.pool
        pending = self.snapshots.get(session_id)
        if pending is None or pending.attempt != attempt:
            if size is not None:
                pool.outbox.archive_deletes.append(key)
            return
        del self.snapshots[session_id]
        session = pool.sessions.get(session_id)
        if session is None or session.state is not SessionState.SUSPENDING:
            if size is not None:
                pool.outbox.archive_deletes.append(key)
            return
        if failure is not None or size is None:
            outcome, words = failure or ("hook_error", "no size")
            pool.outbox.snapshot_outcomes.append(outcome)
            pool.end_session(
                session_id, pending.reason, now, pending.asked, snapshot=f"{outcome}: {words}"
            )
            return
        pool.outbox.snapshot_outcomes.append("ok")
        pool.outbox.snapshot_bytes.append(size)
        pool.outbox.suspend_seconds.append(now - pending.started)
        expires_at = pending.taken_at + pool.limits.snapshot_retention
        session.snapshot = Snapshot(key, size, pending.taken_at, expires_at)
        session.state = SessionState.SUSPENDED
        pool.outbox.dirty_sessions.add(session_id)
        pool.audit(AuditAction.SUSPEND, session, now, reason=pending.reason.value)
        pod = pool.pods.get(session.pod_name or "")
        session.pod_name = None
        if pod is not None:
            pool.delete_pod(pod, now)  # after its release hook ("suspended")
        self.watch_expiry(session)
        if session.requests:
            # Asked for while its snapshot was taken: resumed now, as a new ask would be.
            pool.resume_waiting(session, now)

    def snapshot_due(self, session_id: str, now: float) -> None:
        pending = self.snapshots.get(session_id)
        if pending is not None and pending.due <= now:
            failure = ("timeout", "no answer in time")
            self.snapshot_taken(session_id, pending.attempt, pending.key, None, failure, now)

    # ------------------------------------------------------------ retention

    def watch_expiry(self, session: Session) -> None:
        if session.snapshot is not None:
            # The expiry is wall time; deadlines run on the monotonic clock.
            due = session.snapshot.expires_at - self.pool.wall(0.0)
            self.pool.deadlines.push(due, DeadlineKind.ARCHIVE_EXPIRY, session.id)

    def expiry_due(self, session_id: str, now: float) -> None:
        """A suspended session kept past its retention ends, and its archive goes. A
        resuming one is let finish (should it fail, it is watched again)."""
        session = self.pool.sessions.get(session_id)
        if session is None or session.state is not SessionState.SUSPENDED:
            return
        if session.snapshot is not None and session.snapshot.expires_at <= self.pool.wall(now):
            self.pool.end_session(session_id, EndReason.SNAPSHOT_EXPIRED, now)
        else:
            self.watch_expiry(session)

    # ------------------------------------------------------------ resuming

    def restore(self, session: Session, pod: Pod, now: float, *, warm: bool) -> None:
        """Its new pod took the claim: stream the archive in before it is ready."""
        target = hook_target(pod)
        if target is None or session.snapshot is None:
            self.resume_failed(session, now, NO_HOOK)
            return
        due = now + self.pool.limits.snapshot_timeout + CALL_MARGIN
        attempt = next(self._attempts)
        key = session.snapshot.key
        self.restores[session.id] = Pending(attempt, pod.name, key, now, due, warm=warm)
        self.pool.outbox.restores.append(RestoreCall(attempt, session.id, pod.name, *target, key))
        self.pool.deadlines.push(due, DeadlineKind.RESTORE, session.id)

    def restore_answered(
        self, session_id: str, attempt: int, failure: tuple[str, str] | None, now: float
    ) -> None:
        pool = self.pool
        pending = self.restores.get(session_id)
        if pending is None or pending.attempt != attempt:
            return  # late: given up already, or the session ended
        del self.restores[session_id]
        session = pool.sessions.get(session_id)
        if session is None or not session.resuming or session.snapshot is None:
            return
        pod = pool.pods.get(pending.pod_name)
        if failure is not None or pod is None or pod.state is not PodState.ASSIGNED:
            reason, words = failure or ("hook_error", "the pod was lost during the restore")
            self.resume_failed(session, now, f"{reason}: {words}")
            return
        pool.outbox.snapshot_outcomes.append("restored")
        pool.outbox.resume_seconds.append(now - session.resume_mono)
        pool.outbox.archive_deletes.append(session.snapshot.key)
        session.snapshot = None
        session.resumed = True
        pool.audit(AuditAction.RESUME, session, now)
        pool.hand_over(session, now, Outcome.WARM if pending.warm else Outcome.COLD)

    def restore_due(self, session_id: str, now: float) -> None:
        pending = self.restores.get(session_id)
        if pending is not None and pending.due <= now:
            self.restore_answered(session_id, pending.attempt, ("timeout", "no answer"), now)

    def restore_pod_lost(self, session_id: str, pod_name: str, now: float) -> bool:
        """The pod its archive was being restored into is lost: suspended again."""
        pending = self.restores.get(session_id)
        if pending is None or pending.pod_name != pod_name:
            return False
        self.restore_answered(session_id, pending.attempt, ("hook_error", "pod lost"), now)
        return True

    def restoring(self, session_id: str) -> bool:
        return session_id in self.restores

    def resume_failed(self, session: Session, now: float, detail: str) -> None:
        """Its callers hear 503 restore_failed; the session is suspended again."""
        pool = self.pool
        pool.outbox.snapshot_outcomes.append("restore_failed")
        for request_id in session.requests:
            error = SessionRestoreFailed(session.id, detail, RESTORE_RETRY_AFTER)
            pool.outbox.answers.append(Answer(request_id, Outcome.ERROR, error=error))
        session.requests.clear()
        self.back_to_suspended(session, now)

    def back_to_suspended(self, session: Session, now: float) -> None:
        """A resume given up (refused for capacity, or failed): its pod, if any, goes;
        its archive stays, as its record does."""
        pool = self.pool
        self.restores.pop(session.id, None)
        pool.drop_claim(session.id)
        pool.waiting.pop(session.id, None)
        session.state = SessionState.SUSPENDED
        pool.unseat(session)
        pod = pool.pods.get(session.pod_name or "")
        session.pod_name = None
        if pod is not None:
            pool.delete_pod(pod, now)  # it may hold part of the archive: never reused
        session.reply_deadline = None
        pool.release_payload(session.id)
        pool.outbox.dirty_sessions.add(session.id)
        self.watch_expiry(session)

    def forget(self, session_id: str) -> None:
        """The session ended: no restore of it is waited for. (A snapshot in flight is
        kept: its archive, should it come, is deleted when its answer comes.)"""
        self.restores.pop(session_id, None)

    def keys(self) -> set[str]:
        """Every archive the pool may still record or needs: the orphan sweep spares
        them (those of suspended and resuming sessions, and of snapshots in flight)."""
        keys = {p.key for p in self.snapshots.values()}
        for session in self.pool.sessions.values():
            if session.snapshot is not None:
                keys.add(session.snapshot.key)
        return keys
