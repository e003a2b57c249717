"""A CONNECT tunnel spliced at the transport level: each side's bytes are written to the
other from ``data_received``, with no stream buffer or task between them (squid's cost
per byte is C; this keeps ours near one call per read).

Backpressure: when one side's write buffer passes its high-water mark, the transport
calls ``pause_writing`` on the protocol attached to it, which stops reading from the
other side until the buffer drains; so a tunnel holds at most about two buffers' worth.
A half-close is passed on (``write_eof``); the tunnel ends when both sides have closed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import cast

from sandbox_controller.egress_policy import IPAddress

HIGH_WATER = 256 * 1024


class Relay(asyncio.Protocol):
    def __init__(self, count: Callable[[int], None] | None = None) -> None:
        self.count = count
        self.transport: asyncio.Transport | None = None
        self.peer: asyncio.Transport | None = None
        self.early: list[bytes] = []  # what arrived before the peer was wired
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.eof = False
        self.partner: Relay | None = None  # the relay on the other side
        # Told when connected (front.py wires the tunnel and writes the 200 in that very
        # turn) and when closed (the tunnel's end, for its log line).
        self.made: Callable[[Relay], None] | None = None
        self.gone: Callable[[Relay], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=HIGH_WATER)
        if self.made is not None:
            self.made(self)

    def wire(self, partner: Relay, count: Callable[[int], None]) -> None:
        assert partner.transport is not None
        self.partner, self.peer, self.count = partner, partner.transport, count
        for data in self.early:
            self.data_received(data)
        self.early.clear()
        if self.eof:
            self.eof_received()

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self.early.append(data)
            return
        self.peer.write(data)
        if self.count is not None:
            self.count(len(data))

    def eof_received(self) -> bool:
        self.eof = True
        if self.peer is None or self.partner is None:
            return True
        if self.partner.eof or not self.peer.can_write_eof():
            # Both directions are done: nothing more can pass.
            self.peer.close()
            if self.transport is not None:
                self.transport.close()
        elif not self.peer.is_closing():
            self.peer.write_eof()
        return True  # keep our side open: the other direction may still speak

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and not self.peer.is_closing():
            self.peer.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None:
            self.peer.close()  # flushes what is buffered, then closes
        if not self.lost.done():
            self.lost.set_result(None)
        if self.gone is not None:
            self.gone(self)


async def dial(addresses: Sequence[IPAddress], port: int, timeout: float) -> Relay:
    """A relay connected to the first of ``addresses`` (all checked) that answers."""
    loop = asyncio.get_running_loop()
    last: Exception | None = None
    for address in addresses:
        try:
            async with asyncio.timeout(timeout):
                _, relay = await loop.create_connection(Relay, str(address), port)
            return relay
        except (OSError, TimeoutError) as exc:
            last = exc
    raise OSError(f"no checked address answered: {last}")


async def connect(relay: Relay, host: str, port: int, timeout: float) -> None:
    """``relay`` connected to (host, port), an address already checked; the deadline is
    one loop timer rather than a timeout context per CONNECT."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    timer = loop.call_later(timeout, expire)
    try:
        await loop.create_connection(lambda: relay, host, port)
    except asyncio.CancelledError:
        if not expired:
            raise
        if relay.transport is not None:  # connected just as the deadline passed
            task.uncancel()
            return
        raise TimeoutError(f"no answer from {host}:{port} in {timeout:g} s") from None
    finally:
        timer.cancel()


async def splice(
    client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    upstream: Relay,
    up: Callable[[int], None],
    down: Callable[[int], None],
) -> None:
    """Hand the client's transport over from its stream to a relay wired to ``upstream``;
    return once both sides have closed."""
    reader, writer = client
    transport = cast(asyncio.Transport, writer.transport)
    assert upstream.transport is not None
    # Bytes the client sent right behind its CONNECT head (a TLS hello) are in the
    # stream's buffer: they go first. StreamReader has no public "take what is
    # buffered"; its _buffer is a bytearray in every Python we support.
    buffered = bytes(reader._buffer)  # type: ignore[attr-defined]
    reader._buffer.clear()  # type: ignore[attr-defined]
    near = Relay()
    near.transport = transport
    transport.set_write_buffer_limits(high=HIGH_WATER)
    transport.set_protocol(near)
    if buffered:
        upstream.transport.write(buffered)
        up(len(buffered))
    near.wire(upstream, up)
    upstream.wire(near, down)
    transport.resume_reading()  # the stream may have paused it
    try:
        await asyncio.gather(near.lost, upstream.lost)
    finally:
        with contextlib.suppress(Exception):
            upstream.transport.close()
        with contextlib.suppress(Exception):
            transport.close()
