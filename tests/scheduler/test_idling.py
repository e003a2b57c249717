"""Busy-aware idling and the release hook, decided by the pool on a hand-set clock:
what is asked before an idle session ends or is reclaimed, what each answer does, and
what every end records (scheduler/idling.py and its hooks in pool.py)."""

from __future__ import annotations

from sandbox_controller.backends.base import PodPhase, PodStatus
from sandbox_controller.errors import UserSessionLimit
from sandbox_controller.model import (
    ActivitySource,
    BusyAnswer,
    EndDetail,
    EndReason,
    Outcome,
    SessionState,
)
from sandbox_controller.scheduler.effects import Release, StatusCheck
from sandbox_controller.scheduler.idling import CHECK_MARGIN
from sandbox_controller.scheduler.lifecycle import ROUTE_LEASE

from .harness import Harness, limits_with

IDLE_TIMEOUT = 9000.0
HOOK_TIMEOUT = 2.0
BUSY = BusyAnswer(True, "running the test suite", answered=True)
NOT_BUSY = BusyAnswer(False, "", answered=True)
HUNG = BusyAnswer(False, "timed out", answered=False)


def harness(**overrides: float | int | bool) -> Harness:
    limits = limits_with(
        prewarm_pool_size=2,
        idle_after=300,
        idle_timeout=IDLE_TIMEOUT,
        hooks=True,
        hook_timeout=HOOK_TIMEOUT,
    )
    h = Harness(limits_with(**{**limits.__dict__, **overrides}), accept_claims=True)
    h.tick()
    h.fill_pool(claimable=True)
    return h


def open_ready(h: Harness, user: str, thread: str) -> str:
    sid = h.session_of(h.open(user, thread))
    assert h.state(sid) is SessionState.READY
    h.fill_pool(claimable=True)
    return sid


def check_of(h: Harness, sid: str) -> StatusCheck:
    pod = h.pool.pods[h.pool.sessions[sid].pod_name or ""]
    return StatusCheck(sid, pod.address or "", pod.create_id or "")


def answer(h: Harness, sid: str, busy: BusyAnswer) -> None:
    h.pool.busy_answer(sid, busy, h.now)
    h.tick()


def test_an_idle_timeout_asks_first_and_a_busy_answer_counts_as_activity() -> None:
    h = harness()
    sid = open_ready(h, "ann", "t1")
    handed_over = h.now
    h.advance(IDLE_TIMEOUT)
    assert h.state(sid) is SessionState.READY  # not ended: asked first
    assert h.status_checks == [check_of(h, sid)]

    answer(h, sid, BUSY)
    session = h.pool.sessions[sid]
    assert session.state is SessionState.READY
    assert (session.last_active_at, session.activity_source) == (h.now, ActivitySource.BUSY)
    assert session.activity_detail == "running the test suite"
    assert session.last_active_at > handed_over

    # The busy answer moved the idle deadline on by a whole idle timeout.
    h.advance(IDLE_TIMEOUT - 1)
    assert len(h.status_checks) == 1
    h.advance(1)
    assert len(h.status_checks) == 2 and h.state(sid) is SessionState.READY


def test_a_not_busy_answer_ends_the_session_and_says_why() -> None:
    h = harness()
    sid = open_ready(h, "ann", "t1")
    handed_over = h.now
    h.advance(IDLE_TIMEOUT)
    answer(h, sid, BusyAnswer(False, "waiting for input", answered=True))
    session = h.pool.sessions[sid]
    assert session.end_reason is EndReason.IDLE_TIMEOUT
    assert session.end_detail == EndDetail(
        handed_over, ActivitySource.HANDOVER, "not busy: waiting for input"
    )
    assert session.pod_name in h.deleted


def test_a_sandbox_that_never_answers_ends_at_the_fallback_deadline() -> None:
    h = harness()
    sid = open_ready(h, "ann", "t1")
    h.advance(IDLE_TIMEOUT)
    h.advance(HOOK_TIMEOUT + CHECK_MARGIN - 0.5)
    assert h.state(sid) is SessionState.READY  # still waiting for the answer
    h.advance(0.5)
    session = h.pool.sessions[sid]
    assert session.end_reason is EndReason.IDLE_TIMEOUT
    assert session.end_detail is not None
    assert session.end_detail.busy_answer == "no answer (none within 3s)"

    answer(h, sid, BUSY)  # a late answer changes nothing
    assert h.pool.sessions[sid].state is SessionState.ENDED
    assert h.pool.sessions[sid].activity_source is ActivitySource.HANDOVER


def test_an_unanswered_check_counts_as_not_busy() -> None:
    h = harness()
    sid = open_ready(h, "ann", "t1")
    h.advance(IDLE_TIMEOUT)
    answer(h, sid, HUNG)
    detail = h.pool.sessions[sid].end_detail
    assert detail is not None and detail.busy_answer == "no answer (timed out)"


def test_activity_while_the_check_is_out_keeps_the_session() -> None:
    h = harness()
    sid = open_ready(h, "ann", "t1")
    h.advance(IDLE_TIMEOUT)
    h.advance(1)
    h.pool.touch(sid, h.now, ActivitySource.PROXY)
    answer(h, sid, NOT_BUSY)  # irrelevant now: the session is no longer idle
    session = h.pool.sessions[sid]
    assert session.state is SessionState.READY and session.activity_source is ActivitySource.PROXY
    h.advance(IDLE_TIMEOUT)  # idle again, a whole timeout after the proxy's activity
    assert len(h.status_checks) == 2
    answer(h, sid, NOT_BUSY)
    assert h.pool.sessions[sid].end_detail == EndDetail(
        h.now - IDLE_TIMEOUT, ActivitySource.PROXY, "not busy"
    )


def test_a_check_is_asked_once_however_often_the_deadline_comes_round() -> None:
    h = harness()
    sid = open_ready(h, "ann", "t1")
    for _ in range(3):  # each touch leaves an idle deadline behind (lazy heap)
        h.advance(10)
        h.pool.touch(sid, h.now, ActivitySource.TOUCH)
    h.advance(IDLE_TIMEOUT)
    h.advance(0.5)
    assert len(h.status_checks) == 1


def test_without_hooks_or_a_create_id_the_session_ends_at_once_unasked() -> None:
    for how in ("hooks off", "no create id"):
        h = harness(hooks=how != "hooks off")
        sid = open_ready(h, "ann", "t1")
        h.pool.pods[h.pool.sessions[sid].pod_name or ""].create_id = (
            None if how == "no create id" else "x"
        )
        h.advance(IDLE_TIMEOUT)
        session = h.pool.sessions[sid]
        assert session.end_reason is EndReason.IDLE_TIMEOUT, how
        assert h.status_checks == [], how
        assert session.end_detail == EndDetail(h.now - IDLE_TIMEOUT, ActivitySource.HANDOVER)


def test_reclaim_checks_cover_the_users_idle_sessions_only_at_the_limit() -> None:
    h = harness(max_sessions_per_user=3, prewarm_pool_size=4)
    old = open_ready(h, "ann", "t1")
    h.advance(200)
    soon = open_ready(h, "ann", "t2")  # turns idle within the answers' wait
    h.advance(300 - HOOK_TIMEOUT)
    assert h.pool.reclaim_checks("ann", "t-new", h.now) == []  # under the limit
    active = open_ready(h, "ann", "t3")
    checks = h.pool.reclaim_checks("ann", "t-new", h.now)
    assert {c.session_id for c in checks} == {old, soon}
    assert active not in {c.session_id for c in checks}
    assert h.pool.reclaim_checks("ann", "t1", h.now) == []  # a retry reclaims nothing
    assert h.pool.reclaim_checks("bob", "t-new", h.now) == []


def test_a_reclaim_skips_a_busy_session_and_records_the_answer_of_the_one_it_takes() -> None:
    h = harness(max_sessions_per_user=2, prewarm_pool_size=3)
    oldest = open_ready(h, "ann", "t1")
    h.advance(10)
    other = open_ready(h, "ann", "t2")
    h.advance(400)
    answer(h, oldest, BUSY)
    answer(h, other, NOT_BUSY)
    opened = h.answer(h.open("ann", "t3"))
    assert opened is not None and opened.outcome is Outcome.WARM
    assert opened.reclaimed_session_id == other
    assert h.pool.sessions[oldest].state is SessionState.READY
    reclaimed = h.pool.sessions[other]
    assert reclaimed.end_reason is EndReason.RECLAIMED
    assert reclaimed.end_detail == EndDetail(h.now - 400, ActivitySource.HANDOVER, "not busy")


def test_when_every_idle_session_is_busy_the_new_thread_is_refused() -> None:
    h = harness(max_sessions_per_user=2, prewarm_pool_size=3)
    sids = [open_ready(h, "ann", f"t{i}") for i in range(2)]
    h.advance(400)
    for sid in sids:
        answer(h, sid, BUSY)
    refused = h.answer(h.open("ann", "t3"))
    assert refused is not None and refused.outcome is Outcome.USER_LIMIT
    assert isinstance(refused.error, UserSessionLimit)
    assert refused.error.retry_after == 300  # when the busy ones could next be idle
    assert all(h.state(s) is SessionState.READY for s in sids)


def test_a_stale_answer_is_not_recorded_as_the_reason() -> None:
    h = harness(max_sessions_per_user=1)
    sid = open_ready(h, "ann", "t1")
    h.advance(400)
    answer(h, sid, NOT_BUSY)
    h.advance(HOOK_TIMEOUT + CHECK_MARGIN + 1)  # the answer is old news by now
    h.open("ann", "t2")
    detail = h.pool.sessions[sid].end_detail
    assert detail is not None and detail.busy_answer is None


def test_a_served_pod_is_released_with_its_delete_and_a_pool_pod_never() -> None:
    h = harness(prewarm_pool_size=1)
    sid = open_ready(h, "ann", "t1")
    pod = h.pool.sessions[sid].pod_name or ""
    h.pool.lease_route(sid, h.now)
    h.pool.end_session(sid, EndReason.DELETED, h.now)
    h.tick()
    assert pod not in h.deleted and h.releases == {}  # the route lease delays both
    h.advance(ROUTE_LEASE)
    address = h.pool.pods[pod].address or ""
    assert h.releases == {pod: Release(sid, address, f"cid-{pod}", "deleted")}
    h.releases.clear()
    h.deleted.clear()
    h.advance(60)  # the delete is asked again; the release is not
    assert pod in h.deleted and h.releases == {}

    # A warm pod that stops answering goes at once, with no release: it served nobody.
    warm = next(iter(h.pool.idle))
    h.pool.pod_observed(PodStatus(warm, PodPhase.PENDING), h.now)
    h.tick()
    assert warm in h.deleted and h.releases == {}


def test_a_failed_pods_session_ends_with_no_release() -> None:
    h = harness()
    sid = open_ready(h, "ann", "t1")
    h.fail(h.pool.sessions[sid].pod_name or "")
    assert h.pool.sessions[sid].end_reason is EndReason.POD_FAILED
    assert h.releases == {}


def test_every_end_records_the_last_activity_and_its_source() -> None:
    h = harness()
    sid = open_ready(h, "ann", "t1")
    h.advance(5)
    h.pool.touch(sid, h.now, ActivitySource.PROXY)
    h.advance(5)
    h.pool.touch(sid, h.now - 10, ActivitySource.TOUCH)  # older news: ignored
    h.pool.end_session(sid, EndReason.DELETED, h.now)
    assert h.pool.sessions[sid].end_detail == EndDetail(h.now - 5, ActivitySource.PROXY, None)


DRAIN = "EvictionByEvictionAPI: Eviction API: evicting"


def test_an_evicted_pods_session_ends_evicted_after_its_release_at_once() -> None:
    h = harness()
    sid = open_ready(h, "ann", "t1")
    pod = h.pool.sessions[sid].pod_name or ""
    address = h.pool.pods[pod].address or ""
    h.pool.lease_route(sid, h.now)  # a proxy routes to it: an eviction does not wait
    h.pool.pod_observed(
        PodStatus(pod, PodPhase.READY, {}, 0.0, address, terminating=True, evicted=DRAIN),
        h.now,
    )
    h.tick()
    session = h.pool.sessions[sid]
    assert session.end_reason is EndReason.EVICTED
    assert session.end_detail is not None and session.end_detail.eviction == DRAIN
    # Within the pod's grace period: the release, then the delete, not after the lease.
    assert h.releases == {pod: Release(sid, address, f"cid-{pod}", "evicted")}
    assert pod in h.deleted


def test_a_pod_evicted_by_the_kubelet_ends_evicted_with_no_release() -> None:
    h = harness()
    sid = open_ready(h, "ann", "t1")
    pod = h.pool.sessions[sid].pod_name or ""
    disk = "Pod ephemeral local storage usage exceeds the total limit of containers 22Gi."
    h.pool.pod_observed(PodStatus(pod, PodPhase.FAILED, evicted=disk), h.now)
    h.tick()
    detail = h.pool.sessions[sid].end_detail
    assert h.pool.sessions[sid].end_reason is EndReason.EVICTED
    assert detail is not None and detail.eviction == disk
    assert h.releases == {}  # its sandbox has stopped: nothing to call


def test_a_pod_gone_with_an_eviction_ends_its_session_evicted() -> None:
    h = harness()
    sid = open_ready(h, "ann", "t1")
    h.pool.pod_gone(h.pool.sessions[sid].pod_name or "", h.now, DRAIN)
    assert h.pool.sessions[sid].end_reason is EndReason.EVICTED
