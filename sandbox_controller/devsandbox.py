"""The project's own tiny sandbox workload: it only proves the plumbing.

``GET /healthz`` 200; ``POST /echo`` returns the body, streamed; ``GET /events`` is a
Server-Sent Events stream (``?n=`` events, ``?interval=`` seconds apart); WebSocket
``/ws`` echoes text and binary frames and closes with the code it is sent in a
``close:<code>`` text frame; ``PUT /files/{path}`` writes a file of the workspace and
``GET`` reads it back (an agent's work, which a suspend keeps).

It also implements the whole sandbox contract (README, "Bring your own sandbox image"):
an index page at ``/`` (the claimed session's user and env NAMES, never values), and
the optional hooks under ``/_sandbox/``, each authenticated by the pod's claim secret
(env ``SANDBOX_CLAIM_SECRET``, sent as ``Authorization: Bearer <secret>``):
``POST /_sandbox/claim`` records the session it receives and writes its files under
``--workdir``; ``GET /_sandbox/claim`` shows what it received; ``GET /_sandbox/status``
answers ``{"busy", "detail"}``; ``POST /_sandbox/release`` records the release;
``POST /_sandbox/snapshot`` and ``POST /_sandbox/restore`` stream the workspace out and
back in (devsandbox_snapshot.py). Tests
flip ``busy`` with ``POST /_sandbox/busy {"busy": true, "detail": "..."}`` (no secret:
a sandbox saying it is busy is its own business), and stall the snapshot or restore hook
with ``POST /_sandbox/stall {"snapshot": seconds, "restore": seconds}`` (the HA drill
times a leader's death by it; ``GET`` counts the calls begun).

Run it as ``python -m sandbox_controller.devsandbox --port 0``: it binds, then prints
``listening <host>:<port>`` on stdout, so whoever started it learns the port without
racing for a free one.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import os
import secrets
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from .devsandbox_quiesce import Quiesce
from .devsandbox_snapshot import Encoding, restore, snapshot_response
from .sandbox_contract import (
    CLAIM_PATH,
    ENV_CLAIM_SECRET,
    HEALTH_PATH,
    HOOK_PREFIX,
    POD_PORT,
    RELEASE_PATH,
    RESTORE_PATH,
    SNAPSHOT_PATH,
    STATUS_PATH,
)

# Test switches, not hooks of the contract: no secret needed.
BUSY_PATH = HOOK_PREFIX + "busy"
# Stall the snapshot or restore hook for some seconds, so a drill can time a fault in
# the middle of one; GET says how many calls began.
STALL_PATH = HOOK_PREFIX + "stall"


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


class Echo:
    """Streams the request body straight back. Raw ASGI, because Starlette's
    StreamingResponse listens for disconnects on the same ``receive`` the body
    arrives on, and would swallow body chunks."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        media = dict(scope["headers"]).get(b"content-type", b"application/octet-stream")
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", media)]}
        )
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            more = message.get("more_body", False)
            if message.get("body"):
                await send(
                    {"type": "http.response.body", "body": message["body"], "more_body": True}
                )
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def upload(request: Request) -> Response:
    """Counts the bytes of the body without keeping them."""
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
    return PlainTextResponse(str(size))


async def headers(request: Request) -> Response:
    """What the sandbox was sent, so tests can prove credentials never reach it."""
    lines = [f"{k}: {v}" for k, v in request.headers.items()]
    lines.append(f"path: {request.url.path}")
    lines.append(f"query: {request.url.query}")
    return PlainTextResponse("\n".join(lines))


async def blob(request: Request) -> Response:
    """``GET /blob?size=N``: N bytes, streamed in 64 KiB chunks."""
    size = int(request.query_params.get("size", "0"))
    chunk = b"x" * 65536

    async def body() -> AsyncIterator[bytes]:
        left = size
        while left > 0:
            piece = chunk[: min(left, len(chunk))]
            left -= len(piece)
            yield piece

    return StreamingResponse(
        body(), media_type="application/octet-stream", headers={"content-length": str(size)}
    )


async def events(request: Request) -> Response:
    count = int(request.query_params.get("n", "10"))
    interval = float(request.query_params.get("interval", "0.5"))

    async def stream() -> AsyncIterator[bytes]:
        for i in range(count):
            if i:
                await asyncio.sleep(interval)
            yield f"id: {i}\nevent: tick\ndata: {i}\n\n".encode()

    return StreamingResponse(stream(), media_type="text/event-stream")


async def ws_echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                text = message["text"]
                if text.startswith("close:"):
                    await websocket.close(code=int(text.removeprefix("close:")))
                    return
                await websocket.send_text(text)
            elif message.get("bytes") is not None:
                await websocket.send_bytes(message["bytes"])
    except WebSocketDisconnect:
        return


# ------------------------------------------------------------ the sandbox contract

Text = Annotated[str, StringConstraints(max_length=65536)]


class ClaimedFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    content: Text


class Claim(BaseModel):
    """What the controller sends when it leases the pod to a session."""

    model_config = ConfigDict(extra="forbid")

    session_id: str
    user_id: str
    thread_id: str
    metadata: dict[str, str] = Field(default_factory=dict)
    env: dict[str, str] = Field(default_factory=dict)
    files: list[ClaimedFile] = Field(default_factory=list)


class StallSwitch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    snapshot: float = Field(0.0, ge=0, le=600)
    restore: float = Field(0.0, ge=0, le=600)


class BusySwitch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    busy: bool
    detail: str = ""


@dataclass
class ContractState:
    """What the hooks received. One pod serves one session, so one claim at most."""

    claim_secret: str | None
    workdir: Path | None  # None: a temp dir, made at claim time
    claim: Claim | None = None
    released: bool = False
    busy: bool = False
    detail: str = ""
    written: list[str] = field(default_factory=list)
    # The W3C trace context the claim call carried (the controller's tracing on).
    traceparent: str | None = None
    snapshot_encoding: Encoding = "gzip"
    stall: StallSwitch = field(default_factory=StallSwitch)
    calls: dict[str, int] = field(default_factory=lambda: {"snapshot": 0, "restore": 0})
    quiesce: Quiesce = field(default_factory=Quiesce)  # hooks only, from its snapshot on

    def ensure_workdir(self) -> Path:
        """The workspace, made at the first hook that needs it (claim or restore)."""
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="devsandbox-"))
        return self.workdir


def _problem(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _authorized(state: ContractState, request: Request) -> bool:
    # No secret configured: nobody can claim this pod (fail closed).
    if state.claim_secret is None:
        return False
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(
        value.encode(), state.claim_secret.encode()
    )


Handler = Callable[[Request], Awaitable[Response]]


def _guarded(state: ContractState, handler: Handler) -> Handler:
    async def guarded(request: Request) -> Response:
        if not _authorized(state, request):
            return _problem(401, "unauthorized", "missing or wrong claim secret")
        return await handler(request)

    return guarded


async def _parse(request: Request, model: type[BaseModel]) -> Any:
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise _BadBody(f"{where}: {first['msg']}" if where else first["msg"]) from None


class _BadBody(Exception):
    pass


def _safe_path(workdir: Path, name: str) -> Path | None:
    """The file's place under workdir, or None if the name would leave it."""
    relative = PurePosixPath(name)
    if relative.is_absolute() or ".." in relative.parts or "\x00" in name:
        return None
    return workdir.joinpath(*relative.parts)


def contract_routes(state: ContractState) -> list[Route]:
    async def claim(request: Request) -> Response:
        try:
            received: Claim = await _parse(request, Claim)
        except _BadBody as exc:
            return _problem(422, "invalid_request", str(exc))
        if state.claim is not None:
            # A pod serves one session in its life (docs/architecture.md invariant 3).
            return _problem(409, "already_claimed", "this sandbox already serves a session")
        workdir = state.ensure_workdir()
        targets = [_safe_path(workdir, f.path) for f in received.files]
        if None in targets:
            return _problem(422, "invalid_request", "files: a path leaves the workspace")
        try:
            for target, claimed in zip(targets, received.files, strict=True):
                assert target is not None
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(claimed.content)
                state.written.append(claimed.path)
        except OSError as exc:
            # Two files in each other's way ("x" and "x/y", "."), a name too long for
            # the filesystem: the payload's fault, so a refusal, not a server error.
            return _problem(422, "invalid_request", f"files: cannot write: {exc.strerror or exc}")
        state.claim = received
        state.traceparent = request.headers.get("traceparent")
        return Response(status_code=204)

    async def claimed(request: Request) -> Response:
        if state.claim is None:
            return _problem(404, "not_claimed", "no session has claimed this sandbox")
        return JSONResponse(
            {
                **state.claim.model_dump(),
                "released": state.released,
                "workdir": state.workdir and str(state.workdir),
                "traceparent": state.traceparent,
            }
        )

    async def status(request: Request) -> Response:
        return JSONResponse({"busy": state.busy, "detail": state.detail})

    async def release(request: Request) -> Response:
        state.released = True
        return Response(status_code=204)

    async def snapshot(request: Request) -> Response:
        state.calls["snapshot"] += 1
        await state.quiesce.quiesce()  # what was acknowledged is in the archive
        await asyncio.sleep(state.stall.snapshot)
        state.quiesce.packing()
        return snapshot_response(state.workdir, state.snapshot_encoding)

    async def restore_workspace(request: Request) -> Response:
        state.calls["restore"] += 1
        await asyncio.sleep(state.stall.restore)
        return await restore(request, state.ensure_workdir())

    async def stall(request: Request) -> Response:
        if request.method == "POST":
            try:
                state.stall = await _parse(request, StallSwitch)
            except _BadBody as exc:
                return _problem(422, "invalid_request", str(exc))
        return JSONResponse({**state.stall.model_dump(), "calls": state.calls})

    async def busy(request: Request) -> Response:
        try:
            switch: BusySwitch = await _parse(request, BusySwitch)
        except _BadBody as exc:
            return _problem(422, "invalid_request", str(exc))
        state.busy, state.detail = switch.busy, switch.detail
        return JSONResponse({"busy": state.busy, "detail": state.detail})

    async def index(request: Request) -> Response:
        return HTMLResponse(index_page(state))

    async def workspace_file(request: Request) -> Response:
        """The agent's own work: ``PUT /files/{path}`` writes a workspace file, ``GET``
        reads it back (what a suspend must keep)."""
        target = _safe_path(state.ensure_workdir(), request.path_params["path"])
        if target is None:
            return _problem(400, "bad_path", "the path leaves the workspace")
        if request.method == "PUT":
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(await request.body())
            return Response(status_code=204)
        if not target.is_file():
            return _problem(404, "not_found", "no such file in the workspace")
        return Response(target.read_bytes(), media_type="application/octet-stream")

    return [
        Route("/", index),
        Route(CLAIM_PATH, _guarded(state, claim), methods=["POST"]),
        Route(CLAIM_PATH, _guarded(state, claimed), methods=["GET"]),
        Route(STATUS_PATH, _guarded(state, status)),
        Route(RELEASE_PATH, _guarded(state, release), methods=["POST"]),
        Route(SNAPSHOT_PATH, _guarded(state, snapshot), methods=["POST"]),
        Route(RESTORE_PATH, _guarded(state, restore_workspace), methods=["POST"]),
        Route(BUSY_PATH, busy, methods=["POST"]),
        Route(STALL_PATH, stall, methods=["GET", "POST"]),
        Route("/files/{path:path}", workspace_file, methods=["GET", "PUT"]),
    ]


ENDPOINTS = (
    (f"GET {HEALTH_PATH}", "readiness: 200 ok"),
    ("POST /echo", "the request body, streamed back"),
    ("GET /events?n=&interval=", "a Server-Sent Events stream"),
    ("WebSocket /ws", "echoes text and binary frames"),
    ("GET /headers", "the headers this sandbox was sent"),
    ("PUT|GET /files/{path}", "write or read a file of the workspace"),
    (f"POST {CLAIM_PATH}", "hook: the session this pod now serves (claim secret)"),
    (f"GET {STATUS_PATH}", 'hook: {"busy", "detail"} (claim secret)'),
    (f"POST {RELEASE_PATH}", "hook: the pod is about to be deleted (claim secret)"),
    (f"POST {SNAPSHOT_PATH}", "hook: the workspace as a tar stream (claim secret)"),
    (f"POST {RESTORE_PATH}", "hook: unpack such a stream into the workspace (claim secret)"),
    (f"POST {BUSY_PATH}", 'test switch: {"busy": true, "detail": "..."}'),
    (f"POST {STALL_PATH}", 'test switch: {"snapshot": seconds, "restore": seconds}'),
)


def index_page(state: ContractState) -> str:
    """What this is, and whom it serves. Env values are secrets: only names are shown."""
    esc = html.escape
    rows = "".join(f"<li><code>{esc(e)}</code>: {esc(what)}</li>" for e, what in ENDPOINTS)
    claim = state.claim
    if claim is None:
        session = "<p>Not claimed: a warm sandbox waiting for a session.</p>"
    else:
        names = ", ".join(f"<code>{esc(n)}</code>" for n in sorted(claim.env)) or "none"
        files = ", ".join(f"<code>{esc(n)}</code>" for n in state.written) or "none"
        session = (
            f"<p>Session <code>{esc(claim.session_id)}</code> of user "
            f"<code>{esc(claim.user_id)}</code>, thread <code>{esc(claim.thread_id)}</code>."
            f"</p><p>Environment names: {names}</p><p>Files: {files}</p>"
        )
    busy = f"busy: {esc(state.detail)}" if state.busy else "not busy"
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>devsandbox</title></head>"
        "<body><h1>devsandbox</h1><p>The agent-sandbox-controller's own sandbox workload: "
        f"it proves the plumbing.</p>{session}<p>Status: {busy}"
        f"{'; released' if state.released else ''}.</p><h2>Endpoints</h2><ul>{rows}</ul>"
        "</body></html>"
    )


def build_app(
    claim_secret: str | None = None,
    workdir: Path | None = None,
    *,
    hooks: bool = True,
    snapshot_encoding: Encoding = "gzip",
) -> ASGIApp:
    """``hooks=False``: a sandbox that implements none of the contract's hooks (404)."""
    state = ContractState(claim_secret, workdir, snapshot_encoding=snapshot_encoding)
    app = Starlette(
        routes=[
            *(contract_routes(state) if hooks else []),
            Route(HEALTH_PATH, healthz),
            Route("/echo", Echo(), methods=["POST", "PUT"]),
            Route("/upload", upload, methods=["POST", "PUT"]),
            Route("/headers", headers, methods=["GET", "POST"]),
            Route("/blob", blob),
            Route("/events", events),
            WebSocketRoute("/ws", ws_echo),
        ]
    )
    return state.quiesce.around(app)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="devsandbox")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=POD_PORT)
    parser.add_argument("--name", default="", help="pod name, so the process can be recognised")
    parser.add_argument("--workdir", type=Path, help="where claimed files go (default: a temp dir)")
    parser.add_argument(
        "--no-hooks",
        action="store_true",
        help="serve none of the /_sandbox/ hooks, like a sandbox image that predates them",
    )
    parser.add_argument(
        "--snapshot-encoding",
        choices=["gzip", "identity"],
        default="gzip",
        help="how the snapshot hook encodes the workspace's tar (identity: plain)",
    )
    args = parser.parse_args(argv)
    # Empty means unset, as for the controller's own secrets.
    claim_secret = os.environ.get(ENV_CLAIM_SECRET) or None

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(128)
    host, port = sock.getsockname()[:2]
    print(f"listening {host}:{port}", flush=True)
    sys.stdout.flush()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    config = uvicorn.Config(
        build_app(
            claim_secret,
            args.workdir,
            hooks=not args.no_hooks,
            snapshot_encoding=args.snapshot_encoding,
        ),
        log_level="warning",
        access_log=False,
        lifespan="off",
        ws_ping_interval=None,
    )
    server = uvicorn.Server(config)
    asyncio.run(server.serve(sockets=[sock]))


if __name__ == "__main__":
    main()
