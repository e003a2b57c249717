"""How the store's transactions reach the database.

The store writes each operation as a plain function over a SQLAlchemy ``Connection``;
an engine here runs that function inside one transaction:

- PostgreSQL: SQLAlchemy's async engine over asyncpg. The function runs through
  ``run_sync``, so its statements go out as awaits on the event loop, no thread.
- SQLite: the standard library's sqlite3 (SQLAlchemy's pysqlite dialect) on one
  thread of its own, so a whole transaction is one hop to that thread and back.
  Through aiosqlite every statement was three hops (cursor, execute, close) and the
  commit of a claim eleven: 1.4 ms where one hop takes 0.3 ms, and each hop another
  chance to wait for a busy event loop. One thread and one connection also mean the
  controller's own transactions never contend for SQLite's write lock.

Every wait is bounded by ``timeout`` (SANDBOX_STORE_TIMEOUT): connecting, each
statement, a lock, SQLite's busy wait. A database that does not answer is then an
error within seconds, which the controller turns into 503 store_unavailable, not a
hung request. ``timeout=None`` (migrations, which may rightly run long) waits forever.

``SANDBOX_DATABASE_URL`` keeps its documented forms: ``sqlite+aiosqlite:///path``
(or ``sqlite:///path``) and ``postgresql+asyncpg://...`` (or ``postgresql://...``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

import asyncpg
import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import create_async_engine

T = TypeVar("T")
log = logging.getLogger(__name__)

# What asyncpg raises when the server or the network ended the connection (a server
# that ends an idle connection can leave asyncpg's protocol mid-operation: an
# InternalClientError at the next statement).
_LOST: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.AdminShutdownError,
    ConnectionError,
)


class Engine(Protocol):
    dialect: str

    async def run(self, fn: Callable[..., T], *args: Any) -> T: ...

    async def close(self) -> None: ...


def open_engine(url: str, timeout: float | None = None) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return SqliteEngine(parsed.set(drivername="sqlite"), timeout)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+asyncpg")
    return AsyncioEngine(parsed, timeout)


def _postgres_timeouts(timeout: float) -> dict[str, Any]:
    """asyncpg's connect and statement timeouts, and the server's own limits on this
    session. ``idle_in_transaction_session_timeout`` is what frees the lease row when
    a controller is frozen (SIGSTOP, a paused VM) inside a transaction that holds its
    lock: the server ends that session, so a standby can take over. ``lock_timeout``
    keeps a waiting statement from queueing behind such a lock for longer."""
    millis = str(max(1, round(timeout * 1000)))
    return {
        "timeout": timeout,
        "command_timeout": timeout,
        "server_settings": {
            "lock_timeout": millis,
            "idle_in_transaction_session_timeout": millis,
        },
    }


class AsyncioEngine:
    """A database with an asyncio driver (PostgreSQL over asyncpg).

    No ping before each use (``pool_pre_ping``): that is one more round trip on every
    transaction, a third of a claim's commit. Instead a transaction that finds its
    connection dropped (the server restarted, a proxy timed it out) runs once more on
    a fresh one; SQLAlchemy has by then discarded every connection as old as the
    dropped one. Running twice is safe because every transaction of the store is
    idempotent: upserts of whole rows, a fencing UPDATE that changes nothing, deletes,
    and activity that only moves forward.
    """

    def __init__(self, url: URL, timeout: float | None = None) -> None:
        if timeout is None:
            self.engine = create_async_engine(url, pool_size=10, max_overflow=10)
        else:
            self.engine = create_async_engine(
                url,
                pool_size=10,
                max_overflow=10,
                pool_timeout=timeout,
                connect_args=_postgres_timeouts(timeout),
            )
        self.dialect = self.engine.dialect.name

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await self._run_once(fn, args)
        except sa.exc.DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            log.info("database connection lost (%s); retrying on a new one", exc.orig)
            return await self._run_once(fn, args)

    async def _run_once(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        async with self.engine.begin() as conn:
            return await conn.run_sync(fn, *args)

    async def run_driver(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await fn(driver_connection, *args)`` in one transaction on the driver's own
        connection (asyncpg), from the same pool, past SQLAlchemy's execution layer
        (pg_write.py says why). A connection the server dropped is dropped from the pool
        and the transaction runs once more on another, as ``run`` does."""
        for attempt in (0, 1):
            async with self.engine.connect() as conn:
                raw = await conn.get_raw_connection()
                driver = raw.driver_connection
                if driver is None or driver.is_closed():
                    await conn.invalidate()
                    continue  # seen closed before use: nothing was sent
                try:
                    async with driver.transaction():
                        return await fn(driver, *args)
                except _LOST as exc:
                    # Never back into the pool: its protocol may be mid-operation.
                    await conn.invalidate(exc)
                    if attempt:
                        raise _as_sqlalchemy(exc) from exc
                    log.info("database connection lost (%s); retrying on a new one", exc)
                except asyncpg.PostgresError as exc:
                    raise _as_sqlalchemy(exc) from exc
        async with self.engine.connect() as conn:  # every pooled one was closed
            driver = (await conn.get_raw_connection()).driver_connection
            assert driver is not None  # a connection just checked out
            try:
                async with driver.transaction():
                    return await fn(driver, *args)
            except (*_LOST, asyncpg.PostgresError) as exc:
                raise _as_sqlalchemy(exc) from exc

    async def close(self) -> None:
        await self.engine.dispose()


def _as_sqlalchemy(exc: BaseException) -> sa.exc.DBAPIError:
    """The driver's error as SQLAlchemy would have raised it through ``run``: callers
    catch SQLAlchemy's classes (IntegrityError for a unique index, say)."""
    if isinstance(exc, asyncpg.exceptions.IntegrityConstraintViolationError):
        return sa.exc.IntegrityError(None, None, exc)
    if isinstance(exc, _LOST):
        return sa.exc.OperationalError(None, None, exc, connection_invalidated=True)
    return sa.exc.DatabaseError(None, None, exc)


class SqliteEngine:
    """SQLite on a thread of its own, one connection, one hop per transaction."""

    def __init__(self, url: URL, timeout: float | None = None) -> None:
        database = url.database or ":memory:"
        # The busy timeout turns contention from another process (a second replica
        # probing the lease) into waiting, not errors, but bounded. The connection is
        # only used on the thread below; the check is off so that closing it never
        # depends on which thread the garbage collector happens to run in.
        busy = 30.0 if timeout is None else timeout
        connect_args = {"timeout": busy, "check_same_thread": False}
        if database == ":memory:":  # the one connection is the database: keep it
            self.engine = sa.create_engine(
                url, connect_args=connect_args, poolclass=sa.pool.StaticPool
            )
        else:
            if not database.startswith("file:"):
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            self.engine = sa.create_engine(
                url, connect_args=connect_args, pool_size=1, max_overflow=0
            )
        sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        self.dialect = "sqlite"
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._in_transaction, fn, args)

    def _in_transaction(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        with self.engine.begin() as conn:
            return fn(conn, *args)

    async def close(self) -> None:
        # Queued behind any transaction still running, so it finishes first.
        await asyncio.get_running_loop().run_in_executor(self._thread, self.engine.dispose)
        self._thread.shutdown(wait=True)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    # WAL lets readers in other processes proceed beside the writer;
    # synchronous=NORMAL keeps every commit safe from a process crash (what the
    # SIGKILL tests do), trading only the last commits on power loss, which the
    # embedded default accepts.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
