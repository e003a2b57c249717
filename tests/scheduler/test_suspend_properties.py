"""Random sequences of opens, suspends, resumes, hook answers (on time, late, failed),
platform events, clock jumps and leader restarts against the suspension invariants,
checked after every step: a suspended session has no pod; no session ever has two
pods; an archive (and its record) exists exactly for the sessions suspended or
resuming; suspended sessions count toward neither the user's limit nor the cap."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import replace

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sandbox_controller.backends.base import LABEL_CREATE_ID, LABEL_SESSION, PodPhase, PodStatus
from sandbox_controller.model import EndReason, PodState, SessionState
from sandbox_controller.scheduler.effects import RestoreCall, SnapshotCall
from sandbox_controller.scheduler.pool import Pool
from sandbox_controller.scheduler.recovery import restore

from .harness import limits_with

LIMITS = limits_with(
    prewarm_pool_size=1,
    max_total_jobs=4,
    max_sessions_per_user=2,
    idle_after=10,
    idle_timeout=100,
    startup_timeout=300,
    max_concurrent_creates=2,
    hooks=True,
    snapshots=True,
    idle_action="suspend",
    snapshot_timeout=300,
    snapshot_retention=5000,
)
USERS = st.sampled_from(["ann", "ben"])
THREADS = st.sampled_from(["t1", "t2", "t3"])
# Mostly kept: the paths after a kept snapshot (resume, restore) are the deeper ones.
FAILURES = st.sampled_from([None, None, None, ("hook_error", "HTTP 500"), ("timeout", "slow")])


class SuspendMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        ids = itertools.count(1)
        self.new_id = lambda: f"s{next(ids):04d}"
        self.pool = Pool(LIMITS, "tmpl", new_id=self.new_id)
        self.platform: set[str] = set()
        self.creates_sent = 0
        self.deletes_sent: set[str] = set()
        self.names = 0
        self.snapshot_calls: list[SnapshotCall] = []
        self.restore_calls: list[RestoreCall] = []
        self.objects: set[str] = set()  # the snapshot store's keys
        # Creates answered and pods ready at once (the deep paths are the point), unless
        # a rule has the platform fall behind.
        self.auto_platform = True
        self.settle()

    def settle(self) -> None:
        if self.auto_platform:
            self._catch_up()
        self.pool.tick(self.now)
        out = self.pool.take_outbox()
        self.creates_sent += out.creates
        self.deletes_sent.update(out.deletes)
        self.snapshot_calls.extend(out.snapshots)
        self.restore_calls.extend(out.restores)
        # Carried out after the round's commit, as the loop does.
        self.objects -= set(out.archive_deletes)
        for outcome in out.snapshot_outcomes:
            event(f"snapshot outcome: {outcome}")
        if out.claims:  # every claim accepted at once: the paths after it are the point
            for call in out.claims:
                self.pool.claim_answered(call.session_id, call.attempt, True, self.now)
            self.settle()

    def sessions_in(self, *states: SessionState) -> list[str]:
        return sorted(s.id for s in self.pool.sessions.values() if s.state in states)

    # -- callers

    @rule(user=USERS, thread=THREADS, wait=st.sampled_from([0.0, 30.0]))
    def open_session(self, user: str, thread: str, wait: float) -> None:
        self.pool.open_session(self.pool.next_request_id(), user, thread, wait, self.now)
        self.settle()

    @rule(data=st.data())
    def suspend_on_request(self, data: st.DataObject) -> None:
        ready = self.sessions_in(SessionState.READY)
        if ready:
            self.pool.suspend_session(data.draw(st.sampled_from(ready)), self.now)
            self.settle()

    @rule(data=st.data(), wait=st.sampled_from([0.0, 30.0]))
    def resume_on_request(self, data: st.DataObject, wait: float) -> None:
        live = self.sessions_in(SessionState.SUSPENDED, SessionState.SUSPENDING)
        if live:
            sid = data.draw(st.sampled_from(live))
            self.pool.resume(self.pool.next_request_id(), sid, wait, self.now)
            self.settle()

    @rule(data=st.data())
    def delete_session(self, data: st.DataObject) -> None:
        live = sorted(s.id for s in self.pool.sessions.values() if s.live)
        if live:
            self.pool.end_session(data.draw(st.sampled_from(live)), EndReason.DELETED, self.now)
            self.settle()

    @rule(seconds=st.sampled_from([1.0, 11.0, 25.0, 101.0, 101.0, 400.0, 6000.0]))
    def clock_jumps(self, seconds: float) -> None:
        self.now += seconds
        self.settle()

    # -- hooks

    @precondition(lambda self: bool(self.snapshot_calls))
    @rule(data=st.data(), failure=FAILURES)
    def snapshot_hook_answers(self, data: st.DataObject, failure: tuple[str, str] | None) -> None:
        call = self.snapshot_calls.pop(data.draw(st.integers(0, len(self.snapshot_calls) - 1)))
        size = None
        if failure is None:
            size = 1234
            self.objects.add(call.key)  # the upload was whole before the answer came
        self.pool.snapshot_taken(call.session_id, call.attempt, call.key, size, failure, self.now)
        self.settle()

    @precondition(lambda self: bool(self.restore_calls))
    @rule(data=st.data(), failure=FAILURES)
    def restore_hook_answers(self, data: st.DataObject, failure: tuple[str, str] | None) -> None:
        call = self.restore_calls.pop(data.draw(st.integers(0, len(self.restore_calls) - 1)))
        self.pool.restore_answered(call.session_id, call.attempt, failure, self.now)
        self.settle()

    # -- the platform

    @rule(behind=st.booleans())
    def platform_pace(self, behind: bool) -> None:
        self.auto_platform = not behind
        self.settle()

    def _catch_up(self) -> None:
        while self.creates_sent > 0:
            self.creates_sent -= 1
            self.names += 1
            name = f"pod-{self.names}"
            self.platform.add(name)
            self.pool.pod_created(name, self.now)
        for name, pod in sorted(self.pool.pods.items()):
            if pod.state is PodState.PENDING:
                status = PodStatus(name, PodPhase.READY, {LABEL_CREATE_ID: name}, address="x:1")
                self.pool.pod_observed(status, self.now)

    @rule()
    def platform_catches_up(self) -> None:
        self._catch_up()
        self.settle()

    @rule(data=st.data())
    def pod_fails(self, data: st.DataObject) -> None:
        alive = sorted(n for n, p in self.pool.pods.items() if p.state is not PodState.TERMINATING)
        if alive:
            name = data.draw(st.sampled_from(alive))
            self.pool.pod_observed(PodStatus(name, PodPhase.FAILED), self.now)
            self.settle()

    @precondition(lambda self: bool(self.deletes_sent))
    @rule(data=st.data())
    def delete_completes(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.deletes_sent)))
        self.deletes_sent.discard(name)
        self.platform.discard(name)
        self.pool.pod_gone(name, self.now)
        self.settle()

    @precondition(lambda self: self.creates_sent == 0)  # as PoolMachine's restart
    @rule(uploaded=st.booleans())
    def leader_restarts(self, uploaded: bool) -> None:
        """A new leader rebuilds from what was committed (a session promised to nobody
        yet is not; a resuming one is), mid-snapshot and mid-restore included; a
        snapshot in flight may have left its whole archive behind (``uploaded``), which
        the new term's sweep deletes, as it deletes anything no session owns."""
        old = self.pool
        stored = [
            replace(s, requests=[], reply_deadline=None)
            for s in old.sessions.values()
            if s.live and (s.reply_deadline is None or s.snapshot is not None)
        ]
        if uploaded:
            self.objects.update(call.key for call in self.snapshot_calls)
        rows = [replace(p) for p in old.pods.values()]
        statuses = []
        for name in sorted(self.platform):
            pod = old.pods.get(name)
            serving = pod is not None and pod.state in (PodState.IDLE, PodState.ASSIGNED)
            labels = {LABEL_CREATE_ID: name}
            if pod is not None and pod.session_id:
                labels[LABEL_SESSION] = "x"
            phase = PodPhase.READY if serving else PodPhase.PENDING
            statuses.append(PodStatus(name, phase, labels, address="x:1" if serving else None))
        self.pool = Pool(LIMITS, "tmpl", new_id=self.new_id)
        self.snapshot_calls.clear()
        self.restore_calls.clear()
        restore(self.pool, stored, rows, statuses, self.now)
        self.settle()
        # The sweep at the start of the term deletes what no stored record names (a
        # snapshot the new leader starts again uploads its archive anew).
        self.objects &= {s.snapshot.key for s in stored if s.snapshot is not None}

    # -- invariants

    @invariant()
    def a_suspended_session_has_no_pod(self) -> None:
        holders = Counter(
            p.session_id for p in self.pool.pods.values() if p.state is PodState.ASSIGNED
        )
        for session in self.pool.sessions.values():
            if session.state is SessionState.SUSPENDED:
                assert session.pod_name is None, session.id
                assert holders[session.id] == 0, f"{session.id} suspended with a pod"

    @invariant()
    def never_two_pods_for_one_session(self) -> None:
        holders = Counter(
            p.session_id for p in self.pool.pods.values() if p.state is PodState.ASSIGNED
        )
        assert max(holders.values(), default=0) <= 1, holders

    @invariant()
    def an_archive_exists_exactly_for_suspended_and_resuming_sessions(self) -> None:
        recorded = set()
        for session in self.pool.sessions.values():
            keeps = session.state is SessionState.SUSPENDED or session.resuming
            assert (session.snapshot is not None) == keeps, (session.id, session.state)
            if session.snapshot is not None:
                recorded.add(session.snapshot.key)
        assert recorded <= self.objects, "a record without its archive"
        assert self.objects <= recorded, "an archive no session owns"

    @invariant()
    def suspended_sessions_count_toward_no_limit(self) -> None:
        seated = Counter(s.user_id for s in self.pool.sessions.values() if s.seated)
        assert max(seated.values(), default=0) <= LIMITS.max_sessions_per_user, seated
        for sids in self.pool.live_by_user.values():
            assert all(self.pool.sessions[sid].seated for sid in sids)
        assert self.pool.total_pods <= LIMITS.max_total_jobs


TestSuspendMachine = SuspendMachine.TestCase
TestSuspendMachine.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)
