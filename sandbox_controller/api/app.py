"""The controller's HTTP API. Domain errors become HTTP responses here, in one place."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..backends.base import Backend
from ..clock import Clock
from ..config import Settings
from ..controller import Controller
from ..errors import (
    CapacityExhausted,
    NotLeader,
    SandboxError,
    SessionEnded,
    SessionNotFound,
    ThreadConflict,
    UserSessionLimit,
)
from ..model import Outcome, Session, SessionState
from ..scheduler.pool import ROUTE_LEASE
from .badbytes import RefuseBadBytes
from .bodylimit import BodySizeLimit
from .schemas import ActivityReport, CreateSession, session_json

MAX_BODY = 64 * 1024  # the largest legitimate body (an activity batch) is far smaller


def error_response(
    status: int, code: str, message: str, retry_after: float | None = None
) -> JSONResponse:
    headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after else None
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def create_app(
    settings: Settings,
    *,
    backend: Backend | None = None,
    clock: Clock | None = None,
    controller: Controller | None = None,
    stop_sandboxes_on_exit: bool = False,
) -> FastAPI:
    """The controller app; the Controller is built here and started by the lifespan."""
    if controller is None:
        controller = Controller(
            settings, backend=backend, clock=clock, stop_sandboxes_on_exit=stop_sandboxes_on_exit
        )
    ctl = controller

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await ctl.startup()
        try:
            yield
        finally:
            await ctl.shutdown()

    app = FastAPI(title="agent-sandbox-controller", lifespan=lifespan, docs_url=None)
    app.state.controller = ctl
    app.add_middleware(BodySizeLimit, max_bytes=MAX_BODY)
    app.add_middleware(RefuseBadBytes)
    _install_error_handlers(app)
    api_token = settings.api_token

    # async: FastAPI runs a plain-def dependency in a worker thread, a hop per request.
    async def authorize(request: Request) -> None:
        if api_token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            value.encode(), api_token.encode()
        ):
            raise _Unauthorized()

    api = APIRouter(dependencies=[Depends(authorize)])

    def render(session: Session, status: int = 200, **extra: Any) -> JSONResponse:
        scheduler = ctl.scheduler
        detail = None
        if scheduler is not None and scheduler.pool is not None:
            detail = scheduler.pool.provisioning_detail(session.id)
        body = session_json(
            session,
            proxy_url=ctl.settings.proxy_public_url,
            token_secret=ctl.token_secret,
            token_ttl=settings.token_ttl,
            now=ctl.clock.now(),
            detail=detail,
        )
        body.update(extra)
        return JSONResponse(body, status_code=status)

    def scheduler_or_503() -> Any:
        if ctl.scheduler is None or not ctl.scheduler.running:
            raise NotLeader("this replica is not the leader; retry against the service")
        return ctl.scheduler

    async def find_session(session_id: str) -> Session:
        scheduler = scheduler_or_503()
        try:
            session: Session = scheduler.lookup(session_id)
            return session
        except SessionNotFound:
            stored = await ctl.store.get_session(session_id)
            if stored is None:
                raise
            return stored

    @api.post("/sessions", status_code=201)
    async def open_session(body: CreateSession) -> Response:
        scheduler = scheduler_or_503()
        started = time.perf_counter()
        try:
            answer, session = await scheduler.open_session(
                body.user_id, body.thread_id, body.wait_seconds
            )
        except SandboxError:
            ctl.metrics.requests.labels(Outcome.ERROR.value).inc()
            raise
        ctl.metrics.requests.labels(answer.outcome.value).inc()
        if answer.outcome is Outcome.USER_LIMIT:
            raise UserSessionLimit(answer.message, retry_after=answer.retry_after)
        if answer.outcome is Outcome.CAPACITY:
            raise CapacityExhausted(answer.message, retry_after=answer.retry_after)
        if answer.outcome is Outcome.ERROR or session is None:
            raise ThreadConflict(answer.message or "thread belongs to another user")
        if answer.outcome in (Outcome.WARM, Outcome.COLD):
            ctl.metrics.assign_seconds.labels(answer.outcome.value).observe(
                time.perf_counter() - started
            )
            return render(session, 201, reclaimed_session_id=answer.reclaimed_session_id)
        return render(session, 200)

    @api.get("/sessions/{session_id}")
    async def get_session(session_id: str) -> Response:
        return render(await find_session(session_id))

    @api.get("/sessions")
    async def list_sessions(
        user_id: Annotated[str, Query(min_length=1, max_length=253)],
    ) -> Response:
        scheduler = scheduler_or_503()
        stored = {s.id: s for s in await ctl.store.list_sessions(user_id)}
        assert scheduler.pool is not None
        for sid in scheduler.pool.live_by_user.get(user_id, ()):
            session = scheduler.pool.sessions[sid]
            if session.reply_deadline is None:  # not yet promised to its caller
                stored[sid] = session
        ordered = sorted(stored.values(), key=lambda s: s.created_at, reverse=True)
        now = ctl.clock.now()
        return JSONResponse(
            {
                "sessions": [
                    session_json(
                        s,
                        proxy_url=ctl.settings.proxy_public_url,
                        token_secret=ctl.token_secret,
                        token_ttl=settings.token_ttl,
                        now=now,
                        detail=scheduler.pool.provisioning_detail(s.id),
                    )
                    for s in ordered
                ]
            }
        )

    @api.delete("/sessions/{session_id}", status_code=204)
    async def delete_session(session_id: str) -> Response:
        session = await find_session(session_id)
        if session.state is not SessionState.ENDED:
            await scheduler_or_503().end_session(session_id)
        return Response(status_code=204)

    @api.post("/sessions/{session_id}/touch", status_code=204)
    async def touch_session(session_id: str) -> Response:
        session = await find_session(session_id)
        if session.state is SessionState.ENDED:
            raise SessionEnded(f"session {session_id} has ended ({session.end_reason})")
        scheduler_or_503().touch(session_id, ctl.clock.now())
        return Response(status_code=204)

    @api.get("/pool")
    async def pool() -> Response:
        return JSONResponse(ctl.pool_status())

    @api.get("/internal/routes/{session_id}")
    async def route(session_id: str) -> Response:
        scheduler = scheduler_or_503()
        try:
            session, address = scheduler.route(session_id)
        except SessionNotFound:  # ended long ago, or never was
            session, address = await find_session(session_id), None
        return JSONResponse(
            {
                "session_id": session.id,
                "state": session.state.value,
                "address": address,
                # The proxy may use the address this long, and no longer: the pod keeps
                # it at least that long, even if the session ends at once.
                "lease_seconds": ROUTE_LEASE if address else None,
            }
        )

    @api.post("/internal/activity", status_code=204)
    async def activity(body: ActivityReport) -> Response:
        scheduler = scheduler_or_503()
        for session_id, at in body.activity.items():
            if session_id in scheduler.pool.sessions:
                scheduler.touch(session_id, at)
        return Response(status_code=204)

    app.include_router(api)

    @app.get("/healthz")
    async def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        if ctl.is_leader:
            return JSONResponse({"status": "ready", "leader": True})
        return JSONResponse({"status": "standby", "leader": False}, status_code=503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(ctl.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


class _Unauthorized(SandboxError):
    status = 401
    code = "unauthorized"

    def __init__(self) -> None:
        super().__init__("missing or wrong bearer token")


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SandboxError)
    async def domain_error(request: Request, exc: SandboxError) -> Response:
        response = error_response(exc.status, exc.code, exc.message, exc.retry_after)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        problems = []
        for err in exc.errors()[:5]:
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            problems.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return error_response(422, "invalid_request", "; ".join(problems) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
        return error_response(
            exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail)
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        # Logged by the server; the caller gets a code, never a traceback.
        return error_response(500, "internal_error", "internal error; see the controller log")
