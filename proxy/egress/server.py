"""The egress proxy's server: the connections open now (front.py's, one per accepted
socket), and what they share: counting, logging and reporting what was decided."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from sandbox_controller.egress_policy import Decision

from .common import Open, Record, Verdicts
from .controller import ControllerClient, Grant
from .front import Front
from .intercept import Interceptor
from .metrics import EgressMetrics
from .resolve import Resolver
from .swap import rewrite

log = logging.getLogger("proxy.egress")


class EgressServer:
    def __init__(
        self,
        controller: ControllerClient,
        resolver: Resolver,
        interceptor: Interceptor,
        metrics: EgressMetrics,
        *,
        header_timeout: float,
        max_connections: int,
        max_header_bytes: int,
    ) -> None:
        self.controller = controller
        self.resolver = resolver
        self.interceptor = interceptor
        self.metrics = metrics
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self.loop = asyncio.get_running_loop()  # made in the loop it serves
        self.max_header_bytes = max_header_bytes  # a request head's cap (431 beyond)
        self.live: set[Open] = set()
        self._empty: asyncio.Event | None = None  # set once none is left, while draining
        self.decisions: dict[tuple[int, str, int], Verdicts] = {}

    def accept(self) -> Front:
        """The protocol for one accepted connection (the listener's factory)."""
        return Front(self)

    def ended(self, front: Open) -> None:
        self.live.discard(front)
        self.metrics.open_tunnels.dec()
        if not self.live and self._empty is not None:
            self._empty.set()

    async def drain(self, timeout: float) -> None:
        """Let open connections finish for up to ``timeout``, then end the rest."""
        self._empty = asyncio.Event()
        for wait, end_them in ((timeout, True), (5.0, False)):
            if not self.live:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._empty.wait(), wait)
            for front in list(self.live) if end_them else ():
                front.abort()

    def admitted(self, record: Record, session_id: str | None, decision: Decision) -> None:
        self.metrics.connections[decision.decision].inc()

    def denied(self, record: Record, session_id: str | None, reason: str) -> None:
        record.decision, record.reason = "denied", reason
        self.metrics.connections["denied"].inc()
        if session_id is not None:
            self.controller.denied(session_id, record.host, record.port, reason)

    def swapped(
        self, grant: Grant, record: Record, target: str, headers: list[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        result = rewrite(grant.secrets, record.host, record.port, target, headers)
        if result.swapped:
            self.metrics.secret_swaps.inc(len(result.swapped))
        for name in result.leaked:
            self.metrics.leak_attempts.inc()
            # The secret's name and where it went; never its value or placeholder.
            log.warning(
                "egress leak attempt: pod=%s session=%s secret=%s sent to host=%s port=%d "
                "(not swapped)",
                record.pod,
                record.session,
                name,
                record.host,
                record.port,
            )
        return result.headers

    def log_line(self, record: Record) -> None:
        log.info(
            "egress pod=%s session=%s host=%s port=%d kind=%s decision=%s reason=%s "
            "status=%d up=%d down=%d seconds=%.3f",
            record.pod,
            record.session,
            record.host,
            record.port,
            record.kind,
            record.decision,
            record.reason or "-",
            record.status,
            record.up,
            record.down,
            time.monotonic() - record.started,
        )
