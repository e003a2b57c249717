"""The edge of every server process: what a client may send before it is authenticated.

uvicorn's httptools protocol has no limits of its own (httptools has none): no cap on a
request head, no deadline for a head or a body, no cap on connections. ``GuardedHttp``
adds them, and ``HeadHeld`` lets a small response leave in one write. ``Listener``
(serving.py) serves every app through them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .config import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EdgeLimits:
    """What one server process accepts from clients it has not yet authenticated."""

    max_header_bytes: int
    header_read_timeout: float
    max_connections: int
    # A request body must bring MIN_BODY_RATE bytes a second, counted over each window
    # this long, or the request is cut (408): a client trickling a body holds a
    # connection for one window, not for as long as its Content-Length lets it.
    body_read_timeout: float = 10.0
    retry_after: int = 5  # seconds, on the 503 beyond max_connections

    @classmethod
    def of(cls, settings: Settings) -> EdgeLimits:
        return cls(
            settings.max_header_bytes,
            settings.header_read_timeout,
            settings.max_connections,
            settings.body_read_timeout,
        )


# The slowest body accepted, in bytes a second over each window: 1 KiB/s is a very poor
# mobile link, and 2,000 times what a trickling client (a byte every 2 s) sends.
MIN_BODY_RATE = 1024
# After an answer given while the client is still sending (a 401 or 413 before the
# body, a 431), the connection is closed: the answer goes first, then FIN, then what
# still arrives is dropped for this long, then the socket is closed whatever the client
# does. Closing at once would reset the connection, and a reset makes the client's
# kernel drop the answer it had not yet read (Go's server waits 500 ms for the same).
LINGER_SECONDS = 1.0


_END_OF_HEAD = b"\r\n\r\n"


class HeadHeld:
    """The connection's transport as uvicorn's response cycle sees it: the first write
    of a response (its head) is held until the next write (its body), so a small
    response leaves in one write, one packet and one wake-up of the client rather than
    two; under load the second write was a quarter of the proxy's time
    (benchmarks/README.md section 2). Whatever is held goes out at the end of the loop
    iteration at the latest, so a streamed response's head is never delayed."""

    __slots__ = ("_close", "_held", "_hold", "_loop", "transport")

    def __init__(
        self,
        transport: asyncio.Transport,
        loop: asyncio.AbstractEventLoop,
        close: Callable[[], None] | None = None,
    ) -> None:
        self.transport = transport
        self._loop = loop
        self._hold = False
        self._held: bytes | None = None
        self._close = close or transport.close  # how the response cycle's close() ends

    def hold_next(self) -> None:
        self._hold = True

    def write(self, data: bytes) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            self.transport.writelines((held, data))  # one send for both
        elif self._hold:
            self._hold = False
            self._held = data
            self._loop.call_soon(self.flush)
        else:
            self.transport.write(data)

    def flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self.transport.is_closing():
            self.transport.write(held)

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def close(self) -> None:
        self.flush()
        self._close()

    def detach(self) -> None:
        """Let go of the close given (a protocol's method): no cycle left to the GC."""
        self._close = self.transport.close


_REASONS = {
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


class GuardedHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits it lacks (httptools has none).

    The request head is counted before the parser sees it, so an oversized one is
    refused (431) without ever being buffered; a head not finished within the timeout
    closes the connection (a slow-loris client holds a socket for seconds, not forever);
    beyond the connection cap a new connection gets 503 at once. A request body must
    keep a minimum rate (MIN_BODY_RATE over each ``body_read_timeout`` window) or gets
    408. An answer given before the request body has all arrived (a 401 before the
    body is read, a 413) says ``Connection: close`` and closes: the body it did not
    want is never read. Every refusal lingers briefly (LINGER_SECONDS) so the client
    reads the answer rather than a connection reset.
    """

    limits: EdgeLimits  # set on the subclass Listener builds

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._in_head = True
        self._head_bytes = 0
        self._tail = b""
        self._refused = False
        self._timer: asyncio.TimerHandle | None = None
        # The request body: still arriving, its bytes so far, at the window's start.
        self._body_pending = False
        self._received = 0
        self._window_start = 0
        self._keep_alive = True  # uvicorn's choice for the request, kept while its body is due
        self._out = HeadHeld(transport, self.loop, self._close_answered)
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            retry = (b"retry-after", b"%d" % self.limits.retry_after)
            self._refuse(503, "too_many_connections", "the server is at capacity", retry)
        else:
            self._arm(self.limits.header_read_timeout, self._head_expired)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._out.detach()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # discarded: the answer is sent, the client is finishing its send
        if self._in_head:
            end = self._head_end(data)
            if self._head_bytes + max(end, 0) > self.limits.max_header_bytes:
                self._refuse(431, "header_too_large", "the request head is too large")
                return
            if end < 0 and self._timer is None:
                # A head in pieces: from now on it has the timeout to finish. A head in
                # one read (nearly all) costs no timer at all.
                self._arm(self.limits.header_read_timeout, self._head_expired)
        else:
            self._received += len(data)
        super().data_received(data)
        if self._body_pending and self._timer is None:
            # A body still arriving after this read: one timer a window, never one a read.
            # A body that came with its head (nearly all) costs no timer at all.
            self._window_start = self._received
            self._arm(self.limits.body_read_timeout, self._body_window_ended)

    def _head_end(self, data: bytes) -> int:
        """Where the head ends in ``data`` (just past its blank line), or -1; counts the
        head bytes seen so far in ``_head_bytes`` while it has not ended."""
        end = data.find(_END_OF_HEAD)
        if end < 0 and self._tail:
            # The end marker may straddle two reads.
            joined = (self._tail + data[:3]).find(_END_OF_HEAD)
            end = joined - len(self._tail) if joined >= 0 else -1
        if end >= 0:
            return end + 4
        self._head_bytes += len(data)
        self._tail = data[-3:]
        return -1

    def handle_websocket_upgrade(self) -> None:
        super().handle_websocket_upgrade()
        # The WebSocket protocol has the transport now; the parser and this protocol hold
        # each other, so let go here rather than leave a cycle per WebSocket to the GC.
        self.parser = None  # type: ignore[assignment]
        self._out.detach()
        self._body_pending = False
        self._disarm()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._tail = b""
        self._disarm()
        previous = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not previous:  # a new request (not an upgrade): its head is held
            cycle.transport = self._out  # type: ignore[assignment]
            self._out.hold_next()
            # Until the body has all arrived, an answer closes the connection (uvicorn
            # then says so in the head and closes after the answer). A request whose
            # body comes in the same read is complete before its app runs: no change.
            self._body_pending = True
            self._keep_alive = cycle.keep_alive
            cycle.keep_alive = False

    def on_message_complete(self) -> None:
        if self._body_pending:
            self._body_pending = False
            if not self.cycle.response_started:  # else its head said close already
                self.cycle.keep_alive = self._keep_alive
            if self._timer is not None:
                self._disarm()
        super().on_message_complete()
        self._in_head = True

    def _close_answered(self) -> None:
        """The response cycle's close (an answer without keep-alive is complete)."""
        if not self._body_pending or self.transport.is_closing():
            self.transport.close()
            return
        self._linger()

    def _body_window_ended(self) -> None:
        self._timer = None
        cycle = self.cycle
        if not self._body_pending or cycle is None:
            return
        # Not the client's fault: the app is not reading (the body is paused at the high
        # water mark) or has not asked for the body yet (Expect: 100-continue).
        waiting = self.flow.read_paused or cycle.waiting_for_100_continue
        window = self.limits.body_read_timeout
        if waiting or self._received - self._window_start >= MIN_BODY_RATE * window:
            self._window_start = self._received
            self._arm(window, self._body_window_ended)
            return
        log.info("cut a request from %s: its body arrived too slowly", _peer(self))
        if cycle.response_started:
            self.transport.close()
            return
        # The app sees the client gone (its receive() answers http.disconnect) and writes
        # nothing more; the client gets the 408.
        cycle.disconnected = True
        cycle.message_event.set()
        self._refuse(408, "body_timeout", "the request body arrived too slowly")

    def _arm(self, delay: float, expired: Callable[[], None]) -> None:
        self._disarm()
        self._timer = self.loop.call_later(delay, expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_expired(self) -> None:
        self._timer = None
        log.info("closed a connection from %s: no complete request head in time", _peer(self))
        self.transport.close()

    def _linger_ended(self) -> None:
        self._timer = None
        self.transport.close()

    def _linger(self) -> None:
        """FIN after what was written, drop what still arrives for a moment, then close."""
        self._refused = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._arm(LINGER_SECONDS, self._linger_ended)

    def _refuse(self, status: int, code: str, message: str, *extra: tuple[bytes, bytes]) -> None:
        log.info("refused a request from %s: %d %s", _peer(self), status, code)
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        lines = [b"HTTP/1.1 %d %s" % (status, _REASONS[status])]
        headers = [(b"content-type", b"application/json"), *extra]
        headers += [(b"content-length", b"%d" % len(body)), (b"connection", b"close")]
        lines += [b"%s: %s" % pair for pair in headers]
        self.transport.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        self._linger()


def _peer(protocol: HttpToolsProtocol) -> str:
    client = protocol.client
    return f"{client[0]}:{client[1]}" if client else "?"
