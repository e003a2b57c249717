"""The store: one SQLAlchemy async engine over PostgreSQL (asyncpg) or SQLite (aiosqlite).

The scheduler writes a whole batch of decisions in one transaction, and every such
transaction first proves that its writer still holds the leader lease at the same
epoch (a fencing token): a deposed leader that wakes up late cannot write.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ..model import EndReason, Pod, PodState, Session, SessionState
from .tables import leader_lease, pods, sessions

MIGRATIONS = Path(__file__).parent / "migrations"
LEASE_NAME = "controller"


# Built once: it runs in every scheduler round, and building the expression anew each
# time was most of the round's Python time after the commit itself.
_FENCE = (
    sa.update(leader_lease)
    .where(leader_lease.c.name == LEASE_NAME)
    .where(leader_lease.c.holder == sa.bindparam("fence_holder"))
    .where(leader_lease.c.epoch == sa.bindparam("fence_epoch"))
    .values(epoch=leader_lease.c.epoch)
)


class Deposed(Exception):
    """The writer's lease epoch is no longer current: another replica leads."""


@dataclass(frozen=True)
class Fence:
    holder: str
    epoch: int


@dataclass
class Batch:
    """Everything one scheduler round decided, to be committed at once."""

    sessions: list[Session] = field(default_factory=list)
    pods: list[Pod] = field(default_factory=list)
    forgotten_pods: list[str] = field(default_factory=list)
    last_active: dict[str, float] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.sessions or self.pods or self.forgotten_pods or self.last_active)


def _session_row(s: Session) -> dict[str, Any]:
    return {
        "id": s.id,
        "user_id": s.user_id,
        "thread_id": s.thread_id,
        "state": s.state.value,
        "end_reason": s.end_reason.value if s.end_reason else None,
        "created_at": s.created_at,
        "last_active_at": s.last_active_at,
        "ended_at": s.ended_at,
        "pod_name": s.pod_name,
        "reclaimed_session_id": s.reclaimed_session_id,
    }


def session_from_row(row: sa.Row[Any]) -> Session:
    m = row._mapping
    return Session(
        id=m["id"],
        user_id=m["user_id"],
        thread_id=m["thread_id"],
        state=SessionState(m["state"]),
        created_at=m["created_at"],
        last_active_at=m["last_active_at"],
        pod_name=m["pod_name"],
        end_reason=EndReason(m["end_reason"]) if m["end_reason"] else None,
        ended_at=m["ended_at"],
        reclaimed_session_id=m["reclaimed_session_id"],
    )


def _pod_row(p: Pod) -> dict[str, Any]:
    return {
        "name": p.name,
        "state": p.state.value,
        "session_id": p.session_id,
        "created_at": p.created_at,
        "ready_at": p.ready_at,
        "template_hash": p.template_hash,
        "address": p.address,
    }


def pod_from_row(row: sa.Row[Any]) -> Pod:
    m = row._mapping
    return Pod(
        name=m["name"],
        state=PodState(m["state"]),
        created_at=m["created_at"],
        template_hash=m["template_hash"],
        ready_at=m["ready_at"],
        address=m["address"],
        session_id=m["session_id"],
    )


class Store:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._upserts: dict[str, sa.Executable] = {}

    @classmethod
    def open(cls, url: str) -> Store:
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            # One writer at a time is SQLite's nature; a generous busy timeout turns
            # contention (a standby probing the lease) into waiting, not errors.
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs.update(pool_size=10, max_overflow=10, pool_pre_ping=True)
        engine = create_async_engine(url, **kwargs)
        if engine.dialect.name == "sqlite":
            sa.event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return cls(engine)

    async def close(self) -> None:
        await self.engine.dispose()

    # ------------------------------------------------------------ schema

    async def migrate(self) -> None:
        """Apply Alembic migrations up to head (idempotent)."""
        if self.dialect == "sqlite":
            _ensure_sqlite_dir(self.engine.url.database)
        async with self.engine.begin() as conn:
            await conn.run_sync(_upgrade)

    # ------------------------------------------------------------ reads

    async def load(self) -> tuple[list[Session], list[Pod]]:
        """Live sessions and every pod row: what a new leader rebuilds from."""
        async with self.engine.connect() as conn:
            live = await conn.execute(sa.select(sessions).where(sessions.c.state != "ended"))
            pod_rows = await conn.execute(sa.select(pods))
            return [session_from_row(r) for r in live], [pod_from_row(r) for r in pod_rows]

    async def get_session(self, session_id: str) -> Session | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(sa.select(sessions).where(sessions.c.id == session_id))
            ).first()
        return session_from_row(row) if row else None

    async def list_sessions(self, user_id: str, limit: int = 100) -> list[Session]:
        query = (
            sa.select(sessions)
            .where(sessions.c.user_id == user_id)
            .order_by(sessions.c.created_at.desc())
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [session_from_row(r) for r in await conn.execute(query)]

    # ------------------------------------------------------------ writes

    async def write(self, batch: Batch, fence: Fence | None) -> None:
        """Commit a scheduler batch in one transaction, fenced by the lease epoch."""
        async with self.engine.begin() as conn:
            if fence is not None:
                await self._check_fence(conn, fence)
            # Ended sessions first: the live-thread unique index must see the old
            # session end before a new one for the same thread is inserted.
            ordered = sorted(batch.sessions, key=lambda s: s.state is not SessionState.ENDED)
            await self._upsert(conn, sessions, "id", [_session_row(s) for s in ordered])
            await self._upsert(conn, pods, "name", [_pod_row(p) for p in batch.pods])
            if batch.forgotten_pods:
                await conn.execute(sa.delete(pods).where(pods.c.name.in_(batch.forgotten_pods)))
            if batch.last_active:
                await conn.execute(
                    sa.update(sessions)
                    .where(sessions.c.id == sa.bindparam("sid"))
                    .where(sessions.c.last_active_at < sa.bindparam("at"))
                    .values(last_active_at=sa.bindparam("at")),
                    [{"sid": k, "at": v} for k, v in batch.last_active.items()],
                )

    async def _check_fence(self, conn: AsyncConnection, fence: Fence) -> None:
        # An UPDATE, not a SELECT: it takes the row lock on PostgreSQL (and the write
        # lock on SQLite) until commit, so a takeover cannot slip in between.
        result = await conn.execute(
            _FENCE, {"fence_holder": fence.holder, "fence_epoch": fence.epoch}
        )
        if result.rowcount != 1:
            raise Deposed(f"lease epoch {fence.epoch} of {fence.holder} is no longer current")

    async def _upsert(
        self, conn: AsyncConnection, table: sa.Table, key: str, rows: list[dict[str, Any]]
    ) -> None:
        if rows:
            # One statement for all rows, executed as executemany: its compiled form is
            # cached, where a multi-VALUES statement would be compiled afresh each round.
            await conn.execute(self._upsert_statement(table, key), rows)

    def _upsert_statement(self, table: sa.Table, key: str) -> sa.Executable:
        cached = self._upserts.get(table.name)
        if cached is None:
            insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
            stmt = insert(table)
            update = {c.name: stmt.excluded[c.name] for c in table.columns if c.name != key}
            cached = self._upserts[table.name] = stmt.on_conflict_do_update(
                index_elements=[key], set_=update
            )
        return cached

    async def delete_ended_before(self, cutoff: float) -> int:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                sa.delete(sessions)
                .where(sessions.c.state == "ended")
                .where(sessions.c.ended_at < cutoff)
            )
            return int(result.rowcount)

    # ------------------------------------------------------------ leader lease

    async def acquire_lease(self, holder: str, ttl: float, now: float) -> int | None:
        """Take or renew the lease; the epoch grows each time it changes hands."""
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(sa.select(leader_lease).where(leader_lease.c.name == LEASE_NAME))
            ).first()
            if row is None:
                try:
                    async with conn.begin_nested():
                        await conn.execute(
                            sa.insert(leader_lease).values(
                                name=LEASE_NAME, holder=holder, epoch=1, expires_at=now + ttl
                            )
                        )
                except sa.exc.IntegrityError:
                    return None  # another replica inserted it first
                return 1
            m = row._mapping
            if m["holder"] == holder:
                epoch = int(m["epoch"])
            elif m["expires_at"] <= now:
                epoch = int(m["epoch"]) + 1
            else:
                return None
            # Conditional on what we read, so two standbys cannot both take over.
            result = await conn.execute(
                sa.update(leader_lease)
                .where(leader_lease.c.name == LEASE_NAME)
                .where(leader_lease.c.holder == m["holder"])
                .where(leader_lease.c.epoch == m["epoch"])
                .values(holder=holder, epoch=epoch, expires_at=now + ttl)
            )
            return epoch if result.rowcount == 1 else None

    async def release_lease(self, holder: str, epoch: int) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.update(leader_lease)
                .where(leader_lease.c.name == LEASE_NAME)
                .where(leader_lease.c.holder == holder)
                .where(leader_lease.c.epoch == epoch)
                .values(expires_at=0.0)
            )


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    # WAL lets readers proceed beside the writer; synchronous=NORMAL keeps every
    # commit safe from a process crash (what SIGKILL tests), trading only the last
    # commits on power loss, which the embedded default accepts.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _ensure_sqlite_dir(database: str | None) -> None:
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)


def _upgrade(connection: Connection) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def wait_for_database(store: Store, timeout: float) -> None:
    """Retry the first connection for a while: in a cluster the database may start later."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            async with store.engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
            return
        except (OSError, sa.exc.OperationalError, sa.exc.InterfaceError):
            if asyncio.get_running_loop().time() >= deadline:
                raise
            await asyncio.sleep(1.0)
