"""The store: sessions, pods and the leader lease, in PostgreSQL or SQLite.

Every operation is a plain function over a SQLAlchemy ``Connection``, run in one
transaction by the engine that suits the database (see ``engines.py``): PostgreSQL
through asyncpg with no thread, SQLite on threads of its own, one hop per
transaction. The scheduler writes a whole batch of decisions in one transaction,
and every such transaction first proves that its writer still holds the leader
lease at the same epoch (a fencing token): a deposed leader that wakes up late
cannot write.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from ..aiotime import Backoff, sleep_or_stop
from ..clock import Clock
from ..model import (
    DEFAULT_TEMPLATE,
    ActivitySource,
    EndDetail,
    EndReason,
    Pod,
    PodState,
    Resources,
    Session,
    SessionPage,
    SessionQuery,
    SessionState,
    Snapshot,
)
from . import egress
from .engines import AsyncioEngine, Engine, open_engine
from .pg_write import PgBatchWriter
from .schema import MIGRATIONS as MIGRATIONS
from .schema import SchemaState as SchemaState
from .schema import UnknownRevision as UnknownRevision
from .schema import current_revision, migrate_to, schema_state
from .tables import leader_lease, pods, session_secrets, sessions

T = TypeVar("T")

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


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds the leader lease, at which epoch, until when (wall-clock seconds)."""

    holder: str
    epoch: int
    expires_at: float


@dataclass
class Batch:
    """Everything one scheduler round decided, to be committed at once."""

    sessions: list[Session] = field(default_factory=list)
    pods: list[Pod] = field(default_factory=list)
    forgotten_pods: list[str] = field(default_factory=list)
    # New sessions' egress secrets, sealed (session_secrets rows), written with the
    # session's first row; a session that ends with secrets loses them in its ending's
    # transaction.
    secrets: list[dict[str, Any]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.sessions or self.pods or self.forgotten_pods or self.secrets)


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
        "session_metadata": json.dumps(s.metadata) if s.metadata else None,
        "activity_source": s.activity_source.value if s.activity_source else None,
        "activity_detail": s.activity_detail,
        "end_detail": json.dumps(s.end_detail.as_dict()) if s.end_detail else None,
        "org_id": s.org_id,
        "plan": s.plan,
        "template": s.template,
        "resources": _resources_text(s.resources),
        "egress_allow": json.dumps(list(s.egress_allow)) if s.egress_allow else None,
        # The archive's record: written in the round that suspends the session, cleared
        # in the one that resumes or ends it (scheduler/suspension.py).
        "snapshot_key": s.snapshot.key if s.snapshot else None,
        "snapshot_bytes": s.snapshot.bytes if s.snapshot else None,
        "snapshot_taken_at": s.snapshot.taken_at if s.snapshot else None,
        "snapshot_expires_at": s.snapshot.expires_at if s.snapshot else None,
    }


def _resources_text(resources: Resources | None) -> str | None:
    return json.dumps(resources.as_dict()) if resources else None


def _resources_of(text: str | None) -> Resources | None:
    """A row's resources (NULL: the template's own)."""
    if not text:
        return None
    data = json.loads(text)
    return Resources(data.get("cpu"), data.get("memory"))


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
        metadata=json.loads(m["session_metadata"]) if m["session_metadata"] else {},
        activity_source=ActivitySource(m["activity_source"]) if m["activity_source"] else None,
        activity_detail=m["activity_detail"],
        end_detail=EndDetail.from_dict(json.loads(m["end_detail"])) if m["end_detail"] else None,
        org_id=m["org_id"],
        plan=m["plan"],
        template=m["template"] or DEFAULT_TEMPLATE,  # NULL: from before templates
        resources=_resources_of(m["resources"]),
        egress_allow=tuple(json.loads(m["egress_allow"])) if m["egress_allow"] else (),
        snapshot=_snapshot_of(m),
    )


def _snapshot_of(m: Any) -> Snapshot | None:
    if m["snapshot_key"] is None:
        return None
    return Snapshot(
        m["snapshot_key"],
        int(m["snapshot_bytes"] or 0),
        float(m["snapshot_taken_at"] or 0.0),
        float(m["snapshot_expires_at"] or 0.0),
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
        "template": p.template,
        "resources": _resources_text(p.resources),
    }


def same_pod_row(pod: Pod, row: Pod) -> bool:
    """Whether ``pod`` would be written as ``row`` already is (no write needed)."""
    return _pod_row(pod) == _pod_row(row)


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
        template=m["template"] or DEFAULT_TEMPLATE,
        resources=_resources_of(m["resources"]),
    )


class Store:
    def __init__(self, engine: Engine, url: str | None = None) -> None:
        self._engine = engine
        self._url = url  # for migrations, on an engine without timeouts
        self.dialect = engine.dialect
        insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        # One statement per table for all rows, executed as executemany: its compiled
        # form is cached, where a multi-VALUES statement would be compiled each round.
        self._upsert_sessions = _upsert(insert, sessions, "id")
        self._upsert_pods = _upsert(insert, pods, "name")
        self._pg_write: PgBatchWriter | None = None
        if isinstance(engine, AsyncioEngine) and self.dialect == "postgresql":
            self._pg_write = PgBatchWriter(
                engine.engine.dialect,
                fence=_FENCE,
                upsert_sessions=self._upsert_sessions,
                upsert_pods=self._upsert_pods,
            )

    @classmethod
    def open(cls, url: str, timeout: float | None = None) -> Store:
        """``timeout`` bounds every wait on the database (see engines.py)."""
        return cls(open_engine(url, timeout), url)

    async def close(self) -> None:
        await self._engine.close()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(connection, *args)`` in one transaction: committed if it returns."""
        return await self._engine.run(fn, *args)

    async def ping(self) -> None:
        await self.run(lambda conn: conn.execute(sa.text("SELECT 1")))

    # ------------------------------------------------------------ schema

    async def migrate(self, to: str = "head") -> None:
        """Apply Alembic migrations up to head (idempotent), or up or down to the
        revision ``to`` (a rollback: ``sandbox-controller migrate --to 0002``). Without
        the store's timeouts: a migration may rightly take longer than any one
        statement should."""
        if self._url is None or self.dialect == "sqlite":
            await self.run(migrate_to, to)  # SQLite: one connection, the store's own
            return
        engine = open_engine(self._url)
        try:
            await engine.run(migrate_to, to)
        finally:
            await engine.close()

    async def revision(self) -> str | None:
        """The database's schema revision (None: an empty database)."""
        return await self.run(current_revision)

    async def schema(self) -> SchemaState:
        """Whether the database's schema is one this version knows (see SchemaState)."""
        return await self.run(schema_state)

    # ------------------------------------------------------------ reads

    async def load(self) -> tuple[list[Session], list[Pod]]:
        """Live sessions and every pod row: what a new leader rebuilds from."""

        def load(conn: Connection) -> tuple[list[Session], list[Pod]]:
            live = conn.execute(sa.select(sessions).where(sessions.c.state != "ended"))
            pod_rows = conn.execute(sa.select(pods))
            found = [session_from_row(r) for r in live]
            refs = egress.secret_refs(conn, {s.id for s in found})
            for session in found:
                session.secrets = refs.get(session.id, ())
            return found, [pod_from_row(r) for r in pod_rows]

        return await self.run(load)

    async def session_secrets(self, session_id: str) -> list[dict[str, Any]]:
        """A session's egress secret rows (values sealed), in name order."""
        return await self.run(egress.secret_rows, session_id)

    async def record_denials(self, rows: list[dict[str, Any]], keep: int) -> None:
        """Append the egress proxy's denials; keep only each session's last ``keep``."""
        await self.run(egress.record_denials, rows, keep)

    async def denials(self, session_id: str, limit: int) -> list[dict[str, Any]]:
        """A session's last denials, oldest first."""
        return await self.run(egress.denials, session_id, limit)

    async def get_session(self, session_id: str) -> Session | None:
        query = sa.select(sessions).where(sessions.c.id == session_id)
        row = await self.run(lambda conn: conn.execute(query).first())
        return session_from_row(row) if row else None

    async def list_sessions(self, user_id: str, limit: int = 100) -> list[Session]:
        query = (
            sa.select(sessions)
            .where(sessions.c.user_id == user_id)
            .order_by(sessions.c.created_at.desc())
            .limit(limit)
        )
        return await self.run(lambda conn: [session_from_row(r) for r in conn.execute(query)])

    async def query_sessions(self, query: SessionQuery) -> SessionPage:
        """A page of sessions, newest first (created_at, then id, both descending)."""
        columns = sessions.c
        statement = sa.select(sessions)
        if query.user_id is not None:
            statement = statement.where(columns.user_id == query.user_id)
        if query.states:
            statement = statement.where(columns.state.in_([s.value for s in query.states]))
        if query.created_after is not None:
            statement = statement.where(columns.created_at >= query.created_after)
        if query.created_before is not None:
            statement = statement.where(columns.created_at < query.created_before)
        if query.after is not None:
            at, sid = query.after
            statement = statement.where(
                sa.or_(columns.created_at < at, sa.and_(columns.created_at == at, columns.id < sid))
            )
        statement = statement.order_by(columns.created_at.desc(), columns.id.desc())
        # One row more than asked: whether a next page exists, without a count.
        statement = statement.limit(query.limit + 1)
        rows = await self.run(lambda conn: [session_from_row(r) for r in conn.execute(statement)])
        page = rows[: query.limit]
        more = len(rows) > query.limit
        return SessionPage(page, (page[-1].created_at, page[-1].id) if more and page else None)

    async def recent_ended(self, limit: int) -> list[Session]:
        """The last sessions to end, the latest first."""
        statement = (
            sa.select(sessions)
            .where(sessions.c.state == "ended")
            .order_by(sessions.c.ended_at.desc())
            .limit(limit)
        )
        return await self.run(lambda conn: [session_from_row(r) for r in conn.execute(statement)])

    # ------------------------------------------------------------ writes

    async def write(self, batch: Batch, fence: Fence | None) -> None:
        """Commit a scheduler batch in one transaction, fenced by the lease epoch."""
        if self._pg_write is None or not isinstance(self._engine, AsyncioEngine):
            await self.run(self._write, batch, fence)
            return
        # PostgreSQL: the same transaction on the driver itself (pg_write.py).
        ordered = sorted(batch.sessions, key=lambda s: s.state is not SessionState.ENDED)
        fenced = (
            None if fence is None else {"fence_holder": fence.holder, "fence_epoch": fence.epoch}
        )
        current = await self._engine.run_driver(
            self._pg_write,
            fenced,
            ordered,
            [_session_row(s) for s in ordered],
            [_pod_row(p) for p in batch.pods],
            batch.forgotten_pods,
            batch.secrets,
        )
        if not current and fence is not None:
            raise Deposed(f"lease epoch {fence.epoch} of {fence.holder} is no longer current")

    def _write(self, conn: Connection, batch: Batch, fence: Fence | None) -> None:
        if fence is not None:
            # An UPDATE, not a SELECT: it takes the row lock on PostgreSQL (and the
            # write lock on SQLite) until commit, so a takeover cannot slip in between.
            result = conn.execute(
                _FENCE, {"fence_holder": fence.holder, "fence_epoch": fence.epoch}
            )
            if result.rowcount != 1:
                raise Deposed(f"lease epoch {fence.epoch} of {fence.holder} is no longer current")
        if batch.sessions:
            # Ended sessions first: the live-thread unique index must see the old
            # session end before a new one for the same thread is inserted.
            ordered = sorted(batch.sessions, key=lambda s: s.state is not SessionState.ENDED)
            conn.execute(self._upsert_sessions, [_session_row(s) for s in ordered])
        if batch.pods:
            conn.execute(self._upsert_pods, [_pod_row(p) for p in batch.pods])
        if batch.forgotten_pods:
            conn.execute(sa.delete(pods).where(pods.c.name.in_(batch.forgotten_pods)))
        if batch.secrets:
            conn.execute(sa.insert(session_secrets), batch.secrets)
        # A secret lives no longer than its session: gone in the transaction that ends it.
        ended = [s.id for s in batch.sessions if s.secrets and s.state is SessionState.ENDED]
        if ended:
            conn.execute(sa.delete(session_secrets).where(session_secrets.c.session_id.in_(ended)))

    async def delete_ended_before(self, cutoff: float) -> int:
        old = (sessions.c.state == "ended") & (sessions.c.ended_at < cutoff)
        return await self.run(egress.delete_sessions, old)

    async def purge_user(self, user_id: str) -> int:
        """Delete the user's ended sessions (DELETE /users/{id}); how many rows went.
        Live rows stay: the scheduler ends them first, and no live row may vanish
        under the pool that holds it."""
        theirs = (sessions.c.user_id == user_id) & (sessions.c.state == "ended")
        return await self.run(egress.delete_sessions, theirs)

    # ------------------------------------------------------------ leader lease

    async def acquire_lease(
        self, holder: str, ttl: float, now: float, *, succeeds: str | None = None
    ) -> int | None:
        """Take or renew the lease; the epoch grows each time it changes hands.
        ``succeeds``: a holder prefix whose every holder is known dead (this pod's
        earlier processes): a lease one of them still holds is taken at once."""
        return await self.run(_acquire_lease, holder, ttl, now, succeeds)

    async def lease_holder(self) -> LeaseHolder | None:
        """The lease as the database has it (None if never taken): for a standby to say
        who leads."""
        statement = sa.select(leader_lease).where(leader_lease.c.name == LEASE_NAME)

        def read(conn: Connection) -> LeaseHolder | None:
            row = conn.execute(statement).first()
            if row is None:
                return None
            m = row._mapping
            return LeaseHolder(str(m["holder"]), int(m["epoch"]), float(m["expires_at"]))

        return await self.run(read)

    async def release_lease(self, holder: str, epoch: int) -> None:
        statement = (
            sa.update(leader_lease)
            .where(leader_lease.c.name == LEASE_NAME)
            .where(leader_lease.c.holder == holder)
            .where(leader_lease.c.epoch == epoch)
            .values(expires_at=0.0)
        )
        await self.run(lambda conn: conn.execute(statement))


def _upsert(insert: Any, table: sa.Table, key: str) -> sa.Executable:
    stmt = insert(table)
    update = {c.name: stmt.excluded[c.name] for c in table.columns if c.name != key}
    return cast(sa.Executable, stmt.on_conflict_do_update(index_elements=[key], set_=update))


def _acquire_lease(
    conn: Connection, holder: str, ttl: float, now: float, succeeds: str | None = None
) -> int | None:
    row = conn.execute(sa.select(leader_lease).where(leader_lease.c.name == LEASE_NAME)).first()
    if row is None:
        try:
            with conn.begin_nested():
                conn.execute(
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
    elif m["expires_at"] <= now or (succeeds is not None and m["holder"].startswith(succeeds)):
        epoch = int(m["epoch"]) + 1  # a new epoch fences whatever the last holder sent
    else:
        return None
    # Conditional on what we read, so two standbys cannot both take over.
    result = conn.execute(
        sa.update(leader_lease)
        .where(leader_lease.c.name == LEASE_NAME)
        .where(leader_lease.c.holder == m["holder"])
        .where(leader_lease.c.epoch == m["epoch"])
        .values(holder=holder, epoch=epoch, expires_at=now + ttl)
    )
    return epoch if result.rowcount == 1 else None


async def wait_for_database(
    store: Store, clock: Clock, stop: asyncio.Event, timeout: float = 60.0
) -> None:
    """Retry the first connection for a while: in a cluster the database may start later.
    Gives up after ``timeout`` seconds of ``clock`` time (raising the last error), and at
    once if ``stop`` is set (raising it too: there is nothing to start up for)."""
    backoff = Backoff(base=0.5, cap=5.0)
    deadline = clock.monotonic() + timeout
    attempt = 0
    while True:
        try:
            await store.ping()
            return
        except (OSError, sa.exc.OperationalError, sa.exc.InterfaceError):
            left = deadline - clock.monotonic()
            if left <= 0:
                raise
            delay = min(backoff.delay(attempt), left)
            attempt += 1
            if await sleep_or_stop(clock, delay, stop):
                raise
