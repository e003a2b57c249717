"""A suspended session's archive record (the sessions.snapshot_* columns) against
SQLite and PostgreSQL: written, read back for a takeover, cleared by a resume."""

from __future__ import annotations

from dataclasses import replace

from sandbox_controller.model import EndDetail, Session, SessionState, Snapshot
from sandbox_controller.store import Batch, Fence, Store

from .test_store import store  # noqa: F401  (the fixture, on both databases)


async def test_the_archive_record_round_trips_and_is_cleared(store: Store) -> None:  # noqa: F811
    epoch = await store.acquire_lease("me", 10, 1000.0)
    record = Snapshot("s1/1700000000000.tar", 3 * 2**30, 1_700_000_000.0, 1_700_604_800.0)
    suspended = Session("s1", "ann", "t1", SessionState.SUSPENDED, 100.0, 100.0)
    suspended.snapshot = record
    await store.write(Batch(sessions=[suspended]), Fence("me", epoch))
    live, _ = await store.load()  # what a new leader rebuilds from
    assert [(s.state, s.snapshot, s.pod_name) for s in live] == [
        (SessionState.SUSPENDED, record, None)
    ]
    resumed = replace(suspended, state=SessionState.READY, snapshot=None, pod_name="pod-2")
    await store.write(Batch(sessions=[resumed]), Fence("me", epoch))
    back = await store.get_session("s1")
    assert back is not None and back.snapshot is None and back.state is SessionState.READY


async def test_a_failed_snapshot_is_recorded_in_the_end_detail(store: Store) -> None:  # noqa: F811
    epoch = await store.acquire_lease("me", 10, 1000.0)
    ended = Session("s2", "ann", "t2", SessionState.ENDED, 100.0, 100.0)
    ended.end_detail = EndDetail(100.0, snapshot="hook_error: HTTP 500")
    await store.write(Batch(sessions=[ended]), Fence("me", epoch))
    back = await store.get_session("s2")
    assert back is not None and back.end_detail is not None
    assert back.end_detail.snapshot == "hook_error: HTTP 500"
