"""Proxy metrics in a registry of the app's own, so two apps in one process never clash."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class ProxyMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._requests = Counter(
            "sandbox_proxy_requests",
            "Requests and WebSocket upgrades answered, by status code.",
            ["code"],
            registry=self.registry,
        )
        self.upstream_seconds = Histogram(
            "sandbox_proxy_upstream_seconds",
            "Time from dialling the sandbox to its response head.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.websockets_open = Gauge(
            "sandbox_proxy_websockets_open",
            "WebSocket relays currently open.",
            registry=self.registry,
        )
        self._route_lookups = Counter(
            "sandbox_proxy_route_lookups",
            "Route lookups made to the controller, by result.",
            ["result"],
            registry=self.registry,
        )
        self._activity_flushes = Counter(
            "sandbox_proxy_activity_flushes",
            "Activity batches sent to the controller, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self._wakes = Counter(
            "sandbox_proxy_wakes",
            "Wakes of suspended sessions started by traffic, by outcome (ready, or the "
            "error code the waiting requests got).",
            ["outcome"],
            registry=self.registry,
        )
        # labels() takes a lock and builds a key; the hot path reuses the children.
        self._by_code: dict[int, Counter] = {}

    def request(self, code: int) -> None:
        child = self._by_code.get(code)
        if child is None:
            child = self._by_code[code] = self._requests.labels(code=str(code))
        child.inc()

    def route_lookups(self, result: str) -> None:
        self._route_lookups.labels(result=result).inc()

    def activity_flush(self, outcome: str) -> None:
        self._activity_flushes.labels(outcome=outcome).inc()

    def wake(self, outcome: str) -> None:
        self._wakes.labels(outcome=outcome).inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
