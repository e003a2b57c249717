"""The proxy process's lifecycle: start, serve until told to stop, then drain.

Shutdown follows uvicorn's own order, with the WebSocket step moved to the front so
clients hear 1001 (going away) from us rather than uvicorn's 1012:
1. stop accepting (close the listeners);
2. close open WebSocket relays with 1001 and wait for them (bounded);
3. let in-flight HTTP requests finish, up to ``drain_timeout``, then cancel the rest;
4. flush the last activity batch and close the clients.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import uvicorn

from sandbox_controller.clock import Clock
from sandbox_controller.config import Settings
from sandbox_controller.serving import KEEP_ALIVE_SECONDS, Server, bind

from .app import ProxyApp

log = logging.getLogger(__name__)


def _http_impl() -> str:
    try:
        import httptools  # noqa: F401
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        return "h11"
    return "httptools"


class ProxyServer:
    def __init__(
        self, settings: Settings, *, clock: Clock | None = None, drain_timeout: float = 10.0
    ) -> None:
        self.settings = settings
        self.app = ProxyApp(settings, clock=clock)
        self.drain_timeout = drain_timeout
        self.host = settings.proxy_host
        self.port: int | None = None  # the bound port, known once run() has bound

    async def run(self, shutdown: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        sock = bind(self.settings.proxy_host, self.settings.proxy_port)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            lifespan="off",  # we run startup/aclose ourselves, in order, below
            http=_http_impl(),
            ws="websockets-sansio",
            ws_per_message_deflate=False,  # a relay passes frames on; it does not recompress
            access_log=False,
            log_level=self.settings.log_level.lower(),
            proxy_headers=False,  # X-Forwarded-For is built from the real peer
            server_header=False,
            date_header=False,  # the pod's Date passes through; two would be wrong
            timeout_graceful_shutdown=max(1, round(self.drain_timeout)),
            timeout_keep_alive=KEEP_ALIVE_SECONDS,  # longer than an ingress keeps its own
        )
        server = Server(config)
        await self.app.startup()
        try:
            config.load()
            server.lifespan = config.lifespan_class(config)
            await server.startup(sockets=[sock])
            log.info("proxy listening on %s:%s", self.host, self.port)
            if ready is not None:
                ready.set()
            await shutdown.wait()
            log.info("proxy draining")
            for listener in server.servers:
                listener.close()
            await self.app.close_websockets(wait=min(5.0, self.drain_timeout))
            await server.shutdown(sockets=[sock])
        finally:
            await self.app.aclose()
            sock.close()


async def serve_proxy(
    settings: Settings,
    *,
    ready: asyncio.Event | None = None,
    shutdown: asyncio.Event,
    on_bound: Callable[[str, int], None] | None = None,
    clock: Clock | None = None,
) -> None:
    """Serve the proxy until ``shutdown`` is set, then drain. ``on_bound`` learns the port
    (useful with ``proxy_port=0``) before ``ready`` is set."""
    server = ProxyServer(settings, clock=clock)
    if on_bound is None:
        await server.run(shutdown, ready)
        return
    bound = asyncio.Event()
    runner = asyncio.create_task(server.run(shutdown, bound), name="proxy:serve")
    waiter = asyncio.create_task(bound.wait())
    await asyncio.wait({runner, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if bound.is_set():
        assert server.port is not None
        on_bound(server.host, server.port)
        if ready is not None:
            ready.set()
    waiter.cancel()
    await runner
