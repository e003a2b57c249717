"""Two orgs on different plans, end to end on each backend (local processes, kubesim
through the real Kubernetes client, a real dockerd): each org meets its own plan's
limits (its cap, its users' limit, its rate) while the other org is served warm.

Warm is what the controller counted (sandbox_session_requests_total{outcome="warm"});
that each session's pod exists is asked of the platform itself."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sandbox_controller.clock import ManualClock

from ..conftest import RunningController
from .test_backend_scenarios import START, Platform, gone
from .test_backend_scenarios import platform as platform  # the fixture, for this module

PLANS = """\
plans:
  - name: starter
    max_sessions_per_user: 1
    max_pods_per_org: 2
    sessions_per_minute: 3
  - name: scale
    max_sessions_per_user: 2
"""


async def warm_count(ctl: RunningController) -> float:
    text = (await ctl.client.get("/metrics")).text
    match = re.search(
        r'^sandbox_session_requests_total\{outcome="warm"\} (\S+)$', text, re.MULTILINE
    )
    assert match
    return float(match.group(1))


async def test_two_orgs_meet_their_own_plans_while_the_other_is_served_warm(
    platform: Platform, tmp_path: Path
) -> None:
    plans = tmp_path / "plans.yaml"
    plans.write_text(PLANS)
    clock = ManualClock(start=START)
    ctl = await platform.controller(
        clock=clock,
        prewarm_pool_size=2,
        max_total_jobs=10,
        plans_file=str(plans),
        startup_timeout="1h",
    )
    await ctl.wait_idle_pods(2)

    async def open_warm(user: str, thread: str, org: str, plan: str) -> dict[str, Any]:
        """A session that must be served from the warm pool."""
        before = await warm_count(ctl)
        response = await ctl.client.post(
            "/sessions",
            json={"user_id": user, "thread_id": thread, "org_id": org, "plan": plan},
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        assert body["state"] == "ready" and body["pod"] in platform.pods()
        assert (body["org_id"], body["plan"]) == (org, plan)
        assert await warm_count(ctl) == before + 1, f"{user}/{thread} was not served warm"
        await ctl.wait_idle_pods(2)  # refilled before the next one (and before time moves)
        return body

    async def refused(user: str, thread: str, org: str, plan: str) -> tuple[str, int]:
        response = await ctl.client.post(
            "/sessions",
            json={"user_id": user, "thread_id": thread, "org_id": org, "plan": plan},
        )
        assert response.status_code == 429, response.text
        return response.json()["error"]["code"], int(response.headers["Retry-After"])

    ann = await open_warm("ann", "t1", "acme", "starter")
    await open_warm("bob", "t1", "acme", "starter")
    code, _ = await refused("cyd", "t1", "acme", "starter")
    assert code == "org_session_limit"
    assert (await refused("ann", "t2", "acme", "starter"))[0] == "user_session_limit"

    # globex, on its own plan, is served warm while acme is at its cap...
    await open_warm("dee", "t1", "globex", "scale")
    await open_warm("dee", "t2", "globex", "scale")
    assert (await refused("dee", "t3", "globex", "scale"))[0] == "user_session_limit"

    # ...and while acme is past its rate: 3 new sessions a minute.
    await ctl.client.delete(f"/sessions/{ann['id']}")
    await gone(platform, ann["pod"])
    clock.advance(10)
    eve = await open_warm("eve", "t1", "acme", "starter")
    await ctl.client.delete(f"/sessions/{eve['id']}")
    await gone(platform, eve["pod"])
    code, retry_after = await refused("fay", "t1", "acme", "starter")
    assert (code, retry_after) == ("org_rate_limited", 50)
    await open_warm("gus", "t1", "globex", "scale")

    await ctl.wait_idle_pods(2)
    clock.advance(retry_after)
    await open_warm("fay", "t1", "acme", "starter")
    assert len(platform.pods()) <= 10
