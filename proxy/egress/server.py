"""The egress proxy's listener: accepts on raw asyncio streams and hands each connection
to connection.py; counts, logs and reports what it decided."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from sandbox_controller.egress_policy import Decision

from .common import Record, Verdicts
from .connection import Connection
from .controller import ControllerClient, Grant
from .heads import error_response
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
    ) -> None:
        self.controller = controller
        self.resolver = resolver
        self.interceptor = interceptor
        self.metrics = metrics
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self.connections: set[asyncio.Task[None]] = set()
        self.decisions: dict[tuple[int, str, int], Verdicts] = {}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.connections.add(task)
        self.metrics.open_tunnels.inc()
        try:
            if len(self.connections) > self.max_connections:
                writer.write(error_response(503, "overloaded", "too many connections"))
                return
            await Connection(self, (reader, writer)).serve()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        except Exception:
            log.exception("egress connection failed")
        finally:
            self.connections.discard(task)
            self.metrics.open_tunnels.dec()
            with contextlib.suppress(Exception):
                writer.close()

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
