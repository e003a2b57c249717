"""Time kits for asyncio code: one error backoff, and sleeps that wake on a stop event.

Both take their time from an injectable ``Clock`` (clock.py), so tests move time by
hand instead of sleeping, and shutdown never waits out a backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import random

from .clock import Clock


class Backoff:
    """Exponential backoff, ``base * 2**attempt`` up to ``cap``; a server's Retry-After
    is a floor. With ``jitter`` (the default) each delay is drawn between half and all
    of that ceiling, which spreads a herd of clients that failed together without ever
    retrying at once; without it the delay is exact (for pure, replayable policies)."""

    def __init__(
        self,
        base: float = 0.2,
        cap: float = 10.0,
        *,
        jitter: bool = True,
        rng: random.Random | None = None,
    ) -> None:
        if base <= 0 or cap < base:
            raise ValueError("backoff needs 0 < base <= cap")
        self.base = base
        self.cap = cap
        self.jitter = jitter
        self.rng = rng or random.Random()

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        # min() before the power: a long outage must not overflow the float.
        ceiling = self.cap if attempt >= 64 else min(self.cap, self.base * (2**attempt))
        wait = ceiling * (0.5 + 0.5 * self.rng.random()) if self.jitter else ceiling
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.cap * 6))
        return float(wait)


async def sleep_or_stop(clock: Clock, delay: float, stop: asyncio.Event) -> bool:
    """Sleep ``delay`` seconds of ``clock`` time, or less if ``stop`` is set first.
    Returns True if it was the stop event that ended the sleep."""
    if stop.is_set():
        return True
    sleeper = asyncio.ensure_future(clock.sleep(delay))
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sleeper, stopper):
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    return stop.is_set()
