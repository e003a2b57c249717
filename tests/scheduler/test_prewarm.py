"""The adaptive prewarm policy on a hand-set clock: it follows arrivals up within a
minute, comes back down when they stop, stays within its bounds and the cap, and never
costs a 503 that the static policy with the same cap would not."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox_controller.model import Limits, Outcome, Pod, PodState, PrewarmPolicy, PrewarmSettings
from sandbox_controller.scheduler.prewarm import Prewarm, poisson_quantile
from sandbox_controller.sim.simulate import Simulation, Startup, simulate
from sandbox_controller.sim.trace import EventKind, TraceEvent

from .harness import TEMPLATE, Harness, limits_with
from .test_pool_properties import LIMITS as PROPERTY_LIMITS
from .test_pool_properties import PoolMachine

ADAPTIVE = PrewarmSettings(PrewarmPolicy.ADAPTIVE, min=1, max=10)


def adaptive(**overrides: object) -> Limits:
    return limits_with(prewarm=replace(ADAPTIVE, **overrides), max_total_jobs=50)


def test_poisson_quantile_matches_hand_computed_values() -> None:
    # P(Poisson(1) <= k): 0.368, 0.736, 0.920, 0.981, 0.996
    assert poisson_quantile(1.0, 0.99, 100) == 4
    assert poisson_quantile(1.0, 0.9, 100) == 2
    assert poisson_quantile(0.0, 0.99, 100) == 0
    assert poisson_quantile(1.0, 0.99, 3) == 3  # the ceiling wins
    assert 1000 + 2 * 31 < poisson_quantile(1000.0, 0.99, 10_000) < 1000 + 3 * 32


def test_static_keeps_prewarm_pool_size_whatever_the_traffic() -> None:
    prewarm = Prewarm(limits_with(prewarm_pool_size=4))
    for t in range(100):
        prewarm.arrival(float(t))
    target = prewarm.decide(100.0)
    assert (target.policy, target.target) == (PrewarmPolicy.STATIC, 4)


def test_target_rises_within_a_minute_of_a_burst() -> None:
    h = Harness(adaptive(), now=0.0)
    h.tick()
    h.fill_pool()
    assert len(h.pool.idle) == 1  # quiet: min
    h.pool.prewarm.pod_started(20.0)  # pods here take 20 s to start
    for i in range(12):  # 12 new threads in 30 s, after a quiet start
        h.now = 100.0 + i * 2.5
        h.open(f"user{i}", f"t{i}")
        h.complete_creates()
    target = h.pool.status(h.now).prewarm
    assert target is not None
    # 12 in the last minute x 20 s = 4 expected during one start-up; P(Poisson(4) <= 9)
    # is the first above 0.99.
    assert target.target == 9, target.reason
    assert target.reason.startswith("12.00 arrivals/min x start-up p90 20s")
    on_the_way = h.pool.counts[PodState.PENDING] + len(h.pool.idle) + h.pool.creates_in_flight
    assert on_the_way >= 9  # the pool has ordered the pods, not only computed the number


def test_target_decays_when_traffic_stops_and_extra_warm_pods_go() -> None:
    # Half an hour of a new thread every 10 s (each closed a minute later), then
    # silence; pods take 20 s to start. After the last close nothing happens but the
    # pool's own deadlines.
    events = []
    for i in range(180):
        start = i * 10.0
        events.append(TraceEvent(start, EventKind.OPEN, f"user{i % 20}", f"t{i}"))
        events.append(TraceEvent(start + 60, EventKind.CLOSE, f"user{i % 20}", f"t{i}"))
    sim = Simulation(adaptive(), Startup(20.0), sample_every=10.0)
    result = sim.run(sorted(events, key=lambda e: e.time), until=6000.0)
    by_time = {s.time: s for s in result.samples}
    # 6 a minute x 20 s: 2 expected per start-up, 6 at the 99th percentile.
    assert by_time[1790.0].target == 6
    assert by_time[1790.0].warm + by_time[1790.0].pending == 6  # kept at the target
    after = [s for s in result.samples if s.time >= 1800.0]
    targets = [s.target for s in after]
    assert targets == sorted(targets, reverse=True)  # only down once traffic stops
    assert 1 < by_time[2400.0].target < 6  # decaying as arrivals leave the long window
    assert (by_time[3700.0].target, by_time[3700.0].warm) == (1, 1)  # min, and pods let go


@settings(max_examples=150, deadline=None)
@given(
    arrivals=st.lists(st.floats(0, 5000, allow_nan=False), max_size=200),
    startups=st.lists(st.floats(0.1, 600, allow_nan=False), max_size=60),
    low=st.integers(0, 6),
    high=st.integers(0, 30),
    cap=st.integers(1, 25),
    q=st.floats(0.5, 0.9999),
)
def test_target_never_exceeds_max_or_the_cap(
    arrivals: list[float], startups: list[float], low: int, high: int, cap: int, q: float
) -> None:
    low = min(low, high)
    limits = limits_with(
        prewarm=PrewarmSettings(PrewarmPolicy.ADAPTIVE, low, high, q), max_total_jobs=cap
    )
    prewarm = Prewarm(limits)
    for seconds in startups:
        prewarm.pod_started(seconds)
    for t in sorted(arrivals):
        prewarm.arrival(t)
        target = prewarm.decide(t).target
        assert target <= min(high, cap)
        assert target >= min(low, cap)


# ----------------------------------------------------- no 503 that static would not give

SESSIONS = st.lists(
    st.tuples(
        st.floats(0, 1800, allow_nan=False),  # arrival
        st.sampled_from(["ann", "ben", "cat", "dov", "eve"]),
        st.sampled_from([0.0, 5.0, 30.0]),  # wait_seconds
        st.floats(1, 1200, allow_nan=False),  # length
        st.booleans(),  # closed by the editor (else left to time out)
    ),
    max_size=40,
)


def _trace(sessions: list[tuple[float, str, float, float, bool]]) -> list[TraceEvent]:
    events = []
    for i, (start, user, wait, length, closed) in enumerate(sessions):
        events.append(TraceEvent(start, EventKind.OPEN, user, f"t{i}", f"{wait:g}"))
        if closed:
            events.append(TraceEvent(start + length, EventKind.CLOSE, user, f"t{i}", "deleted"))
    return sorted(events, key=lambda e: e.time)


@settings(max_examples=120, deadline=None)
@given(
    sessions=SESSIONS,
    cap=st.integers(1, 8),
    low=st.integers(0, 3),
    high=st.integers(0, 8),
    startup=st.sampled_from([Startup(2.0), Startup(20.0), Startup(10.0, 90.0)]),
)
def test_adaptive_never_refuses_for_capacity_where_static_would_not(
    sessions: list[tuple[float, str, float, float, bool]],
    cap: int,
    low: int,
    high: int,
    startup: Startup,
) -> None:
    low, high = min(low, high, cap), min(max(low, high), cap)
    base = limits_with(max_total_jobs=cap, max_sessions_per_user=2, idle_after=60, idle_timeout=600)
    events = _trace(sessions)
    until = (events[-1].time if events else 0.0) + 1200
    static = simulate(events, replace(base, prewarm_pool_size=low), startup, until=until)
    sized = simulate(
        events,
        replace(base, prewarm=PrewarmSettings(PrewarmPolicy.ADAPTIVE, low, high)),
        startup,
        until=until,
    )
    assert sized.requests[Outcome.CAPACITY] <= static.requests[Outcome.CAPACITY]


def test_a_new_leader_keeps_the_warm_pods_it_took_over_until_it_has_seen_traffic() -> None:
    h = Harness(adaptive(), now=1000.0)
    for i in range(5):
        h.pool.restore_pod(Pod(f"warm-{i}", PodState.IDLE, 900.0, TEMPLATE, ready_at=910.0))
    h.tick()
    assert h.deleted == [] and len(h.pool.idle) == 5  # no history yet: nothing shed
    h.advance(ADAPTIVE.long_window - 1)
    assert h.deleted == []
    h.advance(2.0)  # a long window with no arrival at all: down to min
    assert sorted(h.deleted) == ["warm-0", "warm-1", "warm-2", "warm-3"]
    assert list(h.pool.idle) == ["warm-4"]


class AdaptivePoolMachine(PoolMachine):
    """The pool's invariants (test_pool_properties.py), checked after every step, with
    the adaptive policy deciding the warm pool."""

    limits = replace(
        PROPERTY_LIMITS,
        prewarm=PrewarmSettings(PrewarmPolicy.ADAPTIVE, 0, 5, short_window=60, long_window=600),
    )


TestAdaptivePoolInvariants = AdaptivePoolMachine.TestCase
TestAdaptivePoolInvariants.settings = settings(
    max_examples=150, stateful_step_count=50, deadline=None
)
