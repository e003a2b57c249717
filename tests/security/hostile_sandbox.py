"""A hostile sandbox: one process that misbehaves, on purpose, in every way a sandbox
can when it answers the proxy or the controller's hooks.

    python -m tests.security.hostile_sandbox --port 0 --mode huge-headers
    python -m tests.security.hostile_sandbox --port 0 --status huge-json --claim ok

It prints ``listening <host>:<port>`` once bound (as devsandbox does), and serves
``GET /healthz`` honestly (200), so the local backend takes it for a ready sandbox
(``launcher`` below makes the backend start it in devsandbox's place).
``GET /_hostile/connections`` answers ``{"open": n}``: the connections open to it
besides that one, so a test can see that whoever it attacked hung up.

Every other request gets a BEHAVIOUR: the one named for its hook (``--claim``,
``--status``, ``--release``: ``/_sandbox/claim``, ``/_sandbox/status``,
``/_sandbox/release``), else ``--mode`` (default ``ok``):

  ok                 honest: claim and release 204, status {"busy": false, ...}, else 200
  huge-headers       a 200 status line, then --head-bytes of headers (400 MB), then holds
  status-line-hold   a 200 status line, then holds the connection, saying nothing more
  trickle-head       a 200 status line and a header that grows one byte per --interval
  trickle-body       a whole head (Content-Length 4096), then one body byte per --interval
  huge-json          200 with a JSON status answer of --body-bytes (1 GiB), chunked, at
                     full speed: generated as it is sent, never held in memory
  huge-json-length   the same with a Content-Length that says so
  flood              200 with no length and an endless body at full speed (a claim answer
                     streaming as fast as the socket takes it)
  deep-json          200 with a JSON answer of --depth (100,000) nested brackets
  huge-trailers      a chunked 200 whose trailer grows without end (--head-bytes)
  late-ok            honest, but only after --interval seconds of silence
  slow-events        an honest Server-Sent Events stream: one event per --interval, 5 in all

Holding means keeping the connection open, sending nothing, until the peer hangs up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path

BEHAVIOURS = (
    "ok",
    "huge-headers",
    "status-line-hold",
    "trickle-head",
    "trickle-body",
    "huge-json",
    "huge-json-length",
    "flood",
    "deep-json",
    "huge-trailers",
    "late-ok",
    "slow-events",
)
HOOKS = {"/_sandbox/claim": "claim", "/_sandbox/status": "status", "/_sandbox/release": "release"}
BLOCK = 64 * 1024
MAX_REQUEST_HEAD = 64 * 1024
MAX_REQUEST_BODY = 8 * 1024 * 1024
REPO_ROOT = Path(__file__).resolve().parents[2]


class Hostile:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.open = 0  # connections open now

    def behaviour(self, path: str) -> str:
        if path in ("/healthz", "/_hostile/connections"):
            return "ok"
        hook = HOOKS.get(path)
        chosen = getattr(self.args, hook) if hook else None
        return str(chosen or self.args.mode)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        try:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ValueError):
                while await self.exchange(reader, writer):
                    pass
        finally:
            self.open -= 1
            writer.transport.abort()

    async def exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """One request; True to read the next one on this connection."""
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target = lines[0].split(" ")[:2]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        await drain_body(reader, headers)
        path = target.split("?", 1)[0]
        behaviour = self.behaviour(path)
        if behaviour == "ok":
            await self.honest(writer, method, path)
            return True
        await BEHAVE[behaviour](self, reader, writer)
        return False

    async def honest(self, writer: asyncio.StreamWriter, method: str, path: str) -> None:
        if path in ("/_sandbox/claim", "/_sandbox/release"):
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        elif path == "/_sandbox/status":
            body = json.dumps({"busy": False, "detail": "honest here"}).encode()
            writer.write(json_head(len(body)) + body)
        elif path == "/_hostile/connections":
            body = json.dumps({"open": self.open - 1}).encode()
            writer.write(json_head(len(body)) + body)
        else:
            body = b"" if method == "HEAD" else b"ok\n"
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n" + body)
        await writer.drain()

    # ---------------------------------------------------------------- behaviours

    async def huge_headers(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n")
        line = b"x-pad: " + b"a" * 1016 + b"\r\n"  # 1 KiB a line
        block = line * (BLOCK // len(line))
        sent = 0
        while sent < self.args.head_bytes:
            writer.write(block)
            sent += len(block)
            await writer.drain()
        await hold(reader)

    async def status_line_hold(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n")
        await writer.drain()
        await hold(reader)

    async def trickle_head(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nx-trickle: ")
        await self.trickle(reader, writer)

    async def trickle_body(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(json_head(4096) + b'{"busy": false, "detail": "')
        await self.trickle(reader, writer)

    async def trickle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not reader.at_eof():
            await writer.drain()
            await asyncio.sleep(self.args.interval)
            writer.write(b"a")

    async def huge_json(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        for piece in json_pieces(self.args.body_bytes):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def huge_json_length(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(json_head(self.args.body_bytes))
        for piece in json_pieces(self.args.body_bytes):
            writer.write(piece)
            await writer.drain()

    async def flood(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n"
        )
        block = b" " * BLOCK
        while True:
            writer.write(block)
            await writer.drain()

    async def deep_json(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        depth = self.args.depth
        writer.write(json_head(2 * depth) + b"[" * depth + b"]" * depth)
        await writer.drain()

    async def huge_trailers(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-pad\r\n\r\n"
            b"3\r\nabc\r\n0\r\nx-pad: "
        )
        block = b"a" * BLOCK
        sent = 0
        while sent < self.args.head_bytes:
            writer.write(block)
            sent += len(block)
            await writer.drain()
        await hold(reader)

    async def late_ok(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(self.args.interval)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n")
        await writer.drain()

    async def slow_events(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        for n in range(5):
            event = b"data: event %d\n\n" % n
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
            await asyncio.sleep(self.args.interval)
        writer.write(b"0\r\n\r\n")
        await writer.drain()


Behave = Callable[[Hostile, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
BEHAVE: dict[str, Behave] = {
    "huge-headers": Hostile.huge_headers,
    "status-line-hold": Hostile.status_line_hold,
    "trickle-head": Hostile.trickle_head,
    "trickle-body": Hostile.trickle_body,
    "huge-json": Hostile.huge_json,
    "huge-json-length": Hostile.huge_json_length,
    "flood": Hostile.flood,
    "deep-json": Hostile.deep_json,
    "huge-trailers": Hostile.huge_trailers,
    "late-ok": Hostile.late_ok,
    "slow-events": Hostile.slow_events,
}


def json_head(length: int) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % (
        length
    )


def json_pieces(total: int) -> Iterator[bytes]:
    """A valid JSON status answer of ``total`` bytes, in pieces of at most BLOCK,
    made as they are sent (one block reused: nothing grows)."""
    start, end = b'{"busy": false, "detail": "', b'"}'
    filler = b"x" * BLOCK
    yield start
    left = max(0, total - len(start) - len(end))
    while left > 0:
        piece = filler if left >= BLOCK else filler[:left]
        left -= len(piece)
        yield piece
    yield end


async def drain_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> None:
    """Read and drop the request body (Content-Length or chunked), within a cap."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        total = 0
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            total += size
            if total > MAX_REQUEST_BODY:
                raise ValueError("request body too large")
            await reader.readexactly(size + 2)
            if size == 0:
                return
    length = int(headers.get("content-length", "0") or 0)
    if length > MAX_REQUEST_BODY:
        raise ValueError("request body too large")
    await reader.readexactly(length)


async def hold(reader: asyncio.StreamReader) -> None:
    """Keep the connection, say nothing, until the peer hangs up."""
    while await reader.read(BLOCK):
        pass


@contextlib.asynccontextmanager
async def running(*hostile_args: str) -> AsyncIterator[str]:
    """A hostile sandbox process with these flags, for as long as the block runs; its
    "host:port"."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.security.hostile_sandbox",
        *hostile_args,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert line.startswith("listening "), f"the hostile sandbox said {line!r}"
        yield line.split()[1]
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


def launcher(directory: Path, hostile_args: Sequence[str]) -> Path:
    """An executable for LocalBackend(python=...): the backend runs
    ``<python> -m sandbox_controller.devsandbox --port 0 --name NAME ...``, and this runs
    the hostile sandbox in devsandbox's place, with ``hostile_args`` and the rest."""
    path = directory / "hostile-python"
    directory.mkdir(parents=True, exist_ok=True)
    flags = " ".join(shlex.quote(a) for a in hostile_args)
    path.write_text(
        "#!/bin/sh\n"
        "# Drop '-m sandbox_controller.devsandbox'; keep --port and --name.\n"
        "shift 2\n"
        f"PYTHONPATH={shlex.quote(str(REPO_ROOT))} exec {shlex.quote(sys.executable)} "
        f'-m tests.security.hostile_sandbox {flags} "$@"\n'
    )
    path.chmod(0o755)
    return path


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.security.hostile_sandbox",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--name", default="", help="a pod name (the local backend passes one)")
    parser.add_argument("--mode", choices=BEHAVIOURS, default="ok", help="every other path")
    for hook in ("claim", "status", "release"):
        parser.add_argument(f"--{hook}", choices=BEHAVIOURS, help=f"/_sandbox/{hook}")
    parser.add_argument("--head-bytes", type=int, default=400 * 1000 * 1000)
    parser.add_argument("--body-bytes", type=int, default=1024**3)
    parser.add_argument("--depth", type=int, default=100_000)
    parser.add_argument("--interval", type=float, default=1.0)
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    hostile = Hostile(args)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    server = await asyncio.start_server(hostile.handle, sock=sock, limit=MAX_REQUEST_HEAD)
    host, port = sock.getsockname()[:2]
    print(f"listening {host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
