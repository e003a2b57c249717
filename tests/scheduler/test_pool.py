"""Each pool policy, decided on a hand-set clock with no I/O."""

from __future__ import annotations

import pytest

from sandbox_controller.errors import UserSessionLimit
from sandbox_controller.model import (
    ActivitySource,
    EndReason,
    Outcome,
    PodState,
    Provisioning,
    SessionState,
    WaitReason,
)
from sandbox_controller.scheduler.lifecycle import ROUTE_LEASE

from .harness import Harness, limits_with


def test_pool_refills_to_prewarm_size_within_the_create_window() -> None:
    h = Harness(limits_with(prewarm_pool_size=5, max_concurrent_creates=3))
    h.tick()
    assert h.pool.creates_in_flight == 3  # never more than the window at once
    h.fill_pool()
    assert h.pool.counts[PodState.IDLE] == 5
    assert len(h.created) == 5  # exactly the pool, not one more


def test_pending_pods_count_as_supply_so_nothing_is_created_twice() -> None:
    h = Harness(limits_with(prewarm_pool_size=5, max_concurrent_creates=10))
    h.tick()
    h.complete_creates()
    assert h.pool.counts[PodState.PENDING] == 5
    for _ in range(20):  # many rounds while pods are still starting
        h.advance(1)
    assert h.pool.creates_in_flight == 0
    assert len(h.created) == 5


def test_a_warm_session_is_ready_at_once_and_the_pool_refills() -> None:
    h = Harness(limits_with(prewarm_pool_size=2))
    h.tick()
    h.fill_pool()
    rid = h.open("alice", "t1")
    assert h.outcome(rid) is Outcome.WARM
    sid = h.session_of(rid)
    assert h.state(sid) is SessionState.READY
    assert h.pool.pods[h.pool.sessions[sid].pod_name or ""].state is PodState.ASSIGNED
    assert h.pool.creates_in_flight == 1  # one replacement on its way


def test_cap_holds_at_max_total_jobs() -> None:
    h = Harness(limits_with(prewarm_pool_size=5, max_total_jobs=50, max_sessions_per_user=100))
    h.tick()
    h.fill_pool()
    rids = [h.open("u", f"t{i}", wait=0) for i in range(60)]
    for _ in range(10):
        assert h.pool.total_pods <= 50
        h.fill_pool()
    outcomes = [h.outcome(r) for r in rids]
    assert h.pool.total_pods == 50
    assert outcomes.count(Outcome.CAPACITY) == 10
    assert h.pool.counts[PodState.ASSIGNED] == 50
    assert h.pool.capacity_blocked is False  # nobody is waiting any more


def test_cap_blocked_is_reported_while_someone_waits() -> None:
    h = Harness(limits_with(prewarm_pool_size=0, max_total_jobs=1, max_sessions_per_user=5))
    first = h.open("u", "t1")
    h.fill_pool()
    assert h.outcome(first) is Outcome.COLD
    h.open("u", "t2", wait=30)
    assert h.pool.capacity_blocked
    waiting = h.pool.provisioning(next(iter(h.pool.waiting)))
    assert waiting == Provisioning(WaitReason.CAP_REACHED, max_total_jobs=1)


def test_sixth_thread_with_all_five_active_is_refused() -> None:
    h = Harness(limits_with(prewarm_pool_size=6, max_concurrent_creates=6))
    h.tick()
    h.fill_pool()
    for i in range(5):
        assert h.outcome(h.open("alice", f"t{i}")) is Outcome.WARM
        h.advance(10)
    rid = h.open("alice", "t5")
    answer = h.answer(rid)
    assert answer is not None and answer.outcome is Outcome.USER_LIMIT
    assert isinstance(answer.error, UserSessionLimit)
    assert (answer.error.limit, answer.error.live) == (5, 5)
    assert answer.error.retry_after > 0
    assert len(h.pool.live_by_user["", "alice"]) == 5


def test_reclaim_takes_the_least_recently_active_idle_session_then_the_oldest() -> None:
    limits = limits_with(prewarm_pool_size=6, max_concurrent_creates=6, idle_after=300)
    h = Harness(limits)
    h.tick()
    h.fill_pool()
    sids = []
    for i in range(5):
        sids.append(h.session_of(h.open("alice", f"t{i}")))
        h.advance(1)
    # Last active: sids[1] at its creation; sids[0], [2] and [3] together, later. So the
    # least recently active is not the oldest created, and three share one time.
    h.advance(10)
    for sid in (sids[0], sids[2], sids[3]):
        h.pool.touch(sid, h.now, ActivitySource.TOUCH)
    h.advance(400)  # all four are idle now ...
    h.pool.touch(sids[4], h.now, ActivitySource.TOUCH)  # ... and sids[4] is busy again
    h.fill_pool()

    answer = h.answer(h.open("alice", "t-new"))
    assert answer is not None and answer.outcome is Outcome.WARM
    # Least recently active first, though sids[0] was created earlier.
    assert answer.reclaimed_session_id == sids[1]
    assert h.pool.sessions[sids[1]].end_reason is EndReason.RECLAIMED
    assert len(h.pool.live_by_user["", "alice"]) == 5

    h.fill_pool()
    answer = h.answer(h.open("alice", "t-newer"))
    assert answer is not None and answer.outcome is Outcome.WARM
    # Equally quiet: the oldest created goes first.
    assert answer.reclaimed_session_id == sids[0]
    assert all(h.pool.sessions[s].live for s in (sids[2], sids[3], sids[4]))


def test_an_active_session_is_never_reclaimed() -> None:
    h = Harness(limits_with(prewarm_pool_size=5, idle_after=300))
    h.tick()
    h.fill_pool()
    sids = [h.session_of(h.open("bob", f"t{i}")) for i in range(5)]
    h.advance(299)
    assert h.outcome(h.open("bob", "t6")) is Outcome.USER_LIMIT
    assert all(h.pool.sessions[s].live for s in sids)


def test_session_ends_after_exactly_idle_timeout_and_activity_pushes_it_back() -> None:
    h = Harness(limits_with(prewarm_pool_size=1, idle_timeout=9000))
    h.tick()
    h.fill_pool()
    sid = h.session_of(h.open("carol", "t1"))
    h.advance(8999)
    assert h.state(sid) is SessionState.READY
    h.pool.touch(sid, h.now, ActivitySource.TOUCH)  # activity at t+8999
    h.advance(1)
    assert h.state(sid) is SessionState.READY
    h.advance(8998)
    assert h.state(sid) is SessionState.READY
    h.advance(1)  # exactly idle_timeout after the last activity
    assert h.state(sid) is SessionState.ENDED
    assert h.pool.sessions[sid].end_reason is EndReason.IDLE_TIMEOUT
    assert h.pool.sessions[sid].pod_name in h.deleted


def test_max_lifetime_ends_even_a_busy_session() -> None:
    h = Harness(limits_with(prewarm_pool_size=1, max_lifetime=3600))
    h.tick()
    h.fill_pool()
    sid = h.session_of(h.open("dan", "t1"))
    for _ in range(59):
        h.advance(60)
        h.pool.touch(sid, h.now, ActivitySource.TOUCH)
    assert h.state(sid) is SessionState.READY
    h.advance(60)
    assert h.pool.sessions[sid].end_reason is EndReason.MAX_LIFETIME


def test_a_pod_not_ready_within_startup_timeout_is_replaced() -> None:
    h = Harness(limits_with(prewarm_pool_size=1, startup_timeout=300))
    h.tick()
    (stuck,) = h.complete_creates()
    h.advance(299)
    assert h.pool.pods[stuck].state is PodState.PENDING
    h.advance(1)
    assert h.pool.pods[stuck].state is PodState.TERMINATING
    assert stuck in h.deleted
    assert h.pool.creates_in_flight == 1  # its replacement
    assert h.pool.total_pods == 2  # the stuck one counts until it is gone


def test_a_provisioning_session_ends_with_startup_timeout() -> None:
    h = Harness(limits_with(prewarm_pool_size=0, startup_timeout=300))
    rid = h.open("erin", "t1", wait=5)
    h.complete_creates()
    h.advance(5)
    assert h.outcome(rid) is Outcome.COLD  # answered provisioning when its wait ran out
    sid = h.session_of(rid)
    assert h.state(sid) is SessionState.PROVISIONING
    h.advance(295)
    assert h.pool.sessions[sid].end_reason is EndReason.STARTUP_TIMEOUT


def test_waiters_at_the_cap_are_served_first_come_first_served() -> None:
    h = Harness(limits_with(prewarm_pool_size=0, max_total_jobs=2, max_sessions_per_user=10))
    holders = [h.open("u", f"hold{i}") for i in range(2)]
    h.fill_pool()
    assert [h.outcome(r) for r in holders] == [Outcome.COLD, Outcome.COLD]
    waiters = [h.open("u", f"wait{i}", wait=60) for i in range(3)]
    assert all(h.answer(r) is None for r in waiters)
    # free one slot: the first waiter gets the next pod, the others keep waiting
    h.pool.end_session(h.session_of(holders[0]), EndReason.DELETED, h.now)
    h.tick()
    h.confirm_deletes()
    h.fill_pool()
    assert h.outcome(waiters[0]) is Outcome.COLD
    assert h.answer(waiters[1]) is None and h.answer(waiters[2]) is None
    h.pool.end_session(h.session_of(holders[1]), EndReason.DELETED, h.now)
    h.tick()
    h.confirm_deletes()
    h.fill_pool()
    assert h.outcome(waiters[1]) is Outcome.COLD
    h.advance(60)
    assert h.outcome(waiters[2]) is Outcome.CAPACITY  # no slot freed within its wait
    assert h.session_of(waiters[0]) in h.pool.sessions


def test_a_refused_request_leaves_no_session_behind() -> None:
    h = Harness(limits_with(prewarm_pool_size=0, max_total_jobs=1))
    h.open("u", "t1")
    h.fill_pool()
    rid = h.open("u", "t2", wait=0)
    assert h.outcome(rid) is Outcome.CAPACITY
    assert ("", "u", "t2") not in h.pool.live_by_thread
    assert all(s.thread_id != "t2" for s in h.pool.sessions.values())


def test_a_request_refused_at_the_cap_does_not_count_toward_the_users_limit() -> None:
    # Seven requests decided in one scheduler round: each one refused for capacity is
    # gone before the next is decided, so the user keeps hearing 503, never 429.
    h = Harness(limits_with(prewarm_pool_size=0, max_total_jobs=4, max_sessions_per_user=5))
    rids = [h.pool.next_request_id() for _ in range(7)]
    for i, rid in enumerate(rids):
        h.pool.open_session(rid, "u", f"t{i}", 0, h.now)
    h.tick()
    outcomes = [h.outcome(r) for r in rids]
    assert outcomes == [Outcome.COLD] * 4 + [Outcome.CAPACITY] * 3
    assert len(h.pool.live_by_user["", "u"]) == 4


def test_same_thread_twice_returns_the_same_session() -> None:
    h = Harness(limits_with(prewarm_pool_size=0))
    first = h.open("u", "t1", wait=30)
    second = h.open("u", "t1", wait=30)  # a retry while the first is still waiting
    h.fill_pool()
    assert h.outcome(first) is Outcome.COLD
    assert h.outcome(second) is Outcome.EXISTING
    assert h.session_of(first) == h.session_of(second)
    third = h.open("u", "t1")
    assert h.outcome(third) is Outcome.EXISTING and h.session_of(third) == h.session_of(first)
    # A thread id is one user's: another user's "t1" is a thread of their own.
    other = h.open("someone-else", "t1", wait=30)
    h.fill_pool()
    assert h.outcome(other) is Outcome.COLD and h.session_of(other) != h.session_of(first)


@pytest.mark.parametrize("how", ["failed", "vanished"])
def test_a_dead_pod_ends_its_session_and_the_pool_refills(how: str) -> None:
    h = Harness(limits_with(prewarm_pool_size=1))
    h.tick()
    h.fill_pool()
    sid = h.session_of(h.open("u", "t1"))
    pod = h.pool.sessions[sid].pod_name or ""
    if how == "failed":
        h.fail(pod)
    else:
        h.gone(pod)
    assert h.pool.sessions[sid].end_reason is EndReason.POD_FAILED
    h.confirm_deletes()
    h.fill_pool()
    assert h.pool.counts[PodState.IDLE] == 1
    assert pod not in h.pool.pods


def test_a_failed_create_backs_off_before_trying_again() -> None:
    h = Harness(limits_with(prewarm_pool_size=1))
    h.tick()
    h._pending_creates = 0
    h.pool.create_failed(h.now)
    h.tick()
    assert h.pool.creates_in_flight == 0  # not straight away
    h.advance(1.0)
    assert h.pool.creates_in_flight == 1


def test_a_pod_seen_by_the_watch_before_its_create_returns_is_not_counted_twice() -> None:
    from sandbox_controller.backends.base import PodPhase, PodStatus

    h = Harness(limits_with(prewarm_pool_size=1))
    h.tick()
    assert h.pool.creates_in_flight == 1
    h.pool.pod_observed(PodStatus("early", PodPhase.PENDING), h.now)
    h.tick()
    assert h.pool.creates_in_flight == 1 and "early" in h.pool.pods
    h.pool.pod_created("early", h.now)
    h._pending_creates = 0
    h.tick()
    assert h.pool.creates_in_flight == 0
    assert list(h.pool.pods) == ["early"]


def test_an_unknown_pod_with_no_create_in_flight_is_deleted() -> None:
    from sandbox_controller.backends.base import PodPhase, PodStatus

    h = Harness(limits_with(prewarm_pool_size=0))
    h.pool.pod_observed(PodStatus("stray", PodPhase.READY), h.now)
    h.tick()
    assert "stray" in h.deleted and "stray" not in h.pool.pods


def test_a_pod_routed_to_outlives_its_session_until_the_route_lease_ends() -> None:
    # docs/architecture.md invariant 15: a proxy may use a route until its lease ends;
    # the pod keeps its address until then, so the address cannot pass to another
    # session's pod.
    h = Harness(limits_with(prewarm_pool_size=2, max_total_jobs=3))
    h.tick()
    h.fill_pool()
    sid = h.session_of(h.open("alice", "t1"))
    pod = h.pool.lease_route(sid, h.now)
    assert pod is not None and pod.address
    h.advance(10.0)
    h.pool.end_session(sid, EndReason.DELETED, h.now)
    h.tick()
    assert pod.name not in h.deleted and pod.state is PodState.TERMINATING
    assert h.pool.lease_route(sid, h.now) is None  # no new lease for an ended session
    assert h.pool.total_pods == 3  # it still counts toward the cap meanwhile
    h.advance(ROUTE_LEASE - 10.0 - 0.1)
    assert pod.name not in h.deleted
    h.advance(0.1)
    assert h.deleted == [pod.name]


def test_a_pod_never_routed_to_is_deleted_as_its_session_ends() -> None:
    h = Harness(limits_with(prewarm_pool_size=1))
    h.tick()
    h.fill_pool()
    sid = h.session_of(h.open("alice", "t1"))
    name = h.pool.sessions[sid].pod_name
    h.pool.end_session(sid, EndReason.DELETED, h.now)
    h.tick()
    assert h.deleted == [name]


def test_reclaim_waits_out_the_activity_still_on_its_way_from_the_proxies() -> None:
    # Proxies report activity in batches: a session quiet for just over idle_after by
    # the controller's record may have been used a moment ago. docs/architecture.md
    # invariant 4.
    h = Harness(
        limits_with(prewarm_pool_size=3, max_sessions_per_user=1, idle_after=300, activity_lag=4.0)
    )
    h.tick()
    h.fill_pool()
    first = h.session_of(h.open("alice", "t0"))
    h.advance(303.9)
    refused = h.answer(h.open("alice", "t1"))
    assert refused is not None and refused.outcome is Outcome.USER_LIMIT
    assert isinstance(refused.error, UserSessionLimit)
    assert refused.error.retry_after == 1.0  # quiet enough at 304 s (never less than 1 s)
    h.advance(0.1)
    answer = h.answer(h.open("alice", "t2"))
    assert answer is not None and answer.reclaimed_session_id == first
