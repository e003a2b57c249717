"""Real sockets everywhere: a devsandbox, a controller double and the proxy, each served
by uvicorn on its own free loopback port inside the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from proxy import ProxyProcess
from sandbox_controller import devsandbox
from sandbox_controller.clock import Clock
from sandbox_controller.config import Settings
from sandbox_controller.serving import Server, bind
from sandbox_controller.serving import serve as serve_process
from sandbox_controller.tokens import issue_token

from ..eventually import eventually

SECRET = "test-secret"
API_TOKEN = "test-api-token"


def token_for(session_id: str, ttl: float = 3600.0, secret: str = SECRET) -> str:
    return issue_token(secret.encode(), session_id, time.time() + ttl)


class Counting:
    """Wraps the sandbox so tests can prove a refused request never reached it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.count = 0
        self.clients: list[tuple[str, int]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            self.count += 1
            self.clients.append(tuple(scope["client"]))
        await self.app(scope, receive, send)


@dataclass
class Served:
    server: uvicorn.Server
    task: asyncio.Task[None]
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        self.server.should_exit = True
        await asyncio.wait_for(self.task, 10)


async def serve(app: ASGIApp) -> Served:
    sock = bind("127.0.0.1", 0)
    config = uvicorn.Config(
        app, lifespan="off", log_level="warning", ws_ping_interval=None, access_log=False
    )
    server = Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))

    def started() -> bool:
        if not server.started and task.done():
            task.result()  # start-up failed: raise its error now
            raise AssertionError("the server stopped before serving")
        return bool(server.started)

    await eventually(started, within=10, what="the server to serve")
    return Served(server, task, sock.getsockname()[1])


@dataclass
class ControllerDouble:
    """A TEST DOUBLE of the controller's documented internal API (routes + activity),
    standing in until the real controller lands; not the controller itself."""

    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    lookups: list[str] = field(default_factory=list)
    activity: list[dict[str, float]] = field(default_factory=list)
    lookup_delay: float = 0.0
    down: bool = False  # answers every lookup 503, as a controller in failover would
    refuse_activity: bool = False  # answers activity 503 (and records it in `refused`)
    refused: list[dict[str, float]] = field(default_factory=list)
    # Seam 1 of SUSPEND.md: a suspended (or resuming) session's route is 409
    # session_suspended; POST /internal/sessions/{id}/resume takes it to "resuming" (still
    # 409 until the test says the restore is done) or answers the next queued refusal.
    resumes: list[str] = field(default_factory=list)
    resume_refusals: list[tuple[int, str, str | None]] = field(default_factory=list)

    def add(self, session_id: str, state: str = "ready", address: str | None = None) -> None:
        lease = 30.0 if address else None
        self.sessions[session_id] = {"state": state, "address": address, "lease_seconds": lease}

    def active_ids(self) -> set[str]:
        return {sid for batch in self.activity for sid in batch}

    def _authorized(self, request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {API_TOKEN}"

    async def route(self, request: Request) -> Response:
        if not self._authorized(request):
            return JSONResponse({"error": {"code": "unauthorized", "message": "x"}}, 401)
        sid = request.path_params["session_id"]
        self.lookups.append(sid)
        if self.lookup_delay:
            await asyncio.sleep(self.lookup_delay)
        if self.down:
            return JSONResponse({"error": {"code": "not_leader", "message": "x"}}, 503)
        if sid not in self.sessions:
            body = {"error": {"code": "session_not_found", "message": "unknown"}}
            return JSONResponse(body, 404)
        if self.sessions[sid]["state"] in ("suspended", "resuming"):
            body = {"error": {"code": "session_suspended", "message": "suspended"}}
            return JSONResponse(body, 409)
        return JSONResponse({"session_id": sid, **self.sessions[sid]})

    async def resume(self, request: Request) -> Response:
        if not self._authorized(request):
            return JSONResponse({"error": {"code": "unauthorized", "message": "x"}}, 401)
        sid = request.path_params["session_id"]
        self.resumes.append(sid)
        if self.resume_refusals:
            status, code, retry_after = self.resume_refusals.pop(0)
            headers = {"retry-after": retry_after} if retry_after else None
            body = {"error": {"code": code, "message": "refused"}}
            return JSONResponse(body, status, headers=headers)
        session = self.sessions.get(sid)
        if session is None:
            body = {"error": {"code": "session_not_found", "message": "unknown"}}
            return JSONResponse(body, 404)
        if session["state"] == "suspended":
            session["state"] = "resuming"
        return JSONResponse({"session_id": sid, "state": "resuming"}, 202)

    async def post_activity(self, request: Request) -> Response:
        if not self._authorized(request):
            return JSONResponse({"error": {"code": "unauthorized", "message": "x"}}, 401)
        batch = (await request.json())["activity"]
        if self.refuse_activity:
            self.refused.append(batch)
            return JSONResponse({"error": {"code": "not_leader", "message": "x"}}, 503)
        self.activity.append(batch)
        return Response(status_code=204)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/internal/routes/{session_id:path}", self.route),
                Route("/internal/activity", self.post_activity, methods=["POST"]),
                Route("/internal/sessions/{session_id}/resume", self.resume, methods=["POST"]),
            ]
        )


@dataclass
class Stack:
    controller: ControllerDouble
    sandbox: Counting
    sandbox_served: Served
    proxy: ProxyProcess
    proxy_port: int
    shutdown: asyncio.Event
    proxy_task: asyncio.Task[None]
    client: httpx.AsyncClient

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.proxy_port}"

    def session(self, session_id: str = "sess-a", state: str = "ready") -> str:
        """Register a session on the sandbox and return its token."""
        address = self.sandbox_served.address if state == "ready" else None
        self.controller.add(session_id, state, address)
        return token_for(session_id)


def proxy_settings(controller_port: int, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "token_secret": SECRET,
        "api_token": API_TOKEN,
        "controller_url": f"http://127.0.0.1:{controller_port}",
        "proxy_host": "127.0.0.1",
        "proxy_port": 0,
        "activity_flush_interval": 0.2,
        "log_level": "warning",
    }
    values.update(overrides)
    return Settings(**values)


@contextlib.asynccontextmanager
async def running_stack(clock: Clock | None = None, **overrides: Any) -> AsyncIterator[Stack]:
    """The three servers, with the proxy's settings changed by ``overrides``."""
    controller = ControllerDouble()
    controller_served = await serve(controller.app())
    sandbox = Counting(devsandbox.build_app())
    sandbox_served = await serve(sandbox)
    settings = proxy_settings(controller_served.port, **overrides)
    proxy = ProxyProcess(settings, clock=clock, drain_timeout=3.0)
    shutdown, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve_process(proxy, shutdown, ready.set))
    await asyncio.wait_for(ready.wait(), 10)
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        yield Stack(controller, sandbox, sandbox_served, proxy, proxy.port, shutdown, task, client)
    shutdown.set()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(task, 10)
    await asyncio.gather(sandbox_served.stop(), controller_served.stop())


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    async with running_stack() as running:
        yield running


async def raw_request(port: int, target: str, headers: dict[str, str] | None = None) -> int:
    """Send a request line exactly as written (httpx would normalise dot segments)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"GET {target} HTTP/1.1", "Host: proxy", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    return int(status_line.split()[1])
