"""GET /sessions without user_id: every session, newest first, filtered and paged by a
keyset cursor, over SQLite and PostgreSQL; never a connect token."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx

from sandbox_controller.clock import ManualClock

from ..conftest import ControllerFactory

START = 2_000_000_000.0


async def every_page(client: httpx.AsyncClient, **params: Any) -> list[list[dict[str, Any]]]:
    pages, cursor = [], None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = await client.get("/sessions", params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body["sessions"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages


def ids(sessions: list[dict[str, Any]]) -> list[str]:
    return [s["id"] for s in sessions]


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


async def test_every_session_newest_first_filtered_and_paged(
    start_controller: ControllerFactory, database_url: str
) -> None:
    clock = ManualClock(start=START)
    ctl = await start_controller(clock=clock, database_url=database_url, prewarm_pool_size=3)
    await ctl.wait_idle_pods(3)
    opened = []
    for user, thread in [("ada", "t1"), ("bea", "t2"), ("ada", "t3"), ("bea", "t4"), ("ada", "t5")]:
        response = await ctl.open(user, thread)
        assert response.status_code == 201 and response.json()["state"] == "ready"
        opened.append(response.json()["id"])
        clock.advance(1.0)
    s1, s2, s3, s4, s5 = opened
    for ended in (s2, s4):
        assert (await ctl.client.delete(f"/sessions/{ended}")).status_code == 204

    pages = await every_page(ctl.client, limit=2)
    assert [ids(p) for p in pages] == [[s5, s4], [s3, s2], [s1]]
    every = [s for page in pages for s in page]
    assert all(s["connect"] is None for s in every)  # no session token in a listing
    assert {s["id"]: s["state"] for s in every} == {
        s1: "ready",
        s2: "ended",
        s3: "ready",
        s4: "ended",
        s5: "ready",
    }

    live = await every_page(ctl.client, state="live", limit=2)
    assert [ids(p) for p in live] == [[s5, s3], [s1]]
    assert ids((await every_page(ctl.client, state="ended"))[0]) == [s4, s2]
    assert ids((await every_page(ctl.client, state="provisioning"))[0]) == []
    newer = await every_page(ctl.client, created_after=iso(START + 2))
    assert ids(newer[0]) == [s5, s4, s3]
    older = await every_page(ctl.client, created_before=iso(START + 2), state="ready")
    assert ids(older[0]) == [s1]

    # One user's sessions (the editor backend's call) keep their connect tokens.
    bea = (await ctl.client.get("/sessions", params={"user_id": "bea"})).json()
    assert ids(bea["sessions"]) == [s4, s2] and bea["next_cursor"] is None
    ada = await every_page(ctl.client, user_id="ada", state="live", limit=1)
    assert [ids(p) for p in ada] == [[s5], [s3], [s1]]
    assert ada[0][0]["connect"]["token"]

    # A session opened between two pages neither shifts nor repeats the next page.
    first = (await ctl.client.get("/sessions", params={"limit": 2})).json()
    assert (await ctl.open("cy", "t6")).status_code == 201
    second = await ctl.client.get("/sessions", params={"limit": 2, "cursor": first["next_cursor"]})
    assert ids(second.json()["sessions"]) == [s3, s2]


async def test_bad_listing_parameters_are_422_and_the_token_is_needed(
    start_controller: ControllerFactory,
) -> None:
    ctl = await start_controller(prewarm_pool_size=0)
    for params in (
        {"cursor": "not-a-cursor"},
        {"cursor": "1.5~abc"},  # an odd number of hex digits
        {"limit": "0"},
        {"limit": "501"},
        {"state": "sleeping"},
        {"created_after": "yesterday"},
    ):
        response = await ctl.client.get("/sessions", params=params)
        assert response.status_code == 422, params
        assert response.json()["error"]["code"] == "invalid_request"
    async with httpx.AsyncClient(base_url=ctl.url) as anonymous:
        assert (await anonymous.get("/sessions")).status_code == 401
