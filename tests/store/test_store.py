"""The store against SQLite and PostgreSQL, migrated from empty."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from sandbox_controller.model import (
    ActivitySource,
    EndDetail,
    EndReason,
    Pod,
    PodState,
    Session,
    SessionState,
)
from sandbox_controller.store import Batch, Deposed, Fence, Store


def session(sid: str, thread: str, state: SessionState = SessionState.READY) -> Session:
    return Session(sid, "user", thread, state, 100.0, 100.0, pod_name=f"pod-{sid}")


@pytest.fixture
async def store(database_url: str) -> Store:
    store = Store.open(database_url)
    await store.migrate()
    yield store  # type: ignore[misc]
    await store.close()


async def test_migrations_apply_from_empty_and_are_idempotent(store: Store) -> None:
    await store.migrate()
    tables = await store.run(lambda c: sa.inspect(c).get_table_names())
    version = await store.run(
        lambda c: c.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    )
    assert {"sessions", "pods", "leader_lease"} <= set(tables)
    assert version == "0005"


async def test_a_database_of_the_previous_version_upgrades_with_its_sessions(
    database_url: str,
) -> None:
    from alembic import command
    from alembic.config import Config

    from sandbox_controller.store.db import MIGRATIONS

    def to_0001(conn: sa.Connection) -> None:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = conn
        command.upgrade(config, "0001")
        conn.execute(
            sa.text(
                "INSERT INTO sessions (id, user_id, thread_id, state, created_at,"
                " last_active_at) VALUES ('old', 'u', 't', 'ready', 1.0, 2.0)"
            )
        )

    store = Store.open(database_url)
    try:
        await store.run(to_0001)
        await store.migrate()
        old = await store.get_session("old")
        assert old is not None and old.last_active_at == 2.0
        assert old.metadata == {} and old.end_detail is None and old.activity_source is None
    finally:
        await store.close()


async def test_metadata_activity_source_and_end_detail_round_trip(store: Store) -> None:
    epoch = await store.acquire_lease("me", 10, 1000.0)
    s = session("s1", "t1", SessionState.ENDED)
    s.metadata = {"workspace": "w-1", "app": "crm"}
    s.activity_source = ActivitySource.BUSY
    s.activity_detail = "running tests"
    s.end_reason = EndReason.IDLE_TIMEOUT
    s.end_detail = EndDetail(150.0, ActivitySource.PROXY, "no answer (timed out)")
    await store.write(Batch(sessions=[s]), Fence("me", epoch))
    back = await store.get_session("s1")
    assert back is not None
    assert back.metadata == {"workspace": "w-1", "app": "crm"}
    assert back.activity_source is ActivitySource.BUSY
    assert back.activity_detail == "running tests"
    assert back.end_detail == EndDetail(150.0, ActivitySource.PROXY, "no answer (timed out)")


async def test_a_batch_round_trips(store: Store) -> None:
    epoch = await store.acquire_lease("me", 10, 1000.0)
    assert epoch == 1
    fence = Fence("me", epoch)
    s1, s2 = session("s1", "t1"), session("s2", "t2", SessionState.PROVISIONING)
    s2.pod_name = None
    pod = Pod("pod-s1", PodState.ASSIGNED, 90.0, "h", ready_at=95.0, session_id="s1")
    await store.write(Batch(sessions=[s1, s2], pods=[pod]), fence)
    s1.last_active_at = 150.0
    await store.write(Batch(sessions=[s1]), fence)
    sessions, pods = await store.load()
    by_id = {s.id: s for s in sessions}
    assert by_id["s1"].last_active_at == 150.0
    assert by_id["s2"].state is SessionState.PROVISIONING
    assert pods == [pod]
    s1.state, s1.end_reason, s1.ended_at = SessionState.ENDED, EndReason.IDLE_TIMEOUT, 200.0
    await store.write(Batch(sessions=[s1], forgotten_pods=["pod-s1"]), fence)
    sessions, pods = await store.load()
    assert [s.id for s in sessions] == ["s2"] and pods == []
    ended = await store.get_session("s1")
    assert ended is not None and ended.end_reason is EndReason.IDLE_TIMEOUT
    assert {s.id for s in await store.list_sessions("user")} == {"s1", "s2"}


async def test_the_database_refuses_two_live_sessions_for_one_thread(store: Store) -> None:
    await store.write(Batch(sessions=[session("a", "same")]), None)
    with pytest.raises(sa.exc.IntegrityError):
        await store.write(Batch(sessions=[session("b", "same")]), None)
    # Nothing of the failed batch was written.
    assert [s.id for s in (await store.load())[0]] == ["a"]


async def test_a_thread_can_start_again_once_its_session_ended(store: Store) -> None:
    old = session("a", "same")
    await store.write(Batch(sessions=[old]), None)
    old.state, old.end_reason, old.ended_at = SessionState.ENDED, EndReason.DELETED, 101.0
    # The ending and the new session commit together; ended rows go first.
    await store.write(Batch(sessions=[session("b", "same"), old]), None)
    assert [s.id for s in (await store.load())[0]] == ["b"]


async def test_a_deposed_leader_cannot_write(store: Store) -> None:
    first = await store.acquire_lease("old", 10, 1000.0)
    assert first is not None
    assert await store.acquire_lease("new", 10, 1005.0) is None  # still held
    second = await store.acquire_lease("new", 10, 1011.0)  # expired: taken over
    assert second == first + 1
    with pytest.raises(Deposed):
        await store.write(Batch(sessions=[session("late", "t")]), Fence("old", first))
    assert (await store.load())[0] == []
    await store.write(Batch(sessions=[session("ok", "t")]), Fence("new", second))
    assert [s.id for s in (await store.load())[0]] == ["ok"]


async def test_a_restarted_pod_takes_its_dead_process_lease_at_once_with_a_new_epoch(
    store: Store,
) -> None:
    first = await store.acquire_lease("ctl-0/7-aaa", 10, 1000.0, succeeds="ctl-0/")
    assert first is not None
    # Another pod, even one whose name begins the same, waits for the TTL.
    assert await store.acquire_lease("ctl-1/7-bbb", 10, 1001.0, succeeds="ctl-1/") is None
    assert await store.acquire_lease("ctl-00/7-ccc", 10, 1001.0, succeeds="ctl-00/") is None
    # The same pod's next process (its container restarted) takes over at once...
    second = await store.acquire_lease("ctl-0/7-ddd", 10, 1001.0, succeeds="ctl-0/")
    assert second == first + 1
    # ...and whatever the dead process had in flight is fenced by the new epoch.
    with pytest.raises(Deposed):
        await store.write(Batch(sessions=[session("late", "t")]), Fence("ctl-0/7-aaa", first))


async def test_the_lease_is_renewed_by_its_holder_and_released(store: Store) -> None:
    epoch = await store.acquire_lease("me", 10, 1000.0)
    assert await store.acquire_lease("me", 10, 1008.0) == epoch  # renewal keeps the epoch
    assert await store.acquire_lease("you", 10, 1015.0) is None  # renewed until 1018
    assert epoch is not None
    await store.release_lease("me", epoch)
    assert await store.acquire_lease("you", 10, 1016.0) == epoch + 1


async def test_large_batches_are_written_in_chunks(store: Store) -> None:
    sessions = [session(f"s{i:04d}", f"t{i}") for i in range(1200)]
    await store.write(Batch(sessions=sessions), None)
    assert len((await store.load())[0]) == 1200


async def test_ended_sessions_are_purged_after_retention(store: Store) -> None:
    old = session("old", "t1")
    old.state, old.end_reason, old.ended_at = SessionState.ENDED, EndReason.DELETED, 10.0
    await store.write(Batch(sessions=[old, session("live", "t2")]), None)
    assert await store.delete_ended_before(50.0) == 1
    assert await store.get_session("old") is None
    assert await store.get_session("live") is not None


async def test_postgres_connections_dropped_by_the_server_cost_no_failed_write(
    postgres_url: str,
) -> None:
    # As after a database restart or a proxy's idle timeout: every connection the pool
    # holds is gone. The next transaction notices, and runs again on a new connection.
    store = Store.open(postgres_url)
    try:
        await store.migrate()
        epoch = await store.acquire_lease("me", 10, 1000.0)
        assert epoch == 1
        fence = Fence("me", epoch)
        await store.write(Batch(sessions=[session("s1", "t1")]), fence)
        dba = Store.open(postgres_url)
        killed = await dba.run(
            lambda c: c.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).scalar()
        )
        await dba.close()
        assert killed >= 1
        await store.write(Batch(sessions=[session("s2", "t2")]), fence)
        assert {s.id for s in await store.list_sessions("user")} == {"s1", "s2"}
    finally:
        await store.close()


async def test_the_migrations_build_exactly_the_schema_the_code_declares(store: Store) -> None:
    """tables.py and the migrations describe one schema: a column or index added to one
    and not the other would pass every other test on a fresh database and then fail on
    an upgraded one."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from sandbox_controller.store.tables import metadata

    def differences(conn: sa.Connection) -> list[object]:
        context = MigrationContext.configure(conn, opts={"compare_server_default": False})
        return [d for d in compare_metadata(context, metadata) if "alembic_version" not in repr(d)]

    assert await store.run(differences) == []


async def test_a_thread_id_is_unique_per_org_and_user_not_per_deployment(store: Store) -> None:
    rows = [("", "u1", "a"), ("", "u2", "b"), ("org-1", "u1", "c")]  # one thread id "t"

    def write(conn: sa.Connection) -> None:
        for org, user, sid in rows:
            conn.execute(
                sa.text(
                    "INSERT INTO sessions (id, user_id, thread_id, state, created_at,"
                    " last_active_at, org_id) VALUES (:id, :u, 't', 'ready', 1.0, 1.0, :o)"
                ),
                {"id": sid, "u": user, "o": org},
            )

    await store.run(write)
    with pytest.raises(sa.exc.IntegrityError):
        rows[:] = [("org-1", "u1", "d")]
        await store.run(write)


async def test_migrate_rolls_back_to_0002_and_forward_again_keeping_sessions(store: Store) -> None:
    """``sandbox-controller migrate --to 0002``: each migration's downgrade runs, the
    previous version's schema is back (its code reads it), and the way up works again."""
    await store.write(Batch(sessions=[session("kept", "t1")]), None)

    def columns(conn: sa.Connection) -> set[str]:
        return {c["name"] for c in sa.inspect(conn).get_columns("sessions")}

    await store.migrate("0002")
    assert await store.revision() == "0002"
    assert "org_id" not in await store.run(columns)  # 0003's column is gone
    await store.migrate("0002")  # idempotent
    assert await store.revision() == "0002"
    kept = await store.run(
        lambda c: c.execute(sa.text("SELECT thread_id FROM sessions WHERE id = 'kept'")).scalar()
    )
    assert kept == "t1"

    await store.migrate("0003")
    assert await store.revision() == "0003"
    assert "org_id" in await store.run(columns)
    await store.migrate()
    assert await store.revision() == "0005"
    assert {"egress_allow", "snapshot_key"} <= await store.run(columns)
    assert (await store.get_session("kept")) is not None
    await test_the_migrations_build_exactly_the_schema_the_code_declares(store)


async def test_migrate_to_a_revision_it_does_not_know_changes_nothing(store: Store) -> None:
    from sandbox_controller.store import UnknownRevision

    with pytest.raises(UnknownRevision):
        await store.migrate("0099")
    assert await store.revision() == "0005"


async def test_purging_a_user_deletes_their_ended_rows_only(store: Store) -> None:
    gone = session("gone", "t1")
    gone.state, gone.end_reason, gone.ended_at = SessionState.ENDED, EndReason.DELETED, 10.0
    other = session("other", "t2")
    other.user_id = "someone-else"
    other.state, other.end_reason, other.ended_at = SessionState.ENDED, EndReason.DELETED, 10.0
    live = session("live", "t3")
    await store.write(Batch(sessions=[gone, other, live]), None)

    assert await store.purge_user("user") == 1
    assert await store.get_session("gone") is None
    assert await store.get_session("other") is not None
    assert await store.get_session("live") is not None  # the scheduler ends it first
    assert await store.purge_user("user") == 0
