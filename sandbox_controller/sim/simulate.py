"""Replay a trace through the real scheduler (scheduler/pool.py) on a simulated clock.

There is no second model of the controller's behaviour: the Pool makes every decision
(warm hand-out, waiting, refusal, reclaim, idle timeout, refill, prewarm target)
exactly as in production. Only the platform is simulated: a create call answers after
``create_seconds``, the pod turns ready after a start-up time drawn from ``Startup``,
and a deleted pod is gone after ``delete_seconds``. Time jumps from one event to the
next, so a day replays in seconds.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..backends.base import LABEL_CREATE_ID, PodPhase, PodStatus
from ..durations import parse_duration
from ..model import ActivitySource, EndReason, Limits, Outcome, PodState, SessionState, Shape
from ..scheduler.pool import Pool
from .suspension import ArchivePlatform, SimulatedHooks, SuspensionFigures
from .trace import EventKind, TraceError, TraceEvent

# How long a request woken by traffic on a suspended thread waits for it (the proxy's
# SANDBOX_PROXY_RESUME_WAIT default).
WAKE_WAIT = 30.0

_Z99 = 2.3263478740  # the standard normal's 99th percentile


@dataclass(frozen=True)
class Startup:
    """Pod start-up time: fixed at ``p50``, or log-normal through ``p50`` and ``p99``."""

    p50: float
    p99: float | None = None

    def sample(self, rng: random.Random) -> float:
        if self.p99 is None or self.p99 <= self.p50:
            return self.p50
        sigma = (math.log(self.p99) - math.log(self.p50)) / _Z99
        return rng.lognormvariate(math.log(self.p50), sigma)

    def describe(self) -> str:
        if self.p99 is None or self.p99 <= self.p50:
            return f"{self.p50:g}s fixed"
        return f"p50 {self.p50:g}s / p99 {self.p99:g}s (log-normal)"


_PERCENTILE = re.compile(r"^p(50|99)\s*[=: ]\s*(\S+)$")


def parse_startup(text: str) -> Startup:
    """``20s`` (fixed), or ``p50=20s,p99=60s`` (also ``p50 20s / p99 60s``)."""
    parts = [p.strip() for p in re.split(r"[,/]", text) if p.strip()]
    if len(parts) == 1 and not parts[0].startswith("p"):
        return Startup(_seconds(parts[0]))
    found: dict[str, float] = {}
    for part in parts:
        match = _PERCENTILE.match(part)
        if match is None:
            raise ValueError(f"{text!r}: expected 20s or p50=20s,p99=60s")
        found[match.group(1)] = _seconds(match.group(2))
    if "50" not in found:
        raise ValueError(f"{text!r}: p50 is required")
    if found.get("99", found["50"]) < found["50"]:
        raise ValueError(f"{text!r}: p99 must not be below p50")
    return Startup(found["50"], found.get("99"))


def _seconds(text: str) -> float:
    value = parse_duration(text)
    if value <= 0:
        raise ValueError(f"start-up time {text!r} must be greater than zero")
    return value


@dataclass(frozen=True)
class Platform:
    """How fast the simulated platform answers (the pod start-up aside)."""

    create_seconds: float = 0.1
    delete_seconds: float = 1.0


@dataclass(frozen=True)
class Sample:
    """The pool at one moment, for plots."""

    time: float
    demand: int  # live sessions, waiting ones included
    assigned: int
    warm: int
    pending: int
    target: int  # the prewarm policy's target


@dataclass
class Result:
    limits: Limits
    startup: Startup
    duration: float
    requests: Counter[Outcome] = field(default_factory=Counter)
    waits: list[float] = field(default_factory=list)  # seconds to a sandbox, per session
    ended: Counter[EndReason] = field(default_factory=Counter)
    peak_pods: int = 0
    pod_seconds: dict[PodState, float] = field(default_factory=lambda: dict.fromkeys(PodState, 0.0))
    samples: list[Sample] = field(default_factory=list)
    refusals: list[tuple[float, int]] = field(default_factory=list)  # (time, 429 or 503)
    # Suspension on: what it did (None: idle sessions end, nothing is suspended).
    suspension: SuspensionFigures | None = None

    @property
    def warm_hit_rate(self) -> float:
        """Share of new sessions that found a warm pod (refused ones count as misses)."""
        asked = sum(self.requests[o] for o in (Outcome.WARM, Outcome.COLD, Outcome.CAPACITY))
        return self.requests[Outcome.WARM] / asked if asked else 1.0

    def wait_percentile(self, q: float) -> float:
        if not self.waits:
            return 0.0
        ordered = sorted(self.waits)
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]

    def pod_hours(self, state: PodState) -> float:
        return self.pod_seconds[state] / 3600.0


class Simulation:
    def __init__(
        self,
        limits: Limits,
        startup: Startup,
        *,
        platform: Platform | None = None,
        seed: int = 1,
        sample_every: float | None = None,
        archives: ArchivePlatform | None = None,
    ) -> None:
        ids = itertools.count(1)
        self.pool = Pool(limits, "sim", new_id=lambda: f"s{next(ids):06d}")
        self.startup = startup
        self.platform = platform or Platform()
        self.rng = random.Random(seed)
        self.sample_every = sample_every
        self.now = 0.0
        self._queue: list[tuple[float, int, Callable[[float], None]]] = []
        self._seq = itertools.count()
        self._ticks: set[float] = set()  # pool deadlines already on the queue
        self._pod_names = itertools.count(1)
        self._gone: set[str] = set()  # pods deleted on the platform
        self._asked_at: dict[int, float] = {}  # request id -> when it was asked
        self._cold_since: dict[str, float] = {}  # session -> when asked, until it has a pod
        self._next_sample = 0.0
        self.result = Result(limits, startup, 0.0)
        # Suspension on: the hooks and the store answer (sim/suspension.py).
        self.hooks: SimulatedHooks | None = None
        self._wakes: set[int] = set()  # request ids of resumes asked by traffic
        if limits.suspends_idle:
            platform_archives = archives or ArchivePlatform()
            figures = SuspensionFigures(platform_archives.archive_bytes)
            self.result.suspension = figures
            self.hooks = SimulatedHooks(self.pool, platform_archives, figures)

    def run(self, events: Sequence[TraceEvent], until: float | None = None) -> Result:
        end = until if until is not None else (events[-1].time if events else 0.0)
        if self.sample_every is None:
            self.sample_every = max(1.0, end / 1000.0)
        for event in events:
            if event.time <= end:
                self._at(event.time, self._replay(event))
        self._step(0.0, lambda now: None)
        while self._queue and self._queue[0][0] <= end:
            when, _, action = heapq.heappop(self._queue)
            self._ticks.discard(when)
            self._step(when, action)
        self._advance(end)
        self.result.duration = end
        return self.result

    # ------------------------------------------------------------ the clock

    def _at(self, when: float, action: Callable[[float], None]) -> None:
        heapq.heappush(self._queue, (when, next(self._seq), action))

    def _step(self, when: float, action: Callable[[float], None]) -> None:
        self._advance(when)
        action(when)
        self.pool.tick(when)
        self._carry_out(when)
        due = self.pool.next_deadline()
        if due is not None and due not in self._ticks:
            self._ticks.add(due)
            self._at(max(due, when), lambda now: None)  # tick() acts on it

    def _advance(self, when: float) -> None:
        """Account for the time from now to ``when``, in which nothing changed."""
        pool, result = self.pool, self.result
        span = when - self.now
        if span > 0:
            for state in (PodState.ASSIGNED, PodState.IDLE, PodState.PENDING):
                result.pod_seconds[state] += pool.counts[state] * span
            if result.suspension is not None:
                result.suspension.advance(span)
        step = self.sample_every or 1.0
        while self._next_sample <= when:
            result.samples.append(
                Sample(
                    self._next_sample,
                    len(pool.live_by_thread),
                    pool.counts[PodState.ASSIGNED],
                    pool.counts[PodState.IDLE],
                    pool.counts[PodState.PENDING] + pool.creates_in_flight,
                    pool.prewarm.current.target,
                )
            )
            self._next_sample += step
        self.now = max(self.now, when)

    # ------------------------------------------------------------ the trace

    def _replay(self, event: TraceEvent) -> Callable[[float], None]:
        pool = self.pool

        def apply(now: float) -> None:
            if event.kind is EventKind.OPEN:
                request_id = pool.next_request_id()
                self._asked_at[request_id] = now
                shape = Shape(event.template) if event.template else None
                pool.open_session(
                    request_id,
                    event.user,
                    event.thread,
                    event.wait_seconds,
                    now,
                    org_id=event.org,
                    plan=event.plan or None,
                    shape=shape,
                )
                return
            session_id = pool.live_by_thread.get((event.org, event.user, event.thread))
            if session_id is None:
                return  # refused, or already ended by the controller
            if event.kind is EventKind.ACTIVITY:
                if pool.sessions[session_id].state is SessionState.SUSPENDED:
                    self._wake(session_id, now)
                pool.touch(session_id, now, ActivitySource.PROXY)
            elif event.value in ("", EndReason.DELETED.value):
                pool.end_session(session_id, EndReason.DELETED, now)

        return apply

    def _wake(self, session_id: str, now: float) -> None:
        """Traffic for a suspended session: the proxy asks for its resume."""
        request_id = self.pool.next_request_id()
        self._wakes.add(request_id)
        assert self.result.suspension is not None
        self.result.suspension.wakes += 1
        self.pool.resume(request_id, session_id, WAKE_WAIT, now)

    # ------------------------------------------------------------ the platform

    def _carry_out(self, now: float) -> None:
        pool, result, platform = self.pool, self.result, self.platform
        out = pool.take_outbox()
        if self.hooks is not None:
            self.hooks.carry_out(out, now, self._at)
        for answer in out.answers:
            if answer.request_id in self._wakes:
                self._wakes.discard(answer.request_id)  # the proxy's, not an open
                continue
            asked = self._asked_at.pop(answer.request_id, now)
            result.requests[answer.outcome] += 1
            if answer.outcome is Outcome.WARM:
                result.waits.append(0.0)
            elif answer.outcome is Outcome.COLD and answer.session_id is not None:
                self._cold_since[answer.session_id] = asked
            elif answer.outcome is Outcome.CAPACITY:
                result.refusals.append((now, 503))
            elif answer.outcome in (Outcome.USER_LIMIT, Outcome.ORG_LIMIT, Outcome.ORG_RATE):
                result.refusals.append((now, 429))
        for name in out.labels:
            session_id = pool.pods[name].session_id if name in pool.pods else None
            if session_id is not None and session_id in self._cold_since:
                result.waits.append(now - self._cold_since.pop(session_id))
        result.ended.update(out.ended)
        for _ in range(out.creates):
            self._at(now + platform.create_seconds, self._created)
        for name in out.deletes:
            if name not in self._gone:
                self._gone.add(name)
                self._at(now + platform.delete_seconds, _gone(pool, name))
        result.peak_pods = max(result.peak_pods, len(pool.pods))

    def _created(self, now: float) -> None:
        name = f"sim-{next(self._pod_names)}"
        self.pool.pod_created(name, now)
        self._at(now + self.startup.sample(self.rng), self._ready(name))

    def _ready(self, name: str) -> Callable[[float], None]:
        def apply(now: float) -> None:
            if name not in self._gone:
                # With suspension on, the hooks answer (they take snapshots): the pod
                # has a create id, as a real one does.
                labels = {LABEL_CREATE_ID: name} if self.hooks is not None else {}
                status = PodStatus(name, PodPhase.READY, labels=labels, address=name)
                self.pool.pod_observed(status, now)

        return apply


def _gone(pool: Pool, name: str) -> Callable[[float], None]:
    return lambda now: pool.pod_gone(name, now)


def simulate(
    events: Sequence[TraceEvent],
    limits: Limits,
    startup: Startup,
    *,
    seed: int = 1,
    platform: Platform | None = None,
    until: float | None = None,
    archives: ArchivePlatform | None = None,
) -> Result:
    known = {t.name for t in limits.all_templates}
    for event in events:
        if event.template and event.template not in known:
            raise TraceError(
                f"the trace asks for template {event.template!r}, not one of "
                f"{', '.join(sorted(known))} (SANDBOX_TEMPLATES_FILE)"
            )
    simulation = Simulation(limits, startup, platform=platform, seed=seed, archives=archives)
    return simulation.run(events, until)
