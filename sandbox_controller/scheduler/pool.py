"""The pool brain: every scheduling decision, over in-memory state, with no I/O.

Callers feed in what happened (a request, a pod event, the passing of time) along
with ``now``; the Pool updates its state and appends what must follow to ``outbox``:
answers for callers, pods to create or delete, rows to persist. The scheduler loop
(rounds.py) carries those effects out. Nothing here awaits, so every policy can be
tested by calling methods with a hand-set clock.

The Pool keeps the shared state (sessions, pods, deadlines, the outbox), the life of
a session, ``tick``, and the dispatch of events and deadlines to the policies, each
of which owns its own state and decisions: admission.py (who gets a session, who is
refused or reclaimed), claiming.py (the claim hook), idling.py (busy-aware idling),
prewarm.py (the warm pool's size) and lifecycle.py (creating and deleting pods).
What it shows of itself (counts, ``status``) is in views.py.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Mapping
from typing import TypeVar

from ..backends.base import ErrorKind, PodStatus, assigned_labels, attribution_labels
from ..model import (
    CONTROLLER_CALLER,
    ActivitySource,
    AuditAction,
    AuditEvent,
    BusyAnswer,
    EndDetail,
    EndReason,
    Limits,
    Outcome,
    Pod,
    PodState,
    Provisioning,
    SecretRef,
    Session,
    SessionState,
    Shape,
    ThreadKey,
    UserKey,
    ending_action,
    thread_key,
    user_key,
)
from .admission import Admission
from .claiming import NO_ANSWER, ClaimFailure, Claiming
from .deadlines import DeadlineKind, Deadlines
from .effects import Outbox, StatusCheck
from .idling import Idling
from .inventory import PodInventory
from .lifecycle import ROUTE_LEASE as ROUTE_LEASE  # where its users always found it
from .lifecycle import PodLifecycle
from .orgs import OrgLedger
from .orphans import Orphans
from .prewarm import Prewarm
from .suspension import Suspension
from .views import PoolViews

K = TypeVar("K")


def new_session_id() -> str:
    return uuid.uuid4().hex


class Pool(PoolViews):
    def __init__(
        self,
        limits: Limits,
        template_hash: str,
        *,
        new_id: Callable[[], str] = new_session_id,
        template_hashes: Mapping[str, str] | None = None,
    ) -> None:
        self.limits = limits
        templates = limits.all_templates
        hashes = template_hashes or {}
        self.inventory = PodInventory(
            template_hash, {t.name: hashes.get(t.name, template_hash) for t in templates}
        )
        self.sessions: dict[str, Session] = {}  # live ones, plus ended ones not yet pruned
        self.waiting: OrderedDict[str, None] = OrderedDict()  # provisioning sessions, FCFS
        # Live sessions by (org, user), by (org, user, thread) and by org: a thread id is
        # unique per org and user, and so is a user's limit (README "Orgs and plans").
        self.live_by_user: defaultdict[UserKey, set[str]] = defaultdict(set)
        self.live_by_thread: dict[ThreadKey, str] = {}
        self.live_by_org: defaultdict[str, set[str]] = defaultdict(set)
        self.orgs = OrgLedger()
        self.deleting_users: set[str] = set()  # DELETE /users/{id} under way
        self.deadlines = Deadlines()
        self.outbox = Outbox()
        self.wall_offset = 0.0  # wall minus monotonic time, set each round (rounds.py)
        # Who asked for the command being applied (the audit log's caller), set by the
        # loop around each command; the pool's own decisions are the controller's.
        self.caller = CONTROLLER_CALLER
        # Each template's warm pool policy (the default's first); ``prewarm`` is the
        # default template's, as before templates.
        self.prewarms = {
            t.name: Prewarm(
                dataclasses.replace(
                    limits, prewarm_pool_size=t.prewarm_pool_size, prewarm=t.prewarm
                )
            )
            for t in templates
        }
        self.prewarm = self.prewarms[templates[0].name]
        self.admission = Admission(self, new_id)
        self.lifecycle = PodLifecycle(self)
        self.claiming = Claiming(self)
        self.idling = Idling(self)
        self.suspension = Suspension(self)
        self.orphans = Orphans()  # pods a rebuild holds for an operator (orphans.py)
        # Which policy acts when a deadline of each kind comes (the wake-ups only wake:
        # the tick's reconcile does the rest).
        self._on_deadline: dict[DeadlineKind, Callable[[str, float], None]] = {
            DeadlineKind.REPLY: self.admission.reply_due,
            DeadlineKind.IDLE: self.idling.idle_due,
            DeadlineKind.BUSY_CHECK: self.idling.check_due,
            DeadlineKind.LIFETIME: self._lifetime_due,
            DeadlineKind.SESSION_STARTUP: self._startup_due,
            DeadlineKind.POD_STARTUP: self.lifecycle.startup_due,
            DeadlineKind.POD_DELETE: self.lifecycle.delete_due,
            DeadlineKind.CLAIM: self.claiming.due,
            DeadlineKind.SNAPSHOT: self.suspension.snapshot_due,
            DeadlineKind.RESTORE: self.suspension.restore_due,
            DeadlineKind.ARCHIVE_EXPIRY: self.suspension.expiry_due,
            DeadlineKind.CREATE_BACKOFF: _wake_up,
            DeadlineKind.PREWARM: _wake_up,
        }

    def next_request_id(self) -> int:
        return self.admission.next_request_id()

    def take_outbox(self) -> Outbox:
        out, self.outbox = self.outbox, Outbox()
        return out

    def next_deadline(self) -> float | None:
        return self.deadlines.earliest()

    def wall(self, now: float) -> float:
        return now + self.wall_offset  # now: monotonic; what is stored and shown: wall

    def from_wall(self, at: float) -> float:
        return at - self.wall_offset  # stored times: the only truth across a restart

    def audit(
        self,
        action: AuditAction,
        session: Session,
        now: float,
        *,
        reason: str | None = None,
        caller: str | None = None,
    ) -> None:
        """Record a state change of this session for the audit log (sent on commit)."""
        event = AuditEvent(
            action=action.value,
            caller=caller or self.caller,
            at=self.wall(now),
            session_id=session.id,
            user_id=session.user_id,
            # Sessions may carry an org (a newer schema); read it where it exists.
            org_id=session.org_id or None,
            reason=reason,
            pod=session.pod_name,
        )
        self.outbox.audit.append(event)

    # ------------------------------------------------------------ sessions

    def track_live(self, session: Session) -> None:
        self.sessions[session.id] = session
        self.live_by_thread[thread_key(session)] = session.id
        if session.seated:
            self.seat(session)

    def seat(self, session: Session) -> None:
        """It holds or awaits a pod: it counts toward its user's and its org's limits."""
        self.live_by_user[user_key(session)].add(session.id)
        self.live_by_org[session.org_id].add(session.id)

    def unseat(self, session: Session) -> None:
        """Suspending or suspended: live (its thread's), but counted toward no limit."""
        _discard(self.live_by_user, user_key(session), session.id)
        _discard(self.live_by_org, session.org_id, session.id)

    def untrack_live(self, session: Session) -> None:
        self.unseat(session)
        if self.live_by_thread.get(thread_key(session)) == session.id:
            del self.live_by_thread[thread_key(session)]
        self.waiting.pop(session.id, None)

    def watch_session_deadlines(self, session: Session) -> None:
        limits = self.limits
        if session.state is SessionState.READY:
            due = session.active_mono + limits.idle_timeout
            self.deadlines.push(due, DeadlineKind.IDLE, session.id)
        if limits.max_lifetime > 0:
            due = session.created_mono + limits.max_lifetime
            self.deadlines.push(due, DeadlineKind.LIFETIME, session.id)
        if session.state is SessionState.PROVISIONING:
            due = self._startup_from(session) + limits.startup_timeout
            self.deadlines.push(due, DeadlineKind.SESSION_STARTUP, session.id)
        if session.state is SessionState.SUSPENDED:
            self.suspension.watch_expiry(session)

    @staticmethod
    def _startup_from(session: Session) -> float:
        """A resume's start-up timeout runs from the resume, not the session's start."""
        return session.resume_mono if session.resuming else session.created_mono

    def lease(self, pod: Pod, session: Session, now: float, *, warm: bool) -> None:
        """Give the pod to the session for good. It is handed over at once, or, when
        the sandbox hooks are on and the pod can be claimed, once its claim hook has
        accepted (claim_answered); until then the session stays provisioning."""
        self.lifecycle.set_state(pod, PodState.ASSIGNED)
        pod.session_id = session.id
        session.pod_name = pod.name
        self.waiting.pop(session.id, None)
        self.outbox.dirty_sessions.add(session.id)
        org = session.org_id
        keys = self.limits.label_metadata_keys
        self.outbox.labels[pod.name] = {
            **assigned_labels(session.id),
            **attribution_labels(session.metadata, keys, org),
        }
        if self.limits.hooks and pod.create_id and pod.address:
            self.claiming.start(pod, session, now, warm=warm)
        elif session.resuming:
            self.suspension.restore(session, pod, now, warm=warm)  # fails: no claim secret
        else:
            self.hand_over(session, now, Outcome.WARM if warm else Outcome.COLD)

    def claimed(self, session: Session, pod: Pod, now: float, *, warm: bool) -> None:
        """Its pod took the claim: ready, or, resuming, its archive is restored first."""
        if session.resuming:
            self.suspension.restore(session, pod, now, warm=warm)
        else:
            self.hand_over(session, now, Outcome.WARM if warm else Outcome.COLD)

    def hand_over(self, session: Session, now: float, outcome: Outcome) -> None:
        session.state = SessionState.READY
        # A new sandbox counts as fresh activity: the idle clock starts at hand-over.
        if now >= session.active_mono:
            session.active_mono, session.last_active_at = now, self.wall(now)
        session.activity_source, session.activity_detail = ActivitySource.HANDOVER, None
        self.outbox.dirty_sessions.add(session.id)
        self.watch_session_deadlines(session)
        if session.reply_deadline is not None:
            self.admission.answer_session(session, outcome, now)
        self.audit(AuditAction.CLAIM, session, now, reason=outcome.value)
        self.claiming.release_payload(session.id)

    def end_session(
        self,
        session_id: str,
        reason: EndReason,
        now: float,
        asked: BusyAnswer | None = None,
        *,
        claim_answer: str | None = None,
        eviction: str | None = None,
        snapshot: str | None = None,
    ) -> bool:
        """End a live session and give its pod back (by deleting it). False if not live.
        ``asked``: the status hook's answer that let it end; ``claim_answer``: why its
        claim was given up; ``eviction``: the platform's words for its pod's eviction;
        ``snapshot``: why it was not suspended instead (each recorded as why). Its
        archive, if it has one, goes after this round (record first, then object)."""
        session = self.sessions.get(session_id)
        if session is None or not session.live:
            return False
        session.state = SessionState.ENDED
        session.end_reason = reason
        session.ended_at = self.wall(now)
        session.end_detail = EndDetail(
            session.last_active_at,
            session.activity_source,
            asked.describe() if asked else None,
            claim_answer,
            eviction,
            snapshot,
        )
        if session.snapshot is not None:
            self.outbox.archive_deletes.append(session.snapshot.key)
            session.snapshot = None
        self.suspension.forget(session_id)
        self.busy.forget(session_id)
        self.untrack_live(session)
        self.claims.drop(session.id)  # a claim's late answer is ignored
        self.claiming.release_payload(session.id)
        self.outbox.dirty_sessions.add(session.id)
        self.outbox.ended.append(reason)
        if session.reply_deadline is not None:
            # Ended before its caller heard back (a start-up timeout shorter than the
            # wait): the caller learns the ending, not a silent drop.
            self.admission.answer_session(session, Outcome.COLD, now)
        self.audit(ending_action(reason), session, now, reason=reason.value)
        if session.pod_name is not None:
            pod = self.pods.get(session.pod_name)
            if pod is not None:
                self.lifecycle.delete(pod, now)
        return True

    def touch(
        self, session_id: str, at: float, source: ActivitySource, detail: str | None = None
    ) -> bool:
        """Activity on a live session at ``at`` (monotonic), from ``source``; older news
        than the latest is dropped (a proxy's batch may arrive after a touch)."""
        session = self.sessions.get(session_id)
        if session is None or not session.live:
            return False
        if at > session.active_mono:
            session.active_mono, session.last_active_at = at, self.wall(at)
            session.activity_source, session.activity_detail = source, detail
            self.outbox.dirty_sessions.add(session_id)
        return True

    def end_user(self, user_id: str, now: float) -> tuple[int, int]:
        """DELETE /users/{id}: no session opens for the user until ``forget_user``, and
        every live one ends (``deleted``: release hook, then its pod deleted). How many
        sessions ended, and how many pods go with them."""
        self.deleting_users.add(user_id)
        ended = pods = 0
        # Across orgs: a user id names one person wherever they work (README).
        live = (sid for (_, user, _), sid in self.live_by_thread.items() if user == user_id)
        for sid in sorted(live):
            pod_name = self.sessions[sid].pod_name
            if self.end_session(sid, EndReason.DELETED, now):
                ended += 1
                pods += pod_name is not None and pod_name in self.pods
        return ended, pods

    def forget_user(self, user_id: str) -> None:
        """The user's ended sessions kept in memory go (before their rows are purged:
        then no later round can write one back)."""
        for sid in [sid for sid, s in self.sessions.items() if s.user_id == user_id]:
            if not self.sessions[sid].live:
                del self.sessions[sid]
                self.outbox.dirty_sessions.discard(sid)

    def allow_user(self, user_id: str) -> None:
        """The deletion is over: sessions may open for the user again."""
        self.deleting_users.discard(user_id)

    def _lifetime_due(self, session_id: str, now: float) -> None:
        session = self.sessions.get(session_id)
        if session is not None and session.live:
            self.end_session(session_id, EndReason.MAX_LIFETIME, now)

    def _startup_due(self, session_id: str, now: float) -> None:
        session = self.sessions.get(session_id)
        if session is None or session.state is not SessionState.PROVISIONING:
            return
        if not session.resuming:
            self.end_session(session_id, EndReason.STARTUP_TIMEOUT, now)
        elif session.resume_mono + self.limits.startup_timeout <= now:  # not a stale one
            self.suspension.resume_failed(session, now, "no sandbox in time (startup timeout)")

    # ------------------------------------------------------------ suspend and resume

    def idle_out(self, session: Session, now: float, asked: BusyAnswer | None) -> None:
        """Its idle timeout passed (and it is not busy): suspended, or ended."""
        if self.limits.suspends_idle:
            self.suspension.suspend(session, EndReason.IDLE_TIMEOUT, now, asked)
        else:
            self.end_session(session.id, EndReason.IDLE_TIMEOUT, now, asked)

    def reclaim(self, session: Session, now: float, asked: BusyAnswer | None) -> None:
        """Reclaimed to make room for its user's new session: suspended, or ended."""
        if self.limits.suspends_idle:
            self.suspension.suspend(session, EndReason.RECLAIMED, now, asked)
        else:
            self.end_session(session.id, EndReason.RECLAIMED, now, asked)

    def suspend_session(self, session_id: str, now: float) -> Session | None:
        """POST /sessions/{id}/suspend: a ready session is suspended (ended ``deleted``
        if no archive can be kept: the caller gives its pod back either way); any other
        is left as it is. The session, or None if unknown."""
        session = self.sessions.get(session_id)
        if session is not None and session.state is SessionState.READY and self.limits.snapshots:
            self.suspension.suspend(session, EndReason.DELETED, now)
        return session

    def resume(self, request_id: int, session_id: str, wait_seconds: float, now: float) -> None:
        """POST /sessions/{id}/resume: answered via the outbox, as an open is."""
        self.admission.resume_session(request_id, session_id, wait_seconds, now)

    def resume_waiting(self, session: Session, now: float) -> None:
        self.admission.resume(session, now)

    def resume_failed(self, session: Session, now: float, detail: str) -> None:
        self.suspension.resume_failed(session, now, detail)

    def back_to_suspended(self, session: Session, now: float) -> None:
        self.suspension.back_to_suspended(session, now)

    def snapshot_taken(
        self,
        session_id: str,
        attempt: int,
        key: str,
        size: int | None,
        failure: tuple[str, str] | None,
        now: float,
    ) -> None:
        self.suspension.snapshot_taken(session_id, attempt, key, size, failure, now)

    def restore_answered(
        self, session_id: str, attempt: int, failure: tuple[str, str] | None, now: float
    ) -> None:
        self.suspension.restore_answered(session_id, attempt, failure, now)

    def restore_pod_lost(self, session_id: str, pod_name: str, now: float) -> bool:
        return self.suspension.restore_pod_lost(session_id, pod_name, now)

    def restoring(self, session_id: str) -> bool:
        return self.suspension.restoring(session_id)

    def archive_keys(self) -> set[str]:
        return self.suspension.keys()

    # ------------------------------------------------------------ dispatch: requests

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
        """A builder opened an agent thread (admission.py); answered via the outbox.
        ``shape``: its template and resources (None: the default template's own);
        ``secrets``: a new session's egress secrets (its claims carry placeholders)."""
        self.admission.open_session(
            request_id,
            user_id,
            thread_id,
            wait_seconds,
            now,
            metadata,
            org_id=org_id,
            plan=plan,
            shape=shape,
            secrets=secrets,
        )

    def lease_route(self, session_id: str, now: float) -> Pod | None:
        return self.lifecycle.lease_route(session_id, now)

    def claim_answered(
        self,
        session_id: str,
        attempt: int,
        accepted: bool,
        now: float,
        failure: ClaimFailure = NO_ANSWER,
    ) -> None:
        self.claiming.answered(session_id, attempt, accepted, now, failure)

    def reclaim_checks(
        self,
        user_id: str,
        thread_id: str,
        now: float,
        *,
        org_id: str = "",
        plan: str | None = None,
    ) -> list[StatusCheck]:
        return self.idling.reclaim_checks(user_id, thread_id, now, org_id=org_id, plan=plan)

    def busy_answer(self, session_id: str, answer: BusyAnswer, now: float) -> None:
        self.idling.busy_answer(session_id, answer, now)

    # ------------------------------------------------------------ dispatch: pod events

    def pod_created(self, name: str, now: float, shape: Shape | None = None) -> None:
        self.lifecycle.pod_created(name, now, shape)

    def create_failed(
        self,
        now: float,
        kind: ErrorKind = ErrorKind.TEMPORARY,
        message: str = "",
        shape: Shape | None = None,
    ) -> None:
        self.lifecycle.create_failed(now, kind, message, shape)

    def delete_failed(self, name: str, now: float) -> None:
        self.lifecycle.delete_failed(name, now)

    def pod_observed(self, status: PodStatus, now: float) -> None:
        if not self.orphans.observed(status):
            self.lifecycle.pod_observed(status, now)

    def pod_gone(self, name: str, now: float, eviction: str | None = None) -> None:
        if not self.orphans.gone(name):
            self.lifecycle.pod_gone(name, now, eviction)

    def release_orphans(self, now: float) -> list[str]:
        """An operator confirmed: the held pods go, as any pod that served does."""
        pods = self.orphans.release()
        for pod in pods:
            self.lifecycle.restore(pod)
        return sorted(pod.name for pod in pods)

    # ------------------------------------------------------------ dispatch: across policies

    def delete_pod(self, pod: Pod, now: float) -> None:
        self.lifecycle.delete(pod, now)

    def reply_due(self, session_id: str, now: float) -> None:
        self.admission.reply_due(session_id, now)

    def may_take_warm(self, session: Session) -> bool:
        return self.admission.may_take_warm(session)

    def took_warm(self, session: Session) -> None:
        self.admission.took_warm(session)

    def claiming_session(self, session_id: str) -> bool:
        return session_id in self.claims

    def claim_pod_lost(self, session_id: str, pod_name: str, now: float) -> bool:
        return self.claiming.pod_lost(session_id, pod_name, now)

    def drop_claim(self, session_id: str) -> None:
        self.claims.drop(session_id)

    def hold_payload(self, session_id: str, request_id: int) -> None:
        self.claims.hold_payload(session_id, request_id)

    def release_payload(self, session_id: str) -> None:
        self.claiming.release_payload(session_id)

    def recent_busy_answer(self, session_id: str, now: float) -> BusyAnswer | None:
        return self.busy.recent(session_id, now)

    # ------------------------------------------------------------ time

    def tick(self, now: float) -> None:
        """Act on every deadline that has passed, then bring the pool to size.

        Reconcile runs first too, so that a caller whose wait ends right now is
        judged after the pods its demand calls for have been ordered."""
        self.lifecycle.reconcile(now)
        for kind, key in self.deadlines.due(now):
            self._on_deadline[kind](key, now)
        self.lifecycle.reconcile(now)

    # ------------------------------------------------------------ restore and views

    def restore_session(self, session: Session) -> None:
        """Take back a live session from the store (at start-up)."""
        if not session.template:
            session.template = self.limits.default_template  # a row from before templates
        session.created_mono = self.from_wall(session.created_at)
        session.active_mono = self.from_wall(session.last_active_at)
        if session.state is SessionState.SUSPENDED:
            session.pod_name = None
        self.track_live(session)
        if session.state is SessionState.PROVISIONING:
            # A claim in flight died with the previous leader (its pod is deleted, see
            # recovery.py); the session waits for another pod, without env or files.
            session.pod_name = None
            self.waiting[session.id] = None
        self.watch_session_deadlines(session)

    def restore_pod(self, pod: Pod) -> None:
        self.lifecycle.restore(pod)

    def provisioning(self, session_id: str) -> Provisioning | None:
        return self.admission.provisioning(session_id)

    def prune_ended(self, older_than: float) -> list[str]:
        """Forget sessions ended before ``older_than`` (wall time); the store keeps them."""
        gone = [
            sid
            for sid, s in self.sessions.items()
            if s.state is SessionState.ENDED and (s.ended_at or 0.0) < older_than
        ]
        for sid in gone:
            del self.sessions[sid]
        return gone


def _wake_up(key: str, now: float) -> None:
    pass


def _discard(index: dict[K, set[str]], key: K, session_id: str) -> None:
    ids = index.get(key)
    if ids is not None:
        ids.discard(session_id)
        if not ids:
            del index[key]
