"""``trace export``: real sessions from the store, as a trace (trace.py's format).

The store keeps, per session, its creation, its last activity and its end (time and
reason), so each session becomes an ``open``, one ``activity`` at its last-activity
point (when later than the open), and a ``close`` if it has ended. Ended sessions are
kept for ``SANDBOX_ENDED_RETENTION`` (7 days by default), which bounds ``--since``.

User and thread ids are pseudonymised by default with a keyed hash whose key is
random per export: the same user maps to the same pseudonym within one trace (so
per-user limits replay faithfully) and to nothing that can be looked up.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from ..store import Store
from ..store.tables import sessions
from .trace import EventKind, TraceEvent


def pseudonymiser(prefix: str, key: bytes) -> Callable[[str], str]:
    def pseudonym(value: str) -> str:
        digest = hmac.new(key, value.encode(), hashlib.sha256).hexdigest()
        return f"{prefix}-{digest[:12]}"

    return pseudonym


def session_events(
    rows: list[dict[str, Any]], *, keep_ids: bool = False, key: bytes | None = None
) -> list[TraceEvent]:
    """Rows of the sessions table (oldest first) as trace events, times from the first."""
    if not rows:
        return []
    key = key or secrets.token_bytes(32)
    user_of = (lambda v: v) if keep_ids else pseudonymiser("u", key)
    thread_of = (lambda v: v) if keep_ids else pseudonymiser("t", key)
    start = min(r["created_at"] for r in rows)
    events = []
    for row in rows:
        user, thread = user_of(row["user_id"]), thread_of(row["thread_id"])
        created = row["created_at"] - start
        template = row.get("template") or ""
        events.append(TraceEvent(created, EventKind.OPEN, user, thread, "", template))
        last = row["last_active_at"] - start
        ended = row["ended_at"] - start if row["ended_at"] is not None else None
        if last > created and (ended is None or last < ended):
            events.append(TraceEvent(last, EventKind.ACTIVITY, user, thread))
        if ended is not None:
            reason = row["end_reason"] or "deleted"
            events.append(TraceEvent(ended, EventKind.CLOSE, user, thread, reason))
    events.sort(key=lambda e: e.time)
    return events


async def export_trace(
    database_url: str, since: float, now: float, *, keep_ids: bool = False
) -> list[TraceEvent]:
    """Sessions created in the last ``since`` seconds, as a trace."""
    query = (
        sa.select(sessions)
        .where(sessions.c.created_at >= now - since)
        .order_by(sessions.c.created_at)
    )
    store = Store.open(database_url)
    try:
        rows = await store.run(lambda conn: [dict(r._mapping) for r in conn.execute(query)])
    finally:
        await store.close()
    return session_events(rows, keep_ids=keep_ids)
