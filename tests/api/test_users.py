"""DELETE /users/{user_id} and POST /admin/recovery/confirm over real HTTP, with real
sandbox processes (local backend) and SQLite."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from sandbox_controller.audit import token_id

from ..conftest import API_TOKEN, ControllerFactory
from ..eventually import eventually
from .test_idling import witness_deletes


async def test_deleting_a_user_ends_their_sandboxes_after_release_and_purges_their_rows(
    start_controller: ControllerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    ctl = await start_controller(prewarm_pool_size=3)
    await ctl.wait_idle_pods(3)
    old = (await ctl.open("alice", "old")).json()
    assert (await ctl.client.delete(f"/sessions/{old['id']}")).status_code == 204
    live = (await ctl.open("alice", "live")).json()
    bob = (await ctl.open("bob", "his")).json()
    assert live["state"] == "ready" and bob["state"] == "ready"

    caplog.set_level(logging.INFO, logger="sandbox_controller.audit")
    with witness_deletes(ctl) as pages:
        deleted = await ctl.client.delete("/users/alice")
        assert deleted.status_code == 200, deleted.text
        assert deleted.json() == {
            "user_id": "alice",
            "sessions_ended": 1,
            "sessions_purged": 2,
            "pods_deleted": 1,
        }
        await eventually(lambda: live["pod"] in pages, within=15, what="the delete")
    assert "; released." in pages[live["pod"]]  # the release hook came before the delete

    for session in (old, live):
        gone = await ctl.client.get(f"/sessions/{session['id']}")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "session_not_found"
    listed = await ctl.client.get("/sessions", params={"user_id": "alice"})
    assert listed.json()["sessions"] == []
    kept = (await ctl.client.get(f"/sessions/{bob['id']}")).json()
    assert kept["state"] == "ready"

    audited = [
        json.loads(r.getMessage()) for r in caplog.records if r.name == "sandbox_controller.audit"
    ]
    [event] = [e for e in audited if e["action"] == "user_deleted"]
    assert event["action"] == "user_deleted" and event["user_id"] == "alice"
    assert event["caller"] == token_id(API_TOKEN)  # the token's id, never the token
    assert event["reason"] == "sessions_ended=1 sessions_purged=2 pods_deleted=1"

    again = await ctl.client.delete("/users/alice")
    assert again.status_code == 200
    assert again.json() == {
        "user_id": "alice",
        "sessions_ended": 0,
        "sessions_purged": 0,
        "pods_deleted": 0,
    }


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/users/%20%20", 422, "invalid_request"),
        ("/users/a%09b", 404, "not_found"),  # badbytes.py: no path holds one
        ("/users/" + "u" * 254, 422, "invalid_request"),
        ("/users/", 404, "not_found"),
    ],
    ids=["blank", "tab", "too-long", "none"],
)
async def test_a_bad_user_id_is_refused_with_a_code(
    start_controller: ControllerFactory, path: str, status: int, code: str
) -> None:
    ctl = await start_controller(prewarm_pool_size=0)
    refused = await ctl.client.delete(path)
    assert refused.status_code == status, refused.text
    assert refused.json()["error"]["code"] == code


async def test_the_operator_endpoints_take_the_api_token(
    start_controller: ControllerFactory,
) -> None:
    ctl = await start_controller(prewarm_pool_size=0)
    async with httpx.AsyncClient(base_url=ctl.url) as anonymous:
        for method, path in (("DELETE", "/users/alice"), ("POST", "/admin/recovery/confirm")):
            refused = await anonymous.request(method, path)
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "unauthorized"
            wrong = await anonymous.request(
                method, path, headers={"Authorization": "Bearer not-the-token"}
            )
            assert wrong.status_code == 401


async def test_confirming_a_recovery_that_holds_nothing_deletes_nothing(
    start_controller: ControllerFactory,
) -> None:
    ctl = await start_controller(prewarm_pool_size=1)
    await ctl.wait_idle_pods(1)
    confirmed = await ctl.client.post("/admin/recovery/confirm")
    assert confirmed.status_code == 200 and confirmed.json() == {"deleted_pods": []}
    pool = await ctl.pool()
    assert pool["pods"]["idle"] == 1 and pool["conditions"] == []
    assert "sandbox_recovery_held_pods 0.0" in (await ctl.client.get("/metrics")).text
