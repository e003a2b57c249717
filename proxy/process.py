"""The proxy process: start, serve until told to stop, then drain.

Shutdown follows uvicorn's own order, with the WebSocket step moved to the front so
clients hear 1001 (going away) from us rather than uvicorn's 1012:
1. stop accepting (close the listeners);
2. close open WebSocket relays with 1001 and wait for them (bounded);
3. let in-flight HTTP requests finish, up to ``drain_timeout``, then cancel the rest;
4. flush the last activity batch and close the clients (the app's shutdown).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from sandbox_controller import tracing
from sandbox_controller.clock import Clock
from sandbox_controller.config import Settings
from sandbox_controller.serving import EdgeLimits, Listener, bind

from .app import ProxyApp
from .websocket import ClientWebSocket

log = logging.getLogger(__name__)


class ProxyProcess:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        drain_timeout: float = 10.0,
        verify_keys: Sequence[str] = (),
    ) -> None:
        self.settings = settings
        self.app = ProxyApp(settings, clock=clock, verify_keys=verify_keys)
        self.drain_timeout = drain_timeout
        self._listener: Listener | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when ``proxy_port`` is 0), once started."""
        assert self._listener is not None, "the proxy binds at startup"
        return self._listener.port

    async def startup(self) -> None:
        sock = bind(self.settings.proxy_host, self.settings.proxy_port)
        self._listener = Listener(
            self.app,
            sock,
            limits=EdgeLimits.of(self.settings),
            drain_timeout=self.drain_timeout,
            ws=ClientWebSocket,  # uvicorn's websockets-sansio, with refusals logged right
            ws_per_message_deflate=False,  # a relay passes frames on; it does not recompress
            log_level=self.settings.log_level.lower(),
            proxy_headers=False,  # X-Forwarded-For is built from the real peer
            server_header=False,
            date_header=False,  # the pod's Date passes through; two would be wrong
        )
        tracing.start(self.settings, "sandbox-proxy")
        await self.app.startup()
        await self._listener.start()
        log.info("proxy listening on %s:%s", self.settings.proxy_host, self.port)

    async def run(self, stop: asyncio.Event) -> None:
        assert self._listener is not None
        await self._listener.run(stop)

    async def shutdown(self) -> None:
        log.info("proxy draining")
        if self._listener is not None:
            self._listener.stop_accepting()
            await self.app.close_websockets(wait=min(5.0, self.drain_timeout))
            await self._listener.drain()
        await self.app.aclose()
        tracing.stop()
