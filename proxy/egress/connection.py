"""One client connection to the egress proxy: its requests read one by one, each
authenticated, checked against the pod's policy and then forwarded (absolute-form),
tunnelled or intercepted (CONNECT), or answered here (origin-form: /healthz, /metrics).

Every refusal is an HTTP answer with a JSON ``{"code", "message"}`` and then a close;
nothing a client sends produces a traceback on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from . import tunnel
from .admission import Admission
from .common import (
    AUTHENTICATE,
    CONNECT_TIMEOUT,
    ESTABLISHED,
    KEEP_ALIVE_SECONDS,
    Hub,
    Record,
    Refusal,
    basic_credentials,
    counter,
    split_authority,
)
from .exchange import Streams, UpstreamBroken, exchange, wants_keep_alive
from .heads import BadHead, Head, end_to_end, error_response, parse_head, read_head
from .intercept_session import intercept
from .swap import secrets_for

log = logging.getLogger("proxy.egress")


class Connection(Admission):
    def __init__(self, server: Hub, client: Streams) -> None:
        super().__init__(server)
        self.client = client
        self.upstream: tuple[tuple[str, int], Streams] | None = None  # plain-HTTP reuse

    async def serve(self) -> None:
        first = True
        try:
            while await self._one(first):
                first = False
        finally:
            self._drop_upstream()

    async def _one(self, first: bool) -> bool:
        reader, _writer = self.client
        timeout = self.server.header_timeout if first else KEEP_ALIVE_SECONDS
        try:
            async with asyncio.timeout(timeout):
                raw = await read_head(reader)
            if raw is None:
                return False
            request = parse_head(raw)
        except TimeoutError:
            return False
        except BadHead as exc:
            await self._answer(error_response(exc.status, "bad_request", str(exc)))
            return False
        method, target, _ = request.first
        if method == "CONNECT":
            await self._guarded(self._connect, request)
            return False
        if target.startswith("/"):
            return await self._local(request)
        return await self._guarded(self._forward, request)

    async def _guarded(self, handler, request: Head) -> bool:  # type: ignore[no-untyped-def]
        record = Record("-", 0, "http")
        try:
            return bool(await handler(request, record))
        except BadHead as exc:
            record.status = exc.status
            await self._answer(error_response(exc.status, "bad_request", str(exc)))
        except Refusal as exc:
            record.status, record.reason = exc.status, record.reason or exc.code
            extra = AUTHENTICATE if exc.status == 407 else None
            await self._answer(error_response(exc.status, exc.code, str(exc), extra))
        except UpstreamBroken as exc:
            record.status, record.reason = 502, "upstream_failed"
            if not exc.started:
                await self._answer(error_response(502, "upstream_failed", str(exc)))
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            # A peer gone, a TLS alert mid-stream, a chunk line over the cap: the
            # connection ends; nothing more can be said on it.
            record.reason = record.reason or "connection_lost"
        finally:
            if record.host != "-":
                self.server.log_line(record)
        return False

    async def _connect(self, request: Head, record: Record) -> bool:
        record.host, record.port = split_authority(request.first[1], None)
        record.kind = "tunnel"
        grant = await self.authorize(request, record)
        decision = await self.admit(grant, record)
        if secrets_for(grant.secrets, record.host, record.port):
            record.kind = "intercept"
            credentials = basic_credentials(request.get("proxy-authorization"))
            assert credentials is not None  # _authorize passed
            upstream = await self.dial(
                decision,
                record,
                ssl=self.server.interceptor.upstream,
                server_hostname=record.host,
            )
            await intercept(self.server, self.client, upstream, credentials, record)
            return False
        try:
            relay = await tunnel.dial(decision.addresses, record.port, CONNECT_TIMEOUT)
        except OSError as exc:
            record.reason = "connect_failed"
            raise Refusal(502, "connect_failed", f"cannot reach {record.host}: {exc}") from exc
        record.status = 200
        self.client[1].write(ESTABLISHED)
        await tunnel.splice(
            self.client,
            relay,
            counter(self.server, record, "up"),
            counter(self.server, record, "down"),
        )
        return False

    async def _forward(self, request: Head, record: Record) -> bool:
        target = request.first[1]
        if not target.lower().startswith("http://"):
            raise BadHead(400, "absolute-form http:// only; https goes through CONNECT")
        rest = target[7:]
        cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
        authority, path = rest[:cut], rest[cut:].split("#", 1)[0]
        path = path if path.startswith("/") else "/" + path
        record.host, record.port = split_authority(authority.rpartition("@")[2], 80)
        grant = await self.authorize(request, record)
        decision = await self.admit(grant, record)
        # Host is the authority the policy checked, whatever the client wrote: a second
        # name on a shared server (a CDN) must not ride on an allowed one.
        host_header = authority.rpartition("@")[2]
        headers = [(k, v) for k, v in end_to_end(request) if k.lower() != "host"]
        headers.insert(0, ("Host", host_header))
        headers = self.server.swapped(grant, record, path, headers)
        key = (record.host, record.port)
        if self.upstream is None or self.upstream[0] != key:
            self._drop_upstream()
            self.upstream = (key, await self.dial(decision, record))
        outcome = await exchange(
            self.client,
            self.upstream[1],
            request,
            path,
            headers,
            counter(self.server, record, "up"),
            counter(self.server, record, "down"),
        )
        record.status = outcome.status
        if not outcome.upstream_keep:
            self._drop_upstream()
        return outcome.client_keep

    async def _local(self, request: Head) -> bool:
        """Origin-form: addressed to the proxy itself."""
        path = request.first[1].split("?", 1)[0]
        if request.first[0] == "GET" and path == "/healthz":
            body, ctype = b"ok\n", "text/plain"
        elif request.first[0] == "GET" and path == "/metrics":
            body, ctype = self.server.metrics.render()
        else:
            await self._answer(error_response(404, "not_found", "no such path on the proxy"))
            return False
        head = f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n"
        self.client[1].write(head.encode() + body)
        await self.client[1].drain()
        return wants_keep_alive(request)

    async def _answer(self, data: bytes) -> None:
        with contextlib.suppress(ConnectionError):
            self.client[1].write(data)
            await self.client[1].drain()

    def _drop_upstream(self) -> None:
        if self.upstream is not None:
            self.upstream[1][1].close()
            self.upstream = None
