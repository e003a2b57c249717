"""The egress proxy's accept path: a protocol per accepted connection reads the first
request head in place (size cap, header deadline as one loop timer) and serves a CONNECT
tunnel from there, without stream objects or a task per connection; the tunnel is wired
and the 200 written in the turn the upstream connect completes (``Relay.made``).

Plain HTTP, the proxy's own paths (/healthz, /metrics) and intercepted CONNECTs (a
secret's host) are handed over to the stream code (connection.py) with every byte read
so far, and go on exactly as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import cast

from sandbox_controller.egress_policy import Decision

from . import tunnel
from .admission import Admission
from .common import (
    AUTHENTICATE,
    CONNECT_TIMEOUT,
    ESTABLISHED,
    Hub,
    Record,
    Refusal,
    basic_credentials,
    counter,
    split_authority,
)
from .connection import Connection
from .exchange import Streams, UpstreamBroken
from .heads import BadHead, Head, error_response, parse_head
from .intercept_session import intercept
from .swap import secrets_for

log = logging.getLogger("proxy.egress")

Count = Callable[[int], None]
EARLY_MAX = 64 * 1024  # bytes taken behind a CONNECT head before the 200 (then paused)


class Front(asyncio.Protocol):
    """One client connection, from accept until it closes: the server's count of open
    connections and its drain both go by these."""

    def __init__(self, server: Hub) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.early = bytearray()  # behind a CONNECT head (a TLS hello), for the upstream
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None  # a CONNECT's set-up, or stream mode
        self.relays: tuple[tunnel.Relay, tunnel.Relay] | None = None
        self.head_read = False
        self.paused = False
        self.eof = False  # the client half-closed after its head
        self.closed = False  # the client's transport is gone (while this was its protocol)
        self.finished = False

    # -- reading the first head -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = t = cast(asyncio.Transport, transport)
        server = self.server
        server.live.add(self)
        server.metrics.open_tunnels.inc()
        if len(server.live) > server.max_connections:
            self.head_read = True
            t.write(error_response(503, "overloaded", "too many connections"))
            t.close()
            return
        self.timer = server.loop.call_later(server.header_timeout, t.close)

    def data_received(self, data: bytes) -> None:
        if self.head_read:  # behind a CONNECT head, before its tunnel is wired
            self.early += data
            if len(self.early) > EARLY_MAX and not self.paused:
                self.paused = True
                assert self.transport is not None
                self.transport.pause_reading()
            return
        buffer = self.buffer
        start = max(0, len(buffer) - 3)
        buffer += data
        end = buffer.find(b"\r\n\r\n", start)
        limit = self.server.max_header_bytes
        if end < 0 and len(buffer) <= limit:
            return
        self.head_read = True
        assert self.timer is not None
        self.timer.cancel()
        if end < 0 or end + 4 > limit:
            self._refuse(error_response(431, "bad_request", "request head too large"))
            return
        raw = bytes(buffer[: end + 4])
        self.early += buffer[end + 4 :]
        self.buffer = bytearray()
        try:
            head = parse_head(raw)
        except BadHead as exc:
            self._refuse(error_response(exc.status, "bad_request", str(exc)))
            return
        loop = self.server.loop
        if head.first[0] == "CONNECT":
            self.task = loop.create_task(self._connect(head))
        else:
            # The stream code reads this head again, and whatever came behind it.
            self.early[:0] = raw
            self.task = loop.create_task(self._streams(self._to_streams()))

    def eof_received(self) -> bool:
        if not self.head_read:
            if self.buffer.strip():
                self.head_read = True
                self._refuse(
                    error_response(400, "bad_request", "connection closed inside the head")
                )
            return False  # close
        self.eof = True  # passed on once the tunnel or the stream takes over
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        if self.task is None:
            self._finish()
        # else: the set-up task ends and finishes (it sees the transport closing).

    def _refuse(self, answer: bytes) -> None:
        assert self.transport is not None
        with contextlib.suppress(Exception):
            self.transport.write(answer)
        self.transport.close()

    # -- CONNECT ----------------------------------------------------------------------

    async def _connect(self, head: Head) -> None:
        """Authorize, decide, dial; no await suspends here when the controller's and the
        resolver's answers are cached, but the dial."""
        server = self.server
        record = Record("-", 0, "tunnel")
        conn = Admission(server)
        wired = False
        try:
            try:
                record.host, record.port = split_authority(head.first[1], None)
                grant = await conn.authorize(head, record)
                decision = await conn.admit(grant, record)
                if secrets_for(grant.secrets, record.host, record.port):
                    record.kind = "intercept"
                    await self._intercept(conn, head, decision, record)
                    return
                wired = await self._dial(decision, record)
            except BadHead as exc:
                record.status = exc.status
                self._refuse(error_response(exc.status, "bad_request", str(exc)))
            except UpstreamBroken as exc:  # inside an intercepted tunnel
                record.status, record.reason = 502, "upstream_failed"
                if not exc.started:
                    self._refuse(error_response(502, "upstream_failed", str(exc)))
            except Refusal as exc:
                record.status, record.reason = exc.status, record.reason or exc.code
                extra = AUTHENTICATE if exc.status == 407 else None
                self._refuse(error_response(exc.status, exc.code, str(exc), extra))
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                record.reason = record.reason or "connection_lost"
            except asyncio.CancelledError:
                record.reason = record.reason or "connection_lost"
                raise
            except Exception:
                log.exception("egress connection failed")
        finally:
            if not wired:
                if record.host != "-":
                    server.log_line(record)
                self._close()
                self._finish()

    async def _dial(self, decision: Decision, record: Record) -> bool:
        """The tunnel to the first checked address that answers; True once wired (its
        end then finishes this connection)."""
        up, down = counter(self.server, record, "up"), counter(self.server, record, "down")
        last: Exception | None = None
        for address in decision.addresses:
            relay = tunnel.Relay()
            relay.made = lambda r: self._wire(r, record, up, down)
            try:
                await tunnel.connect(relay, str(address), record.port, CONNECT_TIMEOUT)
            except (OSError, TimeoutError) as exc:
                last = exc
                continue
            if self.relays is None:  # the client left while dialling
                if relay.transport is not None:
                    relay.transport.close()
                record.reason = "connection_lost"
                return False
            return True
        record.reason = "connect_failed"
        raise Refusal(502, "connect_failed", f"cannot reach {record.host}: {last}")

    def _wire(self, upstream: tunnel.Relay, record: Record, up: Count, down: Count) -> None:
        """In the turn the upstream connect completes: the 200, then both sides spliced."""
        client = self.transport
        assert client is not None and upstream.transport is not None
        if self.closed or client.is_closing():
            upstream.transport.close()
            return
        record.status = 200
        client.write(ESTABLISHED)
        near = tunnel.Relay()
        near.transport = client
        client.set_write_buffer_limits(high=tunnel.HIGH_WATER)
        client.set_protocol(near)
        if self.early:
            upstream.transport.write(bytes(self.early))
            up(len(self.early))
            self.early = bytearray()
        near.wire(upstream, up)
        upstream.wire(near, down)
        if self.eof:
            near.eof_received()
        if self.paused:
            self.paused = False
            client.resume_reading()
        self.relays = (near, upstream)
        ends = [near, upstream]

        def lost(relay: tunnel.Relay) -> None:
            ends.remove(relay)
            if not ends:
                self.relays = None
                self.server.log_line(record)
                self._finish()

        near.gone = upstream.gone = lost

    async def _intercept(
        self, conn: Admission, head: Head, decision: Decision, record: Record
    ) -> None:
        credentials = basic_credentials(head.get("proxy-authorization"))
        assert credentials is not None  # authorize passed
        upstream = await conn.dial(
            decision, record, ssl=self.server.interceptor.upstream, server_hostname=record.host
        )
        if self.closed:  # the client left while dialling
            upstream[1].close()
            record.reason = "connection_lost"
            return
        streams = self._to_streams()
        await intercept(self.server, streams, upstream, credentials, record)

    # -- the stream code --------------------------------------------------------------

    def _to_streams(self) -> Streams:
        """The client's transport handed to a stream reader and writer, with what was
        read and not yet used."""
        loop = self.server.loop
        transport = self.transport
        assert transport is not None
        reader = asyncio.StreamReader(limit=self.server.max_header_bytes, loop=loop)
        # A connected callback, as start_server gives: it makes the protocol the server
        # side of a later start_tls (interception), and hands over the writer it made.
        writers: list[asyncio.StreamWriter] = []
        protocol = asyncio.StreamReaderProtocol(
            reader, lambda _, writer: writers.append(writer), loop=loop
        )
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self.early:
            reader.feed_data(bytes(self.early))
            self.early = bytearray()
        if self.eof or self.closed:
            reader.feed_eof()
        if self.paused:
            self.paused = False
            transport.resume_reading()
        return reader, writers[0]

    async def _streams(self, streams: Streams) -> None:
        try:
            await Connection(self.server, streams).serve()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        except Exception:
            log.exception("egress connection failed")
        finally:
            self._close()
            self._finish()

    # -- the end ----------------------------------------------------------------------

    def _close(self) -> None:
        if self.transport is not None:
            with contextlib.suppress(Exception):
                self.transport.close()

    def abort(self) -> None:
        """At shutdown, past the drain: end this connection now."""
        if self.relays is not None:
            for relay in self.relays:
                if relay.transport is not None:
                    relay.transport.close()
        elif self.task is not None:
            self.task.cancel()
        else:
            self._close()

    def _finish(self) -> None:
        if not self.finished:
            self.finished = True
            self.server.ended(self)
