"""The backend protocol: create, delete, relabel, list, and a stream of pod events.

The scheduler never asks a backend what to do; it tells it, and learns what happened
from ``events()``. A backend reports every change of a pod it manages as a PodEvent
carrying the pod's whole current status, and ``deleted=True`` once the pod is gone.
"""

from __future__ import annotations

import enum
import hashlib
import re
import secrets
import string
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ..model import DEFAULT_TEMPLATE, Resources, Shape

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
# Set by the pod template (the chart: the release); narrows which pods are ours.
LABEL_INSTANCE = "app.kubernetes.io/instance"
MANAGED_BY = "agent-sandbox-controller"
LABEL_STATE = "agent-sandbox/state"
LABEL_SESSION = "agent-sandbox/session"
LABEL_TEMPLATE_HASH = "agent-sandbox/template-hash"
# The template a pod is made from, and the resources when not the template's own (so a
# cost tool can attribute a pod; and so a restarted controller knows its shape).
LABEL_TEMPLATE = "agent-sandbox/template"
LABEL_CPU = "agent-sandbox/cpu"
LABEL_MEMORY = "agent-sandbox/memory"
# Cost attribution: the session's org, and allow-listed metadata keys (labels.py).
LABEL_ORG = "agent-sandbox/org"
LABEL_META_PREFIX = "agent-sandbox/meta-"
# A sandbox's environment names its template, and its resources when its own.
ENV_TEMPLATE = "AGENT_SANDBOX_TEMPLATE"
ENV_CPU = "AGENT_SANDBOX_CPU"
ENV_MEMORY = "AGENT_SANDBOX_MEMORY"
# One per create call, so a retry can find the pod a lost answer was about.
LABEL_CREATE_ID = "agent-sandbox/create-id"
# On the controller's own pod while it leads: the controller Service selects it.
LABEL_LEADER = "agent-sandbox/leader"


# Every sandbox's name starts so, on every backend (Kubernetes: its generateName).
POD_NAME_PREFIX = "agent-sandbox-job-"
_NAME_ALPHABET = string.ascii_lowercase + string.digits


def new_pod_name(suffix_length: int) -> str:
    """A sandbox name for a backend that names its own (Kubernetes draws 5 characters)."""
    return POD_NAME_PREFIX + "".join(secrets.choice(_NAME_ALPHABET) for _ in range(suffix_length))


def session_label(session_id: str) -> str:
    """Label values are at most 63 characters, so pods carry a hash of the session id."""
    return hashlib.sha256(session_id.encode()).hexdigest()[:40]


class LabelState(enum.StrEnum):
    """The LABEL_STATE value: made for the warm pool, or given to a session."""

    POOL = "pool"
    ASSIGNED = "assigned"


def pool_labels(shape: Shape | None = None) -> dict[str, str]:
    """The labels of a new pod made for the warm pool, in ``shape`` (None: the default
    template's own). A backend makes the pod in the shape they say (``shape_of``)."""
    return {LABEL_STATE: LabelState.POOL.value, **shape_labels(shape)}


def shape_labels(shape: Shape | None) -> dict[str, str]:
    """The labels that say a pod's template and size (none for None)."""
    labels = {}
    if shape is not None:
        labels[LABEL_TEMPLATE] = shape.template
        if shape.resources is not None:
            if shape.resources.cpu:
                labels[LABEL_CPU] = shape.resources.cpu
            if shape.resources.memory:
                labels[LABEL_MEMORY] = shape.resources.memory
    return labels


def shape_env(shape: Shape) -> dict[str, str]:
    """What a sandbox is told of its own shape, in its environment."""
    env = {ENV_TEMPLATE: shape.template}
    if shape.resources is not None:
        if shape.resources.cpu:
            env[ENV_CPU] = shape.resources.cpu
        if shape.resources.memory:
            env[ENV_MEMORY] = shape.resources.memory
    return env


def shape_of(labels: Mapping[str, str], default_template: str = DEFAULT_TEMPLATE) -> Shape:
    """The shape a pod's labels say it was made in (no template label: the default)."""
    cpu, memory = labels.get(LABEL_CPU) or None, labels.get(LABEL_MEMORY) or None
    resources = Resources(cpu, memory) if cpu or memory else None
    return Shape(labels.get(LABEL_TEMPLATE) or default_template, resources)


def assigned_labels(session_id: str) -> dict[str, str]:
    """The labels a pod gets when it is given to ``session_id``."""
    return {LABEL_STATE: LabelState.ASSIGNED.value, LABEL_SESSION: session_label(session_id)}


_LABEL_VALUE_BAD = re.compile(r"[^A-Za-z0-9_.-]")


def label_value(value: str) -> str:
    """``value`` made a valid label value: characters outside ``[A-Za-z0-9_.-]`` become
    ``_``, at most 63 characters, starting and ending with a letter or digit ('' if
    nothing is left)."""
    cleaned = _LABEL_VALUE_BAD.sub("_", value)[:63]
    return cleaned.strip("_.-")


def attribution_labels(
    metadata: Mapping[str, str], keys: tuple[str, ...], org: str = ""
) -> dict[str, str]:
    """Cost attribution on a session's pod: its org (if any) and the allow-listed
    metadata keys, values made valid label values (an empty result is left out)."""
    labels = {}
    if org and (value := label_value(org)):
        labels[LABEL_ORG] = value
    for key in keys:
        if key in metadata and (value := label_value(metadata[key])):
            labels[LABEL_META_PREFIX + key] = value
    return labels


def _label_state(value: str | None) -> LabelState | None:
    try:
        return LabelState(value) if value else None
    except ValueError:
        return None  # someone else's word: as good as no label


class ErrorKind(enum.StrEnum):
    """What a failure means for the next attempt (kopf's TemporaryError/PermanentError).
    The backend decides, from what its platform said; the scheduler acts on it."""

    TEMPORARY = "temporary"  # overload, a conflict, no answer: trying again may work
    PERMANENT = "permanent"  # refused as asked (RBAC, an invalid template, no such image)


class BackendError(Exception):
    """A backend call failed. ``retryable``: the backend itself may try the call again
    at once; ``kind``: whether a later attempt may work without someone fixing
    something (an unclassified failure is temporary)."""

    def __init__(
        self, message: str, *, retryable: bool = True, kind: ErrorKind = ErrorKind.TEMPORARY
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.kind = kind


class LeaseLost(BackendError):
    """A write was refused before it was sent: this process may no longer hold the
    leader lease (by its own monotonic clock, with a safety margin)."""

    def __init__(self, message: str = "the leader lease may have ended") -> None:
        super().__init__(message, retryable=False)


# Called immediately before every write a backend sends (each retry included); raises
# LeaseLost when the write must not go out. A plain callable, so that backends need
# nothing from the layers above them.
WriteGuard = Callable[[], None]


def no_guard() -> None:
    """The guard of a backend that is not told of a lease (tests, tools)."""


class PodPhase(enum.StrEnum):
    PENDING = "pending"  # exists, not ready to serve yet
    READY = "ready"  # the sandbox port answers
    FAILED = "failed"  # died or will never become ready


@dataclass(frozen=True)
class PodStatus:
    """A pod as its backend sees it. The controller's labels are decoded here, as the
    status is made, into the typed fields below ``labels``: the scheduler and recovery
    read those, never a label string."""

    name: str
    phase: PodPhase
    labels: Mapping[str, str] = field(default_factory=dict)
    created_at: float = 0.0
    address: str | None = None  # "host:port" of the sandbox port, once known
    detail: str | None = None  # why it is not ready yet, in the platform's words
    unschedulable: bool = False  # no node can take it (counts as capacity blocked)
    terminating: bool = False  # deletion has begun; it still counts against capacity
    # The platform evicted it (a drain, node pressure, too much disk), in its words;
    # None: not evicted. An evicted pod is terminating or failed as well.
    evicted: str | None = None
    # Decoded from ``labels``:
    label_state: LabelState | None = field(init=False)
    session_hash: str | None = field(init=False)  # session_label() of its session
    template_hash: str | None = field(init=False)
    template: str | None = field(init=False)  # None: no label (the default template)
    resources: Resources | None = field(init=False)  # None: the template's own
    create_id: str | None = field(init=False)  # its claim secret derives from it

    def __post_init__(self) -> None:
        labels = self.labels
        decoded = {
            "label_state": _label_state(labels.get(LABEL_STATE)),
            "session_hash": labels.get(LABEL_SESSION) or None,
            "template_hash": labels.get(LABEL_TEMPLATE_HASH) or None,
            "create_id": labels.get(LABEL_CREATE_ID) or None,
            "template": labels.get(LABEL_TEMPLATE) or None,
            "resources": shape_of(labels).resources,
        }
        for name, value in decoded.items():
            object.__setattr__(self, name, value)


@dataclass(frozen=True)
class PodEvent:
    pod: PodStatus
    deleted: bool = False


@runtime_checkable
class MarksLeader(Protocol):
    """A platform where the leading controller's own pod carries a label (Kubernetes:
    the controller Service selects it, so traffic follows the lease)."""

    async def mark_leader(self, pod_name: str, leader: bool) -> None:
        """Label ``pod_name`` (this controller's pod) as the leader, clearing a stale
        label from any other controller pod; or, with ``leader=False``, remove it."""


@runtime_checkable
class HurriesForWaiters(Protocol):
    """A platform where a backend can see a new pod serve sooner than the platform
    says so (Kubernetes: by probing it rather than waiting for the kubelet's next
    probe), worth doing only while sessions wait for one."""

    def sessions_waiting(self, count: int) -> None:
        """How many sessions wait for a pod now; told after each scheduler round."""


class Backend(Protocol):
    template_hash: str
    """Hash of the (default) pod template in force; pods with another hash are from an
    old one."""
    template_hashes: dict[str, str]
    """The hash of each template by name (one entry, the default, without templates)."""

    async def start(self) -> None:
        """Begin following the pods: a fresh list (resync() is complete and current
        when this returns), then only changes after it, through events(). Called when
        this process starts to lead, and again after stop() when it leads again."""

    async def stop(self) -> None:
        """Stop following: end events(), forget the cache and every event not yet
        taken. A standby keeps no backlog; the next start() lists afresh."""

    async def create_pod(self, labels: Mapping[str, str]) -> str:
        """Create one sandbox pod and return its name (it starts out pending), in the
        shape its labels say (``shape_of``: the template, and its resources if set)."""

    async def delete_pod(self, name: str) -> None:
        """Delete a pod; deleting one that is already gone is not an error."""

    async def set_labels(self, name: str, labels: Mapping[str, str]) -> None:
        """Merge labels into a pod, for operators and for recovery after a restart."""

    async def resync(self) -> list[PodStatus]:
        """Every pod this controller manages, as the backend knows them now, as the
        base of a new scheduler: the events waiting in events() are older than this
        list (it already shows what they say) and are dropped. Replayed after it, a
        stale "pending" would read as a warm pod that stopped answering, and a
        takeover would delete a healthy pod."""

    def events(self) -> AsyncIterator[PodEvent]:
        """Changes to managed pods, in order, from start() until stop() ends them."""

    async def close(self) -> None:
        """Stop following and release connections."""
