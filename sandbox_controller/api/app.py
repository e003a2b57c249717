"""The controller's HTTP API. Domain errors become HTTP responses here, in one place."""

from __future__ import annotations

import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .. import tracing
from ..audit import caller_of
from ..controller import Controller
from ..errors import NotLeader, SandboxError, SessionNotFound, SessionSuspended, StoreUnavailable
from ..hooks import ClaimFile, ClaimPayload
from ..model import Opened, Outcome, PoolStatus, Resources, SessionQuery, SessionView
from ..scheduler.loop import Scheduler
from .auth import ANONYMOUS, Caller, authenticated_caller, caller_id
from .badbytes import RefuseBadBytes
from .bodylimit import BodySizeLimit
from .egress import add_egress_routes, check_grants, session_secrets
from .errors import HooksDisabled, Unauthorized, install_error_handlers
from .listing import (
    CURSOR_PATTERN,
    LIST_LIMIT_MAX,
    LIST_STATES,
    DateTime,
    SessionList,
    decode_cursor,
    encode_cursor,
)
from .operator import add_operator_routes
from .request_bodies import ResumeSession
from .schemas import (
    ID_MAX,
    ID_SCHEMA,
    RETRY_AFTER,
    ActivityReport,
    CreateSession,
    HealthBody,
    Id,
    PoolBody,
    ReadyBody,
    ResumeAccepted,
    RouteBody,
    SessionBody,
    TokenKeysBody,
    errors,
    pool_json,
    session_json,
)
from .tokenfirst import TokenBeforeBody, bearer_in

# Room for the largest valid body: an activity batch of ACTIVITY_BATCH_MAX entries
# (about 94 bytes each at worst).
MAX_BODY = 128 * 1024
# POST /sessions with every claim limit reached (schemas.py): about 310,000 characters,
# 12 bytes each at worst as JSON (an astral character written as two \u escapes).
SESSION_BODY_MAX = 4 * 1024 * 1024


def create_app(controller: Controller) -> FastAPI:
    """The controller's API. Its owner (process.ControllerProcess) starts and stops the
    controller around serving it; the app has no lifespan of its own."""
    ctl = controller
    settings = controller.settings
    app = FastAPI(title="agent-sandbox-controller", docs_url=None)
    app.state.controller = ctl
    app.add_middleware(
        BodySizeLimit, max_bytes=MAX_BODY, larger={("POST", "/sessions"): SESSION_BODY_MAX}
    )
    install_error_handlers(app)
    api_tokens = settings.accepted_api_tokens
    # /internal/* (the proxies' calls) takes the proxies' own credential; the API tokens
    # too, for proxies configured the old way. The proxies' credential opens nothing else.
    internal_tokens = tuple(
        t for t in (settings.proxy_token, *(a.token for a in api_tokens)) if t is not None
    )
    # Outside the body limit: a body is not read at all from a client without a token
    # (with no API token, on loopback, the session API is open to all: nothing to check).
    reviewing = bool(settings.token_review_users)

    async def reviewed(token: str) -> Caller | None:
        # An in-cluster caller's own Kubernetes token (SANDBOX_TOKEN_REVIEW_USERS).
        reviewer = ctl.token_reviewer
        user = await reviewer.review(token) if reviewer is not None else None
        return None if user is None else Caller(user)

    app.add_middleware(
        TokenBeforeBody,
        tokens=internal_tokens if api_tokens or reviewing else (),
        own_auth="/console",
        review=(lambda t: _is_caller(reviewed(t))) if reviewing else None,
    )
    # Outermost: a control character never reaches routing, validation or the store.
    app.add_middleware(RefuseBadBytes)

    # async: FastAPI runs a plain-def dependency in a worker thread, a hop per request.
    async def authorize(request: Request) -> None:
        # request.state.caller: who called (auth.Caller), for logs and the audit trail.
        if not api_tokens and not reviewing:
            request.state.caller = ANONYMOUS
            return
        authorization = _authorization(request)
        caller = authenticated_caller(authorization, api_tokens)
        if caller is None and reviewing:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() == "bearer" and token:
                caller = await reviewed(token)
        if caller is None:
            raise Unauthorized()
        request.state.caller = caller

    async def authorize_internal(request: Request) -> None:
        if internal_tokens and not bearer_in(_authorization(request), internal_tokens):
            raise Unauthorized()

    api = APIRouter(dependencies=[Depends(authorize)])
    internal = APIRouter(dependencies=[Depends(authorize_internal)])

    def leading() -> Scheduler:
        # With the store unreachable nobody can lead or promise anything; say so
        # (503 store_unavailable) rather than point callers at another replica.
        if not ctl.store_available:
            raise StoreUnavailable()
        scheduler = ctl.scheduler
        if scheduler is None or not scheduler.running:
            raise NotLeader()
        return scheduler

    deployment_egress = settings.egress_lists.allow_text

    def view_json(view: SessionView, now: float) -> dict[str, object]:
        return session_json(
            view.session,
            connect_url=ctl.settings.connect_url(view.session.id),
            token_secret=ctl.token_secret,
            token_ttl=settings.token_ttl,
            now=now,
            detail=view.detail,
            egress_mode=settings.egress,
            egress_allow=deployment_egress,
        )

    async def find(session_id: str) -> SessionView:
        view = await leading().view(session_id)
        if view is None:
            raise SessionNotFound(session_id)
        return view

    @api.post(
        "/sessions",
        status_code=201,
        responses={
            201: {"model": SessionBody, "description": "a new session (ready or provisioning)"},
            200: {"model": SessionBody, "description": "the thread's live session (a retry)"},
            **errors(400, 401, 409, 413, 422, 429, 503),
        },
    )
    async def open_session(body: CreateSession, request: Request) -> Response:
        started = time.perf_counter()
        if (body.env or body.files) and not settings.hooks:
            raise HooksDisabled()
        grants = body.egress.grants if body.egress else ()
        check_grants(grants, ctl)
        held = session_secrets(body.secrets, ctl)
        # The sandbox's env gets each secret's placeholder, never its value: added by
        # every claim of the session, its first and each resume's (effect_calls.py).
        payload = ClaimPayload(
            metadata=body.metadata,
            env=body.env,
            files=tuple(ClaimFile(f.path, f.content) for f in body.files),
        )
        try:
            resources = body.resources
            with tracing.server_span("POST /sessions", request.headers):
                opened = await leading().open_session(
                    body.user_id,
                    body.thread_id,
                    body.wait_seconds,
                    payload,
                    caller(request),
                    org_id=body.org_id or "",
                    plan=body.plan,
                    template=body.template,
                    resources=Resources(resources.cpu, resources.memory) if resources else None,
                    egress_allow=grants,
                    secrets=held,
                )
        except SandboxError as exc:
            ctl.metrics.refused(exc)
            raise
        return opened_response(opened, started)

    def opened_response(opened: Opened, started: float) -> Response:
        """201 and a new session; 200 and the thread's session (a retry, or a resume:
        ``resumed``, or provisioning with its ``snapshot`` while it is restored)."""
        outcome = opened.outcome
        ctl.metrics.requests.labels(outcome.value).inc()
        view = SessionView(opened.session, opened.detail)
        session = opened.session
        if outcome is Outcome.EXISTING:
            return JSONResponse(view_json(view, ctl.clock.now()), status_code=200)
        ctl.metrics.assign_seconds.labels(outcome.value).observe(time.perf_counter() - started)
        body_json = view_json(view, ctl.clock.now())
        body_json["reclaimed_session_id"] = opened.reclaimed_session_id
        resumed = session.resumed or session.snapshot is not None
        return JSONResponse(body_json, status_code=200 if resumed else 201)

    async def resume(
        session_id: str, body: ResumeSession | None, request: Request
    ) -> tuple[Opened, float]:
        started = time.perf_counter()
        body = body or ResumeSession()
        if (body.env or body.files) and not settings.hooks:
            raise HooksDisabled()
        payload = ClaimPayload(
            env=body.env, files=tuple(ClaimFile(f.path, f.content) for f in body.files)
        )
        try:
            opened = await leading().resume_session(
                session_id, body.wait_seconds, payload, caller(request)
            )
        except SandboxError as exc:
            ctl.metrics.refused(exc)
            raise
        return opened, started

    @api.post(
        "/sessions/{session_id}/resume",
        responses={
            200: {"model": SessionBody, "description": "ready (resumed), or provisioning"},
            **errors(400, 401, 404, 409, 410, 413, 422, 429, 503),
        },
    )
    async def resume_session(
        session_id: str, request: Request, body: ResumeSession | None = None
    ) -> Response:
        """A suspended session's archive restored into a new sandbox, as POST /sessions
        for its thread does; a session that is not suspended is answered as it is."""
        opened, started = await resume(session_id, body, request)
        response = opened_response(opened, started)
        response.status_code = 200
        return response

    @api.post(
        "/sessions/{session_id}/suspend",
        status_code=202,
        responses={202: {"model": SessionBody}, **errors(401, 404, 409, 410, 422, 503)},
    )
    async def suspend_session(session_id: str, request: Request) -> Response:
        """Its snapshot is taken and its pod given back (202, suspending); if no archive
        can be kept it ends (deleted), end_detail.snapshot saying why."""
        view = await leading().suspend_session(session_id, caller(request))
        return JSONResponse(view_json(view, ctl.clock.now()), status_code=202)

    @api.get(
        "/sessions/{session_id}",
        responses={200: {"model": SessionBody}, **errors(401, 404, 422, 503)},
    )
    async def get_session(session_id: str) -> Response:
        return JSONResponse(view_json(await find(session_id), ctl.clock.now()))

    @api.get("/sessions", responses={200: {"model": SessionList}, **errors(401, 422, 503)})
    async def list_sessions(
        user_id: Annotated[Id | None, Query(max_length=ID_MAX, json_schema_extra=ID_SCHEMA)] = None,
        state: Literal["live", "provisioning", "ready", "suspended", "ended"] | None = None,
        created_after: DateTime | None = None,
        created_before: DateTime | None = None,
        limit: Annotated[int, Query(ge=1, le=LIST_LIMIT_MAX)] = 100,
        cursor: Annotated[str | None, Query(pattern=CURSOR_PATTERN)] = None,
    ) -> Response:
        """Sessions, newest first, a page at a time. With ``user_id``: that user's (as
        the editor backend asks, each with a fresh ``connect``). Without: every session
        (an operator's listing), never with a connect token, env, file or secret."""
        query = SessionQuery(
            user_id=user_id,
            states=LIST_STATES[state] if state else (),
            created_after=_timestamp(created_after),
            created_before=_timestamp(created_before),
            limit=limit,
            after=decode_cursor(cursor) if cursor else None,
        )
        views, following = await leading().list_sessions(query)
        now = ctl.clock.now()
        bodies = [view_json(v, now) for v in views]
        if user_id is None:
            for body in bodies:
                body["connect"] = None
        next_cursor = encode_cursor(following) if following else None
        return JSONResponse({"sessions": bodies, "next_cursor": next_cursor})

    @api.delete("/sessions/{session_id}", status_code=204, responses=errors(401, 404, 422, 503))
    async def delete_session(session_id: str, request: Request) -> Response:
        await leading().end_session(session_id, caller(request))
        return Response(status_code=204)

    @api.post(
        "/sessions/{session_id}/touch",
        status_code=204,
        responses=errors(401, 404, 410, 422, 503),
    )
    async def touch_session(session_id: str) -> Response:
        await leading().touch(session_id)
        return Response(status_code=204)

    add_operator_routes(api, leading, ctl.clock)
    add_egress_routes(api, internal, leading, ctl)

    @api.get("/pool", responses={200: {"model": PoolBody}, **errors(401, 422)})
    async def pool() -> Response:
        # GET /pool shows no sessions: no pass over them (it is polled).
        status = ctl.pool_snapshot(sessions_by_activity=False)
        status = status or PoolStatus.empty(ctl.settings.limits())
        return JSONResponse(pool_json(status, leader=ctl.is_leader))

    @internal.get("/internal/token-keys", responses={200: {"model": TokenKeysBody}, **errors(401)})
    async def token_keys() -> Response:
        return JSONResponse({"keys": list(ctl.verify_keys)})

    @internal.get(
        "/internal/routes/{session_id}",
        responses={200: {"model": RouteBody}, **errors(401, 404, 409, 422, 503)},
    )
    async def route(session_id: str, request: Request) -> Response:
        with tracing.server_span("GET /internal/routes", request.headers):
            found = await leading().route(session_id)
        if found.suspended:
            # The proxy resumes it (POST /internal/sessions/{id}/resume) and asks again.
            raise SessionSuspended(session_id, "resuming" if found.resuming else found.state)
        return JSONResponse(
            {
                "session_id": found.session_id,
                "state": found.state.value,
                "address": found.address,
                # The proxy may use the address this long, and no longer: the pod keeps
                # it at least that long, even if the session ends at once.
                "lease_seconds": found.lease_seconds,
            }
        )

    @internal.post(
        "/internal/sessions/{session_id}/resume",
        status_code=202,
        responses={202: {"model": ResumeAccepted}, **errors(401, 404, 410, 422, 429, 503)},
    )
    async def internal_resume(session_id: str, request: Request) -> Response:
        """The proxy's wake-up: the resume starts (or is under way, or done) and the
        proxy polls the route; refusals as an open's (429/503 with Retry-After)."""
        opened, _ = await resume(session_id, ResumeSession(wait_seconds=0.0), request)
        state = opened.session.state
        resuming = opened.session.snapshot is not None and state.value == "provisioning"
        return JSONResponse({"state": "resuming" if resuming else state.value}, status_code=202)

    @internal.post("/internal/activity", status_code=204, responses=errors(400, 401, 413, 422, 503))
    async def activity(body: ActivityReport) -> Response:
        leading().record_activity(body.activity)
        return Response(status_code=204)

    app.include_router(api)
    app.include_router(internal)

    @app.get("/healthz", responses={200: {"model": HealthBody}, **errors(422)})
    async def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get(
        "/readyz",
        responses={
            200: {
                "model": ReadyBody,
                "description": "this replica leads (or, with "
                "role=replica, is fit to lead or stand by)",
            },
            503: {
                "model": ReadyBody,
                "description": "a standby, or the store is unreachable",
                "headers": RETRY_AFTER,
            },
            **errors(422),
        },
    )
    async def readyz(role: Literal["replica"] | None = None) -> Response:
        """Ready to serve the API: the leader, with its store answering. With
        ``?role=replica``: fit to lead or stand by (its schema is one this version
        knows), what a Deployment's readiness probe asks so that a rolling update can
        proceed with a standby (the Service selects the leader by label)."""
        leader = ctl.is_leader
        ok = ctl.healthy_replica if role == "replica" else ctl.ready
        body = {"status": "ready", "leader": leader}
        if ok:
            return JSONResponse(body)
        body["status"] = "standby" if ctl.store_available else "unavailable"
        # Every 503 says when to ask again; readiness can change within a second.
        return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})

    @app.get(
        "/metrics",
        responses={
            200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}},
            **errors(422),
        },
    )
    async def metrics() -> Response:
        return Response(generate_latest(ctl.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    state_the_plans(app, tuple(plan.name for plan in settings.limits().plans))
    return app


def state_the_plans(app: FastAPI, names: tuple[str, ...]) -> None:
    """The OpenAPI document names this deployment's plans, the only ones POST /sessions
    takes (any other is 422 unknown_plan), as it names every other rule it keeps."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            body = build()["components"]["schemas"]["CreateSession"]
            named = [{"type": "string", "enum": list(names)}] if names else []
            body["properties"]["plan"]["anyOf"] = [*named, {"type": "null"}]
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]


def _authorization(request: Request) -> str:
    return request.headers.get("authorization", "")


def caller(request: Request) -> str:
    """Who makes this request, by token id (the audit log's caller): the id the
    authentication put on the request state, else the id of its bearer token."""
    return caller_of(caller_id(request), _authorization(request))


def _timestamp(value: datetime | None) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:  # a time without a zone is taken as UTC
        value = value.replace(tzinfo=UTC)
    try:
        return value.timestamp()
    except OverflowError:  # a zone offset pushed it out of datetime's years 1..9999
        return float("-inf") if value.year < 5000 else float("inf")


async def _is_caller(found: Awaitable[Caller | None]) -> bool:
    return await found is not None
