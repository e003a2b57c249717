"""The egress proxy process: start, serve until told to stop, then drain (uvicorn's
order: close the listener, let connections finish up to ``drain_timeout``, cancel the
rest, flush the last denials, close the clients)."""

from __future__ import annotations

import asyncio
import logging

from sandbox_controller.aiotasks import TaskGroup
from sandbox_controller.clock import Clock, SystemClock
from sandbox_controller.config import Settings
from sandbox_controller.serving import bind

from .controller import ControllerClient
from .intercept import Interceptor, ca_paths
from .metrics import EgressMetrics
from .resolve import Resolver
from .server import EgressServer

log = logging.getLogger(__name__)

DENIAL_FLUSH_SECONDS = 1.0


class EgressProxyProcess:
    def __init__(
        self, settings: Settings, *, clock: Clock | None = None, drain_timeout: float = 10.0
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.drain_timeout = drain_timeout
        self.metrics = EgressMetrics()
        self.controller = ControllerClient(
            settings.controller_url,
            # The editor proxy's credential for /internal/* (proxy/app.py's rule).
            settings.proxy_token or settings.api_token,
            self.clock,
        )
        self.resolver = Resolver(settings.egress_resolver)
        self._server: asyncio.Server | None = None
        self._egress: EgressServer | None = None
        self._tasks = TaskGroup("egress")

    @property
    def port(self) -> int:
        """The bound port (the real one when ``egress_proxy_port`` is 0), once started."""
        assert self._server is not None, "the egress proxy binds at startup"
        return int(self._server.sockets[0].getsockname()[1])

    async def startup(self) -> None:
        s = self.settings
        interceptor = Interceptor(*ca_paths(s))
        self._egress = EgressServer(
            self.controller,
            self.resolver,
            interceptor,
            self.metrics,
            header_timeout=s.header_read_timeout,
            max_connections=s.max_connections,
            max_header_bytes=s.max_header_bytes,
        )
        sock = bind(s.egress_proxy_host, s.egress_proxy_port)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._egress.accept, sock=sock, backlog=2048)
        self._tasks.start(self.controller.run_denials(DENIAL_FLUSH_SECONDS), "denials")
        log.info("egress proxy listening on %s:%s", s.egress_proxy_host, self.port)

    async def run(self, stop: asyncio.Event) -> None:
        await stop.wait()

    async def shutdown(self) -> None:
        log.info("egress proxy draining")
        if self._server is not None:
            self._server.close()
        if self._egress is not None:
            await self._egress.drain(self.drain_timeout)
        await self._tasks.stop()
        await self.controller.flush_denials()
        await self.controller.aclose()
        self.resolver.close()
