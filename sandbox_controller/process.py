"""The controller process, and ``dev``: the controller and the proxy in one process.

Both have the shape of serving.Process: ``startup()``, ``run(stop)``, ``shutdown()``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from .api import create_app
from .backends.base import Backend
from .clock import Clock
from .config import Settings
from .console import Console
from .controller import Controller
from .serving import EdgeLimits, Listener, bind
from .tokens import public_key

if TYPE_CHECKING:
    from proxy import ProxyProcess
    from proxy.egress.process import EgressProxyProcess

log = logging.getLogger(__name__)

LOCAL_BACKEND_NOTE = (
    "Note: the local backend runs each sandbox as a process of your own user, for trusted\n"
    "code only. A sandbox gets none of this server's secrets in its environment, but it\n"
    "can read your files (this server's state directory and its credentials included)\n"
    "and other processes' /proc/*/environ. Use SANDBOX_BACKEND=docker for code you do\n"
    "not trust (README: Run on one VM with Docker Compose). With SANDBOX_EGRESS on, the\n"
    "egress proxy's policy is advice here: a local sandbox can ignore HTTP_PROXY."
)


def standby_note(controller: Controller) -> str:
    """What a dev that does not lead tells its user, instead of a curl that would get
    503 not_leader: who leads, and when this one takes over if that one is gone."""
    seen = controller.leader_seen
    if seen is None:
        return "Standby: not leading yet (the log says why); the API answers 503 until it leads."
    left = max(0.0, seen.expires_at - controller.clock.now())
    until = datetime.fromtimestamp(seen.expires_at, UTC).strftime("%H:%M:%S UTC")
    return (
        f"Standby: {seen.holder} leads on this database (lease epoch {seen.epoch}, "
        f"renewed until {until}); this process takes over if that lease is not renewed "
        f"within {left:.1f} s. Until then the API answers 503 not_leader."
    )


class ControllerProcess:
    """The controller's HTTP API in front of its ``Controller`` (store, backend, leader
    lease, scheduler).

    Startup: bind, start the controller (database, migrations, backend, lease), accept.
    Shutdown: first step down (the round in progress finishes, the lease is released,
    so a standby leads within about a second; requests still arriving or waiting get
    503 not_leader with Retry-After); then, in uvicorn's order, close the listener,
    shut connections down, wait up to the drain timeout for requests in flight, cancel
    the rest; then stop the controller (its tasks, the backend, the store).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        sock: socket.socket | None = None,
        backend: Backend | None = None,
        clock: Clock | None = None,
        stop_sandboxes_on_exit: bool = False,
    ) -> None:
        self.settings = settings
        self.controller = Controller(
            settings, backend=backend, clock=clock, stop_sandboxes_on_exit=stop_sandboxes_on_exit
        )
        self.app = create_app(self.controller)
        # The operator console (SANDBOX_CONSOLE): pages and a live feed on the same app.
        self.console = Console(self.app, self.controller) if settings.console else None
        self._sock = sock
        self._listener: Listener | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when ``port`` is 0), once started."""
        assert self._listener is not None, "the controller binds at startup"
        return self._listener.port

    async def startup(self) -> None:
        sock = self._sock or bind(self.settings.host, self.settings.port)
        self._listener = Listener(
            self.app,
            sock,
            limits=EdgeLimits.of(self.settings),
            log_level=self.settings.log_level.lower(),
        )
        await self.controller.startup()
        if self.console is not None:
            self.console.start()
        await self._listener.start()

    async def run(self, stop: asyncio.Event) -> None:
        assert self._listener is not None
        await self._listener.run(stop)

    async def shutdown(self) -> None:
        try:
            await self.controller.step_down()
            if self.console is not None:  # its streams would hold the drain open
                await self.console.stop()
            if self._listener is not None:
                await self._listener.drain()
            elif self._sock is not None:
                self._sock.close()
        finally:
            await self.controller.shutdown()


class DevProcess:
    """``sandbox-controller dev``: controller, proxy and local sandboxes, stopped together.

    The proxy stops first, so its last activity batch reaches a controller still up;
    the controller then stops every sandbox it started or adopted.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.proxy: ProxyProcess | None = None
        # With egress on, the egress proxy too: sandboxes reach the web through it.
        self.egress: EgressProxyProcess | None = None
        self.controller: ControllerProcess | None = None

    async def startup(self) -> None:
        settings = self.settings
        api_sock = bind(settings.host, settings.port)
        api_port = api_sock.getsockname()[1]
        settings = settings.model_copy(
            update={
                "controller_url": f"http://127.0.0.1:{api_port}",
                # Both halves need the same ones; made here when the caller gave none.
                "token_secret": settings.token_secret or secrets.token_urlsafe(32),
                "proxy_token": settings.proxy_token or secrets.token_urlsafe(32),
            }
        )
        assert settings.token_secret is not None
        # The proxy gets what a separate one would: its credential and the verify keys
        # (the previous secrets' too, as GET /internal/token-keys answers them).
        proxy_settings = settings.model_copy(
            update={"token_secret": None, "api_token": None, "api_tokens": ""}
        )
        secrets_in_use = (settings.token_secret.encode(), *settings.verifying_token_secrets)
        # Imported here: `serve`, whose restart is timed, never runs the proxy.
        from proxy import ProxyProcess

        try:
            self.proxy = ProxyProcess(
                proxy_settings, verify_keys=[public_key(s) for s in secrets_in_use]
            )
            await self.proxy.startup()
        except BaseException:
            api_sock.close()
            raise
        # The port the proxy really bound (with --proxy-port 0), for connect.url.
        settings = settings.model_copy(update={"proxy_port": self.proxy.port})
        if settings.egress != "off":
            try:
                settings = await self._start_egress(settings)
            except BaseException:
                await self.proxy.shutdown()
                api_sock.close()
                raise
        self.controller = ControllerProcess(settings, sock=api_sock, stop_sandboxes_on_exit=True)
        await self.controller.startup()
        egress_line = (
            f"  egress proxy    {settings.egress_proxy_address} ({settings.egress})\n"
            if self.egress is not None
            else ""
        )
        # The one place dev speaks to its user rather than to the log.
        print(
            f"agent-sandbox-controller dev\n"
            f"  controller API  http://{settings.host}:{api_port}\n"
            f"  proxy           http://{settings.proxy_host}:{self.proxy.port}\n"
            f"{egress_line}"
            f"  connect URLs    {settings.proxy_url}/s/<session>/\n"
            f"  API token       {settings.api_token}\n"
            f"  console         http://{settings.host}:{api_port}/console\n"
            f"  database        {settings.database_url}\n"
            f"  when idle       {settings.idle_action}"
            + (f" (archives in {settings.snapshot_store})" if settings.snapshot_store else ""),
            flush=True,
        )
        controller = self.controller.controller
        if controller.is_leader:
            print(
                f"Try: curl -H 'Authorization: Bearer {settings.api_token}' "
                f"-H 'content-type: application/json' "
                f'-d \'{{"user_id":"me","thread_id":"t1"}}\' '
                f"http://{settings.host}:{api_port}/sessions",
                flush=True,
            )
        else:
            print(standby_note(controller), flush=True)
        if settings.backend == "local":
            print(LOCAL_BACKEND_NOTE, flush=True)

    async def _start_egress(self, settings: Settings) -> Settings:
        """The egress proxy, and the CA bundle local sandboxes are pointed at (the
        system's roots and the deployment CA, which signs intercepted secret hosts);
        the settings with the port it bound, for the sandboxes' HTTP_PROXY."""
        from proxy.egress.intercept import ca_paths
        from proxy.egress.process import EgressProxyProcess

        from .controller import egress_bundle_path
        from .egress_ca import sandbox_bundle

        cert, key = ca_paths(settings)
        path = egress_bundle_path(settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(sandbox_bundle(cert))
        self.egress = EgressProxyProcess(settings)
        await self.egress.startup()
        # The CA's files named for the controller too: on Docker it uploads the bundle
        # into each sandbox container (controller.sandbox_egress).
        return settings.model_copy(
            update={
                "egress_proxy_port": self.egress.port,
                "egress_ca_cert_file": str(cert),
                "egress_ca_key_file": str(key),
            }
        )

    async def run(self, stop: asyncio.Event) -> None:
        assert self.proxy is not None and self.controller is not None
        # If one fails, the others are cancelled and the error surfaces here.
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.proxy.run(stop), name="dev:proxy")
            if self.egress is not None:
                tasks.create_task(self.egress.run(stop), name="dev:egress")
            tasks.create_task(self.controller.run(stop), name="dev:controller")

    async def shutdown(self) -> None:
        try:
            if self.proxy is not None:
                await self.proxy.shutdown()
            # Before the controller: its last denials reach a controller still up.
            if self.egress is not None:
                await self.egress.shutdown()
        finally:
            if self.controller is not None:
                await self.controller.shutdown()
