"""Running ASGI apps under uvicorn inside our own lifecycle.

uvicorn's Server installs its own signal handlers and re-raises the signal after
shutdown; with a controller and a proxy in one process (``dev``) we want one owner
of the signals instead, so these servers leave signals alone and stop when told.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import socket
from collections.abc import Generator
from typing import Any

import uvicorn


class Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def bind(host: str, port: int) -> socket.socket:
    """Bind before serving, so port 0 works and the real port is known up front."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    # A deep backlog: a thousand editors reconnecting after a deploy arrive at once.
    sock.listen(2048)
    sock.setblocking(False)
    return sock


# How long an idle keep-alive connection stays open. uvicorn's default (5 s) is no
# longer than what clients and load balancers in front keep theirs (nginx and cloud
# load balancers: 60 s; httpx: 5 s). A client that reuses a connection just as the
# server closes it loses the request (httpx ReadError, a 502 at nginx): kube_bench
# lost up to two claims a run that way at 50 connections. The server must be the side
# that waits longest.
KEEP_ALIVE_SECONDS = 75


def make_server(app: Any, *, log_level: str = "info", **options: Any) -> Server:
    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=10,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        **options,
    )
    return Server(config)


def stop_on_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT only set the stop event; shutdown happens in order elsewhere."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


async def serve_until(server: Server, sock: socket.socket, stop: asyncio.Event) -> None:
    task = asyncio.create_task(server.serve(sockets=[sock]), name="uvicorn")
    stopper = asyncio.create_task(stop.wait(), name="stop-wait")
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    stopper.cancel()
    await task


def tune_gc() -> None:
    """For a long-running server process (never in library code: it is process-wide).

    The scheduler and the proxy allocate many short-lived objects while the pool keeps
    many long-lived ones; with the default thresholds, young collections run every few
    hundred allocations and full ones rescan every pod and session, which showed up as
    tens of milliseconds in the claim and proxy latency tails (benchmarks/README.md).
    Fewer young collections and freezing what start-up created keep the tail short.
    """
    gc.set_threshold(20_000, 50, 100)
    gc.freeze()
