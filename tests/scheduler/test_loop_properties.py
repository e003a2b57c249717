"""Random sequences of requests, platform events, clock jumps and exploding decisions
against the real scheduler loop (rounds.py: commit before answer, the rebuild after a
failure), with a fake store and backend (fakes.py) and a ManualClock. Checked after
every step: the cap, the per-user limit, one session per pod, no half-written record
in the store, nothing a caller was told lost, and no caller left hanging."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from sandbox_controller.clock import ManualClock
from sandbox_controller.errors import (
    CapacityExhausted,
    DecisionFailed,
    StoreUnavailable,
    ThreadOwnedByOtherUser,
    UserSessionLimit,
)
from sandbox_controller.model import Limits, Opened, Outcome
from sandbox_controller.scheduler.loop import Scheduler

from .fakes import FakeBackend, FakeStore
from .faults import Faults
from .harness import limits_with

LIMITS = limits_with(
    prewarm_pool_size=2,
    max_total_jobs=5,
    max_sessions_per_user=2,
    max_concurrent_creates=2,
    idle_after=300,
    idle_timeout=3600,
    startup_timeout=600,
)
USERS = st.sampled_from(["ann", "ben", "cat"])
THREADS = st.sampled_from(["t1", "t2", "t3", "t4"])
DOOMED = "doomed"  # the thread whose decisions an explosion arms
# What a caller may hear instead of a session; anything else is a bug.
REFUSALS = (
    DecisionFailed,
    UserSessionLimit,
    CapacityExhausted,
    ThreadOwnedByOtherUser,
    StoreUnavailable,
)
LONGEST_WAIT = 30.0


class LoopMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.store, self.backend, self.clock = FakeStore(), FakeBackend(), ManualClock()
        self.faults = Faults(once=True)
        self.scheduler = Scheduler(
            limits=LIMITS, store=self.store, backend=self.backend, clock=self.clock
        )
        exploding = self.faults.pool_type()
        ids = itertools.count(1)

        class ReplayablePool(exploding):  # type: ignore[misc,valid-type]
            # Deterministic ids, shared by every rebuild: hypothesis replays draws
            # (and set orders) that depend on them.
            def __init__(self, limits: Limits, template_hash: str, **kwargs: Any) -> None:
                kwargs["new_id"] = lambda: f"s{next(ids):04d}"
                super().__init__(limits, template_hash, **kwargs)

        self.scheduler.pool_type = ReplayablePool
        self.callers: list[asyncio.Task[Opened]] = []
        self.told: set[str] = set()  # sessions a caller heard of as theirs
        self.failures = 0
        self.run(self.scheduler.start())
        self.quiesce()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def quiesce(self) -> None:
        """Let the loop, its rebuilds and its effect tasks run until nothing is left to
        do now (no clock time passes)."""

        async def settle() -> None:
            for _ in range(4):
                for _ in range(50):
                    if not self.scheduler.store_down:
                        break
                    await asyncio.sleep(0)
                try:
                    await self.scheduler.settle()
                except DecisionFailed:  # an armed tick went off in that round
                    self.failures += 1
                for _ in range(5):
                    await asyncio.sleep(0)

        self.run(settle())
        self.collect()

    def collect(self) -> None:
        for task in [t for t in self.callers if t.done()]:
            self.callers.remove(task)
            error = task.exception()
            if error is None:
                opened = task.result()
                assert opened.outcome in (Outcome.WARM, Outcome.COLD, Outcome.EXISTING)
                self.told.add(opened.session.id)
            else:
                assert isinstance(error, REFUSALS), repr(error)
                self.failures += isinstance(error, DecisionFailed)

    def teardown(self) -> None:
        try:  # every wait runs out: no caller may still be waiting then
            self.clock.advance(LONGEST_WAIT + 1)
            self.quiesce()
            assert not self.callers, "a caller left hanging"
        finally:
            self.run(self.scheduler.stop())
            for task in self.callers:  # only when the assertion above failed
                task.cancel()
            self.run(asyncio.wait(self.callers)) if self.callers else None
            self.loop.close()

    # -- callers

    def open(self, user: str, thread: str, wait: float) -> None:
        self.callers.append(self.loop.create_task(self.scheduler.open_session(user, thread, wait)))

    @rule(user=USERS, thread=THREADS, wait=st.sampled_from([0.0, 5.0, LONGEST_WAIT]))
    def open_session(self, user: str, thread: str, wait: float) -> None:
        self.open(user, thread, wait)
        self.quiesce()

    @rule(data=st.data())
    def end_session(self, data: st.DataObject) -> None:
        pool = self.scheduler._pool
        assert pool is not None
        live = sorted(s.id for s in pool.sessions.values() if s.live and s.id in self.told)
        if live:
            self.run(self.scheduler.end_session(data.draw(st.sampled_from(live))))
            self.quiesce()

    # -- the platform and time

    @rule()
    def pods_turn_ready(self) -> None:
        self.backend.make_ready()
        self.quiesce()

    @rule(seconds=st.sampled_from([1.0, 5.0, 31.0, 301.0]))
    def clock_jumps(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.quiesce()

    # -- a decision explodes

    @rule(user=USERS, how=st.sampled_from(["open", "handover", "tick"]))
    def a_decision_explodes(self, user: str, how: str) -> None:
        """A bug: opening the doomed thread raises before deciding, or handing it a pod
        raises after (the pool half-changed), or the next tick raises after its work.
        Other callers waiting meanwhile may hear of it too; none may hang."""
        before = self.faults.raised
        if how == "tick":
            self.faults.tick_at = self.clock.now()
            self.quiesce()
            assert self.faults.raised == before + 1
            return
        self.faults.open_threads = {DOOMED} if how == "open" else set()
        self.faults.handover_threads = {DOOMED} if how == "handover" else set()
        self.open(user, DOOMED, 0.0)
        self.quiesce()
        if how == "open":
            assert self.faults.raised == before + 1

    # -- invariants

    @invariant()
    def pods_never_exceed_the_cap(self) -> None:
        pool = self.scheduler._pool
        assert pool is not None and pool.total_pods <= LIMITS.max_total_jobs
        assert len(self.backend.pods) <= LIMITS.max_total_jobs

    @invariant()
    def no_user_above_the_limit(self) -> None:
        live = Counter(s.user_id for s in self.store.sessions.values() if s.live)
        assert max(live.values(), default=0) <= LIMITS.max_sessions_per_user
        pool = self.scheduler._pool
        assert pool is not None
        for user, sessions in pool.live_by_user.items():
            assert len(sessions) <= LIMITS.max_sessions_per_user, user

    @invariant()
    def one_session_per_pod_and_no_half_written_record(self) -> None:
        live = [s for s in self.store.sessions.values() if s.live]
        pods = [s.pod_name for s in live if s.pod_name]
        assert len(pods) == len(set(pods)), "two live sessions on one pod"
        for row in self.store.pods.values():
            if row.session_id is not None:
                assert row.session_id in self.store.sessions, f"half-written: {row}"
        # Every stored session was told to its caller: none of a failed round is there.
        assert set(self.store.sessions) <= self.told, "a session nobody was told of"

    @invariant()
    def nothing_told_is_lost(self) -> None:
        pool = self.scheduler._pool
        assert pool is not None
        for sid in self.told:
            stored = self.store.sessions.get(sid)
            assert stored is not None, f"{sid} was told to its caller, then lost"
            if stored.live:
                mine = pool.sessions.get(sid)
                assert mine is not None and mine.live, f"{sid} dropped by a rebuild"
            else:
                assert stored.end_reason is not None

    @invariant()
    def a_waiting_caller_waits_for_a_pod(self) -> None:
        pool = self.scheduler._pool
        assert pool is not None
        waiting = [s for s in pool.sessions.values() if s.reply_deadline is not None]
        assert len(self.callers) <= sum(len(s.requests) for s in waiting)
        for session in waiting:
            assert (session.reply_deadline or 0.0) > self.clock.now()


TestLoopInvariants = LoopMachine.TestCase
TestLoopInvariants.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)
