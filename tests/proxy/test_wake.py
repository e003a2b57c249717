"""Wake on traffic (wake.py) against the controller's internal resume endpoint (seam 1 of
the suspend work), over real HTTP, on a hand-set clock: one resume however many
requests wait, refusals passed on with their Retry-After, a bounded wait."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from proxy.errors import ProxyError
from proxy.metrics import ProxyMetrics
from proxy.routes import RouteCache
from proxy.wake import StillWaking, Waker
from sandbox_controller.clock import ManualClock

from ..eventually import eventually
from .conftest import API_TOKEN, ControllerDouble, serve

POD = "127.0.0.1:8080"


@dataclass
class Waking:
    waker: Waker
    controller: ControllerDouble
    clock: ManualClock
    metrics: ProxyMetrics

    def wake(self, session_id: str = "s1", navigation: bool = False) -> asyncio.Task[str]:
        return asyncio.create_task(self.waker.address(session_id, navigation=navigation))

    async def resumed(self, count: int = 1) -> None:
        await eventually(lambda: len(self.controller.resumes) >= count, what="the resume")

    async def restored(self, session_id: str = "s1") -> None:
        """The controller finishes the restore; the wake's next look finds the pod."""
        await self.clock.until_sleeping()
        self.controller.add(session_id, "ready", POD)
        self.clock.advance(Waker.POLL_SECONDS)


@pytest.fixture
async def waking() -> AsyncIterator[Waking]:
    controller = ControllerDouble()
    served = await serve(controller.app())
    clock, metrics = ManualClock(start=1000.0), ProxyMetrics()
    url = f"http://127.0.0.1:{served.port}"
    async with httpx.AsyncClient(trust_env=False) as client:
        routes = RouteCache(client, url, API_TOKEN, clock, metrics)
        waker = Waker(client, url, API_TOKEN, routes, clock, 30.0, metrics)
        yield Waking(waker, controller, clock, metrics)
    await served.stop()


async def test_a_burst_for_a_suspended_session_makes_one_resume_and_all_get_the_pod(
    waking: Waking,
) -> None:
    waking.controller.add("s1", "suspended")
    waiters = [waking.wake() for _ in range(5)]
    await waking.resumed()
    await waking.restored()
    assert await asyncio.gather(*waiters) == [POD] * 5
    assert waking.controller.resumes == ["s1"]
    # Served from the cache now: no more resumes, no wait.
    assert await waking.waker.address("s1") == POD
    assert waking.controller.resumes == ["s1"]


async def test_a_ready_session_is_never_resumed(waking: Waking) -> None:
    waking.controller.add("s1", "ready", POD)
    assert await waking.waker.address("s1") == POD
    assert waking.controller.resumes == []


@pytest.mark.parametrize(
    ("status", "code"), [(429, "user_session_limit"), (503, "capacity_exhausted")]
)
async def test_a_refused_resume_reaches_every_waiter_with_its_retry_after(
    waking: Waking, status: int, code: str
) -> None:
    waking.controller.add("s1", "suspended")
    waking.controller.resume_refusals.append((status, code, "7"))
    results = await asyncio.gather(*[waking.wake() for _ in range(3)], return_exceptions=True)
    for err in results:
        assert isinstance(err, ProxyError)
        assert (err.status, err.code, err.retry_after) == (status, code, 7.0)
    assert waking.controller.resumes == ["s1"]


async def test_a_resume_that_never_finishes_is_503_after_the_wait(waking: Waking) -> None:
    waking.controller.add("s1", "suspended")
    waiter = waking.wake()
    await waking.resumed()
    await waking.clock.until_sleeping()
    waking.clock.advance(30.0)
    with pytest.raises(ProxyError) as timed_out:
        await waiter
    assert (timed_out.value.status, timed_out.value.code) == (503, "resume_timeout")
    assert timed_out.value.retry_after is not None


async def test_a_restore_that_fails_while_waiting_says_restore_failed(waking: Waking) -> None:
    waking.controller.add("s1", "suspended")
    waiter = waking.wake()
    await waking.resumed()
    # The restore fails: the session is suspended again, and asking again says why.
    waking.controller.add("s1", "suspended")
    waking.controller.resume_refusals.append((503, "restore_failed", "3"))
    await waking.clock.until_sleeping()
    waking.clock.advance(Waker.RESUME_AGAIN_SECONDS)
    with pytest.raises(ProxyError) as failed:
        await waiter
    assert (failed.value.status, failed.value.code, failed.value.retry_after) == (
        503,
        "restore_failed",
        3.0,
    )


async def test_a_leader_failover_during_the_resume_is_waited_out(waking: Waking) -> None:
    waking.controller.add("s1", "suspended")
    waking.controller.resume_refusals.append((503, "not_leader", "1"))
    waiter = waking.wake()
    await waking.resumed()
    await waking.clock.until_sleeping()
    waking.clock.advance(Waker.POLL_SECONDS)  # asked again: the new leader takes it
    await waking.resumed(2)
    await waking.restored()
    assert await waiter == POD


async def test_a_navigation_gets_the_waiting_page_while_an_api_call_keeps_waiting(
    waking: Waking,
) -> None:
    waking.controller.add("s1", "suspended")
    api_call = waking.wake()
    page_load = waking.wake(navigation=True)
    await waking.resumed()
    await waking.clock.until_sleeping(2)  # the wake's poll and the navigation's patience
    waking.clock.advance(Waker.NAVIGATION_PATIENCE)
    with pytest.raises(StillWaking):
        await page_load
    assert not api_call.done()
    await waking.restored()
    assert await api_call == POD
    assert waking.controller.resumes == ["s1"]  # one resume for both


async def test_a_session_that_ends_while_waking_is_410(waking: Waking) -> None:
    waking.controller.add("s1", "suspended")
    waiter = waking.wake()
    await waking.resumed()
    await waking.clock.until_sleeping()
    waking.controller.add("s1", "ended")
    waking.clock.advance(Waker.POLL_SECONDS)
    with pytest.raises(ProxyError) as gone:
        await waiter
    assert gone.value.status == 410
    samples = waking.metrics.render()[0].decode()
    assert 'sandbox_proxy_wakes_total{outcome="session_ended"} 1.0' in samples
