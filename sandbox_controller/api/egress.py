"""Egress routes: a session's grants and denials (PATCH and GET /sessions/{id}/egress),
and the egress proxy's calls (POST /internal/egress/authorize and .../denials).

The egress proxy holds no key: it asks here who a sandbox is (its Proxy-Authorization:
user = the pod's create id, password = sandbox_contract.egress_credential), and is told
the pod's session, the mode, the allow list, the deny CIDRs and the secrets to swap in,
for ``ttl`` seconds. Only the leader answers (it holds the pool): a standby says
not_leader (503, Retry-After), as for every leader-only call.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ..controller import Controller
from ..egress_policy import DENY_REASONS, is_grantable, parse_pattern
from ..egress_secrets import SecretSpec, deployment_placeholder, new_placeholder
from ..errors import EgressNotGrantable, InvalidEgress, SessionNotFound
from ..model import PodState
from ..sandbox_contract import egress_credential
from ..scheduler.egress import OpenSecret
from ..scheduler.loop import Scheduler
from .request_bodies import EgressPatch, SecretBody
from .schemas import SessionEgressBody, egress_json, errors, iso

# The egress proxy caches an answer this long (seconds): a PATCH shows within it.
AUTHORIZE_TTL = 1.0
DENIALS_BATCH_MAX = 500  # about 200 bytes each at worst: within app.MAX_BODY
_CREATE_ID_MAX = 64


class AuthorizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    user: Annotated[str, StringConstraints(min_length=1, max_length=_CREATE_ID_MAX)]
    password: Annotated[str, StringConstraints(min_length=1, max_length=128)]


class DenialBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    session_id: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None
    at: float
    host: Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=r"^[\x21-\x7e]+$")]
    port: int = Field(ge=0, le=65535)
    reason: Literal[tuple(sorted(DENY_REASONS))]  # type: ignore[valid-type]


class DenialsReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    denials: list[DenialBody] = Field(max_length=DENIALS_BATCH_MAX)


class DenialOut(BaseModel):
    at: str
    host: str
    port: int
    reason: str


class SessionEgressAnswer(SessionEgressBody):
    session_id: str
    denials: list[DenialOut] = Field(description="its last 100 denials, oldest first")


def check_grants(grants: tuple[str, ...], ctl: Controller) -> None:
    """Every grant within SANDBOX_EGRESS_GRANTABLE, else 422 egress_not_grantable."""
    grantable = ctl.settings.egress_lists.grantable
    for pattern in grants:
        if not is_grantable(parse_pattern(pattern), grantable):
            raise EgressNotGrantable(pattern, tuple(str(g) for g in grantable))


def session_secrets(bodies: list[SecretBody], ctl: Controller) -> tuple[OpenSecret, ...]:
    """A new session's secrets, each with a fresh placeholder; refused (422) when no
    egress proxy or claim could carry them, or a name is the deployment's."""
    if not bodies:
        return ()
    settings = ctl.settings
    if settings.egress == "off":
        raise InvalidEgress("secrets need the egress proxy, which is off (SANDBOX_EGRESS=off)")
    if not settings.hooks:
        raise InvalidEgress("secrets need the claim hook for their placeholders (SANDBOX_HOOKS)")
    theirs = {s.name for s in settings.egress_lists.secrets}
    taken = sorted(b.name for b in bodies if b.name in theirs)
    if taken:
        raise InvalidEgress(f"secrets: {', '.join(taken)}: the deployment's own secret names")
    return tuple(
        OpenSecret(b.name, b.value, new_placeholder(), tuple(b.hosts), b.header, b.format)
        for b in bodies
    )


def _deployment_secrets(
    specs: tuple[SecretSpec, ...], key: bytes, create_id: str
) -> list[dict[str, Any]]:
    return [
        {
            "name": s.name,
            "placeholder": deployment_placeholder(key, create_id, s.name),
            "value": s.value,
            "hosts": list(s.hosts),
            "header": s.header,
            "format": s.format,
        }
        for s in specs
    ]


def _refuse(status: int, code: str, message: str) -> JSONResponse:
    # Both shapes: the API's error body, and the bare code EGRESS.md seam 2 names.
    body = {"code": code, "error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status)


def add_egress_routes(
    api: APIRouter, internal: APIRouter, leading: Callable[[], Scheduler], ctl: Controller
) -> None:
    settings = ctl.settings
    lists = settings.egress_lists
    deployment = lists.allow_text

    @api.patch(
        "/sessions/{session_id}/egress",
        responses={200: {"model": SessionEgressBody}, **errors(400, 401, 404, 410, 422, 503)},
    )
    async def patch_egress(session_id: str, body: EgressPatch) -> Response:
        """Replace the session's grants; the egress proxy applies them within a second."""
        grants = body.grants
        check_grants(grants, ctl)
        session = await leading().set_egress(session_id, grants)
        return JSONResponse(egress_json(session, settings.egress, deployment))

    @api.get(
        "/sessions/{session_id}/egress",
        responses={200: {"model": SessionEgressAnswer}, **errors(401, 404, 422, 503)},
    )
    async def get_egress(session_id: str) -> Response:
        """Its effective egress list, and its last 100 denials (why npm install failed)."""
        scheduler = leading()
        view = await scheduler.view(session_id)
        if view is None:
            raise SessionNotFound(session_id)
        rows = await scheduler.denials(session_id)
        body = egress_json(view.session, settings.egress, deployment)
        body["session_id"] = session_id
        body["denials"] = [
            {"at": iso(r["at"]), "host": r["host"], "port": r["port"], "reason": r["reason"]}
            for r in rows
        ]
        return JSONResponse(body)

    @internal.post(
        "/internal/egress/authorize",
        responses={**errors(400, 401, 422, 503), 403: {"description": "session_ended"}},
    )
    async def authorize(body: AuthorizeRequest) -> Response:
        scheduler = leading()
        key = _key_of(ctl.egress_keys, body.user, body.password)
        if key is None:
            return _refuse(401, "bad_credential", "unknown pod or wrong password")
        # A pod the pool does not know yet (its create is still being answered) is
        # answered as a warm one: the deployment's list. One that left it is deleted.
        pod, session, gone = scheduler.egress_pod(body.user)
        ended = gone or (pod is not None and pod.state is PodState.TERMINATING)
        if ended or (session is not None and not session.live):
            return _refuse(403, "session_ended", "this sandbox's session has ended")
        allow = list(deployment)
        found = _deployment_secrets(lists.secrets, key, body.user)
        if session is not None:
            allow = list(dict.fromkeys([*allow, *session.egress_allow]))
            if session.secrets:  # without any, no store read: authorize runs every second
                found += [s.wire() for s in await scheduler.egress_secrets(session.id)]
        return JSONResponse(
            {
                "pod": body.user,
                "session_id": session.id if session is not None else None,
                "mode": settings.egress,
                "allow": allow,
                "deny_cidrs": [str(n) for n in lists.deny_cidrs],
                "secrets": found,
                "ttl": AUTHORIZE_TTL,
            }
        )

    @internal.post(
        "/internal/egress/denials", status_code=204, responses=errors(400, 401, 413, 422, 503)
    )
    async def denials(body: DenialsReport) -> Response:
        """Kept per session (its last 100); denials of warm pods (no session) are not."""
        scheduler = leading()
        known = scheduler.known_sessions({d.session_id for d in body.denials if d.session_id})
        rows = [
            {
                "session_id": d.session_id,
                "at": d.at,
                "host": d.host,
                "port": d.port,
                "reason": d.reason,
            }
            for d in body.denials
            if d.session_id in known
        ]
        if rows:
            await scheduler.record_denials(rows)
        return Response(status_code=204)


def _key_of(keys: tuple[bytes, ...], user: str, password: str) -> bytes | None:
    """The hook key whose egress credential for ``user`` is ``password`` (each compared
    in constant time; every key is tried, so timing tells nothing of which matched)."""
    found = None
    given = password.encode()
    for key in keys:
        if hmac.compare_digest(egress_credential(key, user).encode(), given):
            found = found or key
    return found
