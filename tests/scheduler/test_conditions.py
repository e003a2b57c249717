"""Failures with a kind: a create the platform refuses for good backs off up to five
minutes, one probe at a time, and holds the CreateRejected condition until a create
succeeds; a temporary failure keeps the short backoff and raises no condition. The
throttle alone, the pool over a hand-set clock, and the loop over a ManualClock with
the fake backend's call log as the witness of what was sent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from sandbox_controller.backends.base import BackendError, ErrorKind
from sandbox_controller.clock import ManualClock
from sandbox_controller.model import ConditionType, EndReason, PodState, WaitReason
from sandbox_controller.scheduler.conditions import (
    DELETE_RETRY,
    PERMANENT_BACKOFF,
    CreateThrottle,
)
from sandbox_controller.scheduler.loop import Scheduler

from .fakes import FakeBackend, FakeStore, RecordingObserver
from .harness import Harness, limits_with

FORBIDDEN = 'kubernetes API 403: pods is forbidden: User "sa" cannot create resource "pods"'


def refuse_creates(h: Harness, kind: ErrorKind = ErrorKind.PERMANENT, message: str = "") -> int:
    """The platform refuses every create sent so far; returns how many there were."""
    sent, h._pending_creates = h._pending_creates, 0
    for _ in range(sent):
        h.pool.create_failed(h.now, kind, message or FORBIDDEN)
    h.tick()
    return sent


def sent(h: Harness) -> int:
    return int(h._pending_creates)


# -- the throttle alone


def test_permanent_refusals_back_off_exponentially_up_to_five_minutes() -> None:
    throttle = CreateThrottle()
    now = 100.0
    delays = []
    for _ in range(9):
        delays.append(throttle.failed(ErrorKind.PERMANENT, FORBIDDEN, now) - now)
        now = throttle.blocked_until
    assert delays == [5, 10, 20, 40, 80, 160, 300, 300, 300]
    [condition] = throttle.conditions
    assert condition.type is ConditionType.CREATE_REJECTED
    assert condition.since == 100.0  # the first refusal, not the latest
    assert condition.message == FORBIDDEN


def test_temporary_failures_keep_the_short_backoff_and_raise_no_condition() -> None:
    throttle = CreateThrottle()
    now = 100.0
    delays = []
    for _ in range(7):
        delays.append(throttle.failed(ErrorKind.TEMPORARY, "kubernetes API 503", now) - now)
        now = throttle.blocked_until
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    assert throttle.conditions == ()
    assert throttle.window(3) == 3


def test_the_first_success_forgets_every_failure_and_clears_the_condition() -> None:
    throttle = CreateThrottle()
    for _ in range(4):
        throttle.failed(ErrorKind.PERMANENT, FORBIDDEN, 10.0)
    assert throttle.blocked(10.0) and throttle.window(3) == 1
    throttle.succeeded()
    assert throttle.conditions == () and not throttle.blocked(10.0) and throttle.window(3) == 3
    assert throttle.failed(ErrorKind.PERMANENT, "again", 50.0) == 50.0 + PERMANENT_BACKOFF.base
    assert throttle.conditions[0].since == 50.0  # a new episode


def test_a_message_from_the_platform_is_kept_short() -> None:
    throttle = CreateThrottle()
    throttle.failed(ErrorKind.PERMANENT, "x" * 100_000, 0.0)
    assert len(throttle.conditions[0].message) == 1000


# -- the pool, on a hand-set clock


def test_a_refused_create_stops_the_storm_one_probe_at_a_time() -> None:
    h = Harness(limits_with(prewarm_pool_size=5, max_concurrent_creates=3))
    h.tick()
    assert refuse_creates(h) == 3  # the first window went out before anything was known
    start = h.now
    counts = []
    for _ in range(7):  # 5 s, 10 s, 20 s, 40 s, ... after each refusal
        h.advance(h.pool.lifecycle.create_throttle.blocked_until - h.now - 0.5)
        assert sent(h) == 0, "a create before its backoff ran out"
        h.advance(0.5)
        counts.append(sent(h))
        refuse_creates(h)
    assert counts == [1] * 7  # a single probe each time, never a window of three
    assert h.now - start == 20 + 40 + 80 + 160 + 300 + 300 + 300
    status = h.pool.status(h.now)
    [condition] = status.conditions
    assert (condition.type, condition.since) == (ConditionType.CREATE_REJECTED, start)


def test_a_temporary_failure_keeps_todays_backoff_and_window() -> None:
    h = Harness(limits_with(prewarm_pool_size=5, max_concurrent_creates=3))
    h.tick()
    refuse_creates(h, ErrorKind.TEMPORARY, "kubernetes API 503: unavailable")
    assert h.pool.status(h.now).conditions == ()
    h.advance(4.0)  # three failures in a row: 1 s, 2 s, then 4 s
    assert sent(h) == 3


def test_a_waiting_session_names_the_condition_and_the_pool_heals_on_a_success() -> None:
    h = Harness(limits_with(prewarm_pool_size=2, max_concurrent_creates=3))
    h.tick()
    refuse_creates(h)
    sid = h.session_of(h.open("ada", "t1", wait=0))
    detail = h.pool.provisioning(sid)
    assert detail is not None and detail.reason is WaitReason.POOL_CONDITION
    assert detail.condition is not None and detail.condition.message == FORBIDDEN
    h.advance(h.pool.lifecycle.create_throttle.blocked_until - h.now)
    assert sent(h) == 1
    h.fill_pool()  # the fault is fixed: the probe makes a pod
    assert h.pool.status(h.now).conditions == ()
    assert h.pool.lifecycle.create_throttle.window(3) == 3
    assert h.pool.sessions[sid].pod_name is not None  # the waiter got the first pod
    assert h.pool.counts[PodState.IDLE] == 2  # and the pool filled behind it


def test_a_failed_delete_is_asked_again_after_the_named_retry() -> None:
    h = Harness(limits_with(prewarm_pool_size=1))
    h.tick()
    h.fill_pool()
    sid = h.session_of(h.open("u", "t1"))
    pod = h.pool.sessions[sid].pod_name or ""
    h.pool.end_session(sid, EndReason.DELETED, h.now)
    h.tick()
    assert h.deleted == [pod]
    h.deleted.clear()
    h.pool.delete_failed(pod, h.now)
    h.advance(DELETE_RETRY - 1)
    assert h.deleted == []
    h.advance(1)
    assert h.deleted == [pod]


# -- the loop, on a ManualClock, with the backend's call log as the witness


@pytest.fixture
async def refusing() -> AsyncIterator[
    tuple[Scheduler, FakeBackend, ManualClock, RecordingObserver]
]:
    store, backend, clock, observer = FakeStore(), FakeBackend(), ManualClock(), RecordingObserver()
    backend.create_error = BackendError(FORBIDDEN, retryable=False, kind=ErrorKind.PERMANENT)
    limits = limits_with(prewarm_pool_size=3, max_total_jobs=6, max_concurrent_creates=3)
    scheduler = Scheduler(
        limits=limits, store=store, backend=backend, clock=clock, observer=observer
    )
    await scheduler.start()
    try:
        yield scheduler, backend, clock, observer
    finally:
        await scheduler.stop()


async def quiesce(scheduler: Scheduler) -> None:
    for _ in range(3):
        await scheduler.settle()
        for _ in range(5):
            await asyncio.sleep(0)


async def test_the_loop_backs_off_a_refused_create_and_says_why(
    refusing: tuple[Scheduler, FakeBackend, ManualClock, RecordingObserver],
) -> None:
    scheduler, backend, clock, observer = refusing
    await quiesce(scheduler)
    assert len(backend.calls_of("create")) == 3
    assert observer.backend_failure_kinds == ["permanent"] * 3
    [condition] = scheduler.snapshot(clock.now()).conditions
    assert condition.type is ConditionType.CREATE_REJECTED and condition.message == FORBIDDEN
    clock.advance(19.9)  # three refusals: 5 s, 10 s, then 20 s
    await quiesce(scheduler)
    assert len(backend.calls_of("create")) == 3
    clock.advance(0.1)
    await quiesce(scheduler)
    assert len(backend.calls_of("create")) == 4  # one probe
    backend.create_error = None  # someone fixed the RBAC
    clock.advance(40.0)
    await quiesce(scheduler)
    assert scheduler.snapshot(clock.now()).conditions == ()  # cleared by the success
    # The probe made pod-1; with the condition gone the window opened for the rest.
    assert backend.calls_of("create") == ["", "", "", "", "pod-1", "pod-2", "pod-3"]
