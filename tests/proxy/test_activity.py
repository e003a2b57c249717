"""Activity: data moving marks the session; an open, silent WebSocket does not. Marks
are batched and flushed to the controller once per interval of the reporter's clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from websockets.asyncio.client import connect

from proxy.activity import ActivityReporter
from proxy.metrics import ProxyMetrics
from sandbox_controller.aiotasks import TaskGroup
from sandbox_controller.clock import ManualClock
from sandbox_controller.model import ACTIVITY_BATCH_MAX

from ..eventually import eventually
from .conftest import API_TOKEN, ControllerDouble, Stack, serve

INTERVAL = 10.0


async def test_traffic_is_reported_in_a_batch(stack: Stack) -> None:
    token = stack.session("sess-a")
    stack.session("sess-b")
    resp = await stack.client.post(
        stack.base + "/s/sess-a/upload", content=b"x" * 1000, headers={"x-sandbox-token": token}
    )
    assert resp.status_code == 200
    await eventually(lambda: "sess-a" in stack.controller.active_ids())
    assert "sess-b" not in stack.controller.active_ids()
    batch = next(b for b in stack.controller.activity if "sess-a" in b)
    assert isinstance(batch["sess-a"], float)


async def test_a_silent_websocket_is_not_activity(stack: Stack) -> None:
    token = stack.session("sess-a")
    witness = stack.session("sess-b")
    headers = {"x-sandbox-token": token}
    async with connect(stack.ws_base + "/s/sess-a/ws", additional_headers=headers) as ws:
        await asyncio.wait_for(await ws.ping(), 5)  # control frames are not activity either
        # Traffic on another session after the ping: the batch that reports it carries
        # every mark made before it, so once it lands, a mark for sess-a would have too.
        resp = await stack.client.get(
            stack.base + "/s/sess-b/healthz", headers={"x-sandbox-token": witness}
        )
        assert resp.status_code == 200
        await eventually(lambda: "sess-b" in stack.controller.active_ids())
        assert "sess-a" not in stack.controller.active_ids()
        # The same socket moving data is activity: the check above could have failed.
        await ws.send("tick")
        assert await ws.recv() == "tick"
        await eventually(lambda: "sess-a" in stack.controller.active_ids())


class WatchedClock(ManualClock):
    """Records when each sleep will end: a new entry means the reporter finished its
    round and sleeps again, and the entry says until when."""

    def __init__(self) -> None:
        super().__init__()
        self.wakes: list[float] = []

    async def sleep(self, delay: float) -> None:
        self.wakes.append(self.now() + delay)
        await super().sleep(delay)


@dataclass
class Reporting:
    reporter: ActivityReporter
    clock: WatchedClock
    controller: ControllerDouble
    metrics: ProxyMetrics

    def flushes(self, outcome: str) -> float:
        labels = {"outcome": outcome}
        value = self.metrics.registry.get_sample_value(
            "sandbox_proxy_activity_flushes_total", labels
        )
        return value or 0.0

    async def next_round(self) -> None:
        """Move the clock to the reporter's wake-up; return when it sleeps again."""
        rounds = len(self.clock.wakes)
        self.clock.advance(self.clock.wakes[-1] - self.clock.now())
        await eventually(lambda: len(self.clock.wakes) > rounds, what="the flush to finish")


@pytest.fixture
async def reporting() -> AsyncIterator[Reporting]:
    """The reporter on a ManualClock, flushing to the controller double over HTTP."""
    controller = ControllerDouble()
    served = await serve(controller.app())
    clock, metrics = WatchedClock(), ProxyMetrics()
    tasks = TaskGroup("test-activity")
    async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
        url = f"http://{served.address}"
        reporter = ActivityReporter(client, url, API_TOKEN, INTERVAL, clock, metrics)
        tasks.start(reporter.run(), "reporter")
        await eventually(lambda: bool(clock.wakes), what="the reporter's first sleep")
        try:
            yield Reporting(reporter, clock, controller, metrics)
        finally:
            await tasks.stop()
    await served.stop()


async def test_marks_within_an_interval_go_in_one_batch_when_it_ends(
    reporting: Reporting,
) -> None:
    r = reporting
    start = r.clock.now()
    assert r.clock.wakes == [start + INTERVAL]  # no flush before the interval is over
    r.reporter.mark("a")
    r.clock.advance(2)
    r.reporter.mark("b")
    r.clock.advance(5)
    r.reporter.mark("a")

    await r.next_round()
    # One batch, each session once, at its latest mark.
    assert r.controller.activity == [{"a": start + 7, "b": start + 2}]
    assert r.clock.wakes[-1] == start + 2 * INTERVAL
    # A quiet interval sends nothing.
    await r.next_round()
    assert len(r.controller.activity) == 1 and r.flushes("ok") == 1


async def test_a_failed_flush_keeps_the_marks_for_the_next(reporting: Reporting) -> None:
    r = reporting
    r.controller.refuse_activity = True
    r.reporter.mark("a")
    seen_a = r.clock.now()
    await r.next_round()
    assert r.controller.refused == [{"a": seen_a}] and r.controller.activity == []
    assert r.flushes("error") == 1

    r.controller.refuse_activity = False
    r.clock.advance(3)
    r.reporter.mark("b")
    seen_b = r.clock.now()
    await r.next_round()
    assert r.controller.activity == [{"a": seen_a, "b": seen_b}]
    assert r.flushes("ok") == 1


async def test_a_batch_larger_than_the_controller_takes_goes_in_pieces(
    reporting: Reporting,
) -> None:
    # The controller refuses a report of more than ACTIVITY_BATCH_MAX sessions (422):
    # a proxy busy with more sessions than that must still report every one of them.
    r = reporting
    sessions = [f"s{i}" for i in range(2 * ACTIVITY_BATCH_MAX + 500)]
    for session_id in sessions:
        r.reporter.mark(session_id)
    await r.next_round()
    assert [len(batch) for batch in r.controller.activity] == [
        ACTIVITY_BATCH_MAX,
        ACTIVITY_BATCH_MAX,
        500,
    ]
    assert r.controller.active_ids() == set(sessions)
    assert r.flushes("ok") == 3
