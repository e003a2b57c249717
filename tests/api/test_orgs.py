"""Orgs and plans over HTTP (README "Orgs and plans"): the plans file, each refusal's
code, Retry-After and metric, bad input as 422, and many concurrent requests across
orgs that never take an org past its plan."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from sandbox_controller.clock import ManualClock

from ..conftest import ControllerFactory, RunningController

PLANS = """\
plans:
  - name: starter
    max_sessions_per_user: 1
    max_pods_per_org: 2
    sessions_per_minute: 3
  - name: scale
    max_sessions_per_user: 3
"""


def plans_file(tmp_path: Path, text: str = PLANS) -> str:
    path = tmp_path / "plans.yaml"
    path.write_text(text)
    return str(path)


async def open_(
    ctl: RunningController, user: str, thread: str, org: str | None, plan: str | None, **more: Any
) -> Any:
    body: dict[str, Any] = {"user_id": user, "thread_id": thread, "wait_seconds": 0, **more}
    if org is not None:
        body["org_id"] = org
    if plan is not None:
        body["plan"] = plan
    return await ctl.client.post("/sessions", json=body)


async def metric(ctl: RunningController, line: str) -> float:
    text = (await ctl.client.get("/metrics")).text
    match = re.search(rf"^{re.escape(line)} (\S+)$", text, re.MULTILINE)
    assert match, f"{line} not in /metrics"
    return float(match.group(1))


async def test_each_org_is_held_to_its_plan_and_the_answers_say_so(
    start_controller: ControllerFactory, tmp_path: Path
) -> None:
    clock = ManualClock(start=2_000_000_000.0)
    ctl = await start_controller(clock=clock, prewarm_pool_size=3, plans_file=plans_file(tmp_path))
    await ctl.wait_idle_pods(3)
    ann = await open_(ctl, "ann", "t1", "acme", "starter")
    assert ann.status_code == 201, ann.text
    assert (ann.json()["org_id"], ann.json()["plan"]) == ("acme", "starter")
    assert (await open_(ctl, "bob", "t1", "acme", "starter")).status_code == 201

    full = await open_(ctl, "cyd", "t1", "acme", "starter")
    assert full.status_code == 429, full.text
    assert full.json()["error"]["code"] == "org_session_limit"
    assert "acme" in full.json()["error"]["message"]
    assert int(full.headers["Retry-After"]) >= 1
    mine = await open_(ctl, "ann", "t2", "acme", "starter")
    assert mine.json()["error"]["code"] == "user_session_limit"
    # Another org on another plan is not touched by acme's limits.
    for thread in ("t1", "t2", "t3"):
        other = await open_(ctl, "ann", thread, "globex", "scale")
        assert other.status_code == 201, other.text

    # Rate: acme opened 2 of its 3 a minute; one more, then it must wait.
    await ctl.client.delete(f"/sessions/{ann.json()['id']}")
    third = await open_(ctl, "eve", "t1", "acme", "starter")
    assert third.status_code == 201, third.text
    await ctl.client.delete(f"/sessions/{third.json()['id']}")
    await ctl.wait_idle_pods(3)
    clock.advance(20)
    paced = await open_(ctl, "fay", "t1", "acme", "starter")
    assert paced.status_code == 429, paced.text
    assert paced.json()["error"]["code"] == "org_rate_limited"
    assert int(paced.headers["Retry-After"]) == 40  # the first start leaves the window
    clock.advance(40)
    assert (await open_(ctl, "fay", "t1", "acme", "starter")).status_code == 201

    assert await metric(ctl, 'sandbox_org_limit_refusals_total{plan="starter"}') == 1
    assert await metric(ctl, 'sandbox_org_rate_refusals_total{plan="starter"}') == 1
    assert await metric(ctl, 'sandbox_session_requests_total{outcome="org_limit"}') == 1
    assert await metric(ctl, 'sandbox_session_requests_total{outcome="org_rate"}') == 1


async def test_a_thread_id_is_one_users_of_one_org(
    start_controller: ControllerFactory, tmp_path: Path
) -> None:
    ctl = await start_controller(prewarm_pool_size=2, plans_file=plans_file(tmp_path))
    first = await open_(ctl, "ann", "t1", "acme", None)
    again = await open_(ctl, "ann", "t1", "acme", None)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    other_org = await open_(ctl, "ann", "t1", "globex", None)
    no_org = await open_(ctl, "ann", "t1", None, None)
    assert (other_org.status_code, no_org.status_code) == (201, 201)
    assert len({first.json()["id"], other_org.json()["id"], no_org.json()["id"]}) == 3
    assert no_org.json()["org_id"] is None and no_org.json()["plan"] is None
    # Each is stored as its own live session (the store's unique index agrees).
    stored = await ctl.controller.store.list_sessions("ann")
    assert sorted(s.org_id for s in stored) == ["", "acme", "globex"]


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("unknown plan", {"plan": "gold"}, "unknown_plan"),
    ("empty plan", {"plan": ""}, "unknown_plan"),
    ("plan a number", {"plan": 5}, "invalid_request"),
    ("plan too long", {"plan": "p" * 300}, "invalid_request"),
    ("empty org", {"org_id": ""}, "invalid_request"),
    ("blank org", {"org_id": "   "}, "invalid_request"),
    ("org with a control character", {"org_id": "acme\n"}, "invalid_request"),
    ("300-character org", {"org_id": "o" * 300}, "invalid_request"),
    ("org a list", {"org_id": ["acme"]}, "invalid_request"),
    ("org null with plan unknown", {"org_id": None, "plan": "Gold "}, "unknown_plan"),
]


@pytest.mark.parametrize(("name", "extra", "code"), BAD, ids=[b[0] for b in BAD])
async def test_bad_org_or_plan_is_a_422_and_writes_nothing(
    start_controller: ControllerFactory, tmp_path: Path, name: str, extra: dict[str, Any], code: str
) -> None:
    ctl = await start_controller(prewarm_pool_size=0, plans_file=plans_file(tmp_path))
    response = await ctl.client.post("/sessions", json={"user_id": "u", "thread_id": "t", **extra})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == code
    assert "Traceback" not in response.text
    if code == "unknown_plan":
        assert "starter, scale" in response.json()["error"]["message"]
    assert await ctl.controller.store.list_sessions("u") == []


async def test_without_a_plans_file_every_plan_is_unknown(
    start_controller: ControllerFactory,
) -> None:
    ctl = await start_controller(prewarm_pool_size=0)
    response = await ctl.client.post(
        "/sessions", json={"user_id": "u", "thread_id": "t", "plan": "starter"}
    )
    assert response.status_code == 422
    assert "SANDBOX_PLANS_FILE is not set" in response.json()["error"]["message"]


async def test_many_concurrent_requests_across_orgs_keep_every_plan(
    start_controller: ControllerFactory, tmp_path: Path
) -> None:
    ctl = await start_controller(
        prewarm_pool_size=2, max_total_jobs=40, plans_file=plans_file(tmp_path)
    )
    await ctl.wait_idle_pods(2)
    requests = [
        open_(ctl, f"u{i % 6}", f"t{i}", org, plan)
        for i in range(30)
        for org, plan in (("acme", "starter"), ("globex", "scale"))
    ]
    answers = await asyncio.gather(*requests)
    assert all(r.status_code in (201, 429) for r in answers), [r.text for r in answers]
    made: dict[str, list[dict[str, Any]]] = {"acme": [], "globex": []}
    for r in answers:
        if r.status_code == 201:
            made[r.json()["org_id"]].append(r.json())
    # acme: two live at most (its cap), one per user; globex: three per user, 6 users.
    assert len(made["acme"]) == 2
    assert len(made["globex"]) == 18
    for org, limit in (("acme", 1), ("globex", 3)):
        users = [s["user_id"] for s in made[org]]
        assert max(users.count(u) for u in set(users)) <= limit
    codes = {r.json()["error"]["code"] for r in answers if r.status_code == 429}
    assert codes == {"org_session_limit", "user_session_limit"}
    listed = (await ctl.client.get("/sessions")).json()["sessions"]
    live = [s for s in listed if s["state"] != "ended"]
    assert sorted(s["id"] for s in live) == sorted(s["id"] for m in made.values() for s in m)


async def test_the_openapi_document_names_the_plans_the_api_takes(
    start_controller: ControllerFactory, tmp_path: Path
) -> None:
    ctl = await start_controller(prewarm_pool_size=0, plans_file=plans_file(tmp_path))
    document = (await ctl.client.get("/openapi.json")).json()
    plan = document["components"]["schemas"]["CreateSession"]["properties"]["plan"]
    assert plan["anyOf"] == [{"type": "string", "enum": ["starter", "scale"]}, {"type": "null"}]
    org = document["components"]["schemas"]["CreateSession"]["properties"]["org_id"]
    assert {"type": "null"} in org["anyOf"]
    session = document["components"]["schemas"]["SessionBody"]["properties"]
    assert {"org_id", "plan"} <= set(session)
