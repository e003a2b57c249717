"""The session JSON of the contract (docs/architecture.md), the pool's, and the models
that describe every answer in the OpenAPI document (the handlers build their JSON by
hand, so these are documentation that tests/api/test_openapi.py holds to the truth).

The request bodies live in request_bodies.py; their names are imported here too, where
their users have always found them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from ..model import (
    ConditionType,
    EndDetail,
    PodState,
    PoolStatus,
    PrewarmPolicy,
    Provisioning,
    Session,
    SessionState,
    WaitReason,
)
from ..templates import describe
from ..tokens import issue_token
from .request_bodies import (
    ENV_MAX_KEYS,
    ENV_NAME_MAX,
    ENV_NAME_PATTERN,
    ENV_TOTAL_MAX,
    ENV_VALUE_MAX,
    FILE_CONTENT_MAX,
    FILE_PATH_MAX,
    FILE_PATH_PATTERN,
    FILES_MAX,
    FILES_TOTAL_MAX,
    ID_MAX,
    ID_PATTERN,
    ID_SCHEMA,
    LIMIT_CODE,
    METADATA_KEY_MAX,
    METADATA_MAX_KEYS,
    METADATA_PATTERN,
    METADATA_VALUE_MAX,
    SECRET_TEXT_PATTERN,
    ActivityReport,
    ClaimFileBody,
    CreateSession,
    EnvName,
    EnvValue,
    Id,
    MetadataKey,
    MetadataValue,
    SessionKey,
    path_conflict,
)

# The request bodies and claim limits are imported for their users, who find them here.
__all__ = [
    "ENV_MAX_KEYS",
    "ENV_NAME_MAX",
    "ENV_NAME_PATTERN",
    "ENV_TOTAL_MAX",
    "ENV_VALUE_MAX",
    "FILES_MAX",
    "FILES_TOTAL_MAX",
    "FILE_CONTENT_MAX",
    "FILE_PATH_MAX",
    "FILE_PATH_PATTERN",
    "ID_MAX",
    "ID_PATTERN",
    "ID_SCHEMA",
    "LIMIT_CODE",
    "METADATA_KEY_MAX",
    "METADATA_MAX_KEYS",
    "METADATA_PATTERN",
    "METADATA_VALUE_MAX",
    "RETRY_AFTER",
    "SECRET_TEXT_PATTERN",
    "ActivityReport",
    "ActivitySourceName",
    "ClaimFileBody",
    "ConnectBody",
    "CreateSession",
    "EndDetailBody",
    "EnvName",
    "EnvValue",
    "ErrorBody",
    "ErrorDetail",
    "HealthBody",
    "Id",
    "LastActivity",
    "MetadataKey",
    "MetadataValue",
    "PodCounts",
    "PoolBody",
    "PoolConditionBody",
    "ReadyBody",
    "RouteBody",
    "SessionBody",
    "SessionKey",
    "TokenKeysBody",
    "end_detail_json",
    "errors",
    "iso",
    "path_conflict",
    "pool_json",
    "prewarm_json",
    "session_json",
    "wait_detail",
]

# ------------------------------------------------------------ answers, for the document


class ErrorDetail(BaseModel):
    code: str = Field(examples=["user_session_limit"])
    message: str


class ErrorBody(BaseModel):
    """Every refusal: ``{"error": {"code", "message"}}``."""

    error: ErrorDetail


class ConnectBody(BaseModel):
    url: str
    token: str


ActivitySourceName = Literal["handover", "proxy", "touch", "busy"]


class LastActivity(BaseModel):
    at: str | None
    source: ActivitySourceName | None = Field(
        description="handover of the sandbox, proxy traffic, a touch call, or the "
        "sandbox's status hook saying it is busy"
    )
    detail: str | None = Field(description="what the activity said (a busy sandbox's detail)")


class EndDetailBody(BaseModel):
    """Why an ended session ended when it did."""

    last_active_at: str | None
    activity_source: ActivitySourceName | None
    busy_answer: str | None = Field(
        description="the status hook's answer asked before ending it (idle timeout or "
        "reclaim), e.g. 'not busy' or 'no answer (timed out)'; null when none was asked"
    )
    claim_answer: str | None = Field(
        None,
        description="claim_rejected only: why the claim was given up, quoting the "
        "sandbox's answer (its start, printable, without the claim's env or files)",
    )
    eviction: str | None = Field(
        None,
        description="evicted only: the platform's words for the eviction, e.g. "
        "'EvictionByEvictionAPI: Eviction API: evicting' (a drain) or the kubelet's "
        "message for a pod over its ephemeral-storage limit",
    )
    snapshot: str | None = Field(
        None,
        description="when it was to be suspended instead of ended: why no archive was "
        "kept, e.g. 'not_supported: the sandbox has no snapshot hook (HTTP 404)'",
    )


class SnapshotBody(BaseModel):
    bytes: int = Field(description="the archive's size")
    taken_at: str
    expires_at: str = Field(
        description="then the session ends snapshot_expired (SANDBOX_SNAPSHOT_RETENTION)"
    )


class SessionEgressBody(BaseModel):
    mode: Literal["off", "audit", "enforce"]
    allow: list[str] = Field(
        description="what its sandbox may reach: the deployment's list, then its grants"
    )
    granted: list[str] = Field(description="its grants (POST egress.allow, PATCH .../egress)")


class SecretRefBody(BaseModel):
    """A secret by name: never its value (nor its placeholder, which only its sandbox's
    env holds)."""

    name: str
    hosts: list[str]
    header: str


class SessionBody(BaseModel):
    id: str
    user_id: str
    thread_id: str
    state: Literal["provisioning", "ready", "suspending", "suspended", "ended"]
    end_reason: (
        Literal[
            "deleted",
            "idle_timeout",
            "max_lifetime",
            "reclaimed",
            "pod_failed",
            "startup_timeout",
            "claim_rejected",
            "controller_stopped",
            "evicted",
            "snapshot_expired",
        ]
        | None
    )
    created_at: str
    last_active_at: str | None
    ended_at: str | None
    pod: str | None
    connect: ConnectBody | None
    reclaimed_session_id: str | None
    metadata: dict[str, str] = Field(description="the caller's metadata, as given at creation")
    org_id: str | None = Field(description="its org, as given at creation (null: none)")
    plan: str | None = Field(
        description="the plan it was admitted under (null: the deployment's limits)"
    )
    template: str = Field(description="the sandbox template it runs")
    resources: dict[str, str] | None = Field(
        description="the resources it asked for (cpu, memory); null: its template's own"
    )
    last_activity: LastActivity
    end_detail: EndDetailBody | None = Field(description="ended sessions only: why it ended")
    egress: SessionEgressBody
    secrets: list[SecretRefBody] = Field(
        description="its egress secrets by name (none once it has ended: they are deleted)"
    )
    snapshot: SnapshotBody | None = Field(
        None, description="suspended (or resuming) sessions only: the archive kept"
    )
    resumed: bool = Field(
        False, description="brought back from an archive into a new sandbox (a resume)"
    )
    detail: str | None = Field(
        None,
        description="provisioning: why the sandbox is not ready yet; a session with "
        "resources of its own also says it is served cold",
    )


class PodCounts(BaseModel):
    pending: int
    idle: int
    assigned: int
    terminating: int


class PoolConditionBody(BaseModel):
    type: ConditionType = Field(
        description="CreateRejected: the platform refuses to create sandbox pods (RBAC, "
        "an invalid template, a missing image); creates back off up to 5 minutes. "
        "RecoveryHeld: a restart found pods serving sessions the store does not know "
        "(an older database?) and holds them until `sandbox-controller recover --confirm`"
    )
    message: str = Field(description="the latest refusal, in the platform's words")
    since: str = Field(description="when it began: the first refusal since the last success")


class PrewarmBody(BaseModel):
    policy: Literal["static", "adaptive"]
    target: int
    reason: str


class TemplatePoolBody(BaseModel):
    pods: PodCounts
    creating: int
    waiters: int
    prewarm: PrewarmBody


class PoolBody(BaseModel):
    pods: PodCounts
    creating: int
    waiters: int
    capacity_blocked: bool
    max_total_jobs: int
    prewarm_pool_size: int
    max_sessions_per_user: int
    conditions: list[PoolConditionBody] = Field(
        description="what keeps the pool from filling; empty when nothing does. A "
        "condition clears by itself on the first successful create"
    )
    templates: dict[str, TemplatePoolBody] = Field(
        description="each template's pods, creates, waiting sessions and warm pool target, "
        "by name (the default first); the totals above are their sums"
    )
    leader: bool


class RouteBody(BaseModel):
    session_id: str
    state: Literal["provisioning", "ready", "ended"]
    address: str | None
    lease_seconds: float | None


class ResumeAccepted(BaseModel):
    state: Literal["resuming", "ready", "provisioning", "suspending", "suspended"] = Field(
        description="resuming: its archive is being restored into a new sandbox; ready: "
        "it already was; suspending: resumed once its snapshot is kept"
    )


class TokenKeysBody(BaseModel):
    """The public keys that verify session tokens (Ed25519, raw, base64url): what a
    proxy needs to check a token, and nothing that can make one."""

    keys: list[str]


class HealthBody(BaseModel):
    status: str


class ReadyBody(BaseModel):
    status: Literal["ready", "standby", "unavailable"]
    leader: bool


_WHY = {
    400: "the body is not text (invalid UTF-8)",
    401: "missing or wrong bearer token",
    404: "no such session (or a path holding a control character)",
    409: "the thread belongs to another user, or the user is being deleted "
    "(user_being_deleted: DELETE /users/{user_id} is under way)",
    410: "the session has ended",
    413: "the body is over the size limit",
    422: "a bad body, query or parameter",
    429: "user_session_limit: the user is at maxSessionsPerUser and none is idle (Retry-After)",
    503: "not_leader, store_unavailable or capacity_exhausted (Retry-After)",
}
RETRY_AFTER = {
    "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}
}


def errors(*statuses: int, why: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route: each refusal it can give, with the error body."""
    words = {**_WHY, **(why or {})}
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        out[status] = {"model": ErrorBody, "description": words[status]}
        if status in (429, 503):
            out[status]["headers"] = RETRY_AFTER
    return out


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def wait_detail(provisioning: Provisioning | None) -> str | None:
    """Why a provisioning session has no sandbox yet, in words."""
    if provisioning is None:
        return None
    match provisioning.reason:
        case WaitReason.POD_REPORTS:
            return provisioning.pod_detail
        case WaitReason.CAP_REACHED:
            return (
                f"waiting for a free slot: maxTotalJobs ({provisioning.max_total_jobs}) "
                "sandbox pods exist"
            )
        case WaitReason.POD_STARTING:
            return "sandbox pod is starting"
        case WaitReason.NO_POD_YET:
            return "waiting for a sandbox pod"
        case WaitReason.CLAIMING:
            return "handing the session to its sandbox (claim hook)"
        case WaitReason.RESTORING:
            return "resuming: restoring its archive into the sandbox (restore hook)"
        case WaitReason.POOL_CONDITION:
            condition = provisioning.condition
            return f"{condition.type}: {condition.message}" if condition else None


def pool_json(status: PoolStatus, *, leader: bool) -> dict[str, Any]:
    limits = status.limits
    return {
        "pods": {state.value: status.pods[state] for state in PodState},
        "creating": status.creating,
        "waiters": status.waiters,
        "capacity_blocked": status.capacity_blocked,
        "max_total_jobs": limits.max_total_jobs,
        "prewarm_pool_size": limits.prewarm_pool_size,
        "max_sessions_per_user": limits.max_sessions_per_user,
        "prewarm": prewarm_json(status),
        "conditions": [
            {"type": c.type.value, "message": c.message, "since": iso(c.since)}
            for c in status.conditions
        ],
        "templates": {
            t.name: {
                "pods": {state.value: t.pods[state] for state in PodState},
                "creating": t.creating,
                "waiters": t.waiters,
                "prewarm": {
                    "policy": t.prewarm.policy.value,
                    "target": t.prewarm.target,
                    "reason": t.prewarm.reason,
                },
            }
            for t in status.templates
        },
        "leader": leader,
    }


def prewarm_json(status: PoolStatus) -> dict[str, Any]:
    """The warm pool's target and why; a standby names its policy and target only."""
    limits = status.limits
    if status.prewarm is not None:
        target = status.prewarm
        return {"policy": target.policy.value, "target": target.target, "reason": target.reason}
    policy = limits.prewarm.policy
    size = limits.prewarm_pool_size if policy is PrewarmPolicy.STATIC else limits.prewarm.min
    return {"policy": policy.value, "target": size, "reason": "standby: not scheduling"}


def snapshot_json(session: Session) -> dict[str, Any] | None:
    snapshot = session.snapshot
    if snapshot is None:
        return None
    return {
        "bytes": snapshot.bytes,
        "taken_at": iso(snapshot.taken_at),
        "expires_at": iso(snapshot.expires_at),
    }


def end_detail_json(detail: EndDetail | None) -> dict[str, Any] | None:
    if detail is None:
        return None
    body: dict[str, Any] = {
        "last_active_at": iso(detail.last_active_at),
        "activity_source": detail.activity_source.value if detail.activity_source else None,
        "busy_answer": detail.busy_answer,
        "claim_answer": detail.claim_answer,
        "eviction": detail.eviction,
    }
    if detail.snapshot is not None:  # only where a suspension was tried
        body["snapshot"] = detail.snapshot
    return body


def egress_json(session: Session, mode: str, deployment: Sequence[str]) -> dict[str, Any]:
    """A session's egress: its effective list (the deployment's, then its grants)."""
    granted = list(session.egress_allow)
    return {
        "mode": mode,
        "allow": list(dict.fromkeys([*deployment, *granted])),
        "granted": granted,
    }


def session_json(
    session: Session,
    *,
    connect_url: str,
    token_secret: bytes,
    token_ttl: float,
    now: float,
    detail: Provisioning | None = None,
    egress_mode: str = "off",
    egress_allow: Sequence[str] = (),
) -> dict[str, Any]:
    """``egress_allow``: the deployment's egress list (the session's grants follow)."""
    body: dict[str, Any] = {
        "id": session.id,
        "user_id": session.user_id,
        "thread_id": session.thread_id,
        "state": session.state.value,
        "end_reason": session.end_reason.value if session.end_reason else None,
        "created_at": iso(session.created_at),
        "last_active_at": iso(session.last_active_at),
        "ended_at": iso(session.ended_at),
        "pod": session.pod_name,
        "connect": None,
        "reclaimed_session_id": session.reclaimed_session_id,
        "metadata": dict(session.metadata),
        "org_id": session.org_id or None,
        "plan": session.plan,
        "template": session.template,
        "resources": session.resources.as_dict() if session.resources else None,
        "last_activity": {
            "at": iso(session.last_active_at),
            "source": session.activity_source.value if session.activity_source else None,
            "detail": session.activity_detail,
        },
        "end_detail": end_detail_json(session.end_detail),
        "egress": egress_json(session, egress_mode, egress_allow),
        "secrets": [
            {"name": s.name, "hosts": list(s.hosts), "header": s.header}
            for s in (session.secrets if session.live else ())
        ],
        "snapshot": snapshot_json(session),
        "resumed": session.resumed,
    }
    if session.state is not SessionState.ENDED:
        body["connect"] = {
            "url": connect_url,
            "token": issue_token(token_secret, session.id, now + token_ttl),
        }
    if session.state is SessionState.PROVISIONING:
        body["detail"] = wait_detail(detail)
    if session.resources is not None and session.state is not SessionState.ENDED:
        cold = (
            f"served cold: resources of its own ({describe(session.resources)}), "
            f"not template {session.template}'s"
        )
        body["detail"] = f"{body['detail']}; {cold}" if body.get("detail") else cold
    return body
