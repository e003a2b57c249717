"""How sandbox pods come and go: one small protocol, a backend per platform."""

from .base import (
    LABEL_MANAGED_BY,
    LABEL_SESSION,
    LABEL_STATE,
    LABEL_TEMPLATE_HASH,
    MANAGED_BY,
    Backend,
    BackendError,
    PodEvent,
    PodPhase,
    PodStatus,
    session_label,
)

__all__ = [
    "LABEL_MANAGED_BY",
    "LABEL_SESSION",
    "LABEL_STATE",
    "LABEL_TEMPLATE_HASH",
    "MANAGED_BY",
    "Backend",
    "BackendError",
    "PodEvent",
    "PodPhase",
    "PodStatus",
    "session_label",
]
