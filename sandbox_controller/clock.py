"""Time as the scheduler sees it. Tests swap in ManualClock to move time by hand."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch."""

    async def sleep(self, delay: float) -> None:
        """Return after ``delay`` seconds of this clock's time."""


class SystemClock:
    def now(self) -> float:
        return time.time()

    async def sleep(self, delay: float) -> None:
        await asyncio.sleep(max(0.0, delay))


class ManualClock:
    """A clock that only moves when told to; sleepers wake as ``advance`` passes them."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    async def sleep(self, delay: float) -> None:
        if delay <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + delay, next(self._seq), fut))
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
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)
