"""Deleting a user (Scheduler.delete_user, behind DELETE /users/{id}) against the real
store, with opens for the same user racing it: when the deletion answers, none of the
user's sessions is live, and none of their rows is left."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandbox_controller.clock import ManualClock
from sandbox_controller.errors import UserBeingDeleted
from sandbox_controller.model import EndReason, Opened
from sandbox_controller.scheduler.loop import Scheduler
from sandbox_controller.store import Store

from .fakes import FakeBackend
from .harness import limits_with

LIMITS = limits_with(prewarm_pool_size=2, max_total_jobs=60, max_sessions_per_user=40)


async def started(store: Store) -> tuple[Scheduler, FakeBackend]:
    backend = FakeBackend()
    scheduler = Scheduler(limits=LIMITS, store=store, backend=backend, clock=ManualClock())
    await scheduler.start()
    return scheduler, backend


async def test_a_deleted_user_has_no_session_and_no_row_left_and_others_keep_theirs(
    database_url: str,
) -> None:
    store = Store.open(database_url)
    await store.migrate()
    scheduler, backend = await started(store)
    try:
        await scheduler.settle()
        backend.make_ready()
        await scheduler.settle()
        ended = await scheduler.open_session("dora", "old", 0)
        await scheduler.end_session(ended.session.id)
        live = await scheduler.open_session("dora", "live", 0)
        hers = await scheduler.open_session("eve", "hers", 0)
        pod = live.session.pod_name
        assert pod is not None

        done = await scheduler.delete_user("dora")

        assert (done.sessions_ended, done.sessions_purged, done.pods_deleted) == (1, 2, 1)
        for sid in (ended.session.id, live.session.id):
            assert await store.get_session(sid) is None
            assert await scheduler.view(sid) is None  # not in memory either
        assert await store.list_sessions("dora") == []
        eve = await scheduler.view(hers.session.id)
        assert eve is not None and eve.session.live
        await scheduler.settle()
        assert pod in backend.calls_of("delete")  # its sandbox goes, as on DELETE /sessions

        again = await scheduler.delete_user("dora")
        assert (again.sessions_ended, again.sessions_purged, again.pods_deleted) == (0, 0, 0)
        reopened = await scheduler.open_session("dora", "new", 0)  # not blocked for good
        assert reopened.session.live
    finally:
        await scheduler.stop()
        await store.close()


async def race(store: Store, open_delays: list[int], delete_delay: int) -> None:
    """Opens for dora, each after ``open_delays[i]`` yields, and her deletion after
    ``delete_delay`` yields, all at once on one event loop."""
    scheduler, _ = await started(store)
    try:
        before = await scheduler.open_session("dora", "before", 0)

        async def open_later(i: int, yields: int) -> Opened | None:
            for _ in range(yields):
                await asyncio.sleep(0)
            try:
                return await scheduler.open_session("dora", f"race-{i}", 0)
            except UserBeingDeleted:
                return None

        async def delete_later() -> list[str]:
            for _ in range(delete_delay):
                await asyncio.sleep(0)
            await scheduler.delete_user("dora")
            # At the moment the deletion answers, with no yield in between:
            return scheduler.read_sessions(lambda session, _: session.user_id)

        opens = [asyncio.create_task(open_later(i, n)) for i, n in enumerate(open_delays)]
        live_when_answered = await delete_later()
        opened = await asyncio.gather(*opens)

        assert "dora" not in live_when_answered
        assert await store.get_session(before.session.id) is None
        # An open either lost its session to the deletion (ended, then purged), was
        # refused while it ran, or came after it: then its session is live and stored.
        for result in opened:
            if result is None:
                continue
            now = await scheduler.view(result.session.id)
            if now is not None:
                assert now.session.live or now.session.end_reason is not EndReason.DELETED
    finally:
        await scheduler.stop()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    open_delays=st.lists(st.integers(0, 12), min_size=1, max_size=8),
    delete_delay=st.integers(0, 12),
)
def test_no_open_racing_the_deletion_leaves_a_live_session_when_it_answers(
    open_delays: list[int], delete_delay: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:

        async def run() -> None:
            store = Store.open(f"sqlite+aiosqlite:///{Path(tmp) / 'race.db'}")
            await store.migrate()
            try:
                await race(store, open_delays, delete_delay)
            finally:
                await store.close()

        asyncio.run(run())


@pytest.mark.parametrize(("delete_delay"), [0, 3, 6])
async def test_the_race_on_both_databases(database_url: str, delete_delay: int) -> None:
    store = Store.open(database_url)
    await store.migrate()
    try:
        await race(store, [0, 1, 2, 3, 4, 5, 6, 8, 10], delete_delay)
    finally:
        await store.close()
