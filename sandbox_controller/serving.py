"""One lifecycle shape for every process, and uvicorn serving inside it.

A process (controller, proxy, dev) has ``startup()``, ``run(stop)`` and ``shutdown()``,
in the manner of uvicorn's own ``Server``; ``serve`` runs the three in order, and
``shutdown`` is safe after a startup that failed halfway. uvicorn's ``Server.serve``
would install its own signal handlers and run the app's lifespan; here the process owns
both: signal handlers only set the stop event, and the process starts and stops its app
itself, in its own order, around the listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import re
import signal
import socket
import sys
from collections.abc import Callable, Generator
from typing import Any, Protocol

import uvicorn

# EdgeLimits is re-exported: the processes build their Listener's limits from here.
from .edge import EdgeLimits as EdgeLimits
from .edge import GuardedHttp


class Process(Protocol):
    async def startup(self) -> None:
        """Bind, start the app's parts, start listening. Raises if any step fails."""

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set."""

    async def shutdown(self) -> None:
        """Stop in order; also after a startup that failed halfway."""


async def serve(
    process: Process, stop: asyncio.Event, started: Callable[[], None] | None = None
) -> None:
    """startup -> run until ``stop`` -> shutdown; ``started`` is told once serving.
    A stop during startup (a SIGTERM while the database is still down) cancels it."""
    try:
        if await _startup_or_stop(process, stop):
            if started is not None:
                started()
            await process.run(stop)
    finally:
        await process.shutdown()


async def _startup_or_stop(process: Process, stop: asyncio.Event) -> bool:
    """True once started; False if ``stop`` came first (the startup is then cancelled)."""
    starting = asyncio.create_task(process.startup(), name="process:startup")
    stopping = asyncio.create_task(stop.wait(), name="process:stop-wait")
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        # Cancel until it ends: a library may swallow one cancellation (a driver's
        # connect timing out at the same moment does), and then the process would wait
        # out the database for the rest of the minute.
        try:
            while not starting.done():
                starting.cancel()
                await asyncio.wait({starting}, timeout=0.2)
        except asyncio.CancelledError:
            starting.cancel()
            raise
        await asyncio.gather(starting, stopping, return_exceptions=True)
    if starting.cancelled():
        return False
    starting.result()  # its error, if it failed
    return True


def stop_on_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT only set the stop event; shutdown happens in order elsewhere."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


class Server(uvicorn.Server):
    """uvicorn's server, leaving the process's signal handlers alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def bind(host: str, port: int) -> socket.socket:
    """Bind before serving, so port 0 works and the real port is known up front."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        # A deep backlog: a thousand editors reconnecting after a deploy arrive at once.
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


# How long an idle keep-alive connection stays open. uvicorn's default (5 s) is no
# longer than what clients and load balancers in front keep theirs (nginx and cloud
# load balancers: 60 s; httpx: 5 s). A client that reuses a connection just as the
# server closes it loses the request (httpx ReadError, a 502 at nginx): kube_bench
# lost up to two claims a run that way at 50 connections. The server must be the side
# that waits longest.
KEEP_ALIVE_SECONDS = 75


class Listener:
    """uvicorn serving one app on a socket bound beforehand. The app's own startup and
    shutdown are its owner's (lifespan off), so this is only the HTTP side: accept,
    then close listeners, drain connections, wait up to ``drain_timeout``, cancel.
    Requests come through ``GuardedHttp`` with ``limits``."""

    def __init__(
        self,
        app: Any,
        sock: socket.socket,
        *,
        limits: EdgeLimits,
        drain_timeout: float = 10.0,
        **options: Any,
    ) -> None:
        options.setdefault("access_log", False)
        http = type("GuardedHttp", (GuardedHttp,), {"limits": limits})
        config = uvicorn.Config(
            app,
            http=http,
            # uvicorn's records go to the process's handlers, where secrets are redacted.
            log_config=None,
            lifespan="off",
            timeout_graceful_shutdown=max(1, round(drain_timeout)),
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
            **options,
        )
        config.load()
        self.sock = sock
        self._server = Server(config)
        self._server.lifespan = config.lifespan_class(config)  # off: a no-op, as serve() sets

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    async def start(self) -> None:
        await self._server.startup(sockets=[self.sock])

    async def run(self, stop: asyncio.Event) -> None:
        """uvicorn's main loop (its ticks keep the Date header current) until ``stop``."""

        async def exit_on_stop() -> None:
            await stop.wait()
            self._server.should_exit = True

        watcher = asyncio.create_task(exit_on_stop(), name="listener:stop")
        try:
            await self._server.main_loop()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    def stop_accepting(self) -> None:
        for server in self._server.servers if self._server.started else ():
            server.close()

    async def drain(self) -> None:
        """Close the listeners, shut each connection down, wait up to the drain timeout
        for requests in flight, cancel what is left (uvicorn's ``Server.shutdown``)."""
        if self._server.started:
            await self._server.shutdown(sockets=[self.sock])
        self.sock.close()


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


# Secrets as they appear in URLs, headers and cookies, and session tokens anywhere
# (tokens.py: <b64 session id>.<expiry>.<86-character signature>; 43 before Ed25519).
_SECRETS = re.compile(
    r"(?i)((?:[?&;]|\b)(?:token|sandbox_token)=)[^&\s\"';]+"
    r"|(bearer\s+)[^\s\"',]+"
    r"|[A-Za-z0-9_-]+\.\d{6,}\.[A-Za-z0-9_-]{43,}"
)


# Each alternative above contains "token=", "bearer" (any case) or this, so a line with
# none of them is clean: checked in ~1 us where the full pattern took ~12 us a line.
_TOKEN_SHAPE = re.compile(r"\.\d{6,}\.")


def redact(text: str) -> str:
    folded = text.casefold()  # casefold, as (?i) does: "\u212a" (Kelvin) matches "k" there
    if "token=" not in folded and "bearer" not in folded and not _TOKEN_SHAPE.search(text):
        return text
    return _SECRETS.sub(lambda m: (m.group(1) or m.group(2) or "") + "[redacted]", text)


class RedactSecrets(logging.Filter):
    """On the handler, so every record is redacted, uvicorn's and libraries' included."""

    def filter(self, record: logging.LogRecord) -> bool:
        # Kept formatted, so the formatter does not format the message a second time.
        record.msg, record.args = redact(record.getMessage()), None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line; fields given as ``extra={"fields": {...}}`` are merged in."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


def configure_logging(level: str, log_format: str = "text", stream: Any = None) -> None:
    """The process's one log handler: redacting, text or JSON (``SANDBOX_LOG_FORMAT``)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RedactSecrets())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
