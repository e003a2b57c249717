"""Pod rows go to the store a bounded chunk per commit, a claimed pod's with its
session always, and a restart rewrites no row the store already has as it is."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from sandbox_controller.backends.base import PodPhase
from sandbox_controller.clock import ManualClock
from sandbox_controller.model import Outcome, Pod, PodState
from sandbox_controller.scheduler.loop import Scheduler
from sandbox_controller.scheduler.pod_rows import POD_ROWS_DELAY, PendingPodRows

from .fakes import FakeBackend, FakeStore
from .harness import limits_with


def pods(n: int) -> dict[str, Pod]:
    return {f"p{i}": Pod(f"p{i}", PodState.IDLE, 1.0, "h") for i in range(n)}


def test_rows_beyond_a_chunk_wait_for_the_next_commit_and_are_due_at_once() -> None:
    known = pods(25)
    rows = PendingPodRows(per_commit=10)
    rows.add(known, ["gone-1", "gone-2"], now=5.0)
    assert rows.due == 5.0 + POD_ROWS_DELAY
    written: list[str] = []
    deleted: list[str] = []
    for _ in range(3):
        chunk, forgotten = rows.take(known, [], now=6.0)
        assert len(chunk) <= 10
        written += [p.name for p in chunk]
        deleted += forgotten
        assert rows.due == (6.0 if rows else float("inf"))
    assert sorted(written) == sorted(known) and not rows
    assert sorted(deleted) == ["gone-1", "gone-2"]


def test_a_claimed_pods_row_goes_with_its_session_whatever_the_chunk() -> None:
    known = pods(30)
    rows = PendingPodRows(per_commit=5)
    rows.add(known, [], now=0.0)
    claimed = ["p29", "p28"]
    chunk, _ = rows.take(known, claimed, now=0.0)
    names = [p.name for p in chunk]
    assert names[:2] == claimed and len(names) == 7  # the two, then a chunk of others


def test_forgotten_rows_are_chunked_too() -> None:
    rows = PendingPodRows(per_commit=4)
    rows.add([], [f"g{i}" for i in range(9)], now=0.0)
    sizes = []
    while rows:
        _, forgotten = rows.take({}, [], now=0.0)
        sizes.append(len(forgotten))
    assert sizes == [4, 4, 1]


async def test_a_restart_rewrites_no_pod_row_the_store_has_as_it_is() -> None:
    """At 10,000 pods the rebuild's rewrite of every row was most of a restart's time
    to its first claim; rows that changed while it was down are still written."""
    limits = limits_with(prewarm_pool_size=4, max_total_jobs=8, max_concurrent_creates=4)
    store, backend, clock = FakeStore(), FakeBackend(), ManualClock()

    async def settle(scheduler: Scheduler) -> None:
        for _ in range(3):
            await scheduler.settle()
            for _ in range(5):
                await asyncio.sleep(0)

    first = Scheduler(limits=limits, store=store, backend=backend, clock=clock)
    await first.start()
    await settle(first)
    backend.make_ready()
    await settle(first)
    clock.advance(POD_ROWS_DELAY)
    await settle(first)
    assert {p.state for p in store.pods.values()} == {PodState.IDLE}
    await first.stop()

    # While no controller runs, one pod's row is lost (as after a crash before it was
    # written) and another pod fails.
    lost, failed, *_ = sorted(store.pods)
    del store.pods[lost]
    backend.pods[failed] = replace(backend.pods[failed], phase=PodPhase.FAILED)
    writes = len(store.writes)
    second = Scheduler(limits=limits, store=store, backend=backend, clock=clock)
    await second.start()
    try:
        rebuilt = [p.name for batch in store.writes[writes:] for p in batch.pods]
        assert sorted(rebuilt) == sorted([lost, failed])  # not the two unchanged ones
        assert store.pods[failed].state is PodState.TERMINATING
        opened = await second.open_session("ann", "t1", 0)
        assert opened.outcome is Outcome.WARM
    finally:
        await second.stop()
