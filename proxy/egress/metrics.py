"""The egress proxy's metrics (EGRESS.md seam 6), served at /metrics on its own port."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class EgressMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        connections = Counter(
            "sandbox_egress_connections",
            "Egress connections (CONNECT tunnels and plain-HTTP requests), by decision.",
            ["decision"],
            registry=self.registry,
        )
        # Children made once: labels() takes a lock and builds a key on each call.
        self.connections = {
            d: connections.labels(decision=d) for d in ("allowed", "denied", "audit_denied")
        }
        bytes_total = Counter(
            "sandbox_egress_bytes",
            "Bytes relayed, up (sandbox to internet) and down.",
            ["direction"],
            registry=self.registry,
        )
        self.bytes_up = bytes_total.labels(direction="up")
        self.bytes_down = bytes_total.labels(direction="down")
        self.secret_swaps = Counter(
            "sandbox_egress_secret_swaps",
            "Requests whose placeholder was replaced by the secret's value.",
            registry=self.registry,
        )
        self.leak_attempts = Counter(
            "sandbox_egress_leak_attempts",
            "Requests carrying a secret's placeholder to a host not that secret's.",
            registry=self.registry,
        )
        self.open_tunnels = Gauge(
            "sandbox_egress_open_connections",
            "Client connections open now.",
            registry=self.registry,
        )

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
