"""What a client may send: the request bodies (POST /sessions with its claim, a proxy's
activity batch), their ids, and the limits a claim is held to (README, "Bring your own
sandbox image"). The OpenAPI document states the same limits, from these models."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ..model import ACTIVITY_BATCH_MAX
from ..templates import parse_resources
from ..wire_errors import ErrorCode
from .badbytes import unstorable

# An id is 1 to 253 characters, none of them a control character (what no store can
# keep: badbytes.unstorable), and not only whitespace. Unicode is welcome. The pattern
# says the same for the schema (Python ``re`` and ECMA regex alike); a lone surrogate,
# which no UTF-8 text can hold, is refused too but left out of it.
ID_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
ID_MAX = 253
# Longer than any plan's name (plans.py); the name itself is checked against the plans.
PLAN_NAME_MAX = 63


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
LIMIT_CODE = ErrorCode.CLAIM_LIMIT_EXCEEDED.value

# A template's name (templates.py: a DNS label) and a Kubernetes quantity (2, 500m, 4Gi).
TEMPLATE_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$"
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


class ResourcesBody(BaseModel):
    """CPU and memory as Kubernetes quantities, within the template's maxResources."""

    model_config = ConfigDict(extra="forbid", strict=True)

    cpu: str | None = Field(None, max_length=32, pattern=QUANTITY_PATTERN, examples=["2"])
    memory: str | None = Field(None, max_length=32, pattern=QUANTITY_PATTERN, examples=["4Gi"])

    @model_validator(mode="after")
    def _amounts(self) -> ResourcesBody:
        try:
            parse_resources(self.model_dump())
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        return self


class CreateSession(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    user_id: Id
    thread_id: Id
    wait_seconds: float = Field(30.0, ge=0, le=120)
    org_id: Id | None = Field(
        None,
        description="the org the user belongs to; a thread id is unique per org and user, "
        "and the plan's org limits bind the org (README 'Orgs and plans')",
    )
    plan: Annotated[str, StringConstraints(max_length=PLAN_NAME_MAX)] | None = Field(
        None,
        description="a plan of SANDBOX_PLANS_FILE; none: the deployment's limits "
        "(unknown: 422 unknown_plan)",
    )
    template: str | None = Field(
        None,
        max_length=63,
        pattern=TEMPLATE_PATTERN,
        description="the sandbox template (absent: the default one); unknown: 422 unknown_template",
    )
    resources: ResourcesBody | None = Field(
        None,
        description="resources of its own, within the template's maxResources (else 422 "
        "resources_out_of_bounds); other than the template's own, it is served cold",
    )
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
        check_claim_totals(self.env, self.files)
        return self


class ResumeSession(BaseModel):
    """POST /sessions/{id}/resume: how long to wait for it to be ready, and the env and
    files its new sandbox's claim gets (none unless sent again: they are never kept)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    wait_seconds: float = Field(30.0, ge=0, le=120)
    env: dict[EnvName, EnvValue] = CreateSession.model_fields["env"]  # type: ignore[assignment]
    files: list[ClaimFileBody] = CreateSession.model_fields["files"]  # type: ignore[assignment]

    @model_validator(mode="after")
    def _totals(self) -> ResumeSession:
        check_claim_totals(self.env, self.files)
        return self


def check_claim_totals(env: dict[str, str], files: list[ClaimFileBody]) -> None:
    """The claim's env and files within their totals, each path once."""
    env_total = sum(len(k) + len(v) for k, v in env.items())
    if env_total > ENV_TOTAL_MAX:
        raise PydanticCustomError(
            LIMIT_CODE,
            "env: names and values total {total} characters, over {limit}",
            {"total": env_total, "limit": ENV_TOTAL_MAX},
        )
    files_total = sum(len(f.content) for f in files)
    if files_total > FILES_TOTAL_MAX:
        raise PydanticCustomError(
            LIMIT_CODE,
            "files: contents total {total} characters, over {limit}",
            {"total": files_total, "limit": FILES_TOTAL_MAX},
        )
    conflict = path_conflict([f.path for f in files])
    if conflict is not None:
        raise PydanticCustomError("file_path_conflict", "files: {conflict}", {"conflict": conflict})


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
