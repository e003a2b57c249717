"""The one backoff and the stop-aware sleep, on a hand-moved clock."""

from __future__ import annotations

import asyncio
import random

import pytest

from sandbox_controller.aiotime import Backoff, sleep_or_stop
from sandbox_controller.clock import ManualClock


def test_backoff_doubles_to_its_cap_with_jitter_below_each_ceiling() -> None:
    backoff = Backoff(base=0.1, cap=2.0, rng=random.Random(1))
    for attempt in range(10):
        ceiling = min(2.0, 0.1 * 2**attempt)
        delays = {backoff.delay(attempt) for _ in range(20)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1  # jittered: a herd that failed together spreads out


def test_backoff_without_jitter_is_exact_and_survives_a_long_outage() -> None:
    backoff = Backoff(base=0.5, cap=5.0, jitter=False)
    assert [backoff.delay(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert backoff.delay(10_000) == 5.0  # no float overflow after days of retries


def test_retry_after_is_a_floor_but_bounded() -> None:
    backoff = Backoff(base=0.1, cap=2.0, jitter=False)
    assert backoff.delay(0, retry_after=3) == 3
    assert backoff.delay(5, retry_after=0) == 2.0
    assert backoff.delay(0, retry_after=3600) == 12.0  # a silly server cannot park us


def test_a_backoff_that_cannot_back_off_is_refused() -> None:
    with pytest.raises(ValueError):
        Backoff(base=0, cap=1)
    with pytest.raises(ValueError):
        Backoff(base=2, cap=1)


async def test_sleep_or_stop_sleeps_clock_time() -> None:
    clock = ManualClock()
    stop = asyncio.Event()
    sleeper = asyncio.create_task(sleep_or_stop(clock, 30.0, stop))
    await clock.until_sleeping()
    clock.advance(29.9)
    await asyncio.sleep(0)
    assert not sleeper.done()
    clock.advance(0.1)
    assert await asyncio.wait_for(sleeper, 1) is False


async def test_sleep_or_stop_wakes_at_once_on_stop() -> None:
    clock = ManualClock()
    stop = asyncio.Event()
    sleeper = asyncio.create_task(sleep_or_stop(clock, 3600.0, stop))
    await clock.until_sleeping()
    stop.set()
    assert await asyncio.wait_for(sleeper, 1) is True
    assert clock.sleepers == 0  # its clock sleep was cancelled, not left behind
    assert await sleep_or_stop(clock, 3600.0, stop) is True  # already stopped: no sleep
