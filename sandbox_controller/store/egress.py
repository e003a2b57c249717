"""The store's egress records (issue 19): sessions' sealed secrets and the egress
proxy's denials. Plain functions over a Connection, run by Store in one transaction."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..model import SecretRef
from .tables import egress_denials, session_secrets, sessions


def secret_rows(conn: Connection, session_id: str) -> list[dict[str, Any]]:
    query = (
        sa.select(session_secrets)
        .where(session_secrets.c.session_id == session_id)
        .order_by(session_secrets.c.name)
    )
    return [dict(r._mapping) for r in conn.execute(query)]


def secret_refs(conn: Connection, ids: set[str]) -> dict[str, tuple[SecretRef, ...]]:
    """The secrets (names, hosts, headers: no value) of these sessions."""
    if not ids:
        return {}
    c = session_secrets.c
    query = sa.select(c.session_id, c.name, c.hosts, c.header).order_by(c.session_id, c.name)
    found: dict[str, list[SecretRef]] = {}
    for row in conn.execute(query):
        if row.session_id in ids:
            ref = SecretRef(row.name, tuple(json.loads(row.hosts)), row.header)
            found.setdefault(row.session_id, []).append(ref)
    return {sid: tuple(refs) for sid, refs in found.items()}


def record_denials(conn: Connection, rows: list[dict[str, Any]], keep: int) -> None:
    """Append, then prune each session of the batch to its last ``keep`` (one
    statement per session)."""
    conn.execute(sa.insert(egress_denials), rows)
    for session_id in {r["session_id"] for r in rows}:
        newest = (
            sa.select(egress_denials.c.id)
            .where(egress_denials.c.session_id == session_id)
            .order_by(egress_denials.c.id.desc())
            .limit(keep)
        )
        conn.execute(
            sa.delete(egress_denials)
            .where(egress_denials.c.session_id == session_id)
            .where(egress_denials.c.id.not_in(newest.scalar_subquery()))
        )


def denials(conn: Connection, session_id: str, limit: int) -> list[dict[str, Any]]:
    c = egress_denials.c
    query = (
        sa.select(c.at, c.host, c.port, c.reason)
        .where(c.session_id == session_id)
        .order_by(c.id.desc())
        .limit(limit)
    )
    return [dict(r._mapping) for r in conn.execute(query)][::-1]


def delete_sessions(conn: Connection, which: sa.ColumnElement[bool]) -> int:
    """Delete ended sessions and what is kept beside them (their egress denials)."""
    ids = sa.select(sessions.c.id).where(which).scalar_subquery()
    conn.execute(sa.delete(egress_denials).where(egress_denials.c.session_id.in_(ids)))
    return int(conn.execute(sa.delete(sessions).where(which)).rowcount)
