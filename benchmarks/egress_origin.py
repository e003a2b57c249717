"""The egress benchmark's origin, run inside the fake internet's namespace (uvloop):
80 HTTP and 443 HTTPS answering every keep-alive GET with a small 200; 9000 streams
zeros to whoever connects until they hang up; 9001 accepts and holds (open tunnels)."""

from __future__ import annotations

import argparse
import asyncio
import ssl

import uvloop

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


class Http(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        n = self.buf.count(b"\r\n\r\n")
        if n:
            self.buf = self.buf[self.buf.rindex(b"\r\n\r\n") + 4 :]
            self.transport.write(RESPONSE * n)  # type: ignore[attr-defined]


class Source(asyncio.Protocol):
    """Writes as fast as the reader takes it (flow control: pause/resume_writing)."""

    block = b"\0" * (1 << 20)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=4 << 20)  # type: ignore[attr-defined]
        self.paused = False
        self._fill()

    def _fill(self) -> None:
        while not self.paused and not self.transport.is_closing():
            self.transport.write(self.block)  # type: ignore[attr-defined]

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        asyncio.get_running_loop().call_soon(self._fill)

    def connection_lost(self, exc: Exception | None) -> None:
        self.paused = True


class Hold(asyncio.Protocol):
    pass


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(args.cert, args.key)
    loop = asyncio.get_running_loop()
    await loop.create_server(Http, "0.0.0.0", 80, backlog=4096)
    await loop.create_server(Http, "0.0.0.0", 443, ssl=ctx, backlog=4096)
    await loop.create_server(Source, "0.0.0.0", 9000)
    await loop.create_server(Hold, "0.0.0.0", 9001, backlog=4096)
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main())
