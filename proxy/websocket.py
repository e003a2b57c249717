"""WebSocket relay: after both handshakes, bytes pass straight between the two sockets.

The proxy does the pod's handshake itself over a plain TCP connection, answers the
client's through uvicorn, then takes the client's transport from uvicorn and joins the
two transports: each read is written to the other side as it is, with no frame decoding,
no task and no copy into a message. Frames stay valid both ways: the client's are masked,
as a pod expects of a client; the pod's are not, as a client expects of a server. No
extension is negotiated on either side, so nothing needs re-encoding.

Close codes pass through inside the close frames themselves. A light scanner tracks
frame boundaries per direction, so that data frames (not ping or pong) count as
activity, and so the proxy may put a close frame of its own on a stream only between
frames: 1001 to both sides on drain, 1001 to the pod when the client vanished, 1011 to
the client when the pod did. Pings pass end to end: a client's ping is answered by the
pod, which shows a live path rather than a live proxy.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
from collections.abc import Callable
from typing import Any, cast

from starlette.types import Scope, Send
from uvicorn._types import ASGISendEvent
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from sandbox_controller.sandbox_contract import SUSPENDING_HEADER

from .errors import ProxyError, sandbox_suspending, unreachable, upstream_timeout
from .forward import HOP_BY_HOP, REQUEST_OWN, connection_tokens

GOING_AWAY = 1001
INTERNAL_ERROR = 1011
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_HANDSHAKE = 64 * 1024
_DATA_OPCODES = (0x0, 0x1, 0x2)
_CLOSE = 0x8
_SUSPENDING = b"\r\n" + SUSPENDING_HEADER.encode() + b": 1"


def upstream_headers(
    scope: Scope, prefix: str, strip_auth: Callable[[bytes, bytes], bytes | None]
) -> list[tuple[bytes, bytes]]:
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    named = connection_tokens(headers)
    out: list[tuple[bytes, bytes]] = []
    forwarded_for = b""
    host = b""
    for name, value in headers:
        if name == b"x-forwarded-for":
            forwarded_for = value
        elif name == b"host":
            host = value
        if (
            name in HOP_BY_HOP
            or name in REQUEST_OWN
            or name in named
            or name.startswith(b"sec-websocket-")
        ):
            continue
        kept = strip_auth(name, value)
        if kept is not None:
            out.append((name, kept))
    client = scope.get("client")
    if client:
        ip = client[0].encode()
        forwarded_for = forwarded_for + b", " + ip if forwarded_for else ip
    if forwarded_for:
        out.append((b"x-forwarded-for", forwarded_for))
    out.append((b"x-forwarded-proto", b"https" if scope.get("scheme") == "wss" else b"http"))
    if host:
        out.append((b"x-forwarded-host", host))
    if prefix:
        out.append((b"x-forwarded-prefix", prefix.encode("latin-1")))
    return out


def close_frame(code: int, masked: bool) -> bytes:
    """A close frame with ``code``; masked when it goes to the pod (we are its client)."""
    payload = struct.pack("!H", code)
    if not masked:
        return bytes([0x80 | _CLOSE, len(payload)]) + payload
    key = os.urandom(4)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | _CLOSE, 0x80 | len(payload)]) + key + body


class FrameScanner:
    """Frame boundaries in one direction of a stream, without keeping any payload."""

    __slots__ = ("_head", "_left", "closed")

    def __init__(self) -> None:
        self._head = b""  # a frame header read in part
        self._left = 0  # payload bytes of the current frame still to pass
        self.closed = False  # a close frame went this way

    @property
    def between_frames(self) -> bool:
        return not self._head and not self._left

    def feed(self, data: bytes) -> bool:
        """Scan ``data``; True if a data frame (text, binary, continuation) begins in it."""
        active = False
        i, n = 0, len(data)
        while i < n:
            if self._left:
                step = min(self._left, n - i)
                self._left -= step
                i += step
                continue
            head = self._head + data[i : i + 14]
            if len(head) < 2:
                self._head, i = head, n
                continue
            size = 2 + (4 if head[1] & 0x80 else 0)
            code = head[1] & 0x7F
            size += 2 if code == 126 else 8 if code == 127 else 0
            if len(head) < size:
                self._head, i = head, n
                continue
            if code == 126:
                length = struct.unpack_from("!H", head, 2)[0]
            elif code == 127:
                length = struct.unpack_from("!Q", head, 2)[0]
            else:
                length = code
            opcode = head[0] & 0x0F
            if opcode in _DATA_OPCODES:
                active = True
            elif opcode == _CLOSE:
                self.closed = True
            i += size - len(self._head)
            self._head = b""
            self._left = length
        return active


class _Side(asyncio.Protocol):
    """One socket of a relay: what it reads goes to the other side's transport."""

    # Slots: two of these per open WebSocket, and a proxy holds thousands.
    __slots__ = ("lost", "peer", "pending", "relay", "scanner", "transport")

    def __init__(self, relay: Relay, scanner: FrameScanner) -> None:
        self.relay = relay
        self.scanner = scanner  # frames read from this side
        self.transport: asyncio.Transport | None = None
        self.peer: _Side
        self.pending = b""  # read before the relay joined the sides (the pod's handshake)
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's are not asyncio.Transport subclasses).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        relay = self.relay
        if not relay.joined:
            self.pending += data
            relay.handshake_data()
            return
        relay.bytes_relayed += len(data)
        if self.scanner.feed(data):
            relay.mark()
        assert self.peer.transport is not None
        self.peer.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.relay.side_lost(self)

    # Flow control: a slow reader on one side pauses reading on the other.
    def pause_writing(self) -> None:
        if self.relay.joined and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.relay.joined and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class Relay:
    """One client<->pod pair. ``dial`` opens the pod side; ``join`` takes the client's
    transport from uvicorn once the client's handshake is answered."""

    def __init__(self, mark: Callable[[], None]) -> None:
        self.mark = mark
        self.bytes_relayed = 0  # both ways, for the access log
        self.joined = False
        self.subprotocol: str | None = None
        self.client = _Side(self, FrameScanner())
        self.pod = _Side(self, FrameScanner())
        self.client.peer, self.pod.peer = self.pod, self.client
        self._handshake: asyncio.Future[bytes] | None = None
        self._done = asyncio.get_running_loop().create_future()
        # The server's set of open connections, which the relay joins (see _release).
        self._connections: set[Any] = set()

    # the pod's handshake ---------------------------------------------------------------

    async def dial(
        self,
        address: str,
        target: str,
        headers: list[tuple[bytes, bytes]],
        subprotocols: list[str],
        connect_timeout: float,
    ) -> None:
        """Open the pod side; ProxyError 502/504, or the pod's own refusal status."""
        host, _, port = address.rpartition(":")
        key = base64.b64encode(os.urandom(16))
        lines = [
            b"GET %s HTTP/1.1" % target.encode("latin-1"),
            b"host: %s" % address.encode(),
            b"upgrade: websocket",
            b"connection: Upgrade",
            b"sec-websocket-key: " + key,
            b"sec-websocket-version: 13",
        ]
        if subprotocols:
            lines.append(b"sec-websocket-protocol: " + ", ".join(subprotocols).encode())
        lines += [b"%s: %s" % pair for pair in headers]
        loop = asyncio.get_running_loop()
        self._handshake = loop.create_future()
        try:
            async with asyncio.timeout(connect_timeout):
                await loop.create_connection(lambda: self.pod, host, int(port))
                assert self.pod.transport is not None
                self.pod.transport.write(b"\r\n".join(lines) + b"\r\n\r\n")
                head = await self._handshake
        except TimeoutError:
            self.abort()
            raise upstream_timeout() from None
        except OSError as exc:
            self.abort()
            raise unreachable(f"cannot open a WebSocket to the sandbox: {exc}") from None
        self._check_answer(head, key)

    def handshake_data(self) -> None:
        """The pod's answer arrives: complete once its head is in."""
        pending = self.pod.pending
        end = pending.find(b"\r\n\r\n")
        waiter = self._handshake
        if waiter is None or waiter.done():
            return
        if end >= 0:
            self.pod.pending = pending[end + 4 :]  # frames the pod sent at once: kept
            waiter.set_result(pending[:end])
        elif len(pending) > _MAX_HANDSHAKE:
            waiter.set_exception(OSError("the sandbox's handshake answer is too large"))

    def _check_answer(self, head: bytes, key: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        if status != 101:
            self.abort()
            if status == 503 and _SUSPENDING in head.lower():
                raise sandbox_suspending()  # untouched: the proxy may dial its next pod
            if 400 <= status < 600:
                message = f"the sandbox answered {status}"
                raise ProxyError(status, "sandbox_refused", message)
            raise unreachable(f"the sandbox answered the upgrade with {status or 'garbage'}")
        fields: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            fields[name.strip().lower()] = value.strip()
        expected = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        if fields.get(b"sec-websocket-accept") != expected:
            self.abort()
            raise unreachable("the sandbox's WebSocket handshake is invalid")
        if fields.get(b"sec-websocket-extensions"):
            self.abort()  # we offered none; frames we cannot read would follow
            raise unreachable("the sandbox negotiated a WebSocket extension")
        protocol = fields.get(b"sec-websocket-protocol")
        self.subprotocol = protocol.decode("latin-1") if protocol else None

    # joining ---------------------------------------------------------------------------

    def join(self, send: Send) -> None:
        """Take the client's socket from uvicorn (call right after ``websocket.accept``,
        before the loop runs again, so uvicorn has read no frame of it)."""
        uvicorn_protocol: Any = getattr(send, "__self__", None)
        transport = getattr(uvicorn_protocol, "transport", None)
        if transport is None or not hasattr(uvicorn_protocol, "stop_keepalive"):
            raise RuntimeError("the raw relay needs uvicorn's websockets-sansio protocol")
        uvicorn_protocol.stop_keepalive()  # pings pass end to end now
        # Bytes uvicorn read past the handshake but has not parsed are ours to pass on.
        reader = getattr(getattr(uvicorn_protocol, "conn", None), "reader", None)
        early = bytes(getattr(reader, "buffer", b""))
        transport.set_protocol(self.client)
        self.client.connection_made(transport)
        self.joined = True
        self._release(uvicorn_protocol)
        if early:
            self.client.data_received(early)
        if self.pod.pending:
            pending, self.pod.pending = self.pod.pending, b""
            self.pod.data_received(pending)
        if self.pod.lost:
            self.side_lost(self.pod)

    def _release(self, uvicorn_protocol: Any) -> None:
        """The relay stands in for uvicorn's protocol from here; uvicorn's state goes.

        The relay takes its place among the server's connections, so the connection cap
        still counts it and a server shutdown calls ``shutdown`` on the relay (1001), not
        uvicorn's 1012 on a socket it no longer reads. Nothing calls uvicorn's protocol
        again but the ASGI task's end (which only closes the transport, closed by then),
        so its sans-I/O connection (parser, handshake request and response), its receive
        queue and its write event are dropped: ~9 KiB of the ~25 KiB a relay cost, what
        kept 1,000 open WebSockets above 80 MiB (issue 11; benchmarks/README.md, run 6).
        """
        self._connections = uvicorn_protocol.connections
        self._connections.discard(uvicorn_protocol)
        self._connections.add(self)
        # The connection's parser is a generator holding the connection: a cycle, which
        # the tuned collector (serving.tune_gc) would reclaim only after its next old
        # generation pass. Closing the generator breaks it, so it all goes at once.
        uvicorn_protocol.conn.parser.close()
        for name in ("conn", "request", "response", "queue", "writable", "scope"):
            setattr(uvicorn_protocol, name, None)

    async def run(self) -> None:
        """Until both sockets are closed (cancelled: both are closed now, with 1001)."""
        try:
            await self._done
        finally:
            if self._done.cancelled():
                self.shutdown()

    # ending ----------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Drain: 1001 to both sides (between frames), then close both."""
        if not self.joined:
            return
        self._close_with(self.client, GOING_AWAY)
        self._close_with(self.pod, GOING_AWAY)

    def side_lost(self, side: _Side) -> None:
        if not self.joined:
            if self._handshake is not None and not self._handshake.done():
                self._handshake.set_exception(OSError("the sandbox closed the connection"))
            return
        other = side.peer
        if not other.lost:
            if not (side.scanner.closed or other.scanner.closed):
                # No close frame either way: that side vanished. The client going is
                # "going away" to the pod; the pod going is an internal error to the client.
                self._close_with(other, GOING_AWAY if side is self.client else INTERNAL_ERROR)
            elif other.transport is not None:
                other.transport.close()  # after what is buffered for it is written
        if self.client.lost and self.pod.lost:
            self._finish()

    def _close_with(self, side: _Side, code: int) -> None:
        transport = side.transport
        if transport is None or transport.is_closing():
            return
        # What goes to ``side`` is what its peer sends: only between two of those frames
        # may our close frame go in.
        scanner = side.peer.scanner
        if scanner.between_frames and not scanner.closed:
            transport.write(close_frame(code, masked=side is self.pod))
            scanner.closed = True
        transport.close()

    def abort(self) -> None:
        if self.pod.transport is not None:
            self.pod.transport.abort()

    def _finish(self) -> None:
        self._connections.discard(self)  # uvicorn's count of open connections
        if not self._done.done():  # (cancelled: run() was, and shuts the sides down)
            self._done.set_result(None)


class ClientWebSocket(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol, for which a refusal answered with an HTTP
    status ends the handshake. uvicorn counts a handshake as over only once accepted or
    once the connection is lost; under uvloop the loss comes a loop turn after the app
    has returned, so every refused upgrade was logged as an ERROR ("returned without
    completing handshake") although the client had its 401 or 403."""

    async def send(self, message: ASGISendEvent) -> None:
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body"):
            self.handshake_complete = True
