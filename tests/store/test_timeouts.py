"""Bounded waits on the database (SANDBOX_STORE_TIMEOUT) and the schema check: a frozen
lease holder cannot keep the lease row locked, an unresponsive server is an error
within the timeout, and a schema from a newer version is recognised."""

from __future__ import annotations

import asyncio
import time

import pytest
import sqlalchemy as sa

from sandbox_controller.store import SchemaState, Store
from sandbox_controller.store.engines import AsyncioEngine, open_engine

from ..eventually import eventually

TIMEOUT = 0.5


async def test_a_frozen_leader_does_not_hold_the_lease_row_hostage(postgres_url: str) -> None:
    leader = Store.open(postgres_url, TIMEOUT)
    standby = Store.open(postgres_url, TIMEOUT)
    frozen_engine = open_engine(postgres_url, TIMEOUT)
    assert isinstance(frozen_engine, AsyncioEngine)
    try:
        await leader.migrate()
        assert await leader.acquire_lease("leader", 1.0, 1000.0) == 1
        # The leader is stopped (SIGSTOP) inside a fenced write: the lease row is locked
        # and its transaction stays open.
        frozen = await frozen_engine.engine.connect()
        await frozen.begin()
        await frozen.execute(sa.text("UPDATE leader_lease SET epoch = epoch"))
        started = time.monotonic()
        taken: list[int | None] = []

        async def standby_takes_over() -> bool:
            try:
                taken.append(await standby.acquire_lease("standby", 1.0, 1002.0))
            except sa.exc.DBAPIError:  # lock_timeout: still locked, ask again
                return False
            return taken[-1] is not None

        await eventually(standby_takes_over, within=5.0, every=0.1)
        assert taken[-1] == 2
        # Freed by the server's idle-in-transaction timeout, not by the leader.
        assert time.monotonic() - started < 3 * TIMEOUT + 1.0
        with pytest.raises(sa.exc.DBAPIError):
            await frozen.execute(sa.text("SELECT 1"))
    finally:
        await frozen_engine.close()
        await standby.close()
        await leader.close()


async def test_a_server_that_never_answers_is_an_error_within_the_timeout() -> None:
    async def accept_and_say_nothing(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.read()  # until the client gives up

    server = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = Store.open(f"postgresql+asyncpg://u@127.0.0.1:{port}/db", TIMEOUT)
    try:
        started = time.monotonic()
        with pytest.raises((OSError, TimeoutError, sa.exc.DBAPIError)):
            await store.ping()
        assert time.monotonic() - started < TIMEOUT + 1.0
    finally:
        await store.close()
        server.close()


async def test_the_schema_state_says_whether_this_version_may_write(database_url: str) -> None:
    store = Store.open(database_url, TIMEOUT)
    try:
        assert await store.schema() is SchemaState.EMPTY
        await store.migrate()
        assert await store.schema() is SchemaState.CURRENT
        # A newer version migrated the database to a revision this one does not know.
        await store.run(lambda c: c.execute(sa.text("UPDATE alembic_version SET version_num='9z'")))
        assert await store.schema() is SchemaState.NEWER
    finally:
        await store.close()
