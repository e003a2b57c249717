"""Traces: the CSV format, the synthetic day, and export from a real store."""

from __future__ import annotations

import io
import time

import pytest

from sandbox_controller.model import EndReason, Session, SessionState
from sandbox_controller.sim.export import export_trace
from sandbox_controller.sim.trace import (
    EventKind,
    SynthModel,
    TraceError,
    TraceEvent,
    read_trace,
    synth,
    write_trace,
)
from sandbox_controller.store import Batch, Store


def test_a_trace_round_trips_through_csv() -> None:
    events = [
        TraceEvent(0.0, EventKind.OPEN, "u1", "t1", "30"),
        TraceEvent(12.25, EventKind.ACTIVITY, "u1", "t1"),
        TraceEvent(60.0, EventKind.CLOSE, "u1", "t1", "deleted"),
    ]
    out = io.StringIO()
    assert write_trace(events, out) == 3
    assert out.getvalue().splitlines()[0] == "time,event,user,thread,value"
    assert read_trace(io.StringIO(out.getvalue())) == events


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "line 1: expected the header"),
        ("time,event,user,thread,value\n1,open,u1\n", "line 2: expected 5 fields"),
        ("time,event,user,thread,value\nsoon,open,u1,t1,\n", "line 2: time 'soon'"),
        ("time,event,user,thread,value\n-1,open,u1,t1,\n", "line 2: time must be"),
        ("time,event,user,thread,value\n1,opne,u1,t1,\n", "line 2: event 'opne'"),
        ("time,event,user,thread,value\n1,open,,t1,\n", "line 2: user and thread"),
        ("time,event,user,thread,value\n1,open,u1,t1,500\n", "line 2: wait_seconds '500'"),
    ],
)
def test_a_bad_trace_is_refused_naming_the_line(text: str, message: str) -> None:
    with pytest.raises(TraceError, match=message):
        read_trace(io.StringIO(text))


def test_the_synthetic_office_day_is_busy_by_day_and_quiet_by_night() -> None:
    events = synth(SynthModel(editors=100, seed=5))
    assert events == synth(SynthModel(editors=100, seed=5))  # reproducible
    opens = [e for e in events if e.kind is EventKind.OPEN]
    # 100 editors x 8 threads a day, Poisson: within a few standard deviations.
    assert 700 < len(opens) < 900
    by_hour = [0] * 24
    for e in opens:
        by_hour[int(e.time // 3600)] += 1
    assert sum(by_hour[9:18]) > 0.8 * len(opens)
    assert sum(by_hour[0:6]) < 0.02 * len(opens)
    assert len({e.user for e in opens}) > 90  # several threads per user, most users seen
    closes = [e for e in events if e.kind is EventKind.CLOSE]
    assert 0.6 * len(opens) < len(closes) < 0.8 * len(opens)  # close_share 0.7
    assert all(e.time < 86400 for e in events)
    assert [e.time for e in events] == sorted(e.time for e in events)


async def test_export_writes_the_stored_sessions_as_a_pseudonymised_trace(
    database_url: str,
) -> None:
    now = time.time()
    store = Store.open(database_url)
    await store.migrate()
    old = Session(
        "s0", "ann@example.com", "old", SessionState.ENDED, now - 30 * 86400, now - 30 * 86400
    )
    old.end_reason, old.ended_at = EndReason.DELETED, now - 30 * 86400 + 60
    first = Session("s1", "ann@example.com", "thread-a", SessionState.ENDED, now - 3600, now - 3000)
    first.end_reason, first.ended_at = EndReason.IDLE_TIMEOUT, now - 1000
    second = Session("s2", "ann@example.com", "thread-b", SessionState.READY, now - 1800, now - 10)
    third = Session("s3", "bob@example.com", "thread-c", SessionState.READY, now - 600, now - 600)
    await store.write(Batch(sessions=[old, first, second, third]), None)
    await store.close()

    events = await export_trace(database_url, since=7 * 86400, now=now)
    kinds = [(round(e.time), e.kind.value, e.value) for e in events]
    assert kinds == [
        (0, "open", ""),
        (600, "activity", ""),
        (1800, "open", ""),
        (2600, "close", "idle_timeout"),
        (3000, "open", ""),
        (3590, "activity", ""),
    ]
    users = [e.user for e in events]
    assert "ann@example.com" not in users and "bob@example.com" not in users
    assert users[0] == users[2] != users[4]  # one pseudonym per user within the trace
    assert all(e.thread.startswith("t-") and e.user.startswith("u-") for e in events)

    kept = await export_trace(database_url, since=7 * 86400, now=now, keep_ids=True)
    assert [e.user for e in kept][:3] == ["ann@example.com"] * 3
    again = await export_trace(database_url, since=7 * 86400, now=now)
    assert again[0].user != events[0].user  # a fresh key per export: nothing to look up
