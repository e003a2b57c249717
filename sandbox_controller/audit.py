"""The audit log: one JSON line per state change (README "Audit log").

Events (model.AuditEvent) come from the scheduler once the round that made the change
has committed, and from anything else that changes state on an operator's behalf
through ``emit_audit``. They go to the ``sandbox_controller.audit`` logger, whatever
its handlers are; ``SANDBOX_AUDIT_LOG_FILE`` adds a file of JSON lines, written by a
thread of its own so the loop never waits on a disk.

An event names who did what to which session: ids, never a token, env, file or
metadata value. A caller is named by its token id (``caller_id``), never the token.
"""

from __future__ import annotations

import hashlib
import json
import logging
import logging.handlers
import queue
from collections.abc import Callable
from dataclasses import asdict

from .model import CONTROLLER_CALLER, AuditEvent

AUDIT_LOGGER = "sandbox_controller.audit"
# Hex digits of sha256(token) that name a token given without an id.
TOKEN_ID_HEX = 12
# A caller with no token to name (an API without a token, on loopback).
ANONYMOUS = "anonymous"

log = logging.getLogger(AUDIT_LOGGER)

AuditSink = Callable[[AuditEvent], None]


def event_json(event: AuditEvent) -> str:
    body = {"event": "audit", **asdict(event)}
    return json.dumps(body, separators=(",", ":"), sort_keys=True)


def emit(event: AuditEvent) -> None:
    """Log one event; never raises (a broken handler must not stop the caller)."""
    try:
        log.info(event_json(event))
    except Exception:  # logging reports its own handler errors; this is the rest
        logging.getLogger(__name__).exception("could not write an audit event")


def emit_audit(
    action: str,
    *,
    caller: str,
    at: float,
    user_id: str | None = None,
    org_id: str | None = None,
    session_id: str | None = None,
    reason: str | None = None,
    sink: AuditSink = emit,
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


class AuditFile:
    """JSON lines appended to a file by a thread of its own: the audit logger only
    queues the line (a QueueHandler), so no event loop waits on the disk."""

    def __init__(self, path: str) -> None:
        self._handler = logging.FileHandler(path, encoding="utf-8", delay=False)
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        lines: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self._queue_handler = logging.handlers.QueueHandler(lines)
        self._listener = logging.handlers.QueueListener(lines, self._handler)

    def start(self) -> None:
        log.setLevel(logging.INFO)
        log.addHandler(self._queue_handler)
        self._listener.start()

    def stop(self) -> None:
        log.removeHandler(self._queue_handler)
        self._listener.stop()  # writes what is queued, then ends the thread
        self._handler.close()


__all__ = [
    "AUDIT_LOGGER",
    "CONTROLLER_CALLER",
    "AuditEvent",
    "AuditFile",
    "caller_of",
    "emit",
    "emit_audit",
    "token_id",
]
