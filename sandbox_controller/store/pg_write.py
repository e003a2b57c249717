"""A scheduler round's commit on PostgreSQL, through asyncpg itself.

The same transaction as ``Store._write`` (the fencing UPDATE, then the rows), with the
same statements, compiled once by SQLAlchemy and run on the driver's connection. Through
SQLAlchemy's execution layer (run_sync, a greenlet, the cursor adapter, parameter
processing per statement) a one-claim commit cost 1.0 ms of CPU on the shared test
machine; on the driver, 0.6 ms (medians, benchmarks/README.md). One at a time, every
claim pays one commit, so that is a tenth of a claim's CPU in the controller.

SQLite keeps ``Store._write``: tests/store runs every write test on both databases, so
the two paths are held to the same rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

from ..model import SessionState
from .tables import pods, session_secrets


class Compiled:
    """One statement as the driver takes it: its SQL with $n placeholders and the order
    of its parameters (literal values the statement carries are filled in)."""

    def __init__(self, statement: sa.Executable, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
        self.sql: str = compiled.string
        self.names: tuple[str, ...] = tuple(compiled.positiontup or ())
        self.fixed: dict[str, Any] = dict(compiled.params)

    def args(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(row[n] if n in row else self.fixed[n] for n in self.names)


class PgBatchWriter:
    """``Store._write`` for asyncpg: ``await writer(connection, batch, fence)`` inside a
    transaction the caller holds."""

    def __init__(
        self,
        dialect: Dialect,
        *,
        fence: sa.Executable,
        upsert_sessions: sa.Executable,
        upsert_pods: sa.Executable,
    ) -> None:
        self.fence = Compiled(fence, dialect)
        self.sessions = Compiled(upsert_sessions, dialect)
        self.pods = Compiled(upsert_pods, dialect)
        self.secrets = Compiled(sa.insert(session_secrets), dialect)
        self.forget_pods = f"DELETE FROM {pods.name} WHERE name = ANY($1::VARCHAR[])"
        self.forget_secrets = (
            f"DELETE FROM {session_secrets.name} WHERE session_id = ANY($1::VARCHAR[])"
        )

    async def __call__(
        self,
        conn: Any,  # asyncpg.Connection
        fenced: Mapping[str, Any] | None,
        sessions: Sequence[Any],
        session_rows: Sequence[Mapping[str, Any]],
        pod_rows: Sequence[Mapping[str, Any]],
        forgotten_pods: Sequence[str],
        secrets: Sequence[Mapping[str, Any]],
    ) -> bool:
        """False if the fence found another leader (nothing written)."""
        if fenced is not None:
            status = await conn.execute(self.fence.sql, *self.fence.args(fenced))
            if status != "UPDATE 1":
                return False
        if session_rows:
            await conn.executemany(self.sessions.sql, [self.sessions.args(r) for r in session_rows])
        if pod_rows:
            await conn.executemany(self.pods.sql, [self.pods.args(r) for r in pod_rows])
        if forgotten_pods:
            await conn.execute(self.forget_pods, list(forgotten_pods))
        if secrets:
            await conn.executemany(self.secrets.sql, [self.secrets.args(r) for r in secrets])
        ended = [s.id for s in sessions if s.secrets and s.state is SessionState.ENDED]
        if ended:
            await conn.execute(self.forget_secrets, ended)
        return True
