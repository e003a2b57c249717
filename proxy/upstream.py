"""A lean HTTP/1.1 client for the sandbox side: keep-alive pools per pod address.

Why not httpx here: the forwarding path is the product's hot loop, and a general client
(URL objects, header models, auth/redirect/cookie layers, anyio) costs several times
more per request than parsing with httptools over asyncio streams. This module does only
what a reverse proxy needs: open (with a connect timeout and no read timeout), write a
request head, parse a response incrementally, and keep connections for reuse.

What a sandbox sends is hostile: a response head is held to the same size as a request
head, and once its first byte has come, to a deadline (HeadLimits). The wait for that
first byte, and for the body, stays unbounded: a slow handler, a long poll or an SSE
stream is the sandbox's right.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import httptools

from .errors import ProxyError, upstream_head_timeout, upstream_head_too_large

log = logging.getLogger(__name__)

READ_SIZE = 65536


class UpstreamError(Exception):
    """The pod could not be reached or broke the exchange before a response head."""


class DialError(UpstreamError):
    pass


class DialTimeout(UpstreamError):
    pass


class BadHead(UpstreamError):
    """The pod's response head broke a bound; ``error`` is the client's answer (502)."""

    def __init__(self, error: ProxyError) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass(frozen=True)
class HeadLimits:
    """Bounds on a response head, the request head's own (Settings.max_header_bytes,
    header_read_timeout): its bytes, 1xx interim heads included, and the time from
    its first byte to its blank line."""

    max_bytes: int = 64 * 1024
    timeout: float = 10.0


class Connection:
    __slots__ = ("_response", "address", "reader", "writer")

    def __init__(self, address: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.address = address
        self.reader = reader
        self.writer = writer
        self._response: Response | None = None

    def response(self, head_only: bool) -> Response:
        """The parser state for the next response on this connection. One per connection,
        reused: a parser per response was a parser and a reference cycle (parser and
        callbacks) per request. Reuse is safe because a connection goes back to the pool
        only after a complete, keep-alive response, when llhttp has reset itself."""
        if self._response is None:
            self._response = Response(head_only)
            return self._response
        return self._response.reset(head_only)

    def usable(self) -> bool:
        return not self.reader.at_eof() and not self.writer.is_closing()

    def close(self) -> None:
        self.writer.transport.abort()


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class UpstreamPool:
    """Idle connections per address. No cap on open connections, like nginx's default."""

    def __init__(
        self,
        connect_timeout: float,
        max_idle_per_address: int = 64,
        head: HeadLimits | None = None,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle_per_address
        self.head = head or HeadLimits()
        self._idle: dict[str, list[Connection]] = {}

    async def acquire(self, address: str) -> tuple[Connection, bool]:
        """A connection to ``address`` and whether it was reused from the pool."""
        idle = self._idle.get(address)
        while idle:
            conn = idle.pop()
            if conn.usable():
                return conn, True
            conn.close()
        return await self.dial(address), False

    async def dial(self, address: str) -> Connection:
        host, port = split_address(address)
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, limit=READ_SIZE), self.connect_timeout
            )
        except TimeoutError:
            raise DialTimeout(f"connect to {address} timed out") from None
        except OSError as exc:
            raise DialError(f"connect to {address} failed: {exc}") from None
        return Connection(address, reader, writer)

    def release(self, conn: Connection) -> None:
        idle = self._idle.setdefault(conn.address, [])
        if len(idle) < self.max_idle and conn.usable():
            idle.append(conn)
        else:
            conn.close()

    def drop(self, address: str) -> None:
        for conn in self._idle.pop(address, []):
            conn.close()

    def close(self) -> None:
        for address in list(self._idle):
            self.drop(address)


class Response:
    """httptools callbacks collecting one response; body pieces are taken as they come."""

    __slots__ = (
        "_parser",
        "body",
        "complete",
        "head_bytes",
        "head_only",
        "headers",
        "headers_done",
        "in_head",
        "keep",
        "status",
        "unframed",
    )

    def __init__(self, head_only: bool) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self.reset(head_only)

    def reset(self, head_only: bool) -> Response:
        self.head_only = head_only  # a HEAD response has no body whatever its headers say
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.in_head = False  # a head has begun and not ended: its deadline runs
        self.head_bytes = 0  # bytes fed before the final head ended
        self.unframed = 0  # bytes fed since the last body piece, once the head is done
        self.body: list[bytes] = []
        self.complete = False
        self.keep = False
        return self

    def feed(self, data: bytes) -> None:
        body_pieces = len(self.body)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            raise UpstreamError(f"bad response from sandbox: {exc}") from None
        if len(self.body) != body_pieces or not self.headers_done:
            self.unframed = 0
            return
        # Bytes that bring no body after the head: chunk framing, or trailers, which the
        # parser holds in memory until each ends. Framing alone is never this long.
        self.unframed += len(data)
        if self.unframed > 2 * READ_SIZE:
            raise UpstreamError("the sandbox sent trailers (or chunk framing) too long")

    def feed_head(self, data: bytes, max_bytes: int) -> None:
        """Feed bytes that arrive before the head is done. BadHead as soon as the head
        runs past ``max_bytes``: the parser never holds more of it than that."""
        room = max_bytes - self.head_bytes
        if len(data) <= room:
            self.head_bytes += len(data)
            self.feed(data)
            return
        self.head_bytes = max_bytes
        self.feed(data[:room])
        if not self.headers_done:
            raise BadHead(upstream_head_too_large(max_bytes))
        self.feed(data[room:])  # the head ended within the limit: the rest is body

    def on_message_begin(self) -> None:
        self.in_head = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.headers_done:  # trailers are not passed on: not kept either
            self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        status = self._parser.get_status_code()
        if status < 200:  # 1xx interim responses (103 Early Hints): skip them
            self.headers.clear()
            return
        self.status = status
        self.headers_done = True
        # Asked here: once the message is complete llhttp has reset the flags it reads.
        self.keep = self._parser.should_keep_alive()
        if self.head_only:
            self.complete = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.status >= 200:
            self.complete = True

    def take_body(self) -> Iterator[bytes]:
        body, self.body = self.body, []
        return iter(body)

    def ends_at_close(self) -> bool:
        """No length and not chunked: the body runs until the pod closes (RFC 9112 6.3)."""
        for name, value in self.headers:
            if name == b"content-length" or (
                name == b"transfer-encoding" and b"chunked" in value.lower()
            ):
                return False
        return True

    def keep_alive(self) -> bool:
        return self.keep and not self.head_only


async def read_head(conn: Connection, resp: Response, limits: HeadLimits) -> bool:
    """Read until ``resp`` has its final head; False if the pod closed first. BadHead
    for a head over the size limit, or one not done ``limits.timeout`` after its first
    byte (each 1xx interim head starts the clock again). A head that comes in one read,
    the common case, costs no timer."""
    reader = conn.reader
    loop = asyncio.get_running_loop()
    deadline: float | None = None
    while not resp.headers_done:
        try:
            if deadline is None:
                data = await reader.read(READ_SIZE)
            else:
                async with asyncio.timeout_at(deadline):
                    data = await reader.read(READ_SIZE)
        except TimeoutError:
            raise BadHead(upstream_head_timeout(limits.timeout)) from None
        except OSError:
            data = b""
        if not data:
            return False
        if deadline is None:
            # The clock starts with the head's first byte, not with the request: a
            # handler may take its time before it answers.
            deadline = loop.time() + limits.timeout
        resp.feed_head(data, limits.max_bytes)
        if not resp.in_head:
            deadline = None  # between an interim head and the next one
    return True
