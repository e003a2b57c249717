"""The route cache against the controller's documented route answers, on a hand-set
clock: how long a route is trusted, and that a leased address is never used past its
lease, even while the controller cannot be asked (docs/architecture.md invariant 15)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from proxy.errors import ProxyError
from proxy.metrics import ProxyMetrics
from proxy.routes import RouteCache
from sandbox_controller.clock import ManualClock

from .conftest import API_TOKEN, ControllerDouble, serve


@pytest.fixture
async def routes() -> AsyncIterator[tuple[RouteCache, ControllerDouble, ManualClock]]:
    controller = ControllerDouble()
    served = await serve(controller.app())
    clock = ManualClock(start=1000.0)
    async with httpx.AsyncClient(trust_env=False) as client:
        cache = RouteCache(
            client, f"http://127.0.0.1:{served.port}", API_TOKEN, clock, ProxyMetrics()
        )
        yield cache, controller, clock
    await served.stop()


async def test_a_ready_route_is_asked_again_after_its_ttl(
    routes: tuple[RouteCache, ControllerDouble, ManualClock],
) -> None:
    cache, controller, clock = routes
    controller.add("s1", "ready", "127.0.0.1:8080")
    assert await cache.address("s1") == "127.0.0.1:8080"
    clock.advance(RouteCache.TTL["ready"] - 0.1)
    assert await cache.address("s1") == "127.0.0.1:8080"
    assert controller.lookups == ["s1"]
    clock.advance(0.2)
    controller.add("s1", "ended")
    with pytest.raises(ProxyError) as ended:
        await cache.address("s1")
    assert ended.value.status == 410 and controller.lookups == ["s1", "s1"]


async def test_while_the_controller_is_down_a_route_serves_until_its_lease_ends_not_after(
    routes: tuple[RouteCache, ControllerDouble, ManualClock],
) -> None:
    cache, controller, clock = routes
    controller.add("s1", "ready", "127.0.0.1:8080")  # leased for 30 s
    assert await cache.address("s1") == "127.0.0.1:8080"
    controller.down = True
    clock.advance(29.9)  # past the TTL: asked again, unanswered, the lease still holds
    assert await cache.address("s1") == "127.0.0.1:8080"
    clock.advance(0.2)  # the pod may be gone now, and its address another pod's
    with pytest.raises(ProxyError) as unavailable:
        await cache.address("s1")
    assert unavailable.value.status == 503


async def test_a_wall_clock_stepped_back_stretches_no_route_lease(
    routes: tuple[RouteCache, ControllerDouble, ManualClock],
) -> None:
    cache, controller, clock = routes
    controller.add("s1", "ready", "127.0.0.1:8080")  # leased for 30 s
    assert await cache.address("s1") == "127.0.0.1:8080"
    controller.down = True
    clock.step_wall(-3600.0)  # NTP steps the proxy's clock back an hour
    clock.advance(30.1)  # the controller, counting on its own clock, may delete the pod
    with pytest.raises(ProxyError) as unavailable:
        await cache.address("s1")
    assert unavailable.value.status == 503


async def test_a_route_without_a_lease_is_never_served_stale(
    routes: tuple[RouteCache, ControllerDouble, ManualClock],
) -> None:
    cache, controller, clock = routes
    controller.sessions["s1"] = {"state": "ready", "address": "127.0.0.1:8080"}
    assert await cache.address("s1") == "127.0.0.1:8080"
    controller.down = True
    clock.advance(RouteCache.TTL["ready"] + 0.1)
    with pytest.raises(ProxyError) as unavailable:
        await cache.address("s1")
    assert unavailable.value.status == 503
