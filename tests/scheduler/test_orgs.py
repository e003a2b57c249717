"""Orgs and plans in the pool (admission.py, orgs.py): each org held to its plan's
cap, rate and share of the warm pool, each user to their plan's limit, while another
org on another plan is served as before."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sandbox_controller.errors import OrgRateLimited, OrgSessionLimit, UnknownPlan
from sandbox_controller.model import EndReason, Outcome, Plan, PodState, Session, SessionState
from sandbox_controller.scheduler.orgs import RATE_WINDOW, OrgLedger, warm_quota
from sandbox_controller.scheduler.pool import Pool
from sandbox_controller.scheduler.recovery import restore

from .harness import TEMPLATE, Harness, limits_with

SMALL = Plan("small", max_sessions_per_user=1, max_pods_per_org=2)
RATED = Plan("rated", sessions_per_minute=2)
SHARED = Plan("shared", warm_share=0.5)
BIG = Plan("big", max_sessions_per_user=3)
TEAM = Plan("team", max_sessions_per_user=3, max_pods_per_org=2)


def harness(**overrides: object) -> Harness:
    limits = limits_with(plans=(SMALL, RATED, SHARED, BIG, TEAM), **overrides)
    h = Harness(limits)
    h.tick()
    h.fill_pool()
    return h


def test_an_org_at_its_cap_is_refused_while_another_org_is_served_warm() -> None:
    h = harness(prewarm_pool_size=5)
    assert h.outcome(h.open("ann", "t1", org="acme", plan="small")) is Outcome.WARM
    assert h.outcome(h.open("bob", "t1", org="acme", plan="small")) is Outcome.WARM
    refused = h.open("cyd", "t1", org="acme", plan="small")
    assert h.outcome(refused) is Outcome.ORG_LIMIT
    error = h.answer(refused).error  # type: ignore[union-attr]
    assert isinstance(error, OrgSessionLimit)
    assert (error.org_id, error.plan, error.limit) == ("acme", "small", 2)
    # The first of acme's sessions could time out at the idle timeout, not sooner.
    assert error.retry_after == pytest.approx(h.pool.limits.idle_timeout)
    for user in ("dee", "eve", "fay"):
        assert h.outcome(h.open(user, "t1", org="globex", plan="big")) is Outcome.WARM
    assert len(h.pool.live_by_org["acme"]) == 2


def test_the_plans_user_limit_binds_each_user_of_the_org() -> None:
    h = harness(prewarm_pool_size=5)
    assert h.outcome(h.open("ann", "t1", org="acme", plan="small")) is Outcome.WARM
    refused = h.open("ann", "t2", org="acme", plan="small")
    assert h.outcome(refused) is Outcome.USER_LIMIT
    for thread in ("t1", "t2", "t3"):
        assert h.outcome(h.open("ann", thread, org="globex", plan="big")) is Outcome.WARM
    assert h.outcome(h.open("ann", "t4", org="globex", plan="big")) is Outcome.USER_LIMIT


def test_at_the_org_cap_a_user_reclaims_only_their_own_idle_session() -> None:
    h = harness(prewarm_pool_size=5)
    ann = h.session_of(h.open("ann", "t1", org="acme", plan="team"))
    bob = h.session_of(h.open("bob", "t1", org="acme", plan="team"))
    h.advance(h.pool.limits.reclaim_after + 1)  # both idle now
    # cyd has no session of her own to give up: ann's and bob's idle ones stay.
    assert h.outcome(h.open("cyd", "t1", org="acme", plan="team")) is Outcome.ORG_LIMIT
    assert h.state(ann) is h.state(bob) is SessionState.READY
    # ann is under her own limit (3) but her org is at its cap (2): her own idle
    # session makes room.
    again = h.open("ann", "t2", org="acme", plan="team")
    assert h.outcome(again) is Outcome.WARM
    assert h.answer(again).reclaimed_session_id == ann  # type: ignore[union-attr]
    assert h.state(ann) is SessionState.ENDED
    assert h.state(bob) is SessionState.READY
    assert len(h.pool.live_by_org["acme"]) == 2


def test_the_rate_is_a_sliding_minute_on_the_given_clock() -> None:
    h = harness(prewarm_pool_size=5)
    assert h.outcome(h.open("ann", "t1", org="acme", plan="rated")) is Outcome.WARM
    h.advance(20)
    assert h.outcome(h.open("bob", "t1", org="acme", plan="rated")) is Outcome.WARM
    h.advance(10)
    refused = h.open("cyd", "t1", org="acme", plan="rated")
    assert h.outcome(refused) is Outcome.ORG_RATE
    error = h.answer(refused).error  # type: ignore[union-attr]
    assert isinstance(error, OrgRateLimited)
    assert (error.per_minute, error.retry_after) == (2, pytest.approx(30.0))
    # Another org, and a retry of a thread that has its session, are not counted.
    assert h.outcome(h.open("dee", "t1", org="globex", plan="rated")) is Outcome.WARM
    assert h.outcome(h.open("ann", "t1", org="acme", plan="rated")) is Outcome.EXISTING
    h.advance(30)  # the first session leaves the window
    assert h.outcome(h.open("cyd", "t1", org="acme", plan="rated")) is Outcome.WARM
    assert h.outcome(h.open("eve", "t1", org="acme", plan="rated")) is Outcome.ORG_RATE


def test_an_org_past_its_warm_share_is_served_cold_and_the_other_org_stays_warm() -> None:
    h = harness(prewarm_pool_size=4)  # share 0.5 of 4: two warm pods while it refills
    for user in ("ann", "bob"):
        assert h.outcome(h.open(user, "t1", org="acme", plan="shared")) is Outcome.WARM
    held = h.open("cyd", "t1", org="acme", plan="shared")
    assert h.answer(held) is None  # waits for a new pod though two stand idle
    assert len(h.pool.idle) == 2
    for user in ("dee", "eve"):
        assert h.outcome(h.open(user, "t1", org="globex", plan="shared")) is Outcome.WARM
    h.fill_pool()
    assert h.outcome(held) is Outcome.COLD
    # The pool is full again: the counts start over.
    assert len(h.pool.idle) == 4
    assert h.outcome(h.open("fay", "t1", org="acme", plan="shared")) is Outcome.WARM


def test_held_back_from_the_warm_pool_it_still_takes_an_idle_pod_rather_than_a_503() -> None:
    h = harness(prewarm_pool_size=2, max_total_jobs=3)
    assert h.outcome(h.open("ann", "t1", org="acme", plan="shared")) is Outcome.WARM
    h.fill_pool()  # the refill used the last of the cap: 1 assigned, 2 idle
    assert h.outcome(h.open("bob", "t1", org="acme", plan="shared")) is Outcome.WARM
    # Past its share, at the cap: no new pod could come but by deleting the idle one,
    # so it takes that one at once (answered as cold: the share held it back first).
    held = h.open("cyd", "t1", wait=5, org="acme", plan="shared")
    assert h.outcome(held) is Outcome.COLD
    assert h.pool.counts[PodState.TERMINATING] == 0  # no idle pod given up for it
    assert h.pool.sessions[h.session_of(held)].state is SessionState.READY


def test_a_thread_id_is_one_users_within_one_org() -> None:
    h = harness(prewarm_pool_size=5)
    first = h.open("ann", "t1", org="acme")
    again = h.open("ann", "t1", org="acme")
    assert h.outcome(again) is Outcome.EXISTING and h.session_of(again) == h.session_of(first)
    other_org = h.open("ann", "t1", org="globex")
    no_org = h.open("ann", "t1")
    other_user = h.open("bob", "t1", org="acme")
    ids = {h.session_of(r) for r in (first, other_org, no_org, other_user)}
    assert len(ids) == 4
    assert {h.outcome(r) for r in (other_org, no_org, other_user)} == {Outcome.WARM}


def test_an_unknown_plan_is_refused_and_makes_no_session() -> None:
    h = harness()
    rid = h.open("ann", "t1", org="acme", plan="gold")
    error = h.answer(rid).error  # type: ignore[union-attr]
    assert isinstance(error, UnknownPlan)
    assert error.known == ("small", "rated", "shared", "big", "team")
    assert not h.pool.live_by_thread


def test_org_limits_bind_only_sessions_that_name_an_org() -> None:
    h = harness(prewarm_pool_size=5)
    for user in ("ann", "bob", "cyd"):
        assert h.outcome(h.open(user, "t1", plan="small")) is Outcome.WARM


def test_a_takeover_keeps_the_rate_of_the_last_minute_from_the_store() -> None:
    h = harness(prewarm_pool_size=3)
    h.open("ann", "t1", org="acme", plan="rated")
    h.advance(50)
    h.open("bob", "t1", org="acme", plan="rated")
    sessions = [s for s in h.pool.sessions.values() if s.live]
    pods = list(h.pool.pods.values())
    # A new leader, its monotonic clock elsewhere; the stored wall times carry over.
    pool = Pool(h.pool.limits, TEMPLATE)
    pool.wall_offset = h.pool.wall_offset + 5000.0
    now = h.now - 5000.0
    restore(pool, [_stored(s) for s in sessions], pods, [], now)
    retry_after = pool.orgs.rate_retry_after("acme", 2, now)
    assert retry_after == pytest.approx(10.0)  # ann's session leaves the window in 10 s
    assert pool.orgs.rate_retry_after("acme", 2, now + 10.0) is None


def _stored(session: Session) -> Session:
    return replace(session, requests=[], created_mono=0.0, active_mono=0.0)


def test_the_warm_quota_is_the_share_of_the_target_and_at_least_one() -> None:
    assert warm_quota(0.5, 4) == 2
    assert warm_quota(0.25, 2) == 1
    assert warm_quota(0.0, 10) == 0
    assert warm_quota(1.0, 7) == 7


def test_the_ledger_forgets_starts_older_than_the_window() -> None:
    ledger = OrgLedger()
    ledger.started("acme", 0.0)
    assert ledger.rate_retry_after("acme", 1, 1.0) == pytest.approx(RATE_WINDOW - 1.0)
    assert ledger.rate_retry_after("acme", 1, RATE_WINDOW) is None


def test_pods_counted_per_org_are_its_live_sessions() -> None:
    h = harness(prewarm_pool_size=2)
    a = h.session_of(h.open("ann", "t1", org="acme", plan="small"))
    h.pool.end_session(a, EndReason.DELETED, h.now)
    assert "acme" not in h.pool.live_by_org
    assert h.pool.counts[PodState.TERMINATING] == 1


def test_with_hooks_the_sandboxes_asked_before_a_reclaim_at_the_org_cap_are_the_users_own() -> None:
    limits = limits_with(plans=(TEAM,), prewarm_pool_size=5, hooks=True)
    h = Harness(limits, accept_claims=True)
    h.tick()
    h.fill_pool(claimable=True)
    ann = h.session_of(h.open("ann", "t1", org="acme", plan="team"))
    h.open("bob", "t1", org="acme", plan="team")
    h.advance(h.pool.limits.reclaim_after + 1)
    checks = h.pool.reclaim_checks("ann", "t2", h.now, org_id="acme", plan="team")
    assert [c.session_id for c in checks] == [ann]  # the org is at its cap: ann's own
    assert h.pool.reclaim_checks("cyd", "t1", h.now, org_id="acme", plan="team") == []
    assert h.pool.reclaim_checks("ann", "t2", h.now, org_id="globex", plan="team") == []
