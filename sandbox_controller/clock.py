"""Time as the controller sees it: two clocks in one. Tests swap in ManualClock.

``monotonic()`` is what every deadline inside a process runs on: it never steps, so
NTP or a resumed VM moving the wall clock moves no timer. ``now()`` (wall time, seconds
since the epoch) is only for what is stored and shown (created_at, last_active_at,
ended_at, tokens' expiry, the lease row other processes read). ``sleep`` waits
monotonic time.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Wall time: seconds since the epoch. For what is stored and shown."""

    def monotonic(self) -> float:
        """Seconds on a clock that never steps. For deadlines within this process."""

    async def sleep(self, delay: float) -> None:
        """Return after ``delay`` seconds of this clock's monotonic time."""


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()  # the event loop's clock too, so sleeps agree

    async def sleep(self, delay: float) -> None:
        await asyncio.sleep(max(0.0, delay))


class ManualClock:
    """A clock that only moves when told to: ``advance`` moves both parts (time
    passes) and wakes the sleepers it passes; ``step_wall`` moves the wall part alone
    (NTP stepping the clock) and wakes nobody.

    The monotonic part starts at ``monotonic_start``, the wall part's ``start`` if
    unset (so that a test that never steps sees one time)."""

    def __init__(
        self, start: float = 1_700_000_000.0, *, monotonic_start: float | None = None
    ) -> None:
        self._wall = start
        self._mono = start if monotonic_start is None else monotonic_start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    async def sleep(self, delay: float) -> None:
        if delay <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._mono + delay, next(self._seq), fut))
        await fut

    @property
    def sleepers(self) -> int:
        """How many sleeps wait for time to move."""
        return sum(1 for *_, fut in self._sleepers if not fut.done())

    async def until_sleeping(self, count: int = 1, timeout: float = 5.0) -> None:
        """Return once ``count`` sleeps wait on this clock, so that a test's ``advance``
        wakes them rather than passing before they began (the code under test may be
        waiting on a thread or a socket first: hence real time, bounded)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.sleepers < count:
            if loop.time() > deadline:
                raise TimeoutError(f"{self.sleepers} of {count} sleepers after {timeout}s")
            await asyncio.sleep(0.001)

    def advance(self, seconds: float) -> None:
        self._wall += seconds
        self._mono += seconds
        while self._sleepers and self._sleepers[0][0] <= self._mono:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

    def step_wall(self, seconds: float) -> None:
        """The wall clock jumps by ``seconds`` (either way); no time passes."""
        self._wall += seconds
