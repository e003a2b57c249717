"""A decision that raises (a bug) fails its round: nothing of it is committed, every
caller waiting hears ``DecisionFailed`` at once, the env and files of its claims are
dropped, the pool is rebuilt from the store, and the loop serves what comes next. A
real Pool with one decision armed to raise (faults.py), a fake store and backend
(fakes.py) and a ManualClock; nothing sleeps."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from sandbox_controller.backends.base import LABEL_CREATE_ID
from sandbox_controller.clock import ManualClock
from sandbox_controller.errors import DecisionFailed
from sandbox_controller.hooks import ClaimPayload
from sandbox_controller.model import Outcome, PodState, SessionState
from sandbox_controller.scheduler.lifecycle import ROUTE_LEASE
from sandbox_controller.scheduler.loop import Scheduler
from sandbox_controller.scheduler.pod_rows import POD_ROWS_DELAY

from .fakes import FakeBackend, FakeStore, RecordingObserver
from .faults import Faults
from .test_loop import LIMITS, World

ANSWERED_WITHIN = 1.0  # seconds of real time: "at once", generously


@pytest.fixture
async def faults() -> Faults:
    return Faults()


@pytest.fixture
async def world(faults: Faults) -> AsyncIterator[World]:
    store, backend, clock, observer = FakeStore(), FakeBackend(), ManualClock(), RecordingObserver()
    scheduler = Scheduler(
        limits=LIMITS, store=store, backend=backend, clock=clock, observer=observer
    )
    scheduler.pool_type = faults.pool_type()
    await scheduler.start()
    try:
        yield World(scheduler, store, backend, clock, observer)
    finally:
        await scheduler.stop()


def assert_store_and_pool_agree(world: World) -> None:
    """No half-written record, and the invariants: the cap, the per-user limit, one
    session per pod."""
    store, pool = world.store, world.scheduler._pool
    assert pool is not None
    live = [s for s in store.sessions.values() if s.live]
    for session in live:
        if session.pod_name is not None:
            row = store.pods.get(session.pod_name)
            assert row is None or row.session_id == session.id, "a pod row of another session"
    for row in store.pods.values():
        if row.session_id is not None:
            assert row.session_id in store.sessions, "a pod row of a session never stored"
    pods = [s.pod_name for s in live if s.pod_name]
    assert len(pods) == len(set(pods)), "two live sessions on one pod"
    assert pool.total_pods <= LIMITS.max_total_jobs
    assert len(world.backend.pods) <= LIMITS.max_total_jobs
    for user, sessions in pool.live_by_user.items():
        assert len(sessions) <= LIMITS.max_sessions_per_user, user
    for sid in pool.live_by_thread.values():
        session = pool.sessions[sid]
        if session.state is SessionState.READY:
            assert pool.pods[session.pod_name or ""].session_id == sid


async def test_a_half_applied_decision_commits_nothing_and_fails_its_whole_round(
    world: World, faults: Faults, caplog: pytest.LogCaptureFixture
) -> None:
    await world.warm()
    faults.handover_threads.add("boom")
    writes, calls = len(world.store.writes), list(world.backend.calls)
    opens = [("ann", "t1"), ("ben", "boom"), ("cat", "t3")]  # one round: one burst
    results = await asyncio.wait_for(
        asyncio.gather(
            *(world.scheduler.open_session(u, t, 0) for u, t in opens), return_exceptions=True
        ),
        ANSWERED_WITHIN,
    )
    assert faults.raised == 1
    failed = [r for r in results if isinstance(r, DecisionFailed)]
    assert len(failed) == len(opens), results
    request_id = failed[0].request_id
    assert {r.request_id for r in failed} == {request_id}
    [logged] = [r for r in caplog.records if request_id in r.getMessage()]
    assert logged.levelno == logging.ERROR and logged.exc_info is not None  # the traceback

    await world.quiesce()
    # Nothing of that round: no session written (the rebuild writes its pod rows,
    # all idle), no label, no create for a refill.
    assert world.store.sessions == {}
    assert all(not batch.sessions for batch in world.store.writes[writes:])
    assert all(row.state is PodState.IDLE for row in world.store.pods.values())
    assert world.backend.calls == calls
    status = world.scheduler.snapshot(world.clock.now())
    assert status.pods[PodState.IDLE] == 3 and status.pods[PodState.ASSIGNED] == 0
    assert_store_and_pool_agree(world)

    # The loop goes on: the others are served, the doomed thread fails again alone.
    again = await world.scheduler.open_session("ann", "t1", 0)
    assert again.outcome is Outcome.WARM and again.session.id in world.store.sessions
    with pytest.raises(DecisionFailed):
        await asyncio.wait_for(world.scheduler.open_session("ben", "boom", 0), ANSWERED_WITHIN)
    assert (await world.scheduler.open_session("cat", "t3", 0)).outcome is Outcome.WARM
    await world.quiesce()
    assert {s.thread_id for s in world.store.sessions.values()} == {"t1", "t3"}
    assert_store_and_pool_agree(world)


async def test_an_open_that_raises_is_answered_at_once_and_its_env_is_dropped(
    world: World, faults: Faults
) -> None:
    await world.warm()
    faults.open_threads.add("boom")
    payload = ClaimPayload(env={"TOKEN": "s3cret"}, files=())
    with pytest.raises(DecisionFailed):
        await asyncio.wait_for(
            world.scheduler.open_session("ann", "boom", 30, payload), ANSWERED_WITHIN
        )
    await world.quiesce()
    assert world.scheduler._payloads == {}  # the secret is not kept in memory
    assert world.store.sessions == {}
    opened = await world.scheduler.open_session("ann", "t2", 0, payload)
    assert opened.outcome is Outcome.WARM
    assert_store_and_pool_agree(world)


async def test_a_tick_that_raises_fails_the_waiters_and_keeps_what_was_promised(
    world: World, faults: Faults
) -> None:
    await world.warm()
    promised = [await world.scheduler.open_session(u, f"t-{u}", 0) for u in ("ann", "ben")]
    await world.quiesce()  # the refills are pending: nothing warm but one
    await world.scheduler.open_session("cat", "t-cat", 0)
    await world.quiesce()
    waiting = asyncio.create_task(world.scheduler.open_session("dov", "t-dov", 30))
    await world.quiesce()
    assert not waiting.done()
    faults.tick_at = world.clock.now() + 30
    world.clock.advance(30)  # the wait is over: the tick that would answer it raises
    with pytest.raises(DecisionFailed):
        await asyncio.wait_for(waiting, ANSWERED_WITHIN)
    assert faults.raised == 1
    await world.quiesce()
    for opened in promised:  # told ready: still ready, on the same pod
        view = await world.scheduler.view(opened.session.id)
        assert view is not None and view.session.state is SessionState.READY
        assert view.session.pod_name == opened.session.pod_name
    assert "t-dov" not in {s.thread_id for s in world.store.sessions.values()}
    assert_store_and_pool_agree(world)

    # The loop goes on: the same caller's retry is served once a pod is ready.
    world.backend.make_ready()
    await world.quiesce()
    world.clock.advance(POD_ROWS_DELAY)
    retried = await asyncio.wait_for(
        world.scheduler.open_session("dov", "t-dov", 0), ANSWERED_WITHIN
    )
    assert retried.outcome is Outcome.WARM
    await world.quiesce()
    assert_store_and_pool_agree(world)


async def test_a_pod_claimed_before_the_failure_never_serves_anyone_else(
    faults: Faults,
) -> None:
    """The pod being claimed for a session the rebuild drops has had the session's env
    delivered (or on its way), though its row and labels may still say "pool": it is
    deleted, never handed to the next caller."""
    limits = replace(LIMITS, hooks=True, hook_timeout=2.0)
    store, backend, clock = FakeStore(), FakeBackend(), ManualClock()
    scheduler = Scheduler(limits=limits, store=store, backend=backend, clock=clock)
    scheduler.pool_type = faults.pool_type()
    world = World(scheduler, store, backend, clock, RecordingObserver())
    await scheduler.start()
    try:
        await world.quiesce()
        for name in backend.make_ready():  # claimable: each has a create id
            pod = backend.pods[name]
            pod = backend.pods[name] = replace(pod, labels={**pod.labels, LABEL_CREATE_ID: name})
            backend.emit(pod)
        await world.quiesce()
        clock.advance(POD_ROWS_DELAY)
        await world.quiesce()
        assert {p.state for p in store.pods.values()} == {PodState.IDLE}

        faults.handover_threads.add("boom")  # the claim is accepted; the hand-over raises
        with pytest.raises(DecisionFailed):
            await asyncio.wait_for(scheduler.open_session("ben", "boom", 30), ANSWERED_WITHIN)
        [claimed] = backend.calls_of("label")  # the hand-out that left the process
        await world.quiesce()
        pool = scheduler._pool
        assert pool is not None and pool.pods[claimed].state is PodState.TERMINATING

        opened = [await scheduler.open_session(u, f"t-{u}", 0) for u in ("ann", "cat")]
        assert claimed not in {o.session.pod_name for o in opened}
        clock.advance(ROUTE_LEASE)  # no proxy can still route to it: it goes
        await world.quiesce()
        assert claimed in backend.calls_of("delete")
    finally:
        await scheduler.stop()
