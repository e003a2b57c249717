"""A lean HTTP/1.1 client for the sandbox side: keep-alive pools per pod address.

Why not httpx here: the forwarding path is the product's hot loop, and a general client
(URL objects, header models, auth/redirect/cookie layers, anyio) costs several times
more per request than parsing with httptools over asyncio streams. This module does only
what a reverse proxy needs: open (with a connect timeout and no read timeout), write a
request head, parse a response incrementally, and keep connections for reuse.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import httptools

log = logging.getLogger(__name__)

READ_SIZE = 65536


class UpstreamError(Exception):
    """The pod could not be reached or broke the exchange before a response head."""


class DialError(UpstreamError):
    pass


class DialTimeout(UpstreamError):
    pass


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

    def __init__(self, connect_timeout: float, max_idle_per_address: int = 64) -> None:
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle_per_address
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
        "head_only",
        "headers",
        "headers_done",
        "keep",
        "status",
    )

    def __init__(self, head_only: bool) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self.reset(head_only)

    def reset(self, head_only: bool) -> Response:
        self.head_only = head_only  # a HEAD response has no body whatever its headers say
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.body: list[bytes] = []
        self.complete = False
        self.keep = False
        return self

    def feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            raise UpstreamError(f"bad response from sandbox: {exc}") from None

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
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
