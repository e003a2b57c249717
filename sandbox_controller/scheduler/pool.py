"""The pool brain: every scheduling decision, over in-memory state, with no I/O.

Callers feed in what happened (a request, a pod event, the passing of time) along
with ``now``; the Pool updates its state and appends what must follow to ``outbox``:
answers for callers, pods to create or delete, rows to persist. The scheduler loop
(loop.py) carries those effects out. Nothing here awaits, so every policy can be
tested by calling methods with a hand-set clock.
"""

from __future__ import annotations

import itertools
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable

from ..aiotime import Backoff
from ..backends.base import PodPhase, PodStatus, assigned_labels
from ..errors import CapacityExhausted, SandboxError, ThreadOwnedByOtherUser, UserSessionLimit
from ..hooks import BusyAnswer
from ..model import (
    ActivitySource,
    EndDetail,
    EndReason,
    Limits,
    Outcome,
    Pod,
    PodState,
    PoolStatus,
    Provisioning,
    Session,
    SessionActivity,
    SessionState,
    WaitReason,
)
from .claiming import CLAIM_MARGIN, Claim, Claims
from .deadlines import Deadlines
from .effects import Answer, Outbox
from .idling import BusyChecks, Release, StatusCheck, hook_target, unanswered
from .inventory import PodInventory
from .prewarm import Prewarm

# A create that failed is not retried at once: the API server or the node is
# likely still unhappy, and a hot retry loop would only add to its load.
# No jitter: decisions here stay exact and replayable on a hand-set clock.
CREATE_BACKOFF = Backoff(1.0, 30.0, jitter=False)
# A delete that has not been confirmed by an event is asked for again.
DELETE_RETRY = 30.0
# How long a route handed to a proxy may be used (proxy/routes.py keeps to it). A pod
# that was routed to is deleted no sooner than its lease ends: until then it holds its
# address, which no other pod can be given, so a proxy's cached route can only ever
# reach the session's own sandbox (DESIGN invariant 6), even while the controller is
# unreachable and the proxy serves what it has.
ROUTE_LEASE = 30.0
# When a caller refused for capacity may try again.
CAPACITY_RETRY_AFTER = 5.0


def new_session_id() -> str:
    return uuid.uuid4().hex


class Pool:
    def __init__(
        self,
        limits: Limits,
        template_hash: str,
        *,
        new_id: Callable[[], str] = new_session_id,
    ) -> None:
        self.limits = limits
        self._new_id = new_id
        self.inventory = PodInventory(template_hash)
        self.sessions: dict[str, Session] = {}  # live ones, plus ended ones not yet pruned
        self.waiting: OrderedDict[str, None] = OrderedDict()  # provisioning sessions, FCFS
        self.live_by_user: defaultdict[str, set[str]] = defaultdict(set)
        self.live_by_thread: dict[str, str] = {}
        self.creates_in_flight = 0
        # Pods the watch showed before their create call returned (see _stray_pod).
        self._seen_early: set[str] = set()
        self.create_failures = 0  # in a row; the next create waits CREATE_BACKOFF
        self.create_blocked_until = 0.0
        self.cap_blocked = False
        self.prewarm = Prewarm(limits)
        self._prewarm_due = float("inf")  # the "prewarm" deadline pushed last
        self.deadlines = Deadlines()
        self.claims = Claims()
        self.busy = BusyChecks(limits)  # status checks asked before idling out (idling.py)
        self._releases: dict[str, Release] = {}  # pod -> its release, sent with the delete
        self.outbox = Outbox()
        self._request_ids = itertools.count(1)

    # ----------------------------------------------------------------- queries

    @property
    def pods(self) -> dict[str, Pod]:
        return self.inventory.pods

    @property
    def counts(self) -> dict[PodState, int]:
        return self.inventory.counts

    @property
    def idle(self) -> OrderedDict[str, None]:
        return self.inventory.idle

    @property
    def template_hash(self) -> str:
        return self.inventory.template_hash

    @property
    def total_pods(self) -> int:
        """Pods that exist or are being created: the number the cap applies to."""
        return len(self.inventory) + self.creates_in_flight

    @property
    def unschedulable(self) -> bool:
        return bool(self.inventory.unschedulable)

    @property
    def capacity_blocked(self) -> bool:
        return self.cap_blocked or self.unschedulable

    def next_request_id(self) -> int:
        return next(self._request_ids)

    def take_outbox(self) -> Outbox:
        out, self.outbox = self.outbox, Outbox()
        return out

    def next_deadline(self) -> float | None:
        return self.deadlines.earliest()

    # ------------------------------------------------------------ pod bookkeeping

    def _set_pod_state(self, pod: Pod, state: PodState) -> None:
        self.inventory.set_state(pod, state)
        self.outbox.dirty_pods.add(pod.name)

    def _add_pod(self, pod: Pod) -> None:
        self.inventory.add(pod)
        if pod.state is PodState.PENDING:
            self.deadlines.push(
                pod.created_at + self.limits.startup_timeout, "pod_startup", pod.name
            )
        self.outbox.dirty_pods.add(pod.name)

    def _remove_pod(self, pod: Pod) -> None:
        self.inventory.remove(pod)
        self._releases.pop(pod.name, None)
        self.outbox.dirty_pods.discard(pod.name)
        self.outbox.forgotten_pods.add(pod.name)

    def _delete_pod(self, pod: Pod, now: float) -> None:
        if pod.state is PodState.TERMINATING:
            return
        self._set_pod_state(pod, PodState.TERMINATING)
        self._plan_release(pod)
        if pod.route_lease_until > now:
            # A proxy may still use its route to this pod: delete when the lease ends.
            pod.delete_retry_at = pod.route_lease_until
            self.deadlines.push(pod.delete_retry_at, "pod_delete", pod.name)
            return
        pod.delete_retry_at = now + DELETE_RETRY
        self.deadlines.push(pod.delete_retry_at, "pod_delete", pod.name)
        self._send_delete(pod.name)

    def _plan_release(self, pod: Pod) -> None:
        """A pod that served a session hears of its end before it is deleted (never a
        pool pod: its delete is not delayed, and it has nothing to flush)."""
        session = self.sessions.get(pod.session_id or "")
        target = hook_target(pod)
        if not self.limits.hooks or session is None or target is None:
            return
        reason = session.end_reason
        if reason is None or reason is EndReason.POD_FAILED:
            return  # a failed pod would only make the delete wait out the deadline
        self._releases[pod.name] = Release(session.id, *target, reason.value)

    def _send_delete(self, name: str) -> None:
        self.outbox.deletes.append(name)
        release = self._releases.pop(name, None)  # with the first delete only
        if release is not None:
            self.outbox.releases[name] = release

    def lease_route(self, session_id: str, now: float) -> Pod | None:
        """A proxy asks where a ready session's pod is: the pod, its address now leased
        for ROUTE_LEASE seconds. Only an in-memory lease changes: nothing to commit (a
        restarted controller assumes every routed pod leased, see recovery.py)."""
        session = self.sessions.get(session_id)
        if session is None or session.state is not SessionState.READY or not session.pod_name:
            return None
        pod = self.pods.get(session.pod_name)
        if pod is None or pod.state is not PodState.ASSIGNED or not pod.address:
            return None
        pod.route_lease_until = max(pod.route_lease_until, now + ROUTE_LEASE)
        return pod

    # ------------------------------------------------------------ sessions

    def _track_live(self, session: Session) -> None:
        self.sessions[session.id] = session
        self.live_by_user[session.user_id].add(session.id)
        self.live_by_thread[session.thread_id] = session.id

    def _untrack_live(self, session: Session) -> None:
        user_sessions = self.live_by_user.get(session.user_id)
        if user_sessions is not None:
            user_sessions.discard(session.id)
            if not user_sessions:
                del self.live_by_user[session.user_id]
        if self.live_by_thread.get(session.thread_id) == session.id:
            del self.live_by_thread[session.thread_id]
        self.waiting.pop(session.id, None)

    def _watch_session_deadlines(self, session: Session) -> None:
        limits = self.limits
        if session.state is SessionState.READY:
            self.deadlines.push(session.last_active_at + limits.idle_timeout, "idle", session.id)
        if limits.max_lifetime > 0:
            self.deadlines.push(session.created_at + limits.max_lifetime, "lifetime", session.id)
        if session.state is SessionState.PROVISIONING:
            self.deadlines.push(
                session.created_at + limits.startup_timeout, "session_startup", session.id
            )

    def _lease(self, pod: Pod, session: Session, now: float, *, warm: bool) -> None:
        """Give the pod to the session for good. It is handed over at once, or, when
        the sandbox hooks are on and the pod can be claimed, once its claim hook has
        accepted (claim_answered); until then the session stays provisioning."""
        self._set_pod_state(pod, PodState.ASSIGNED)
        pod.session_id = session.id
        session.pod_name = pod.name
        self.waiting.pop(session.id, None)
        self.outbox.dirty_sessions.add(session.id)
        self.outbox.labels[pod.name] = assigned_labels(session.id)
        if self.limits.hooks and pod.create_id and pod.address:
            self._claim(pod, session, now, warm=warm)
        else:
            self._hand_over(session, now, Outcome.WARM if warm else Outcome.COLD)

    def _hand_over(self, session: Session, now: float, outcome: Outcome) -> None:
        session.state = SessionState.READY
        # A new sandbox counts as fresh activity: the idle clock starts at hand-over.
        session.last_active_at = max(session.last_active_at, now)
        session.activity_source, session.activity_detail = ActivitySource.HANDOVER, None
        self.outbox.dirty_sessions.add(session.id)
        self._watch_session_deadlines(session)
        if session.reply_deadline is not None:
            self._answer_session(session, outcome)
        self._release_payload(session.id)

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
        existing_id = self.live_by_thread.get(thread_id)
        if existing_id is not None:
            existing = self.sessions[existing_id]
            if existing.user_id != user_id:
                self._refuse(request_id, Outcome.ERROR, ThreadOwnedByOtherUser(thread_id))
                return
            existing.requests.append(request_id)
            if existing.reply_deadline is None:
                self._answer(request_id, Outcome.EXISTING, existing.id)
            return

        reclaimed: Session | None = None
        live = self.live_by_user.get(user_id, ())
        if len(live) >= self.limits.max_sessions_per_user:
            reclaimed = self.oldest_idle(live, now)
            if reclaimed is None:
                limit = self.limits.max_sessions_per_user
                retry_after = self._user_retry_after(live, now)
                error = UserSessionLimit(limit, len(live), retry_after)
                self._refuse(request_id, Outcome.USER_LIMIT, error)
                return
            answer = self.busy.recent(reclaimed.id, now)  # loop.py asked just before
            self.end_session(reclaimed.id, EndReason.RECLAIMED, now, answer)

        self.prewarm.arrival(now)
        session = Session(
            id=self._new_id(),
            user_id=user_id,
            thread_id=thread_id,
            state=SessionState.PROVISIONING,
            created_at=now,
            last_active_at=now,
            requests=[request_id],
            reclaimed_session_id=reclaimed.id if reclaimed else None,
            metadata=dict(metadata or {}),
        )
        self._track_live(session)
        if self.limits.hooks:
            self.claims.hold_payload(session.id, request_id)
        session.reply_deadline = now + wait_seconds
        pod = self.inventory.oldest_fresh_idle()
        if pod is not None:
            # A claim in flight answers when the hook does (bounded by the claim's own
            # deadline), not at the reply deadline: it is the warm path still.
            self._lease(pod, session, now, warm=True)
            if session.state is SessionState.PROVISIONING:
                self._watch_session_deadlines(session)
            return
        self.waiting[session.id] = None
        self._watch_session_deadlines(session)
        if wait_seconds <= 0:
            # Decided now, not at the round's end: a refused request must not count
            # toward its user's limit for the next request in the same round.
            self._deadline("reply", session.id, now)
        else:
            self.deadlines.push(session.reply_deadline, "reply", session.id)

    # ------------------------------------------------------------ claims (claiming.py)

    def _claim(self, pod: Pod, session: Session, now: float, *, warm: bool) -> None:
        due = now + self.limits.hook_timeout + CLAIM_MARGIN
        self.outbox.claims.append(self.claims.start(session, pod, warm, due))
        self.deadlines.push(due, "claim", session.id)

    def claim_answered(self, session_id: str, attempt: int, accepted: bool, now: float) -> None:
        """A claim hook answered (or its deadline passed: ``accepted=False``). Late
        answers, of an attempt already given up or a session already ended, are ignored."""
        claim = self.claims.finish(session_id, attempt)
        if claim is None:
            return
        session = self.sessions[session_id]  # live: ending a session drops its claim
        pod = self.pods.get(claim.pod_name)
        if accepted and pod is not None and pod.state is PodState.ASSIGNED:
            self._hand_over(session, now, Outcome.WARM if claim.warm else Outcome.COLD)
        else:
            self._claim_failed(session, claim, now)

    def _claim_failed(self, session: Session, claim: Claim, now: float) -> None:
        """That pod goes (it may hold part of the session); the next fresh warm pod is
        tried, and only when none is left does the session wait for a cold one."""
        self.outbox.claim_failures += 1
        session.pod_name = None
        self.outbox.dirty_sessions.add(session.id)
        pod = self.pods.get(claim.pod_name)
        if pod is not None:
            self._delete_pod(pod, now)
        pod = self.inventory.oldest_fresh_idle()
        if pod is not None:
            self._lease(pod, session, now, warm=claim.warm)
            return
        self.waiting[session.id] = None
        self.waiting.move_to_end(session.id, last=False)  # it was served first once
        if session.reply_deadline is not None:
            self.deadlines.push(session.reply_deadline, "reply", session.id)
            if session.reply_deadline <= now:
                self._deadline("reply", session.id, now)

    def _release_payload(self, session_id: str) -> None:
        request_id = self.claims.release_payload(session_id)
        if request_id is not None:
            self.outbox.payloads_done.append(request_id)

    def oldest_idle(self, session_ids: Iterable[str], now: float) -> Session | None:
        """The least recently active idle session among these, if any (never an active one)."""
        candidates = [
            s
            for sid in session_ids
            if (s := self.sessions[sid]).is_idle(now, self.limits.reclaim_after)
        ]
        return min(candidates, key=lambda s: (s.last_active_at, s.created_at), default=None)

    def _user_retry_after(self, session_ids: Iterable[str], now: float) -> float:
        """When the first of these sessions could become idle, at the earliest."""
        quiet_at = [
            self.sessions[sid].last_active_at + self.limits.reclaim_after for sid in session_ids
        ]
        return max(1.0, min(quiet_at, default=now) - now)

    def end_session(
        self, session_id: str, reason: EndReason, now: float, asked: BusyAnswer | None = None
    ) -> bool:
        """End a live session and give its pod back (by deleting it). False if not live.
        ``asked``: the status hook's answer that let it end (recorded as why)."""
        session = self.sessions.get(session_id)
        if session is None or not session.live:
            return False
        session.state = SessionState.ENDED
        session.end_reason = reason
        session.ended_at = now
        session.end_detail = EndDetail(
            session.last_active_at, session.activity_source, asked.describe() if asked else None
        )
        self.busy.forget(session_id)
        self._untrack_live(session)
        self.claims.drop(session.id)  # a claim's late answer is ignored
        self._release_payload(session.id)
        self.outbox.dirty_sessions.add(session.id)
        self.outbox.ended.append(reason)
        if session.reply_deadline is not None:
            # Ended before its caller heard back (a start-up timeout shorter than the
            # wait): the caller learns the ending, not a silent drop.
            self._answer_session(session, Outcome.COLD)
        if session.pod_name is not None:
            pod = self.pods.get(session.pod_name)
            if pod is not None:
                self._delete_pod(pod, now)
        return True

    def touch(
        self, session_id: str, at: float, source: ActivitySource, detail: str | None = None
    ) -> bool:
        """Activity on a live session, from ``source``; older news than the latest is
        dropped (a proxy's batch may arrive after a touch)."""
        session = self.sessions.get(session_id)
        if session is None or not session.live:
            return False
        if at > session.last_active_at:
            session.last_active_at = at
            session.activity_source, session.activity_detail = source, detail
            self.outbox.dirty_sessions.add(session_id)
        return True

    # ------------------------------------------------------------ busy-aware idling

    def reclaim_checks(self, user_id: str, thread_id: str, now: float) -> list[StatusCheck]:
        """Which sandboxes to ask before a new thread of this user is opened: those of
        its sessions a reclaim could pick, counting those that turn idle while the
        answers come (so none is reclaimed unasked). Read-only."""
        live = self.live_by_user.get(user_id, ())
        if (
            not self.limits.hooks
            or thread_id in self.live_by_thread
            or len(live) < self.limits.max_sessions_per_user
        ):
            return []
        by = now + self.busy.wait
        checks = []
        for sid in sorted(live):
            session = self.sessions[sid]
            target = hook_target(self.pods.get(session.pod_name or ""))
            if target is not None and session.is_idle(by, self.limits.reclaim_after):
                checks.append(StatusCheck(sid, *target))
        return checks

    def busy_answer(self, session_id: str, answer: BusyAnswer, now: float) -> None:
        """A sandbox's status answer. Busy counts as activity; otherwise a session whose
        idle check this was ends now if it is still idle (activity may have come)."""
        session = self.sessions.get(session_id)
        if session is None or session.state is not SessionState.READY:
            return
        if answer.busy:
            self.touch(session_id, now, ActivitySource.BUSY, answer.detail)
        if self.busy.answered(session_id, answer, now):
            self._idle_due(session, answer, now)

    def _idle_due(self, session: Session, answer: BusyAnswer | None, now: float) -> None:
        """End a session whose idle timeout passed, or watch its next one. With hooks,
        the first time it is due its sandbox is asked first (``answer`` None)."""
        due = session.last_active_at + self.limits.idle_timeout
        if due > now:
            self.deadlines.push(due, "idle", session.id)  # activity moved it on
            return
        target = hook_target(self.pods.get(session.pod_name or ""))
        if answer is None and self.limits.hooks and target is not None:
            if session.id not in self.busy.pending:
                self.deadlines.push(self.busy.start(session.id, now), "busy_check", session.id)
                self.outbox.status_checks.append(StatusCheck(session.id, *target))
            return
        self.end_session(session.id, EndReason.IDLE_TIMEOUT, now, answer)

    # ------------------------------------------------------------ answers

    def _answer(
        self,
        request_id: int,
        outcome: Outcome,
        session_id: str | None = None,
        *,
        reclaimed: str | None = None,
    ) -> None:
        self.outbox.answers.append(Answer(request_id, outcome, session_id, reclaimed))

    def _refuse(self, request_id: int, outcome: Outcome, error: SandboxError) -> None:
        self.outbox.answers.append(Answer(request_id, outcome, error=error))

    def _answer_session(self, session: Session, outcome: Outcome) -> None:
        """Answer everyone who asked for this thread: the first creates, the rest retry."""
        session.reply_deadline = None
        for i, request_id in enumerate(session.requests):
            self._answer(
                request_id,
                outcome if i == 0 else Outcome.EXISTING,
                session.id,
                reclaimed=session.reclaimed_session_id if i == 0 else None,
            )
        session.requests.clear()
        self.outbox.dirty_sessions.add(session.id)

    def _refuse_capacity(self, session: Session, now: float) -> None:
        """No slot freed in time: the request fails and leaves no session behind."""
        for request_id in session.requests:
            error = CapacityExhausted(self.limits.max_total_jobs, CAPACITY_RETRY_AFTER)
            self._refuse(request_id, Outcome.CAPACITY, error)
        session.requests.clear()
        session.reply_deadline = None
        self._untrack_live(session)
        self._release_payload(session.id)
        del self.sessions[session.id]
        self.outbox.dirty_sessions.discard(session.id)

    # ------------------------------------------------------------ pod events

    def pod_created(self, name: str, now: float) -> None:
        # max(): after a rebuild from the store, creates started before it may return.
        self.creates_in_flight = max(0, self.creates_in_flight - 1)
        self.create_failures = 0
        if name in self._seen_early:
            self._seen_early.discard(name)
        elif name not in self.pods:
            self._add_pod(Pod(name, PodState.PENDING, now, self.template_hash))

    def create_failed(self, now: float) -> None:
        self.creates_in_flight = max(0, self.creates_in_flight - 1)
        while len(self._seen_early) > self.creates_in_flight:
            self._seen_early.pop()  # a stray after all; it stays a pool pod
        self.create_blocked_until = now + CREATE_BACKOFF.delay(self.create_failures)
        self.create_failures += 1
        self.deadlines.push(self.create_blocked_until, "create_backoff", "")

    def delete_failed(self, name: str, now: float) -> None:
        pod = self.pods.get(name)
        if pod is not None and pod.state is PodState.TERMINATING:
            pod.delete_retry_at = now + 5.0
            self.deadlines.push(pod.delete_retry_at, "pod_delete", name)

    def pod_observed(self, status: PodStatus, now: float) -> None:
        """The backend reports a pod's current status."""
        pod = self.pods.get(status.name)
        if pod is None:
            self._stray_pod(status, now)
            return
        if status.address:
            pod.address = status.address
        if pod.create_id is None:
            pod.create_id = status.create_id
        if pod.state is PodState.TERMINATING:
            return
        if status.phase is PodPhase.FAILED or status.terminating:
            # Failed, or deleted by someone else (kubectl, a node drain): either way
            # this pod will not serve.
            self._pod_lost(pod, now)
        elif status.phase is PodPhase.READY:
            if pod.state is PodState.PENDING:
                self._pod_ready(pod, now)
        elif pod.state is PodState.PENDING:
            pod.detail = status.detail
            self.inventory.set_unschedulable(pod, status.unschedulable)
        elif pod.state is PodState.IDLE:
            # A warm pod that stopped answering is no longer worth handing out.
            self._delete_pod(pod, now)

    def pod_gone(self, name: str, now: float) -> None:
        pod = self.pods.get(name)
        if pod is None:
            return
        if pod.state is PodState.ASSIGNED and pod.session_id is not None:
            self._assigned_pod_lost(pod, pod.session_id, now)
        self._remove_pod(pod)

    def _stray_pod(self, status: PodStatus, now: float) -> None:
        """A pod we did not know. While our own creates are in flight it is most
        likely one of them, seen by the watch before the create call returned; adopt
        it, still counting the create as in flight until it returns (the count errs
        high, never low). Otherwise nobody accounts for it: delete it."""
        if len(self._seen_early) < self.creates_in_flight and status.session_hash is None:
            self._add_pod(Pod(status.name, PodState.PENDING, now, self.template_hash))
            self._seen_early.add(status.name)
            self.pod_observed(status, now)
            return
        self.outbox.deletes.append(status.name)

    def _pod_ready(self, pod: Pod, now: float) -> None:
        pod.ready_at = now
        pod.detail = None
        self.inventory.set_unschedulable(pod, False)
        self.outbox.startup_seconds.append(now - pod.created_at)
        self.prewarm.pod_started(now - pod.created_at)
        if pod.template_hash != self.template_hash:
            self._delete_pod(pod, now)
            return
        self._set_pod_state(pod, PodState.IDLE)
        if self.waiting:
            self._lease(pod, self.sessions[next(iter(self.waiting))], now, warm=False)

    def _pod_lost(self, pod: Pod, now: float) -> None:
        if pod.state is PodState.ASSIGNED and pod.session_id is not None:
            self._assigned_pod_lost(pod, pod.session_id, now)
        else:
            self._delete_pod(pod, now)

    def _assigned_pod_lost(self, pod: Pod, session_id: str, now: float) -> None:
        claim = self.claims.get(session_id)
        if claim is not None and claim.pod_name == pod.name:
            # Never handed over: the session tries another pod, as on a failed claim.
            self.claims.drop(session_id)
            self._claim_failed(self.sessions[session_id], claim, now)
        else:
            self.end_session(session_id, EndReason.POD_FAILED, now)

    # ------------------------------------------------------------ time

    def tick(self, now: float) -> None:
        """Act on every deadline that has passed, then bring the pool to size.

        Reconcile runs first too, so that a caller whose wait ends right now is
        judged after the pods its demand calls for have been ordered."""
        self.reconcile(now)
        for kind, key in self.deadlines.due(now):
            self._deadline(kind, key, now)
        self.reconcile(now)

    def _deadline(self, kind: str, key: str, now: float) -> None:
        if kind == "reply":
            session = self.sessions.get(key)
            if session is None or session.reply_deadline is None or not session.live:
                return
            if key in self.claims:
                return  # its claim answers, within the claim's own deadline
            if session.reply_deadline > now:
                self.deadlines.push(session.reply_deadline, "reply", key)
            elif self._covered(key):
                self._answer_session(session, Outcome.COLD)
            else:
                self._refuse_capacity(session, now)
        elif kind in ("idle", "busy_check"):
            session = self.sessions.get(key)
            if session is None or session.state is not SessionState.READY:
                return
            if kind == "idle":
                self._idle_due(session, None, now)
            elif self.busy.expired(key, now):  # the sandbox did not answer in time
                self._idle_due(session, unanswered(self.busy.wait), now)
        elif kind == "lifetime":
            session = self.sessions.get(key)
            if session is not None and session.live:
                self.end_session(key, EndReason.MAX_LIFETIME, now)
        elif kind == "session_startup":
            session = self.sessions.get(key)
            if session is not None and session.state is SessionState.PROVISIONING:
                self.end_session(key, EndReason.STARTUP_TIMEOUT, now)
        elif kind == "pod_startup":
            pod = self.pods.get(key)
            if pod is not None and pod.state is PodState.PENDING:
                self._delete_pod(pod, now)  # replaced by the refill below
        elif kind == "claim":
            claim = self.claims.get(key)
            if claim is not None and claim.due <= now:
                self.claim_answered(key, claim.attempt, False, now)  # no answer: failed
        elif kind == "pod_delete":
            pod = self.pods.get(key)
            if (
                pod is not None
                and pod.state is PodState.TERMINATING
                and pod.delete_retry_at is not None
                and pod.delete_retry_at <= now
            ):
                pod.delete_retry_at = now + DELETE_RETRY
                self.deadlines.push(pod.delete_retry_at, "pod_delete", key)
                self._send_delete(key)

    def _covered(self, session_id: str) -> bool:
        """Whether this waiting session has a slot (FCFS): a pod on its way will reach
        it, or the cap leaves room to create one (the create window only delays it)."""
        room = max(0, self.limits.max_total_jobs - self.total_pods)
        coming = self.counts[PodState.PENDING] + self.creates_in_flight + room
        for position, waiting_id in enumerate(self.waiting):
            if position >= coming:
                return False
            if waiting_id == session_id:
                return True
        return False

    def reconcile(self, now: float) -> None:
        """Replace idle pods of an old template, hand ready pods to waiters, and create
        what demand needs, within the cap and the create window."""
        for name in list(self.inventory.stale_idle):
            self._delete_pod(self.pods[name], now)
        while self.waiting and self.idle:
            session = self.sessions[next(iter(self.waiting))]
            pod = self.inventory.oldest_fresh_idle()
            if pod is None:
                break
            self._lease(pod, session, now, warm=False)

        limits = self.limits
        target = self._prewarm_target(now)
        coming = self.counts[PodState.PENDING] + self.creates_in_flight
        wanted = len(self.waiting) + target - len(self.idle) - coming
        room = limits.max_total_jobs - self.total_pods
        self.cap_blocked = wanted > 0 and room <= 0 and bool(self.waiting)
        if wanted <= 0 or room <= 0:
            return
        if now < self.create_blocked_until:
            return
        if self.unschedulable:
            # The cluster has no room: more pending pods would only pile up.
            return
        window = limits.max_concurrent_creates - self.creates_in_flight
        count = min(wanted, room, window)
        if count > 0:
            self.creates_in_flight += count
            self.outbox.creates += count

    def _prewarm_target(self, now: float) -> int:
        """The warm pool's size now (prewarm.py); idle pods beyond it are let go, and
        a deadline wakes the pool when the target may next change on its own."""
        target = self.prewarm.decide(now).target
        for _ in range(self.prewarm.excess_idle(len(self.idle), len(self.waiting), now)):
            self._delete_pod(self.pods[next(iter(self.idle))], now)  # the oldest first
        due = self.prewarm.next_change(now)
        if due is not None and (due < self._prewarm_due or self._prewarm_due <= now):
            self._prewarm_due = due
            self.deadlines.push(due, "prewarm", "")
        return target

    # ------------------------------------------------------------ restore

    def restore_session(self, session: Session) -> None:
        """Take back a live session from the store (at start-up)."""
        self._track_live(session)
        if session.state is SessionState.PROVISIONING:
            # A claim in flight died with the previous leader (its pod is deleted, see
            # recovery.py); the session waits for another pod, without env or files.
            session.pod_name = None
            self.waiting[session.id] = None
        self._watch_session_deadlines(session)

    def restore_pod(self, pod: Pod) -> None:
        self._add_pod(pod)
        if pod.state is PodState.TERMINATING:
            # At once, or when a route the previous leader may have leased runs out.
            pod.delete_retry_at = pod.route_lease_until
            self.deadlines.push(pod.route_lease_until, "pod_delete", pod.name)

    def provisioning(self, session_id: str) -> Provisioning | None:
        """Why a provisioning session has no sandbox yet (None once it has one)."""
        session = self.sessions.get(session_id)
        if session is None or session.state is not SessionState.PROVISIONING:
            return None
        if session_id in self.claims:
            return Provisioning(WaitReason.CLAIMING)
        pending = [p for p in self.pods.values() if p.state is PodState.PENDING]
        reasons = sorted((p for p in pending if p.detail), key=lambda p: p.created_at)
        if reasons:
            return Provisioning(WaitReason.POD_REPORTS, pod_detail=reasons[-1].detail)
        if self.cap_blocked:
            return Provisioning(WaitReason.CAP_REACHED, max_total_jobs=self.limits.max_total_jobs)
        if pending or self.creates_in_flight:
            return Provisioning(WaitReason.POD_STARTING)
        return Provisioning(WaitReason.NO_POD_YET)

    def status(self, now: float) -> PoolStatus:
        sessions = dict.fromkeys(SessionActivity, 0)
        idle_after = self.limits.idle_after
        for sid in self.live_by_thread.values():
            session = self.sessions[sid]
            if session.state is SessionState.PROVISIONING:
                sessions[SessionActivity.PROVISIONING] += 1
            elif session.is_idle(now, idle_after):
                sessions[SessionActivity.IDLE] += 1
            else:
                sessions[SessionActivity.ACTIVE] += 1
        return PoolStatus(
            pods=dict(self.counts),
            creating=self.creates_in_flight,
            waiters=len(self.waiting),
            capacity_blocked=self.capacity_blocked,
            cap_reached=self.total_pods >= self.limits.max_total_jobs,
            sessions=sessions,
            limits=self.limits,
            prewarm=self.prewarm.current,
        )

    def prune_ended(self, older_than: float) -> list[str]:
        """Forget ended sessions from memory (they stay in the store)."""
        gone = [
            sid
            for sid, s in self.sessions.items()
            if s.state is SessionState.ENDED and (s.ended_at or 0.0) < older_than
        ]
        for sid in gone:
            del self.sessions[sid]
        return gone
