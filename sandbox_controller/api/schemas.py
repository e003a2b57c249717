"""Request bodies, the session JSON of the contract (DESIGN §4), and the models that
describe every answer in the OpenAPI document (the handlers build their JSON by hand,
so these are documentation that tests/api/test_openapi.py holds to the truth)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ..model import (
    ACTIVITY_BATCH_MAX,
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
from ..tokens import issue_token
from .badbytes import unstorable

# An id is 1 to 253 characters, none of them a control character (what no store can
# keep: badbytes.unstorable), and not only whitespace. Unicode is welcome. The pattern
# says the same for the schema (Python ``re`` and ECMA regex alike); a lone surrogate,
# which no UTF-8 text can hold, is refused too but left out of it.
ID_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
ID_MAX = 253


def _check_id(value: str) -> str:
    if not 1 <= len(value) <= ID_MAX:
        raise ValueError(f"must be 1 to {ID_MAX} characters")
    if unstorable(value):
        raise ValueError("must not contain control characters")
    if not value.strip():
        raise ValueError("must not be only whitespace")
    return value


ID_SCHEMA: dict[str, Any] = {"minLength": 1, "maxLength": ID_MAX, "pattern": ID_PATTERN}
Id = Annotated[str, Field(json_schema_extra=ID_SCHEMA), AfterValidator(_check_id)]


# What a claim may carry (README, "Bring your own sandbox image"). Lengths count
# characters, as the schema's do. Each total is the sum of its parts' lengths.
ENV_MAX_KEYS = 64
ENV_NAME_MAX = 128
ENV_VALUE_MAX = 8 * 1024
ENV_TOTAL_MAX = 32 * 1024  # names and values
METADATA_MAX_KEYS = 32
METADATA_KEY_MAX = 63
METADATA_VALUE_MAX = 256
FILES_MAX = 16
FILE_PATH_MAX = 255
FILE_CONTENT_MAX = 64 * 1024
FILES_TOTAL_MAX = 256 * 1024  # contents
# The code of a 422 for a payload over one of these limits.
LIMIT_CODE = "claim_limit_exceeded"

ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
# Stored and shown: printable, as ids are (no C0/C1 control character).
_PRINTABLE = r"[^\x00-\x1f\x7f-\x9f]"
METADATA_PATTERN = rf"^{_PRINTABLE}*$"
# Secrets, never stored: anything a process's environment or a text file holds, NUL aside.
SECRET_TEXT_PATTERN = r"^[^\x00]*$"
# A relative path of printable segments, none of them "." or "..", no empty segment
# (so no leading, trailing or double "/"), and no backslash (a separator to some
# sandboxes' runtimes, so "a\\..\\b" could climb). No look-arounds: the schema's regex
# must be one that every generator and validator reads alike.
_SEG_CHAR = r"[^/\\\x00-\x1f\x7f-\x9f]"
_SEG_NOT_DOT = r"[^/.\\\x00-\x1f\x7f-\x9f]"
_SEGMENT = (
    rf"(?:{_SEG_NOT_DOT}|{_SEG_NOT_DOT}{_SEG_CHAR}|{_SEG_CHAR}{_SEG_NOT_DOT}|{_SEG_CHAR}{{3,}})"
)
FILE_PATH_PATTERN = rf"^{_SEGMENT}(?:/{_SEGMENT})*$"


def _check_printable(value: str) -> str:
    if unstorable(value):
        raise ValueError("must not contain control characters")
    return value


def _check_secret_text(value: str) -> str:
    # A lone surrogate can be written as a JSON escape, but no UTF-8 text holds it.
    if "\x00" in value or any("\ud800" <= ch <= "\udfff" for ch in value):
        raise ValueError("must be text without NUL")
    return value


def _string_map(key: dict[str, Any], value: dict[str, Any]) -> Any:
    """Pydantic states key patterns as patternProperties, which lets a schema-valid
    body carry any other key; the API refuses those, so the schema says so."""

    def fix(schema: dict[str, Any]) -> None:
        schema.pop("patternProperties", None)
        schema["propertyNames"] = {"type": "string", **key}
        schema["additionalProperties"] = {"type": "string", **value}

    return fix


EnvName = Annotated[
    str, StringConstraints(min_length=1, max_length=ENV_NAME_MAX, pattern=ENV_NAME_PATTERN)
]
EnvValue = Annotated[
    str,
    StringConstraints(max_length=ENV_VALUE_MAX, pattern=SECRET_TEXT_PATTERN),
    AfterValidator(_check_secret_text),
]
MetadataKey = Annotated[
    str,
    StringConstraints(min_length=1, max_length=METADATA_KEY_MAX, pattern=METADATA_PATTERN),
    AfterValidator(_check_printable),
]
MetadataValue = Annotated[
    str,
    StringConstraints(max_length=METADATA_VALUE_MAX, pattern=METADATA_PATTERN),
    AfterValidator(_check_printable),
]


class ClaimFileBody(BaseModel):
    """A small text file the sandbox writes under its workspace at claim time."""

    model_config = ConfigDict(extra="forbid", strict=True)

    path: Annotated[
        str,
        StringConstraints(min_length=1, max_length=FILE_PATH_MAX, pattern=FILE_PATH_PATTERN),
        AfterValidator(_check_printable),
    ] = Field(description="relative: no leading '/', no '.', '..' or empty segment, no '\\'")
    content: Annotated[
        str,
        StringConstraints(max_length=FILE_CONTENT_MAX, pattern=SECRET_TEXT_PATTERN),
        AfterValidator(_check_secret_text),
    ]


class CreateSession(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    user_id: Id
    thread_id: Id
    wait_seconds: float = Field(30.0, ge=0, le=120)
    metadata: dict[MetadataKey, MetadataValue] = Field(
        default_factory=dict,
        max_length=METADATA_MAX_KEYS,
        description="stored with the session and echoed in it; given to the claim hook",
        json_schema_extra=_string_map(
            {"minLength": 1, "maxLength": METADATA_KEY_MAX, "pattern": METADATA_PATTERN},
            {"maxLength": METADATA_VALUE_MAX, "pattern": METADATA_PATTERN},
        ),
    )
    env: dict[EnvName, EnvValue] = Field(
        default_factory=dict,
        max_length=ENV_MAX_KEYS,
        description=(
            "secret: given to the sandbox's claim hook once, never stored or logged, "
            f"not resent on a retry; names and values total at most {ENV_TOTAL_MAX} "
            "characters"
        ),
        json_schema_extra=_string_map(
            {"minLength": 1, "maxLength": ENV_NAME_MAX, "pattern": ENV_NAME_PATTERN},
            {"maxLength": ENV_VALUE_MAX, "pattern": SECRET_TEXT_PATTERN},
        ),
    )
    files: list[ClaimFileBody] = Field(
        default_factory=list,
        max_length=FILES_MAX,
        description=(
            f"secret, as env; contents total at most {FILES_TOTAL_MAX} characters; "
            "each path once, and none the directory of another ('x' and 'x/y')"
        ),
        json_schema_extra={"uniqueItems": True},
    )

    @model_validator(mode="after")
    def _totals(self) -> CreateSession:
        env_total = sum(len(k) + len(v) for k, v in self.env.items())
        if env_total > ENV_TOTAL_MAX:
            raise PydanticCustomError(
                LIMIT_CODE,
                "env: names and values total {total} characters, over {limit}",
                {"total": env_total, "limit": ENV_TOTAL_MAX},
            )
        files_total = sum(len(f.content) for f in self.files)
        if files_total > FILES_TOTAL_MAX:
            raise PydanticCustomError(
                LIMIT_CODE,
                "files: contents total {total} characters, over {limit}",
                {"total": files_total, "limit": FILES_TOTAL_MAX},
            )
        conflict = path_conflict([f.path for f in self.files])
        if conflict is not None:
            raise PydanticCustomError(
                "file_path_conflict", "files: {conflict}", {"conflict": conflict}
            )
        return self


def path_conflict(paths: list[str]) -> str | None:
    """Why these claim files cannot all be written, if they cannot: a path given twice,
    or a path that another one needs as its directory."""
    seen: set[str] = set()
    for path in paths:
        if path in seen:
            return f"{path!r} is given twice"
        seen.add(path)
    for path in paths:
        parts = path.split("/")
        for end in range(1, len(parts)):
            directory = "/".join(parts[:end])
            if directory in seen:
                return f"{directory!r} is a file and the directory of {path!r}"
    return None


# A proxy's batch: session id -> last activity. Bounded so that the largest valid batch
# still fits the body limit (app.MAX_BODY), and so is refused as 422, never as 413.
SessionKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class ActivityReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # strict: `true` is not a time (lax pydantic would read it as 1.0).
    activity: dict[SessionKey, float] = Field(max_length=ACTIVITY_BATCH_MAX, strict=True)


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


class SessionBody(BaseModel):
    id: str
    user_id: str
    thread_id: str
    state: Literal["provisioning", "ready", "ended"]
    end_reason: (
        Literal[
            "deleted",
            "idle_timeout",
            "max_lifetime",
            "reclaimed",
            "pod_failed",
            "startup_timeout",
            "claim_rejected",
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
    last_activity: LastActivity
    end_detail: EndDetailBody | None = Field(description="ended sessions only: why it ended")
    detail: str | None = Field(
        None, description="provisioning only: why the sandbox is not ready yet"
    )


class PodCounts(BaseModel):
    pending: int
    idle: int
    assigned: int
    terminating: int


class PoolConditionBody(BaseModel):
    type: ConditionType = Field(
        description="CreateRejected: the platform refuses to create sandbox pods (RBAC, "
        "an invalid template, a missing image); creates back off up to 5 minutes"
    )
    message: str = Field(description="the latest refusal, in the platform's words")
    since: str = Field(description="when it began: the first refusal since the last success")


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
    leader: bool


class RouteBody(BaseModel):
    session_id: str
    state: Literal["provisioning", "ready", "ended"]
    address: str | None
    lease_seconds: float | None


class HealthBody(BaseModel):
    status: str


class ReadyBody(BaseModel):
    status: Literal["ready", "standby", "unavailable"]
    leader: bool


_WHY = {
    400: "the body is not text (invalid UTF-8)",
    401: "missing or wrong bearer token",
    404: "no such session (or a path holding a control character)",
    409: "the thread belongs to another user",
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


def end_detail_json(detail: EndDetail | None) -> dict[str, Any] | None:
    if detail is None:
        return None
    return {
        "last_active_at": iso(detail.last_active_at),
        "activity_source": detail.activity_source.value if detail.activity_source else None,
        "busy_answer": detail.busy_answer,
        "claim_answer": detail.claim_answer,
    }


def session_json(
    session: Session,
    *,
    connect_url: str,
    token_secret: bytes,
    token_ttl: float,
    now: float,
    detail: Provisioning | None = None,
) -> dict[str, Any]:
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
        "last_activity": {
            "at": iso(session.last_active_at),
            "source": session.activity_source.value if session.activity_source else None,
            "detail": session.activity_detail,
        },
        "end_detail": end_detail_json(session.end_detail),
    }
    if session.state is not SessionState.ENDED:
        body["connect"] = {
            "url": connect_url,
            "token": issue_token(token_secret, session.id, now + token_ttl),
        }
    if session.state is SessionState.PROVISIONING:
        body["detail"] = wait_detail(detail)
    return body
