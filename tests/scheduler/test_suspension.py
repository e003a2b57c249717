"""Suspend and resume decided on a hand-set clock (scheduler/suspension.py): what a
failed or late snapshot does, what a resume refused or failed leaves, and what a new
leader makes of a session caught mid-snapshot or mid-restore."""

from __future__ import annotations

from dataclasses import replace

from sandbox_controller.backends.base import LABEL_CREATE_ID, LABEL_SESSION, PodPhase, PodStatus
from sandbox_controller.errors import CapacityExhausted, SessionRestoreFailed
from sandbox_controller.model import EndReason, Outcome, PodState, SessionState
from sandbox_controller.scheduler.pool import Pool
from sandbox_controller.scheduler.recovery import restore

from .harness import TEMPLATE, Harness, limits_with

LIMITS = limits_with(
    prewarm_pool_size=1,
    max_total_jobs=2,
    max_sessions_per_user=2,
    idle_after=10,
    idle_timeout=100,
    hooks=True,
    snapshots=True,
    idle_action="suspend",
    snapshot_timeout=30,
    snapshot_retention=1000,
)


def ready_session(h: Harness, user: str = "ann", thread: str = "t1") -> str:
    h.tick()
    h.fill_pool(claimable=True)
    rid = h.open(user, thread)
    h.fill_pool(claimable=True)  # a pool of none: its own pod, made now
    sid = h.session_of(rid)
    assert h.state(sid) is SessionState.READY
    return sid


def suspended(h: Harness, sid: str) -> str:
    assert h.pool.suspend_session(sid, h.now) is not None
    h.tick()
    call = h.snapshots[-1]
    h.pool.snapshot_taken(sid, call.attempt, call.key, 100, None, h.now)
    h.tick()
    assert h.state(sid) is SessionState.SUSPENDED
    return call.key


def test_a_snapshot_without_an_answer_ends_the_session_as_its_trigger_would_have() -> None:
    h = Harness(LIMITS, accept_claims=True)
    sid = ready_session(h)
    pod = h.pool.sessions[sid].pod_name
    h.advance(100)  # idle timeout: the status check first, unanswered
    h.advance(5)  # its fallback: not busy, so suspended
    assert h.state(sid) is SessionState.SUSPENDING and len(h.snapshots) == 1
    assert sid not in h.pool.live_by_user.get(("", "ann"), set())  # counts toward no limit
    h.advance(40)  # past snapshot_timeout and its margin
    session = h.pool.sessions[sid]
    assert session.state is SessionState.ENDED and session.end_reason is EndReason.IDLE_TIMEOUT
    assert session.end_detail is not None and session.end_detail.snapshot == (
        "timeout: no answer in time"
    )
    assert pod in h.deleted and session.snapshot is None
    # The answer that comes after all: its archive has no session, so it goes.
    call = h.snapshots[0]
    h.pool.snapshot_taken(sid, call.attempt, call.key, 100, None, h.now)
    h.tick()
    assert h.archive_deletes == [call.key]


def test_a_resume_refused_for_capacity_stays_suspended_with_its_archive() -> None:
    h = Harness(replace(LIMITS, prewarm_pool_size=0, max_total_jobs=1), accept_claims=True)
    sid = ready_session(h)
    key = suspended(h, sid)
    h.confirm_deletes()
    other = h.open("ben", "t1", wait=0)  # takes the one slot
    h.complete_creates()
    rid = h.open("ann", "t1", wait=0)
    answer = h.answer(rid)
    assert answer is not None and isinstance(answer.error, CapacityExhausted)
    session = h.pool.sessions[sid]
    assert session.state is SessionState.SUSPENDED and session.snapshot is not None
    assert session.snapshot.key == key and key not in h.archive_deletes
    assert h.outcome(other) is Outcome.COLD


def test_a_failed_restore_deletes_that_pod_and_keeps_the_archive() -> None:
    h = Harness(LIMITS, accept_claims=True)
    sid = ready_session(h)
    key = suspended(h, sid)
    h.fill_pool(claimable=True)
    rid = h.open("ann", "t1")
    (call,) = h.restores
    assert h.pool.sessions[sid].resuming and call.key == key
    h.pool.restore_answered(sid, call.attempt, ("hook_error", "HTTP 500"), h.now)
    h.tick()
    answer = h.answer(rid)
    assert answer is not None and isinstance(answer.error, SessionRestoreFailed)
    assert answer.error.retry_after > 0
    session = h.pool.sessions[sid]
    assert session.state is SessionState.SUSPENDED and session.pod_name is None
    assert session.snapshot is not None and session.snapshot.key == key
    assert call.pod_name in h.deleted and key not in h.archive_deletes
    assert h.releases[call.pod_name].reason == "suspended"


def test_an_open_while_suspending_is_answered_once_resumed() -> None:
    h = Harness(LIMITS, accept_claims=True)
    sid = ready_session(h)
    h.pool.suspend_session(sid, h.now)
    h.tick()
    rid = h.open("ann", "t1")  # the editor comes back mid-snapshot
    assert h.answer(rid) is None
    snap = h.snapshots[-1]
    h.pool.snapshot_taken(sid, snap.attempt, snap.key, 100, None, h.now)
    h.tick()
    h.fill_pool(claimable=True)
    (restore_call,) = h.restores
    h.pool.restore_answered(sid, restore_call.attempt, None, h.now)
    h.tick()
    answer = h.answer(rid)
    assert answer is not None and answer.session_id == sid
    assert answer.outcome in (Outcome.WARM, Outcome.COLD)
    session = h.pool.sessions[sid]
    assert session.state is SessionState.READY and session.resumed
    assert session.pod_name == restore_call.pod_name and session.snapshot is None
    assert h.archive_deletes == [snap.key]


def test_an_expired_archive_ends_its_session_and_goes() -> None:
    h = Harness(LIMITS, accept_claims=True)
    sid = ready_session(h)
    key = suspended(h, sid)
    h.advance(999)
    assert h.state(sid) is SessionState.SUSPENDED
    h.advance(2)
    session = h.pool.sessions[sid]
    assert session.end_reason is EndReason.SNAPSHOT_EXPIRED and session.snapshot is None
    assert h.archive_deletes == [key]


def test_a_new_leader_restores_a_session_caught_mid_restore_on_a_new_pod() -> None:
    h = Harness(LIMITS, accept_claims=True)
    sid = ready_session(h)
    key = suspended(h, sid)
    h.fill_pool(claimable=True)
    h.open("ann", "t1", wait=0)  # answered provisioning: committed as resuming
    (call,) = h.restores
    stored = [replace(s, requests=[], reply_deadline=None) for s in h.pool.sessions.values()]
    rows = [replace(p) for p in h.pool.pods.values()]
    statuses = [
        PodStatus(
            p.name,
            PodPhase.READY,
            {LABEL_CREATE_ID: p.name, **({LABEL_SESSION: "x"} if p.session_id else {})},
            address="x:1",
        )
        for p in h.pool.pods.values()
        if p.state is not PodState.TERMINATING
    ]
    fresh = Harness(LIMITS, now=h.now, accept_claims=True)
    fresh.pool = Pool(LIMITS, TEMPLATE)
    restore(fresh.pool, stored, rows, statuses, h.now)
    fresh.tick()
    fresh.complete_creates()
    session = fresh.pool.sessions[sid]
    assert session.resuming and session.snapshot is not None and session.snapshot.key == key
    assert fresh.pool.pods[call.pod_name].state is PodState.TERMINATING  # half-restored
    fresh.fill_pool(claimable=True)
    (again,) = fresh.restores
    assert again.pod_name != call.pod_name and again.key == key
    fresh.pool.restore_answered(sid, again.attempt, None, fresh.now)
    fresh.tick()
    assert fresh.state(sid) is SessionState.READY and fresh.archive_deletes == [key]


def test_a_caller_whose_wait_ends_mid_restore_is_answered_and_no_second_pod_is_taken() -> None:
    h = Harness(LIMITS, accept_claims=True)
    sid = ready_session(h)
    suspended(h, sid)
    h.fill_pool(claimable=True)
    rid = h.open("ann", "t1", wait=30)
    (call,) = h.restores
    h.fill_pool(claimable=True)
    h.advance(31)  # its wait is over while the archive is still being restored
    answer = h.answer(rid)
    assert answer is not None and answer.session_id == sid  # provisioning, restoring
    holders = [
        p for p in h.pool.pods.values() if p.session_id == sid and p.state is PodState.ASSIGNED
    ]
    assert [p.name for p in holders] == [call.pod_name] and len(h.restores) == 1
