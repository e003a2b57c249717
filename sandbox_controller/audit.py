"""The audit log: one JSON line per state change (README "Audit log").

Events (model.AuditEvent) come from the scheduler once the round that made the change
has committed, and from anything else that changes state on an operator's behalf
through ``emit_audit``. They go to the ``sandbox_controller.audit`` logger, whatever
its handlers are, and ``SANDBOX_AUDIT_LOG_FILE`` adds a file of JSON lines; both are
written by the AuditLog's thread, so the loop only queues an event.

An event names who did what to which session: ids, never a token, env, file or
metadata value. A caller is named by its token id (``caller_id``), never the token.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
from collections.abc import Callable

from .model import CONTROLLER_CALLER, AuditEvent

AUDIT_LOGGER = "sandbox_controller.audit"
# Hex digits of sha256(token) that name a token given without an id.
TOKEN_ID_HEX = 12
# A caller with no token to name (an API without a token, on loopback).
ANONYMOUS = "anonymous"

log = logging.getLogger(AUDIT_LOGGER)

AuditSink = Callable[[AuditEvent], None]


def event_json(event: AuditEvent) -> str:
    # Field by field: dataclasses.asdict costs thirty times as much.
    body = {
        "event": "audit",
        "action": event.action,
        "caller": event.caller,
        "at": event.at,
        "session_id": event.session_id,
        "user_id": event.user_id,
        "org_id": event.org_id,
        "reason": event.reason,
        "pod": event.pod,
    }
    return json.dumps(body, separators=(",", ":"))


def emit(event: AuditEvent) -> None:
    """Log one event now, in this thread; never raises (a broken handler must not stop
    the caller). The controller's events go through its AuditLog's thread instead."""
    if not log.isEnabledFor(logging.INFO):
        return  # formatting nobody will read is not worth the loop's time
    try:
        log.info(event_json(event))
    except Exception:  # logging reports its own handler errors; this is the rest
        logging.getLogger(__name__).exception("could not write an audit event")


def send(event: AuditEvent) -> None:
    """Hand an event to the running AuditLog (its thread writes it), else log it now."""
    current = _active
    if current is not None:
        current.record(event)
    else:
        emit(event)


def emit_audit(
    action: str,
    *,
    caller: str,
    at: float,
    user_id: str | None = None,
    org_id: str | None = None,
    session_id: str | None = None,
    reason: str | None = None,
    sink: AuditSink = send,
) -> AuditEvent:
    """Record a state change made outside the scheduler's rounds, e.g. an admin action
    (``action="user_deleted"``, ``caller=caller_id(request)``, ``at=clock.now()``).
    Pass ids only. Returns the event sent to ``sink`` (the audit log by default)."""
    event = AuditEvent(
        action=action,
        caller=caller,
        at=at,
        session_id=session_id,
        user_id=user_id,
        org_id=org_id,
        reason=reason,
    )
    sink(event)
    return event


def token_id(token: str) -> str:
    """The id of an API token given without one: the first 12 hex digits of its
    sha256, so an audit line names the token and cannot be used as it."""
    return hashlib.sha256(token.encode()).hexdigest()[:TOKEN_ID_HEX]


def caller_of(state_caller: object, authorization: str) -> str:
    """Who made a request: the token id the API's authentication put on the request
    state (``request.state.caller_id``), else the id of its bearer token."""
    if isinstance(state_caller, str) and state_caller:
        return state_caller
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token_id(token.strip())
    return ANONYMOUS


class AuditLog:
    """The process's audit writer: ``record`` only queues the event, and a thread of its
    own formats it and logs it (and appends it to ``path``, if set), so the loop never
    formats, waits on a handler, or waits on a disk."""

    def __init__(self, path: str | None = None) -> None:
        self._events: queue.SimpleQueue[AuditEvent | None] = queue.SimpleQueue()
        self._file: logging.Handler | None = None
        if path is not None:
            self._file = logging.FileHandler(path, encoding="utf-8")
            self._file.setFormatter(logging.Formatter("%(message)s"))
        self._thread: threading.Thread | None = None

    def record(self, event: AuditEvent) -> None:
        self._events.put(event)

    def start(self) -> None:
        global _active
        # Audit lines are written even where SANDBOX_LOG_LEVEL hides other info lines.
        log.setLevel(logging.INFO)
        if self._file is not None:
            log.addHandler(self._file)
        self._thread = threading.Thread(target=self._write, name="audit-log", daemon=True)
        self._thread.start()
        _active = self

    def stop(self) -> None:
        """Write what is queued, then end the thread."""
        global _active
        if _active is self:
            _active = None
        if self._thread is not None:
            self._events.put(None)
            self._thread.join(timeout=10.0)
            self._thread = None
        if self._file is not None:
            log.removeHandler(self._file)
            self._file.close()

    def _write(self) -> None:
        while (event := self._events.get()) is not None:
            emit(event)


_active: AuditLog | None = None


__all__ = [
    "AUDIT_LOGGER",
    "CONTROLLER_CALLER",
    "AuditEvent",
    "AuditLog",
    "caller_of",
    "emit",
    "emit_audit",
    "send",
    "token_id",
]
