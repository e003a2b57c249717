"""The console's live feed: one task follows the scheduler's change feed and tells
every open console (one Server-Sent Events stream each) what changed.

It wakes after a committed round, at most every TICK, reads only the sessions that
round wrote, and publishes one small message that all streams share. Along the way
it keeps what the scheduler does not: each session's recent history of activity
and the pool's counts over the last hour (the chart).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import OrderedDict, deque
from dataclasses import dataclass, replace

from ..controller import Controller
from ..model import PodState, PoolStatus, Provisioning, Session, SessionState
from ..scheduler.loop import Scheduler

log = logging.getLogger(__name__)

# While changes keep coming, one message per TICK carries them all (each costs every
# open page a render); the first change after a quiet spell goes at once. A change
# waits at most TICK plus a render: it shows within a second.
TICK = 0.8
QUIET_WAKE = 1.0  # with no round committed, look again this often
SAMPLE_EVERY = 10.0  # pool history: one point per 10 s ...
SAMPLES = 360  # ... for the last hour
MESSAGES = 128  # a stream further behind than this reloads its page instead
HISTORY_SESSIONS = 10_000  # sessions whose history is kept (the least recent go first)
HISTORY_ENTRIES = 20
IDS_MAX = 200  # a message names at most this many sessions; beyond it, "all"


# (version, the message as JSON, the sessions it names: None for "any, or the pool")
Message = tuple[int, str, frozenset[str] | None]


@dataclass
class Entry:
    """One line of a session's history."""

    at: float
    what: str
    count: int = 1  # activity of one source in a row is one line


@dataclass(frozen=True)
class Sample:
    at: float
    pods: dict[PodState, int]
    creating: int
    waiters: int


class Hub:
    def __init__(self, controller: Controller) -> None:
        self._ctl = controller
        self.version = 0
        self.leading = False
        self._messages: deque[Message] = deque(maxlen=MESSAGES)
        self._published = asyncio.Event()
        self._closed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._seen: dict[str, Glimpse] = {}
        self.history: OrderedDict[str, deque[Entry]] = OrderedDict()
        self.samples: deque[Sample] = deque(maxlen=SAMPLES)
        self._next_sample = 0.0
        self._pool: tuple[object, ...] = ()
        self._following: Scheduler | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="console-hub")

    async def stop(self) -> None:
        """End every stream (so a drain does not wait on them) and the task."""
        self._closed.set()
        self._wake_streams()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    # ------------------------------------------------------------ streams

    def since(self, version: int) -> list[Message] | None:
        """Messages after ``version``; None if some of them are no longer kept."""
        if version >= self.version:
            return []
        if not self._messages or self._messages[0][0] > version + 1:
            return None
        return [m for m in self._messages if m[0] > version]

    async def next_message(self, timeout: float) -> None:
        """Until something is published (or the timeout, for a heartbeat)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._published.wait()

    def _publish(self, body: dict[str, object]) -> None:
        self.version += 1
        body["v"] = self.version
        ids = body.get("ids")
        touched = None if body.get("all") or not isinstance(ids, list) else frozenset(ids)
        self._messages.append((self.version, json.dumps(body), touched))
        self._wake_streams()

    def _wake_streams(self) -> None:
        self._published.set()
        self._published = asyncio.Event()

    # ------------------------------------------------------------ the task

    async def _run(self) -> None:
        while not self._closed.is_set():
            try:
                scheduler = self._ctl.scheduler
                if scheduler is None or not scheduler.running:
                    await self._standby()
                else:
                    await self._follow(scheduler)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not end the feed for good
                log.exception("console feed failed; starting again")
                await asyncio.sleep(1.0)

    async def _standby(self) -> None:
        if self.leading:
            self.leading = False
            self._publish({"standby": True})
        await asyncio.sleep(TICK)

    async def _follow(self, scheduler: Scheduler) -> None:
        feed = scheduler.changes
        if not self.leading or scheduler is not self._following:
            # A new term (or the first): its scheduler is new, its history starts here.
            self.leading, self._following = True, scheduler
            feed.take()
            self._note(scheduler.read_sessions(_glimpse), first=True)
            self._publish({"ids": [], "all": True})
        while scheduler.running and not self._closed.is_set():
            with contextlib.suppress(TimeoutError):
                # Not forever: a leader stepping down commits no round to wake us.
                async with asyncio.timeout(QUIET_WAKE):
                    await feed.wait()
            if not scheduler.running:
                return
            now = self._ctl.clock.now()
            # Every tick: the feed shows pods, never sessions by activity (a pass over
            # every live session, 5,000 at scale, for nothing).
            status = scheduler.snapshot(now, sessions_by_activity=False)
            if now >= self._next_sample:
                self._next_sample = now + SAMPLE_EVERY
                self._sample(status)
            changed, everything = feed.take()
            if everything:
                self._note(scheduler.read_sessions(_glimpse), first=True)
            elif changed:
                self._note(scheduler.read_sessions(_glimpse, changed))
            # Pods come and go without any session changing: the pool page follows them.
            pool = _fingerprint(status)
            if changed or everything or pool != self._pool:
                self._pool = pool
                ids = sorted(changed)[:IDS_MAX]
                self._publish({"ids": ids, "all": everything or len(changed) > IDS_MAX})
            await asyncio.sleep(TICK)

    def _sample(self, status: PoolStatus) -> None:
        self.samples.append(
            Sample(self._ctl.clock.now(), dict(status.pods), status.creating, status.waiters)
        )

    # ------------------------------------------------------------ history

    def _note(self, glimpses: list[Glimpse], *, first: bool = False) -> None:
        for now_seen in glimpses:
            before = self._seen.get(now_seen.id)
            if before == now_seen:
                continue
            if now_seen.state is SessionState.ENDED:
                self._seen.pop(now_seen.id, None)
            else:
                self._seen[now_seen.id] = now_seen
            for entry in _entries(now_seen, before, first=first):
                self._add(now_seen.id, entry)

    def _add(self, session_id: str, entry: Entry) -> None:
        lines = self.history.get(session_id)
        if lines is None:
            lines = self.history[session_id] = deque(maxlen=HISTORY_ENTRIES)
            while len(self.history) > HISTORY_SESSIONS:
                self.history.popitem(last=False)
        else:
            self.history.move_to_end(session_id)
        last = lines[-1] if lines else None
        if last is not None and last.what == entry.what and entry.what.startswith("activity"):
            last.at, last.count = entry.at, last.count + 1
            return
        lines.append(entry)


def _fingerprint(status: PoolStatus) -> tuple[object, ...]:
    """What the pool page shows of the pool, to tell whether it changed."""
    prewarm = status.prewarm
    return (
        tuple(status.pods.items()),
        status.creating,
        status.waiters,
        status.capacity_blocked,
        status.cap_reached,
        status.conditions,
        (prewarm.target, prewarm.reason) if prewarm else None,
    )


@dataclass(frozen=True)
class Glimpse:
    """What the history follows of a session (read without a copy of it)."""

    id: str
    state: SessionState
    pod: str | None
    created_at: float
    last_active_at: float
    source: str
    detail: str | None
    ended_at: float | None
    end_reason: str


def _glimpse(session: Session, _detail: Provisioning | None) -> Glimpse:
    return Glimpse(
        session.id,
        session.state,
        session.pod_name,
        session.created_at,
        session.last_active_at,
        session.activity_source.value if session.activity_source else "unknown",
        session.activity_detail,
        session.ended_at,
        session.end_reason.value if session.end_reason else "ended",
    )


def _entries(now: Glimpse, before: Glimpse | None, *, first: bool) -> list[Entry]:
    """What changed about a session since it was last seen, as history lines."""
    if before is None:
        what = f"seen {now.state} (the console started)" if first else f"opened ({now.state})"
        out = [Entry(now.last_active_at if first else now.created_at, what)]
        if first:
            return out
        if now.state is SessionState.PROVISIONING:
            return out
        before = replace(now, state=SessionState.PROVISIONING)
    else:
        out = []
    if now.state is not before.state:
        if now.state is SessionState.READY:
            out.append(Entry(now.last_active_at, f"ready on {now.pod}"))
        elif now.state is SessionState.ENDED:
            out.append(Entry(now.ended_at or now.last_active_at, f"ended: {now.end_reason}"))
        elif now.state is SessionState.SUSPENDED:
            out.append(Entry(now.last_active_at, "suspended (its pod given back, archive kept)"))
    elif now.last_active_at != before.last_active_at:
        detail = f": {now.detail}" if now.detail else ""
        out.append(Entry(now.last_active_at, f"activity ({now.source}){detail}"))
    return out
