"""Inside an intercepted CONNECT: TLS with the sandbox under a leaf for the host, TLS to
the host verified against the system store, and each HTTP/1.1 request between them with
its secrets swapped in (swap.py)."""

from __future__ import annotations

import asyncio
import ssl

from .common import ESTABLISHED, KEEP_ALIVE_SECONDS, Hub, Record, counter, split_authority
from .controller import Refused
from .exchange import Streams, exchange
from .heads import BadHead, end_to_end, error_response, parse_head, read_head


def _same_host(header: str | None, host: str) -> bool:
    if header is None:
        return False
    try:
        named, _ = split_authority(header, 443)
    except BadHead:
        return False
    return named == host


def origin_form(target: str) -> str:
    """A request line's target as sent upstream: absolute-form cut to its path."""
    if target.startswith("/"):
        return target
    rest = target.partition("://")[2]
    path = rest[len(rest.split("/", 1)[0]) :]
    return path or "/"


async def intercept(
    server: Hub, client: Streams, upstream: Streams, credentials: tuple[str, str], record: Record
) -> None:
    """``upstream``: TLS to the host, verified, dialled before this is called (a host
    with a bad certificate is a 502 on the CONNECT itself, before the sandbox is shown
    a certificate of ours)."""
    context = server.interceptor.server_context(record.host)
    reader, writer = client
    try:
        record.status = 200
        writer.write(ESTABLISHED)
        await writer.drain()
        try:
            await writer.start_tls(context)
        except (ssl.SSLError, ConnectionError):
            record.reason = "client_tls_failed"  # e.g. a sandbox without the CA bundle
            return
        up, down = counter(server, record, "up"), counter(server, record, "down")
        while True:
            try:
                async with asyncio.timeout(KEEP_ALIVE_SECONDS):
                    raw = await read_head(reader)
            except TimeoutError:
                return
            if raw is None:
                return
            inner = parse_head(raw)
            try:
                # Asked again (cached for the answer's ttl): an ended session stops here.
                grant = await server.controller.authorize(*credentials)
            except Refused as exc:
                writer.write(error_response(403, exc.reason, "credential refused"))
                await writer.drain()
                return
            if not _same_host(inner.get("host"), record.host):
                # The secret goes to the host it was given for, not to another name the
                # same server (a CDN) would route the request to.
                writer.write(
                    error_response(421, "misdirected_request", "Host is not the CONNECT host")
                )
                await writer.drain()
                return
            target = origin_form(inner.first[1])
            headers = server.swapped(grant, record, target, end_to_end(inner))
            outcome = await exchange(client, upstream, inner, target, headers, up, down)
            if not (outcome.client_keep and outcome.upstream_keep):
                return
    finally:
        upstream[1].close()
