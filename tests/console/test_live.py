"""The console's live stream and its cost: a change reaches an open stream within a
second, a leader stepping down tells it so, and the sessions page lists 5,000 live
sessions whole (issue 23 item 4; its render time is printed, not asserted)."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from sandbox_controller.model import Session, SessionState
from sandbox_controller.scheduler.pool import Pool

from ..conftest import API_TOKEN, ControllerFactory, RunningController


async def events(client: httpx.AsyncClient) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """(event, data) of each message on the console's stream."""
    async with client.stream("GET", "/console/events") as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        event = "message"
        async for line in stream.aiter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                yield event, json.loads(line.removeprefix("data: "))


async def signed_in(ctl: RunningController) -> httpx.AsyncClient:
    client = httpx.AsyncClient(base_url=ctl.url, timeout=30)
    assert (await client.post("/console/login", data={"token": API_TOKEN})).status_code == 303
    return client


async def test_a_change_reaches_the_stream_within_a_second_and_a_standby_is_said(
    start_controller: ControllerFactory,
) -> None:
    ctl = await start_controller(prewarm_pool_size=1)
    await ctl.wait_idle_pods(1)
    client = await signed_in(ctl)
    stream = events(client)
    opened_at = 0.0
    session_id = ""

    async def open_one() -> None:
        nonlocal opened_at, session_id
        await asyncio.sleep(0.2)  # the stream is open by then
        response = await ctl.open("ada", "t1")
        opened_at, session_id = time.monotonic(), response.json()["id"]

    opener = asyncio.create_task(open_one())
    async with asyncio.timeout(10):
        async for event, data in stream:
            if event == "change" and session_id and session_id in data.get("ids", []):
                break
    delay = time.monotonic() - opened_at
    await opener
    assert delay < 1.0, f"the change took {delay:.2f}s to reach the stream"

    await ctl.controller.step_down()  # a graceful hand-over: this replica stands by
    async with asyncio.timeout(10):
        async for event, data in stream:
            if event == "standby":
                assert data["standby"] is True
                break
    await stream.aclose()
    await client.aclose()


def fill(pool: Pool, count: int, now: float) -> None:
    """``count`` live sessions, as if opened over the last hour (the page reads the
    scheduler's memory; nothing else looks at these)."""
    for i in range(count):
        session = Session(
            id=f"bulk{i:08d}",
            user_id=f"user-{i % 700}",
            thread_id=f"bulk-thread-{i}",
            state=SessionState.READY,
            created_at=now - 3600 + i * 0.5,
            last_active_at=now - (i % 900),
            pod_name=f"agent-sandbox-job-{i:05d}",
            metadata={"app": f"app-{i % 40}", "plan": "team"},
        )
        pool.track_live(session)


async def test_the_sessions_page_lists_all_5000_live_sessions_and_their_700_users(
    start_controller: ControllerFactory,
) -> None:
    ctl = await start_controller(prewarm_pool_size=0, max_sessions_per_user=100)
    scheduler = ctl.controller.scheduler
    assert scheduler is not None
    await scheduler._call(lambda pool, now: fill(pool, 5000, now))
    client = await signed_in(ctl)
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        page = await client.get("/console/sessions", params={"limit": 5000, "sort": "idle"})
        timings.append(time.perf_counter() - started)
        assert page.status_code == 200
        assert page.text.count("<tr data-session=") == 5000
    users = await client.get("/console/users")
    assert users.text.count("<tr data-user=") == 700
    await client.aclose()
    # Printed, not asserted (the suite times nothing): the bound is 300 ms.
    median = statistics.median(timings)
    print(f"sessions page, 5000 live sessions: median {median * 1000:.0f} ms, {timings}")


async def test_a_sessions_page_tells_its_history_and_why_it_ended(
    start_controller: ControllerFactory,
) -> None:
    ctl = await start_controller(prewarm_pool_size=1)
    await ctl.wait_idle_pods(1)
    client = await signed_in(ctl)
    await asyncio.sleep(0.6)  # the console's feed follows the leader
    session = (await ctl.open("ada", "t1")).json()

    async def history_shows(line: str) -> str:
        # The feed looks at most twice a second: each step is seen at a person's pace.
        deadline = time.monotonic() + 10
        while True:
            page = (await client.get(f"/console/sessions/{session['id']}")).text
            if line in page or time.monotonic() > deadline:
                return page
            await asyncio.sleep(0.2)

    assert f"ready on {session['pod']}" in await history_shows("ready on")
    assert (await ctl.client.post(f"/sessions/{session['id']}/touch")).status_code == 204
    assert "activity (touch)" in await history_shows("activity (touch)")
    assert (await ctl.client.delete(f"/sessions/{session['id']}")).status_code == 204
    page = await history_shows("ended: deleted")
    for line in ("opened (", f"ready on {session['pod']}", "activity (touch)", "ended: deleted"):
        assert line in page, line
    assert "deleted" in page and 'id="end-button"' not in page  # ended: nothing to end
    await client.aclose()
