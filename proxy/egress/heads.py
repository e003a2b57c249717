"""HTTP/1.1 message heads and bodies, read with a size cap and relayed as they arrive.

Strict on what it accepts: a head that is too large is 431, one it cannot read is 400,
and neither ever reaches the other side.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus

MAX_HEADERS = 100
CHUNK = 65536

# RFC 9110 7.6.1, plus the proxy's own credentials and the legacy Proxy-Connection.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


class BadHead(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class Head:
    """A request (method, target, version) or response (version, status, reason) head."""

    first: tuple[str, str, str]
    headers: list[tuple[str, str]] = field(default_factory=list)

    def get(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def tokens(self, name: str) -> set[str]:
        found: set[str] = set()
        for key, value in self.headers:
            if key.lower() == name:
                found.update(t.strip().lower() for t in value.split(","))
        return found


async def read_head(reader: asyncio.StreamReader) -> bytes | None:
    """The head up to and with its blank line; None if the peer closed before a byte."""
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError as exc:
        raise BadHead(431, "request head too large") from exc
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise BadHead(400, "connection closed inside the head") from exc
        return None


def parse_head(raw: bytes, *, response: bool = False) -> Head:
    try:
        text = raw.decode("latin-1")
    except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes anything
        raise BadHead(400, "undecodable head") from exc
    lines = text[:-4].split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) != 3 or any(not p for p in parts[:2]):
        raise BadHead(400, "malformed start line")
    if response:
        if not parts[0].startswith("HTTP/1.") or not (parts[1].isdigit() and len(parts[1]) == 3):
            raise BadHead(502, "malformed status line")
    elif parts[2] not in ("HTTP/1.1", "HTTP/1.0") or not parts[0].isalpha():
        raise BadHead(400, "malformed request line")
    if len(lines) - 1 > MAX_HEADERS:
        raise BadHead(431, "too many header fields")
    head = Head((parts[0], parts[1], parts[2]))
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        # No colon, whitespace before it (a smuggling vector), obs-fold: refused.
        if not sep or not name or name != name.strip() or " " in name or line[0] in " \t":
            raise BadHead(400, "malformed header field")
        head.headers.append((name, value.strip(" \t")))
    return head


def end_to_end(head: Head) -> list[tuple[str, str]]:
    """The headers without hop-by-hop ones, nor those the Connection header names."""
    named = head.tokens("connection")
    return [
        (k, v) for k, v in head.headers if k.lower() not in HOP_BY_HOP and k.lower() not in named
    ]


def serialise(first: tuple[str, str, str], headers: list[tuple[str, str]]) -> bytes:
    lines = [" ".join(first)]
    lines.extend(f"{k}: {v}" for k, v in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def body_framing(head: Head, *, response_to: str | None = None) -> tuple[str, int]:
    """("none" | "length" | "chunked" | "close", length). ``response_to``: the request's
    method, when ``head`` is a response."""
    if response_to is not None:
        status = int(head.first[1])
        if response_to == "HEAD" or status < 200 or status in (204, 304):
            return "none", 0
    codings = head.tokens("transfer-encoding") - {""}
    length = head.get("content-length")
    if codings:
        if codings != {"chunked"} or length is not None:
            raise BadHead(400 if response_to is None else 502, "unsupported transfer-encoding")
        return "chunked", 0
    if length is not None:
        if not length.isdigit() or len(length) > 18:
            raise BadHead(400 if response_to is None else 502, "bad content-length")
        return "length", int(length)
    return ("close", 0) if response_to is not None else ("none", 0)


async def relay_body(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    framing: tuple[str, int],
    count: Callable[[int], None],
    head: bytes = b"",
) -> None:
    """Relay one body as it arrives (chunked framing passed through as it came).
    ``head``, if given, goes out in the same write as the body's first piece: one
    syscall fewer per small response, which is most of them."""
    kind, left = framing
    if kind == "length":
        while left:
            data = await reader.read(min(left, CHUNK))
            if not data:
                raise asyncio.IncompleteReadError(b"", left)
            left -= len(data)
            await _send(writer, head + data if head else data, count)
            head = b""
    elif kind == "close":
        while data := await reader.read(CHUNK):
            await _send(writer, head + data if head else data, count)
            head = b""
    elif kind == "chunked":
        while True:
            line = await reader.readuntil(b"\r\n")
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError as exc:
                raise BadHead(400, "bad chunk size") from exc
            if size == 0:
                await _send(writer, head + line, count)
                while True:  # trailers, up to the blank line
                    trailer = await reader.readuntil(b"\r\n")
                    await _send(writer, trailer, count)
                    if trailer == b"\r\n":
                        return
            await relay_body(reader, writer, ("length", size + 2), count, head + line)
            head = b""
    if head:
        await _send(writer, head, count)


async def _send(writer: asyncio.StreamWriter, data: bytes, count: Callable[[int], None]) -> None:
    writer.write(data)
    count(len(data))
    await writer.drain()


def error_response(
    status: int, code: str, message: str, extra: list[tuple[str, str]] | None = None
) -> bytes:
    """A proxy's own answer: JSON ``{"code", "message"}``; the connection closes after."""
    body = json.dumps({"code": code, "message": message}).encode()
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
        *(extra or []),
    ]
    return serialise(("HTTP/1.1", str(status), HTTPStatus(status).phrase), headers) + body
