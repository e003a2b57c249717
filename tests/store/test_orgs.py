"""A session's org and plan in the store, on SQLite and PostgreSQL: kept, loaded back
for a takeover, and a thread unique per org and user (the database agrees with the
scheduler's key)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import sqlalchemy as sa

from sandbox_controller.model import Session, SessionState
from sandbox_controller.store import Batch, Store

from .test_store import session
from .test_store import store as store  # the fixture, for this module


async def test_org_and_plan_round_trip_and_load_for_a_takeover(store: Store) -> None:
    s = replace(session("s1", "t1"), org_id="acme", plan="starter")
    plain = session("s2", "t2")
    await store.write(Batch(sessions=[s, plain]), None)
    back = await store.get_session("s1")
    assert back is not None and (back.org_id, back.plan) == ("acme", "starter")
    loaded = {x.id: x for x in (await store.load())[0]}
    assert (loaded["s1"].org_id, loaded["s1"].plan) == ("acme", "starter")
    assert (loaded["s2"].org_id, loaded["s2"].plan) == ("", None)


async def test_one_thread_id_lives_once_per_org_and_user(store: Store) -> None:
    def live(sid: str, org: str, user: str) -> Session:
        return replace(session(sid, "same"), org_id=org, user_id=user)

    await store.write(
        Batch(
            sessions=[live("a", "acme", "ann"), live("b", "globex", "ann"), live("c", "", "ann")]
        ),
        None,
    )
    await store.write(Batch(sessions=[live("d", "acme", "bob")]), None)
    with pytest.raises(sa.exc.IntegrityError):
        await store.write(Batch(sessions=[live("e", "acme", "ann")]), None)
    ended = replace(live("a", "acme", "ann"), state=SessionState.ENDED)
    await store.write(Batch(sessions=[ended, live("e", "acme", "ann")]), None)
