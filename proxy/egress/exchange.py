"""One HTTP/1.1 request and its response, relayed between a client and an upstream
connection as they arrive (plain HTTP forwarding and intercepted TLS alike)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from .heads import (
    BadHead,
    Head,
    body_framing,
    end_to_end,
    parse_head,
    read_head,
    relay_body,
    serialise,
)

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class UpstreamBroken(Exception):
    """The upstream answered nothing usable; ``started``: part of an answer already went
    to the client (then the connection can only be closed)."""

    def __init__(self, message: str, started: bool) -> None:
        super().__init__(message)
        self.started = started


@dataclass(slots=True)
class Outcome:
    client_keep: bool
    upstream_keep: bool
    status: int


def wants_keep_alive(head: Head) -> bool:
    tokens = head.tokens("connection")
    if head.first[2] == "HTTP/1.0" or head.first[0] == "HTTP/1.0":
        return "keep-alive" in tokens
    return "close" not in tokens


async def exchange(
    client: Streams,
    upstream: Streams,
    request: Head,
    target: str,
    headers: list[tuple[str, str]],
    up: Callable[[int], None],
    down: Callable[[int], None],
) -> Outcome:
    """Send ``request`` (its end-to-end ``headers``, origin-form ``target``) and its body
    upstream, then relay the response. Raises BadHead (a body the client framed wrongly)
    before anything is sent, UpstreamBroken on a bad or missing answer."""
    method = request.first[0]
    framing = body_framing(request)
    out = [(k, v) for k, v in headers if k.lower() != "expect"]
    if framing[0] == "chunked":
        out.append(("Transfer-Encoding", "chunked"))
    c_reader, c_writer = client
    u_reader, u_writer = upstream
    if "100-continue" in request.tokens("expect"):
        # Answered here: the body is streamed on at once, whatever upstream would say.
        c_writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    head = serialise((method, target, "HTTP/1.1"), out)
    try:
        await relay_body(c_reader, u_writer, framing, up, head)
        response = await _response_head(u_reader)
    except (ConnectionError, asyncio.IncompleteReadError) as exc:
        raise UpstreamBroken(f"upstream closed: {exc}", started=False) from exc
    status = int(response.first[1])
    resp_framing = body_framing(response, response_to=method)
    resp_headers = end_to_end(response)
    if resp_framing[0] == "chunked":
        resp_headers.append(("Transfer-Encoding", "chunked"))
    client_keep = wants_keep_alive(request) and resp_framing[0] != "close"
    upstream_keep = wants_keep_alive(response) and resp_framing[0] != "close"
    if not client_keep:
        resp_headers.append(("Connection", "close"))
    head = serialise(("HTTP/1.1", response.first[1], response.first[2]), resp_headers)
    try:
        await relay_body(u_reader, c_writer, resp_framing, down, head)
    except (asyncio.IncompleteReadError, BadHead) as exc:
        raise UpstreamBroken(f"upstream body cut: {exc}", started=True) from exc
    return Outcome(client_keep, upstream_keep, status)


async def _response_head(reader: asyncio.StreamReader) -> Head:
    while True:
        try:
            raw = await read_head(reader)
        except BadHead as exc:
            raise UpstreamBroken(f"upstream head: {exc}", started=False) from exc
        if raw is None:
            raise UpstreamBroken("upstream closed before answering", started=False)
        try:
            response = parse_head(raw, response=True)
        except BadHead as exc:
            raise UpstreamBroken(f"upstream head: {exc}", started=False) from exc
        status = int(response.first[1])
        if status == 101:
            raise UpstreamBroken("upstream switched protocols unasked", started=False)
        if status >= 200:
            return response
        # 1xx (100, 103): informational, dropped; the final answer follows.
