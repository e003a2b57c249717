"""HTTP forwarding: stream the request body up and the response body down, never whole.

The common case (no body, or a body that arrived in one piece, and a response that fits
one read) runs without extra tasks. A body still arriving, or a response still streaming,
gets one helper task on the client side that feeds the rest of the body and then watches
for the client going away, so a closed tab stops a long download from the pod.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from starlette.types import Message, Receive, Scope, Send

from sandbox_controller.sandbox_contract import SUSPENDING_HEADER

from .auth import host_only
from .upstream import Connection, Response, UpstreamError, UpstreamPool, read_head

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Headers the proxy owns or must never pass on (credentials are handled by the caller).
REQUEST_OWN = frozenset(
    {
        b"host",
        b"content-length",
        b"expect",  # we stream the body ourselves; the pod must not wait for a 100
        b"x-sandbox-token",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-prefix",
    }
)


class ClientGone(Exception):
    """The client left before its request body arrived."""


class Truncated(Exception):
    """The pod broke off after the response had started: nothing to answer any more."""


class Suspending(Exception):
    """The sandbox is being suspended and left the request untouched (its 503 with
    X-Sandbox-Suspending: 1). ``replayable``: the whole request is still at hand, so it
    may go to the session's next pod; otherwise its body has streamed past."""

    def __init__(self, replayable: bool) -> None:
        super().__init__("the sandbox is being suspended")
        self.replayable = replayable


_SUSPENDING = (SUSPENDING_HEADER.encode(), b"1")


def connection_tokens(headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    named: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            named.update(t.strip().lower() for t in value.split(b","))
    return frozenset(named)


def request_head(
    scope: Scope,
    target: bytes,
    address: str,
    prefix: bytes,
    strip_auth: Callable[[bytes, bytes], bytes | None],
) -> tuple[bytes, int | None, bool]:
    """The upstream request head, the body length (None: no length) and whether chunked."""
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    named = connection_tokens(headers)
    lines = [
        b"%s %s HTTP/1.1\r\nhost: %s\r\n" % (scope["method"].encode(), target, address.encode())
    ]
    length: int | None = None
    chunked = False
    forwarded_for = b""
    host = b""
    for name, value in headers:
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"x-forwarded-for":
            forwarded_for = value
        elif name == b"host":
            host = value
        if name in HOP_BY_HOP or name in REQUEST_OWN or name in named:
            continue
        kept = strip_auth(name, value)
        if kept is not None:
            lines.append(b"%s: %s\r\n" % (name, kept))
    client = scope.get("client")
    if client:
        ip = client[0].encode()
        forwarded_for = forwarded_for + b", " + ip if forwarded_for else ip
    if forwarded_for:
        lines.append(b"x-forwarded-for: %s\r\n" % forwarded_for)
    lines.append(b"x-forwarded-proto: %s\r\n" % scope.get("scheme", "http").encode())
    if host:
        lines.append(b"x-forwarded-host: %s\r\n" % host)
    if prefix:  # none in subdomain mode: the sandbox is served at /
        lines.append(b"x-forwarded-prefix: %s\r\n" % prefix)
    if chunked:
        length = None
        lines.append(b"transfer-encoding: chunked\r\n")
    elif length is not None:
        lines.append(b"content-length: %d\r\n" % length)
    lines.append(b"\r\n")
    return b"".join(lines), length, chunked


def response_headers(resp: Response) -> list[tuple[bytes, bytes]]:
    named = connection_tokens(resp.headers)
    chunked = any(n == b"transfer-encoding" for n, _ in resp.headers)
    return [
        (n, host_only(v) if n == b"set-cookie" else v)
        for n, v in resp.headers
        if n not in HOP_BY_HOP and n not in named and not (chunked and n == b"content-length")
    ]


def _frame(body: bytes, chunked: bool) -> bytes:
    return b"%x\r\n%s\r\n" % (len(body), body) if chunked else body


class Exchange:
    """One request/response through one upstream connection."""

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        pool: UpstreamPool,
        mark: Callable[[], None],
    ) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.pool = pool
        self.mark = mark
        self.client_gone = False
        self.upstream_seconds = 0.0
        self.sent_bytes = 0  # response body bytes, for the access log
        # The request body's first piece and whether more follows, once received: kept
        # so that the request can be sent again to another pod (Suspending, a dial
        # refused) without asking the client for it twice.
        self._first_body: tuple[bytes, bool] | None = None

    async def run(
        self,
        address: str,
        head: bytes,
        length: int | None,
        chunked: bool,
        extra_headers: list[tuple[bytes, bytes]],
    ) -> int:
        """Forward and return the status sent; UpstreamError if nothing was sent yet."""
        started = time.perf_counter()
        first = head
        more_body = False
        if chunked or length:
            if self._first_body is None:
                message = await self.receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone()
                self._first_body = (message.get("body", b""), message.get("more_body", False))
            body, more_body = self._first_body
            if body:
                self.mark()
                first += _frame(body, chunked)
            if chunked and not more_body:
                first += b"0\r\n\r\n"
        conn, reused = await self.pool.acquire(address)
        head_only = self.scope["method"] == "HEAD"
        helper: asyncio.Task[None] | None = None
        try:
            conn.writer.write(first)
            if more_body:
                helper = asyncio.create_task(self._client_side(conn, chunked, True))
            resp = await self._read_head(conn, head_only)
            if resp is None and reused and not more_body:
                # A pooled connection the pod had already closed: safe to replay once,
                # since the whole request is in ``first`` and no response byte came back.
                conn.close()
                conn = await self.pool.dial(address)
                conn.writer.write(first)
                resp = await self._read_head(conn, head_only)
            if resp is None:
                raise UpstreamError("the sandbox closed the connection before responding")
            if resp.status == 503 and _SUSPENDING in resp.headers:
                raise Suspending(replayable=not more_body)
        except BaseException:
            conn.close()
            if helper is not None:
                helper.cancel()
            raise
        self.upstream_seconds = time.perf_counter() - started
        return await self._respond(conn, resp, helper, extra_headers)

    async def _read_head(self, conn: Connection, head_only: bool) -> Response | None:
        resp = conn.response(head_only)
        return resp if await read_head(conn, resp, self.pool.head) else None

    async def _respond(
        self,
        conn: Connection,
        resp: Response,
        helper: asyncio.Task[None] | None,
        extra_headers: list[tuple[bytes, bytes]],
    ) -> int:
        headers = response_headers(resp)
        headers.extend(extra_headers)
        send = self.send
        reusable = False
        try:
            await send({"type": "http.response.start", "status": resp.status, "headers": headers})
            if resp.complete:
                body = b"".join(resp.take_body())
                if body:
                    self.mark()
                self.sent_bytes = len(body)
                await send({"type": "http.response.body", "body": body, "more_body": False})
                reusable = helper is None and resp.keep_alive()
                return resp.status
            if helper is None:
                helper = asyncio.create_task(self._client_side(conn, False, False))
            ends_at_close = resp.ends_at_close()
            while not resp.complete:
                for piece in resp.take_body():
                    self.mark()
                    self.sent_bytes += len(piece)
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
                try:
                    data = await conn.reader.read(65536)
                except OSError:
                    data = b""
                if not data:
                    if self.client_gone:
                        return resp.status
                    if not ends_at_close:
                        # Truncated: raising makes the server abort the client connection,
                        # which is how a client learns the body is incomplete.
                        raise Truncated("the sandbox closed the connection mid-response")
                    break
                resp.feed(data)
            helper.cancel()
            helper = None
            body = b"".join(resp.take_body())
            if body:
                self.mark()
            self.sent_bytes += len(body)
            await send({"type": "http.response.body", "body": body, "more_body": False})
            reusable = resp.complete and resp.keep_alive()
            return resp.status
        finally:
            if helper is not None:
                helper.cancel()
            if reusable:
                self.pool.release(conn)
            else:
                conn.close()

    async def _client_side(self, conn: Connection, chunked: bool, more_body: bool) -> None:
        """Feed the rest of the request body, then wait for the client to go away."""
        receive = self.receive
        writer = conn.writer
        try:
            while more_body:
                message: Message = await receive()
                if message["type"] == "http.disconnect":
                    break
                body = message.get("body", b"")
                more_body = message.get("more_body", False)
                if body:
                    self.mark()
                    writer.write(_frame(body, chunked))
                if chunked and not more_body:
                    writer.write(b"0\r\n\r\n")
                await writer.drain()
            else:
                while (await receive())["type"] != "http.disconnect":
                    pass
        except (OSError, asyncio.IncompleteReadError):
            return  # the pod side failed; the response loop reports it
        # The client left: stop reading from the pod (the loop sees EOF) and drop it.
        self.client_gone = True
        conn.close()
