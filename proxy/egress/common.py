"""What the egress proxy's connection handling shares: the per-connection record its log
line is made from, refusals, credentials, and the face of the server it reports to."""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from sandbox_controller.egress_policy import Decision, IPAddress, normalize_host

from .controller import ControllerClient, Grant
from .heads import BadHead
from .intercept import Interceptor
from .metrics import EgressMetrics
from .resolve import Resolver

KEEP_ALIVE_SECONDS = 75.0  # as the editor proxy (serving.KEEP_ALIVE_SECONDS): we wait longest
CONNECT_TIMEOUT = 10.0
ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"
AUTHENTICATE = [("Proxy-Authenticate", 'Basic realm="agent-sandbox egress"')]


class Refusal(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(slots=True)
class Record:
    """What the connection's log line says. Never a path, never a header value."""

    host: str
    port: int
    kind: str  # http | tunnel | intercept
    pod: str | None = None
    session: str | None = None
    decision: str = "denied"
    reason: str | None = None
    status: int = 0
    up: int = 0
    down: int = 0
    started: float = field(default_factory=time.monotonic)


DECISIONS_MAX = 10_000  # verdicts kept (connection._admit); all dropped beyond


@dataclass(slots=True)
class Verdicts:
    """One (grant, host, port)'s verdicts: by name, and by the addresses last found."""

    grant: Grant
    by_name: Decision
    found: list[IPAddress] | None = None
    decision: Decision | None = None


def split_authority(authority: str, default_port: int | None) -> tuple[str, int]:
    host, port_text = authority, ""
    if authority.startswith("["):
        close = authority.find("]")
        host, rest = authority[: close + 1], authority[close + 1 :]
        if close < 0 or (rest and not rest.startswith(":")):
            raise BadHead(400, "malformed authority")
        port_text = rest[1:]
    elif ":" in authority:
        host, _, port_text = authority.rpartition(":")
    if not port_text:
        if default_port is None:
            raise BadHead(400, "CONNECT needs host:port")
        port = default_port
    elif port_text.isdigit() and 0 < int(port_text) < 65536:
        port = int(port_text)
    else:
        raise BadHead(400, "bad port")
    host = normalize_host(host)
    if not host or any(c in host for c in "/@?#\\ \t%"):
        raise BadHead(400, "bad host")
    return host, port


def basic_credentials(value: str | None) -> tuple[str, str] | None:
    if not value:
        return None
    scheme, _, blob = value.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(blob.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep and user else None


class Open(Protocol):
    """An open client connection (front.Front), as the server's drain sees it."""

    def abort(self) -> None: ...


class Hub(Protocol):
    """The server's side of a connection (server.EgressServer)."""

    loop: asyncio.AbstractEventLoop
    controller: ControllerClient
    resolver: Resolver
    interceptor: Interceptor
    metrics: EgressMetrics
    header_timeout: float
    max_connections: int
    max_header_bytes: int
    live: set[Open]
    decisions: dict[tuple[int, str, int], Verdicts]

    def ended(self, front: Open) -> None: ...

    def admitted(self, record: Record, session_id: str | None, decision: Decision) -> None: ...

    def denied(self, record: Record, session_id: str | None, reason: str) -> None: ...

    def swapped(
        self, grant: Grant, record: Record, target: str, headers: list[tuple[str, str]]
    ) -> list[tuple[str, str]]: ...

    def log_line(self, record: Record) -> None: ...


def counter(server: Hub, record: Record, direction: str) -> Callable[[int], None]:
    """Bytes one way (``up``: sandbox to internet), into the record and the metric."""
    metric = server.metrics.bytes_up if direction == "up" else server.metrics.bytes_down
    up = direction == "up"

    def count(n: int) -> None:
        if up:
            record.up += n
        else:
            record.down += n
        metric.inc(n)

    return count
