"""Where a session's pod is: asked of the controller, cached briefly, never taken from
the request (docs/architecture.md invariant 6).

A burst of requests for one session makes one lookup (single flight). A ready route is
kept for ``TTL[READY]`` seconds and dropped early when a dial to it fails. The
controller leases each address it hands out (``lease_seconds``) and keeps the pod, and
so the address, at least that long; if the controller is briefly unreachable (a leader
failover), a ready route keeps serving until its lease ends, never after, since by
then the address may belong to another session's pod.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass
from urllib.parse import quote

import httpx
from opentelemetry.trace import SpanKind

from sandbox_controller import tracing
from sandbox_controller.clock import Clock

from .errors import (
    ProxyError,
    controller_unavailable,
    ended,
    not_found,
    provisioning,
    suspended,
)
from .metrics import ProxyMetrics

log = logging.getLogger(__name__)


class RouteState(enum.StrEnum):
    """What the controller said of a session; MISSING is its 404."""

    READY = "ready"
    PROVISIONING = "provisioning"
    ENDED = "ended"
    MISSING = "missing"
    # The controller's 409 session_suspended (suspended or resuming): no pod to route to
    # until a resume (wake.py) brings one.
    SUSPENDED = "suspended"


@dataclass(frozen=True, slots=True)
class Route:
    state: RouteState
    address: str | None
    fetched_at: float
    # Until when the address may be used at all (the controller's lease). Both times are
    # on the monotonic clock: a wall clock stepped back must not stretch a lease.
    lease_until: float = 0.0


def _check(route: Route) -> str:
    if route.state is RouteState.READY and route.address:
        return route.address
    if route.state is RouteState.MISSING:
        raise not_found()
    if route.state is RouteState.ENDED:
        raise ended()
    if route.state is RouteState.SUSPENDED:
        raise suspended()
    raise provisioning()  # provisioning, or ready without an address yet


def _valid_address(address: object) -> bool:
    if not isinstance(address, str):
        return False
    host, sep, port = address.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)


class RouteCache:
    # How long each answer is trusted. Ready routes are re-checked often enough that an
    # ended session stops routing within seconds; "ended" never changes back.
    TTL = {
        RouteState.READY: 5.0,
        RouteState.PROVISIONING: 0.5,
        RouteState.ENDED: 60.0,
        RouteState.MISSING: 1.0,
        RouteState.SUSPENDED: 0.5,
    }

    def __init__(
        self,
        client: httpx.AsyncClient,
        controller_url: str,
        credential: str | None,
        clock: Clock,
        metrics: ProxyMetrics,
    ) -> None:
        self._client = client
        self._base = controller_url.rstrip("/") + "/internal/routes/"
        # The proxy's own credential (app.controller_credential): it opens /internal/* only.
        self._headers = {"authorization": f"Bearer {credential}"} if credential else {}
        self._clock = clock
        self._metrics = metrics
        self._entries: dict[str, Route] = {}
        self._inflight: dict[str, asyncio.Task[Route]] = {}

    async def address(self, session_id: str) -> str:
        """The pod address of a ready session; ProxyError 404/409/410/502/503 otherwise."""
        route = self._entries.get(session_id)
        now = self._clock.monotonic()
        if (
            route is not None
            and now - route.fetched_at < self.TTL[route.state]
            and (route.state is not RouteState.READY or now < route.lease_until)
        ):
            return _check(route)
        task = self._inflight.get(session_id)
        if task is None:
            task = asyncio.get_running_loop().create_task(
                self._refresh(session_id, route), name=f"proxy:route:{session_id[:32]}"
            )
            self._inflight[session_id] = task
            task.add_done_callback(lambda t: self._finished(session_id, t))
        # Shielded: one impatient client leaving must not cancel the lookup for the rest.
        return _check(await asyncio.shield(task))

    def _finished(self, session_id: str, task: asyncio.Task[Route]) -> None:
        self._inflight.pop(session_id, None)
        if not task.cancelled():
            task.exception()  # retrieved here; the waiters got it already, if any are left

    def cached(self, session_id: str) -> Route | None:
        return self._entries.get(session_id)

    def invalidate(self, session_id: str) -> None:
        self._entries.pop(session_id, None)

    async def _refresh(self, session_id: str, previous: Route | None) -> Route:
        try:
            route = await self._fetch(session_id)
        except ProxyError:
            self._metrics.route_lookups("error")
            if (
                previous is not None
                and previous.state is RouteState.READY
                and self._clock.monotonic() < previous.lease_until
            ):
                log.warning("controller unreachable; serving a stale route for %s", session_id)
                return previous
            raise
        self._metrics.route_lookups(route.state)
        self._entries[session_id] = route
        return route

    async def _fetch(self, session_id: str) -> Route:
        url = self._base + quote(session_id, safe="")
        asked_at = self._clock.monotonic()  # the lease started no earlier than this
        try:
            with tracing.span("proxy.route_lookup", kind=SpanKind.CLIENT, session_id=session_id):
                headers = self._headers
                if tracing.enabled():  # the controller's span continues this trace
                    headers = dict(headers)
                    tracing.inject(headers)
                resp = await self._client.get(url, headers=headers)
        except httpx.HTTPError as exc:
            log.warning("route lookup for %s failed: %s", session_id, exc)
            raise controller_unavailable() from None
        now = self._clock.monotonic()
        if resp.status_code == 404:
            return Route(RouteState.MISSING, None, now)
        if resp.status_code == 409 and _error_code(resp) == "session_suspended":
            return Route(RouteState.SUSPENDED, None, now)
        if resp.status_code != 200:
            log.warning("route lookup for %s: controller said %s", session_id, resp.status_code)
            raise controller_unavailable()
        try:
            data = resp.json()
            state = RouteState(data["state"])
            address = data.get("address")
            lease = float(data.get("lease_seconds") or 0.0)
        except (ValueError, KeyError, TypeError):
            raise controller_unavailable() from None
        if state in (RouteState.MISSING, RouteState.SUSPENDED):  # said by status, not body
            raise controller_unavailable()
        if state is not RouteState.READY:
            return Route(state, None, now)
        if not _valid_address(address):
            log.warning("controller gave a bad address for %s: %r", session_id, address)
            raise controller_unavailable()
        # No lease from the controller (an older one): the route serves for its TTL only.
        lease_until = asked_at + lease if lease > 0 else now + self.TTL[RouteState.READY]
        return Route(state, address, now, lease_until)


def _error_code(resp: httpx.Response) -> str | None:
    try:
        code = resp.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
    return code if isinstance(code, str) else None
