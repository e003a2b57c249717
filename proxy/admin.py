"""The proxy's FastAPI face: probes, metrics and the OpenAPI document.

Forwarded traffic never reaches this app: ``ProxyApp`` hands ``/s/...`` paths and
session hosts to its lean handler before any routing. The forwarded route is still
described in the OpenAPI document, with the error codes the lean handler answers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException

from .metrics import ProxyMetrics

_ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            "required": ["code", "message"],
        }
    },
}

# Status -> (description, error codes) of the forwarded route.
FORWARD_RESPONSES: dict[int, tuple[str, list[str]]] = {
    200: ("the sandbox's own answer (any status it sends passes through)", []),
    303: ("a GET/HEAD with ?token=: the cookie is set, then back to the URL without it", []),
    400: ("an unsafe path", ["bad_path"]),
    401: ("no token, or an invalid or expired one", ["unauthorized"]),
    403: (
        "another session's token, or a cookie used from a foreign Origin",
        ["forbidden", "origin_mismatch"],
    ),
    404: ("no such session", ["session_not_found"]),
    409: ("the session's sandbox is still starting", ["session_provisioning"]),
    410: ("the session has ended", ["session_ended"]),
    429: (
        "waking a suspended session: the controller refused the resume (per-user limit)",
        ["user_session_limit"],
    ),
    431: ("the request head is over the limit", ["header_too_large"]),
    502: (
        "the sandbox is unreachable, or its response head is over the limit or too slow",
        ["sandbox_unreachable", "upstream_head_too_large", "upstream_head_timeout"],
    ),
    503: (
        "the controller cannot be asked, the proxy is draining or at its connection cap; "
        "or a suspended session could not be woken (cap, failed restore, the resume wait "
        "passed), or its sandbox was being suspended as a streamed body went to it; a "
        "browser tab gets a page that reloads itself",
        [
            "controller_unavailable",
            "draining",
            "too_many_connections",
            "capacity_exhausted",
            "restore_failed",
            "resume_timeout",
            "sandbox_suspending",
        ],
    ),
    504: ("timed out connecting to the sandbox", ["sandbox_timeout"]),
}


def _forward_path_item() -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, (description, codes) in FORWARD_RESPONSES.items():
        entry: dict[str, Any] = {"description": description}
        if codes:
            described = dict(_ERROR_SCHEMA)
            described["description"] = "error codes: " + ", ".join(codes)
            entry["content"] = {"application/json": {"schema": described}}
        responses[str(status)] = entry
    operation = {
        "summary": "Forward to the session's sandbox (any method; WebSocket upgrades too)",
        "description": (
            "The token comes in `Authorization: Bearer`, `X-Sandbox-Token`, the `token` "
            "query parameter or the session cookie. In subdomain mode the same route is "
            "served at `{session_id}.{SANDBOX_PROXY_SESSION_DOMAIN}/{path}`."
        ),
        "parameters": [
            {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
            for n in ("session_id", "path")
        ],
        "responses": responses,
    }
    methods = ("get", "head", "post", "put", "patch", "delete", "options")
    return {m: {**operation, "operationId": f"forward_{m}"} for m in methods}


def build_admin(metrics: ProxyMetrics, ready: Callable[[], bool]) -> FastAPI:
    app = FastAPI(title="agent-sandbox proxy", docs_url=None, redoc_url=None)

    @app.get("/healthz", response_class=PlainTextResponse)
    async def healthz() -> str:
        """Alive: the process serves."""
        return "ok"

    @app.get(
        "/readyz",
        response_class=PlainTextResponse,
        responses={503: {"description": "starting or draining"}},
    )
    async def readyz() -> Response:
        """Ready for traffic: started and not draining."""
        ok = ready()
        return PlainTextResponse("ready" if ok else "not ready", 200 if ok else 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> Response:
        """Prometheus metrics of this proxy."""
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else "method_not_allowed"
        message = "only /s/{session_id}/... is proxied" if exc.status_code == 404 else exc.detail
        body = {"error": {"code": code, "message": message}}
        return JSONResponse(body, exc.status_code, headers=exc.headers)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version="1", routes=app.routes)
            schema["paths"]["/s/{session_id}/{path}"] = _forward_path_item()
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
