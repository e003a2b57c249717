"""How many warm pods the pool keeps: the prewarm policy, pure and on the clock.

``static`` keeps ``prewarm_pool_size`` (the seed's semantics). ``adaptive`` keeps the
number of arrivals it expects during one pod start-up, at the target warm-hit rate:
a warm pod taken now is replaced one start-up later, so the pool runs dry only if
more sessions arrive than it holds within that time. Arrivals are modelled as Poisson
at the recent rate, so the target is the ``target_warm_hit_rate`` quantile of
Poisson(rate x start-up). The rate is the larger of a short window's average (a burst
raises the target within a minute) and a long one's (a lull does not empty the pool
at once; when traffic stops, the target falls as the long window empties).
"""

from __future__ import annotations

import math
from collections import deque

from ..model import Limits, PrewarmPolicy, PrewarmTarget

# Until the first pod of this run is measured: a typical cold start on a cluster
# with the image already pulled.
STARTUP_GUESS = 30.0
# Start-up times kept, and the quantile of them used: recent enough to follow a
# slower image or a busier cluster, and at p90 so a slow start is planned for.
STARTUP_SAMPLES = 50
STARTUP_QUANTILE = 0.9


def poisson_quantile(mean: float, q: float, ceiling: int) -> int:
    """The smallest k with P(Poisson(mean) <= k) >= q, or ``ceiling`` if that is less."""
    if mean <= 0.0:
        return 0
    if mean > 500.0:
        # exp(-mean) underflows; the normal approximation is exact enough here.
        z = math.sqrt(2.0) * _erfinv(2.0 * q - 1.0)
        return min(ceiling, math.ceil(mean + z * math.sqrt(mean)))
    term = math.exp(-mean)
    cdf = term
    k = 0
    while cdf < q and k < ceiling:
        k += 1
        term *= mean / k
        cdf += term
    return k


def _erfinv(y: float) -> float:
    """Inverse error function by Newton's method (only for very large means)."""
    x = 0.0
    for _ in range(50):
        x -= (math.erf(x) - y) / (2.0 / math.sqrt(math.pi) * math.exp(-x * x))
    return x


class Prewarm:
    """Fed arrivals and measured start-ups; answers the warm pool's target at ``now``."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.settings = limits.prewarm
        self.adaptive = self.settings.policy is PrewarmPolicy.ADAPTIVE
        self._arrivals: deque[float] = deque()  # within the long window, oldest first
        self._startups: deque[float] = deque(maxlen=STARTUP_SAMPLES)
        self._started_at: float | None = None  # the first decision: history begins
        self._wake_due = float("inf")  # the wake-up (a "prewarm" deadline) asked for last
        if self.adaptive:
            floor = min(self.settings.min, limits.max_total_jobs)
            self.current = PrewarmTarget(PrewarmPolicy.ADAPTIVE, floor, "no decision yet")
        else:
            self.current = PrewarmTarget(
                PrewarmPolicy.STATIC, limits.prewarm_pool_size, "static: prewarmPoolSize"
            )

    def arrival(self, now: float) -> None:
        """A new session needs a pod (served warm or cold, or refused for capacity
        alike: it is demand; a 429 is not, since the user's own limit refused it)."""
        if self.adaptive:
            self._arrivals.append(now)

    def pod_started(self, seconds: float) -> None:
        if self.adaptive:
            self._startups.append(seconds)

    def startup_estimate(self) -> float:
        if not self._startups:
            return STARTUP_GUESS
        ordered = sorted(self._startups)
        return ordered[min(len(ordered) - 1, int(STARTUP_QUANTILE * len(ordered)))]

    def decide(self, now: float) -> PrewarmTarget:
        """The target now; kept in ``current`` for GET /pool and the metric."""
        if not self.adaptive:
            return self.current  # prewarm_pool_size, always
        limits = self.limits
        settings = self.settings
        if self._started_at is None:
            self._started_at = now
        arrivals = self._arrivals
        while arrivals and arrivals[0] + settings.long_window <= now:
            arrivals.popleft()
        recent = len(arrivals) - _first_recent(arrivals, settings.short_window, now)
        rate = max(recent / settings.short_window, len(arrivals) / settings.long_window)
        startup = self.startup_estimate()
        ceiling = min(settings.max, limits.max_total_jobs)
        wanted = poisson_quantile(rate * startup, settings.target_warm_hit_rate, ceiling)
        target = max(min(settings.min, ceiling), wanted)
        reason = (
            f"{rate * 60:.2f} arrivals/min x start-up p90 {startup:.0f}s: "
            f"{wanted} warm for {settings.target_warm_hit_rate:.0%} warm hits"
        )
        if target != wanted:
            reason += f", raised to min {target}"
        elif wanted == ceiling and ceiling > 0:
            reason += f" (capped at {'max' if ceiling == settings.max else 'maxTotalJobs'})"
        self.current = PrewarmTarget(PrewarmPolicy.ADAPTIVE, target, reason)
        return self.current

    def next_change(self, now: float) -> float | None:
        """When the target may next change with no new event: an arrival leaving a window."""
        arrivals = self._arrivals
        if not self.adaptive or not arrivals:
            return None
        settings = self.settings
        changes = [arrivals[0] + settings.long_window]
        first_recent = _first_recent(arrivals, settings.short_window, now)
        if first_recent < len(arrivals):
            changes.append(arrivals[first_recent] + settings.short_window)
        return min(changes)

    def wake_at(self, now: float) -> float | None:
        """When the pool should wake for the target's next change on its own, if that
        is a new deadline to push (earlier than the last one, or that one has passed)."""
        due = self.next_change(now)
        if due is not None and (due < self._wake_due or self._wake_due <= now):
            self._wake_due = due
            return due
        return None

    def excess_idle(self, idle: int, waiting: int, now: float) -> int:
        """Warm pods beyond the target that may be let go: only adaptive sheds, never
        while anyone waits (a waiter would take the pod), and not before one long
        window of history: a new leader knows no arrivals yet, and keeps the warm
        pods it took over (docs/architecture.md invariant 16) until it has seen the
        traffic."""
        started = self._started_at
        if not self.adaptive or waiting or started is None:
            return 0
        if now < started + self.settings.long_window:
            return 0
        return max(0, idle - self.current.target)


def _first_recent(times: deque[float], window: float, now: float) -> int:
    """Index of the first time still inside the window ending at ``now`` (times in order).
    The same sum as in next_change, so a window edge is never both passed and due."""
    for i in range(len(times) - 1, -1, -1):
        if times[i] + window <= now:
            return i + 1
    return 0
