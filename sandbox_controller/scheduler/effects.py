"""What the pool asks for after a decision: answers for callers, pods to create or
delete, rows to persist, numbers to observe. The scheduler loop carries them out."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import SandboxError
from ..model import AuditEvent, EndReason, Outcome, Shape


@dataclass(frozen=True)
class ClaimCall:
    """One claim attempt for the loop to carry out (effect_calls.py ``_claim``).
    ``request_id`` names the POST /sessions call whose env and files go with it;
    ``secrets``: the session holds egress secrets, whose placeholders every claim's env
    carries (its first and each resume's: the same ones)."""

    attempt: int
    session_id: str
    user_id: str
    thread_id: str
    pod_name: str
    address: str
    create_id: str
    request_id: int | None
    metadata: dict[str, str] = field(default_factory=dict)
    secrets: bool = False


@dataclass(frozen=True)
class SnapshotCall:
    """Take this session's snapshot into the store under ``key`` (suspension.py)."""

    attempt: int
    session_id: str
    pod_name: str
    address: str
    create_id: str
    key: str


@dataclass(frozen=True)
class RestoreCall:
    """Stream this session's archive into its new pod's restore hook (suspension.py)."""

    attempt: int
    session_id: str
    pod_name: str
    address: str
    create_id: str
    key: str


@dataclass(frozen=True)
class StatusCheck:
    """Ask this session's sandbox whether it is busy (GET /_sandbox/status)."""

    session_id: str
    address: str
    create_id: str


@dataclass(frozen=True)
class Release:
    """Tell this pod's sandbox it is about to be deleted (POST /_sandbox/release)."""

    session_id: str
    address: str
    create_id: str
    reason: str


@dataclass(frozen=True)
class Answer:
    """What a waiting POST /sessions caller is told, once its writes are committed:
    a session (``session_id``) or, for a refusal, the domain error it is raised as."""

    request_id: int
    outcome: Outcome
    session_id: str | None = None
    reclaimed_session_id: str | None = None
    error: SandboxError | None = None


@dataclass
class Outbox:
    answers: list[Answer] = field(default_factory=list)
    # A pod to create for each, in its shape (template and resources).
    create_shapes: list[Shape] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    # The release hook to call before the delete of these pods (those that served).
    releases: dict[str, Release] = field(default_factory=dict)
    # Sandboxes to ask whether they are busy before an idle session ends.
    status_checks: list[StatusCheck] = field(default_factory=list)
    labels: dict[str, dict[str, str]] = field(default_factory=dict)
    dirty_sessions: set[str] = field(default_factory=set)
    dirty_pods: set[str] = field(default_factory=set)
    forgotten_pods: set[str] = field(default_factory=set)
    startup_seconds: list[float] = field(default_factory=list)
    ended: list[EndReason] = field(default_factory=list)
    # Claim hook calls to make (claiming.py), claims that failed (a metric), and the
    # requests whose env and files the loop may now forget.
    claims: list[ClaimCall] = field(default_factory=list)
    claim_failures: int = 0
    payloads_done: list[int] = field(default_factory=list)
    # State changes for the audit log and the webhooks, sent once the round commits.
    audit: list[AuditEvent] = field(default_factory=list)
    # Suspend and resume (suspension.py): hook calls to make, archives whose record this
    # round removed (deleted from the store after the commit), and numbers to observe.
    snapshots: list[SnapshotCall] = field(default_factory=list)
    restores: list[RestoreCall] = field(default_factory=list)
    archive_deletes: list[str] = field(default_factory=list)
    snapshot_outcomes: list[str] = field(default_factory=list)
    snapshot_bytes: list[int] = field(default_factory=list)
    suspend_seconds: list[float] = field(default_factory=list)
    resume_seconds: list[float] = field(default_factory=list)

    @property
    def creates(self) -> int:
        return len(self.create_shapes)
