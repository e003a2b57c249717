"""The scheduler loop around the pool: batching, commit before answer, effects only
after the commit, a failed commit, route leases through the loop. A fake store and
backend (fakes.py) and a ManualClock; nothing sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from sandbox_controller.backends.base import (
    LABEL_STATE,
    LABEL_TEMPLATE_HASH,
    PodPhase,
    PodStatus,
)
from sandbox_controller.clock import ManualClock
from sandbox_controller.errors import (
    NotLeader,
    SessionNotFound,
    StoreUnavailable,
    UnknownPlan,
    UserSessionLimit,
)
from sandbox_controller.model import (
    EndReason,
    Outcome,
    PodState,
    SessionActivity,
    SessionQuery,
    SessionState,
    WaitReason,
)
from sandbox_controller.scheduler.lifecycle import ROUTE_LEASE
from sandbox_controller.scheduler.loop import Scheduler
from sandbox_controller.scheduler.pod_rows import POD_ROWS_DELAY
from sandbox_controller.scheduler.rounds import RECOVERY_BACKOFF

from .fakes import FakeBackend, FakeStore, RecordingObserver
from .harness import limits_with

LIMITS = limits_with(
    prewarm_pool_size=3, max_total_jobs=6, max_sessions_per_user=2, max_concurrent_creates=3
)


@dataclass
class World:
    scheduler: Scheduler
    store: FakeStore
    backend: FakeBackend
    clock: ManualClock
    observer: RecordingObserver

    async def quiesce(self) -> None:
        """Let the loop and the effect tasks run until nothing is left to do now."""
        for _ in range(3):
            await self.scheduler.settle()
            for _ in range(5):
                await asyncio.sleep(0)  # a yield to the effect tasks, not a wait

    async def warm(self) -> None:
        """Fill the warm pool, and let its pod rows reach the store."""
        await self.quiesce()
        assert len(self.backend.make_ready()) == LIMITS.prewarm_pool_size
        await self.quiesce()
        self.clock.advance(POD_ROWS_DELAY)
        await self.quiesce()
        assert self.idle() == LIMITS.prewarm_pool_size
        assert len(self.store.pods) == LIMITS.prewarm_pool_size

    async def quiesce_until(self, check: Callable[[], bool]) -> None:
        """Yield to the loop's tasks (no clock time passes) until ``check()`` holds."""
        for _ in range(100):
            if check():
                return
            await asyncio.sleep(0)
        raise AssertionError("the scheduler never got there")

    def idle(self) -> int:
        return self.scheduler.snapshot(self.clock.now()).pods[PodState.IDLE]


@pytest.fixture
async def world() -> AsyncIterator[World]:
    store, backend, clock, observer = FakeStore(), FakeBackend(), ManualClock(), RecordingObserver()
    scheduler = Scheduler(
        limits=LIMITS, store=store, backend=backend, clock=clock, observer=observer
    )
    await scheduler.start()
    try:
        yield World(scheduler, store, backend, clock, observer)
    finally:
        await scheduler.stop()


async def test_a_burst_of_requests_is_decided_in_one_round_and_one_commit(world: World) -> None:
    await world.warm()
    writes = len(world.store.writes)
    opened = await asyncio.gather(
        *(world.scheduler.open_session(f"user-{i}", f"t{i}", 0) for i in range(3))
    )
    assert [o.outcome for o in opened] == [Outcome.WARM] * 3
    assert len(world.store.writes) == writes + 1
    assert {s.id for s in world.store.writes[-1].sessions} == {o.session.id for o in opened}
    assert 3 in world.observer.rounds


async def test_a_caller_hears_back_only_after_the_store_took_the_write(world: World) -> None:
    await world.warm()
    world.store.gate = asyncio.Event()
    world.store.write_started.clear()
    opening = asyncio.create_task(world.scheduler.open_session("ann", "t1", 0))
    await world.store.write_started.wait()
    for _ in range(10):
        await asyncio.sleep(0)
    assert not opening.done()  # decided, but not yet durable: no answer
    assert world.backend.calls_of("label") == []  # and no backend call of that round
    creates = len(world.backend.calls_of("create"))
    world.store.gate.set()
    opened = await opening
    assert opened.session.id in world.store.sessions
    await world.quiesce()
    assert world.backend.calls_of("label") == [opened.session.pod_name]
    assert len(world.backend.calls_of("create")) == creates + 1  # the refill, after it


async def test_a_pod_is_deleted_only_after_the_session_end_is_committed(world: World) -> None:
    await world.warm()
    opened = await world.scheduler.open_session("ann", "t1", 0)
    pod = opened.session.pod_name
    world.store.gate = asyncio.Event()
    world.store.write_started.clear()
    ending = asyncio.create_task(world.scheduler.end_session(opened.session.id))
    await world.store.write_started.wait()
    for _ in range(10):
        await asyncio.sleep(0)
    assert not ending.done() and pod not in world.backend.calls_of("delete")
    world.store.gate.set()
    await ending
    await world.quiesce()
    assert pod in world.backend.calls_of("delete")
    assert world.store.sessions[opened.session.id].end_reason is EndReason.DELETED
    assert world.observer.ended == [EndReason.DELETED]


async def test_a_failed_commit_promises_nothing_and_starts_nothing(world: World) -> None:
    await world.warm()
    calls = list(world.backend.calls)
    world.store.failures = 1
    with pytest.raises(StoreUnavailable):
        await world.scheduler.open_session("ann", "t1", 0)
    await world.quiesce()
    assert world.observer.store_failures == 1
    # No label for the assignment, no create for the refill: the round never happened.
    assert world.backend.calls == calls
    # Rebuilt from the store: no session, the warm pod back in the pool.
    assert world.store.sessions == {}
    assert await world.scheduler.list_sessions(SessionQuery(user_id="ann")) == ([], None)
    status = world.scheduler.snapshot(world.clock.now())
    assert status.pods[PodState.IDLE] == 3 and status.pods[PodState.ASSIGNED] == 0
    again = await world.scheduler.open_session("ann", "t1", 0)
    assert again.outcome is Outcome.WARM


async def test_waiting_callers_hear_of_a_failed_commit_too(world: World) -> None:
    await world.quiesce()  # pods pending: nothing warm
    waiting = asyncio.create_task(world.scheduler.open_session("ann", "t1", 30))
    await world.quiesce()
    assert not waiting.done()
    world.store.failures = 1
    world.scheduler.record_activity({"nobody": world.clock.now()})
    world.clock.advance(POD_ROWS_DELAY)  # pod rows due: the next round writes
    with pytest.raises(StoreUnavailable):
        await waiting


async def test_while_the_store_is_down_callers_are_refused_at_once_and_old_news_dropped(
    world: World,
) -> None:
    await world.warm()
    [warm, *_] = [n for n, p in world.backend.pods.items() if p.phase is PodPhase.READY]
    world.store.failures, world.store.load_failures = 1, 1000
    with pytest.raises(StoreUnavailable):
        await world.scheduler.open_session("ann", "t1", 0)
    await world.quiesce_until(lambda: world.scheduler.store_down)

    # Refused now, not after its wait of 30 s: nothing can be promised without the store.
    with pytest.raises(StoreUnavailable):
        await world.scheduler.open_session("bob", "t2", 30)
    with pytest.raises(StoreUnavailable):
        world.scheduler.record_activity({"nobody": world.clock.now()})
    # An event from before the rebuild's list (the pod's start, long over) must not
    # make a warm pod look as if it stopped answering.
    world.backend.emit(PodStatus(warm, PodPhase.PENDING))
    await world.clock.until_sleeping()
    world.clock.advance(RECOVERY_BACKOFF.cap)
    await world.clock.until_sleeping()  # another attempt failed: backing off again

    world.store.load_failures = 0
    world.clock.advance(RECOVERY_BACKOFF.cap)
    await world.quiesce_until(lambda: not world.scheduler.store_down)
    opened = await world.scheduler.open_session("bob", "t2", 0)
    assert opened.outcome is Outcome.WARM
    assert world.backend.calls_of("delete") == []


async def test_a_route_lookup_goes_through_the_loop_and_writes_nothing(world: World) -> None:
    await world.warm()
    opened = await world.scheduler.open_session("ann", "t1", 0)
    await world.quiesce()
    pod = opened.session.pod_name
    assert pod is not None
    writes = len(world.store.writes)
    route = await world.scheduler.route(opened.session.id)
    assert (route.state, route.address) == (SessionState.READY, world.backend.pods[pod].address)
    assert route.lease_seconds == ROUTE_LEASE
    assert len(world.store.writes) == writes

    # The lease holds the pod (and its address) past the session's end.
    await world.scheduler.end_session(opened.session.id)
    await world.quiesce()
    assert pod not in world.backend.calls_of("delete")
    ended = await world.scheduler.route(opened.session.id)
    assert (ended.state, ended.address, ended.lease_seconds) == (SessionState.ENDED, None, None)
    world.clock.advance(ROUTE_LEASE)
    await world.quiesce()
    assert pod in world.backend.calls_of("delete")
    with pytest.raises(SessionNotFound):
        await world.scheduler.route("no-such-session")


async def test_refusals_are_raised_as_errors_that_carry_their_data(world: World) -> None:
    await world.warm()
    await world.scheduler.open_session("ann", "t1", 0)
    await world.scheduler.open_session("ann", "t2", 0)
    with pytest.raises(UserSessionLimit) as limit:
        await world.scheduler.open_session("ann", "t3", 0)
    assert (limit.value.limit, limit.value.live) == (2, 2)
    assert limit.value.retry_after == pytest.approx(LIMITS.reclaim_after)
    with pytest.raises(UnknownPlan) as unknown:
        await world.scheduler.open_session("bob", "t1", 0, plan="gold")
    assert (unknown.value.plan, unknown.value.known) == ("gold", ())


async def test_callers_get_copies_and_data_not_the_pools_objects(world: World) -> None:
    await world.quiesce()
    opened = await world.scheduler.open_session("ann", "t1", 0)  # nothing warm: cold
    assert (opened.outcome, opened.session.state) == (Outcome.COLD, SessionState.PROVISIONING)
    assert opened.detail is not None and opened.detail.reason is WaitReason.POD_STARTING
    opened.session.state = SessionState.ENDED  # the caller's copy only
    view = await world.scheduler.view(opened.session.id)
    assert view is not None and view.session.state is SessionState.PROVISIONING
    assert await world.scheduler.view("no-such-session") is None


async def test_a_stopped_scheduler_refuses_and_its_waiters_hear_why(world: World) -> None:
    await world.quiesce()
    waiting = asyncio.create_task(world.scheduler.open_session("ann", "t1", 30))
    await world.quiesce()
    await world.scheduler.stop()
    with pytest.raises(NotLeader):
        await waiting
    with pytest.raises(NotLeader):
        await world.scheduler.open_session("ann", "t2", 0)


async def test_a_stop_lets_the_round_finish_and_fails_what_was_never_applied(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sandbox_controller.scheduler.loop.STOP_GRACE", 0.05)
    await world.warm()
    world.store.gate = asyncio.Event()  # the next commit hangs: the database froze
    world.store.write_started.clear()
    claim = asyncio.create_task(world.scheduler.open_session("ann", "t1", 0))
    lookup = asyncio.create_task(world.scheduler.route("nobody"))  # the same round
    await world.quiesce_until(lambda: world.store.write_started.is_set())

    await world.scheduler.stop()  # the round outlives the grace: cancelled

    for caller in (claim, lookup):
        with pytest.raises(NotLeader):
            await asyncio.wait_for(caller, 5.0)  # refused, never left waiting
    assert world.backend.calls_of("label") == []  # nothing of the round went out
    world.store.gate.set()


async def test_writes_refused_for_want_of_a_confirmed_lease_wait_for_it_not_a_backoff(
    world: World,
) -> None:
    # After a pause the lease is unusable until the database confirms it again: the
    # write guard refuses. Those writes are still this leader's decisions; they go out
    # once the lease is confirmed, with no backoff (on this clock, none could pass).
    await world.warm()
    world.backend.lease_ok = False
    opened = await world.scheduler.open_session("ann", "t1", 0)  # warm: a refill follows
    await world.scheduler.end_session(opened.session.id)  # and a delete
    await world.quiesce()
    assert world.backend.calls_of("delete") == [] and world.observer.backend_failures == []
    creates = len(world.backend.calls_of("create"))

    world.backend.lease_ok = True
    world.scheduler.lease_confirmed()
    await world.quiesce()
    assert world.backend.calls_of("delete") == [opened.session.pod_name]
    assert len(world.backend.calls_of("create")) == creates + 1
    assert world.backend.calls_of("label") == [opened.session.pod_name]


async def test_a_stopped_scheduler_drops_the_writes_it_held(world: World) -> None:
    await world.warm()
    world.backend.lease_ok = False
    opened = await world.scheduler.open_session("ann", "t1", 0)
    await world.quiesce()
    await world.scheduler.stop()  # deposed: its intentions die with its term
    world.backend.lease_ok = True
    world.scheduler.lease_confirmed()
    await asyncio.sleep(0)
    assert world.backend.calls_of("label") == [] and opened.session.pod_name


async def test_a_takeover_keeps_a_warm_pod_whose_old_pending_event_is_still_queued() -> None:
    """A backend lists when it starts, and the list's events wait in its queue; a pod
    that turns ready before the new scheduler reads the pods is adopted warm, and the
    list's stale "pending" for it must not then read as a warm pod that stopped
    answering (it was deleted: the takeover lost a healthy pod)."""
    store, backend, clock = FakeStore(), FakeBackend(), ManualClock()
    labels = {LABEL_STATE: "pool", LABEL_TEMPLATE_HASH: backend.template_hash}
    pending = PodStatus("pod-9", PodPhase.PENDING, labels)
    backend.pods["pod-9"] = pending
    backend.emit(pending)  # queued by the start's list
    backend.make_ready()  # ... and ready before recovery reads the pods
    scheduler = Scheduler(limits=LIMITS, store=store, backend=backend, clock=clock)
    await scheduler.start()
    try:
        await scheduler.settle()
        await scheduler.settle()
        assert backend.calls_of("delete") == []
        assert scheduler.snapshot(clock.now()).pods[PodState.IDLE] == 1
    finally:
        await scheduler.stop()


async def test_a_snapshot_without_sessions_by_activity_still_counts_the_pods(world: World) -> None:
    # The console's feed and GET /pool take it every tick: no pass over the sessions.
    await world.warm()
    await world.scheduler.open_session("ann", "t1", 0)
    await world.quiesce()
    full = world.scheduler.snapshot(world.clock.monotonic())
    light = world.scheduler.snapshot(world.clock.monotonic(), sessions_by_activity=False)
    assert full.sessions[SessionActivity.ACTIVE] == 1  # what the metrics show
    assert sum(light.sessions.values()) == 0
    assert light.pods == full.pods and light.pods[PodState.ASSIGNED] == 1
    assert (light.waiters, light.creating, light.cap_reached) == (
        full.waiters,
        full.creating,
        full.cap_reached,
    )
