"""The simulator replays a trace through the real Pool: a hand-made trace gives exactly
the hits, waits, refusals and pod-hours worked out by hand."""

from __future__ import annotations

import io

import pytest

from sandbox_controller.model import EndReason, Outcome, PodState
from sandbox_controller.sim.simulate import Platform, Startup, parse_startup, simulate
from sandbox_controller.sim.trace import read_trace
from tests.scheduler.harness import limits_with

# One warm pod, two pods in all, one session per user; pods start in 10 s, creates
# answer in 0.1 s, deletes in 1 s.
LIMITS = limits_with(
    prewarm_pool_size=1, max_total_jobs=2, max_sessions_per_user=1, idle_after=60, idle_timeout=600
)
TRACE = """time,event,user,thread,value
20,open,ann,t1,30
25,open,ben,t2,30
40,open,cat,t3,5
50,open,ann,t4,30
100,close,ben,t2,deleted
120,open,ann,t5,30
130,activity,ann,t5,
"""


def test_a_hand_made_trace_gives_the_expected_hits_waits_and_refusals() -> None:
    result = simulate(read_trace(io.StringIO(TRACE)), LIMITS, Startup(10.0), platform=Platform())
    # 0.1: the warm pod is created, ready at 10.1.
    # 20: ann/t1 takes it (warm); its replacement is ready at 30.1.
    # 25: ben/t2 waits for that one: a sandbox after 5.1 s (cold). Two pods: the cap.
    # 40: cat/t3 waits 5 s with no pod coming and no room: 503.
    # 50: ann/t4: ann holds t1, active 30 s ago (idle after 60): 429.
    # 100: ben closes t2; its pod is gone at 101, a new warm pod is ready at 111.1.
    # 120: ann/t5: t1 is idle (100 s quiet), so it is reclaimed; t5 takes the warm pod.
    assert result.requests == {
        Outcome.WARM: 2,
        Outcome.COLD: 1,
        Outcome.CAPACITY: 1,
        Outcome.USER_LIMIT: 1,
    }
    assert result.waits == pytest.approx([0.0, 5.1, 0.0])
    assert result.warm_hit_rate == 0.5  # 2 of 4 that needed a pod
    assert [code for _, code in result.refusals] == [503, 429]
    assert [t for t, _ in result.refusals] == [45.0, 50.0]
    assert result.ended == {EndReason.DELETED: 1, EndReason.RECLAIMED: 1}
    assert result.peak_pods == 2
    # Assigned: t1 20..120, t2 30.1..100, t5 120..130. Warm: 10.1..20 and 111.1..120.
    assert result.pod_seconds[PodState.ASSIGNED] == pytest.approx(100 + 69.9 + 10)
    assert result.pod_seconds[PodState.IDLE] == pytest.approx(9.9 + 8.9)
    assert result.duration == 130.0


def test_a_caller_that_stops_waiting_still_gets_its_sandbox_later() -> None:
    trace = "time,event,user,thread,value\n0,open,ann,t1,0\n100,activity,ann,t1,\n"
    limits = limits_with(prewarm_pool_size=0, max_total_jobs=5)
    result = simulate(read_trace(io.StringIO(trace)), limits, Startup(30.0))
    # Told "provisioning" at once (wait 0, a pod is coming), ready 30.1 s later.
    assert result.requests == {Outcome.COLD: 1}
    assert result.waits == pytest.approx([30.1])


def test_start_up_times_are_fixed_or_drawn_through_the_given_percentiles() -> None:
    assert parse_startup("20s") == Startup(20.0)
    assert parse_startup("p50=20s,p99=60s") == Startup(20.0, 60.0)
    assert parse_startup("p50 20s / p99 1m") == Startup(20.0, 60.0)
    import random

    rng = random.Random(7)
    draws = sorted(Startup(20.0, 60.0).sample(rng) for _ in range(20000))
    assert draws[10000] == pytest.approx(20.0, rel=0.05)
    assert draws[19800] == pytest.approx(60.0, rel=0.1)
    for bad in ("", "fast", "p50=0s", "p99=60s", "p50=30s,p99=10s"):
        with pytest.raises(ValueError):
            parse_startup(bad)


def test_the_same_trace_and_seed_replay_identically() -> None:
    events = read_trace(io.StringIO(TRACE))
    first = simulate(events, LIMITS, Startup(10.0, 40.0), seed=3)
    again = simulate(events, LIMITS, Startup(10.0, 40.0), seed=3)
    assert (first.requests, first.waits, first.samples) == (
        again.requests,
        again.waits,
        again.samples,
    )
