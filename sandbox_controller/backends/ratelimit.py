"""Client-side pacing for the API server: a token bucket, and reading Retry-After.

The bucket takes ``now`` from an injectable clock and computes delays as pure
arithmetic, so tests check exact numbers without sleeping. (The error backoff is
aiotime.Backoff, shared with every other retry.)
"""

from __future__ import annotations

from ..clock import Clock, SystemClock


class TokenBucket:
    """``qps`` tokens a second, up to ``burst`` saved. A caller that finds the bucket
    empty reserves a future token (the balance goes negative) and sleeps until it is
    due, so waiters are served in order and the long-run rate never exceeds ``qps``."""

    def __init__(self, qps: float, burst: int, clock: Clock | None = None) -> None:
        if qps <= 0 or burst < 1:
            raise ValueError("qps must be > 0 and burst >= 1")
        self.qps = qps
        self.burst = burst
        self.clock = clock or SystemClock()
        self._tokens = float(burst)
        self._last = self.clock.monotonic()

    def reserve(self, now: float) -> float:
        """Take one token; return how long to wait before using it."""
        elapsed = max(0.0, now - self._last)
        self._last = max(self._last, now)
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.qps)
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.qps

    async def acquire(self) -> None:
        delay = self.reserve(self.clock.monotonic())
        if delay > 0:
            await self.clock.sleep(delay)


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # the HTTP-date form; the API server only sends seconds
