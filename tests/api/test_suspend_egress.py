"""A suspended session keeps its egress secrets: every way back (POST /sessions for its
thread, POST /sessions/{id}/resume, the proxy's internal resume) claims the new pod
with the same placeholders in its env, never a value, and the egress proxy's authorize
for the new pod answers them. Real controller over HTTP, real devsandbox processes
(local backend), the file store, the fake clock."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from sandbox_controller.clock import ManualClock
from sandbox_controller.egress_secrets import PLACEHOLDER_PREFIX

from ..conftest import ControllerFactory, RunningController
from ..eventually import eventually
from .test_egress import EGRESS, authorize, create_id_of
from .test_suspend import START, claimed, session, start, until_state


async def suspend(ctl: RunningController, sid: str) -> None:
    asked = await ctl.client.post(f"/sessions/{sid}/suspend")
    assert asked.status_code == 202, asked.text
    await until_state(ctl, sid, "suspended")


async def wake_through_the_proxy(ctl: RunningController, sid: str) -> dict[str, Any]:
    woken = await ctl.client.post(f"/internal/sessions/{sid}/resume")
    assert woken.status_code == 202, woken.text

    async def routed() -> bool:
        return (await ctl.client.get(f"/internal/routes/{sid}")).status_code == 200

    await eventually(routed, within=20, what="the woken session's route")
    return await session(ctl, sid)


async def test_every_resume_claims_the_new_pod_with_the_sessions_placeholders(
    start_controller: ControllerFactory, tmp_path: Path
) -> None:
    clock = ManualClock(start=START)
    ctl = await start(start_controller, clock, tmp_path, **EGRESS)
    value = f"ghp_{secrets.token_hex(12)}"
    opened = await ctl.client.post(
        "/sessions",
        json={
            "user_id": "ann",
            "thread_id": "t1",
            "env": {"PLAIN": "yes"},
            "secrets": [{"name": "GITHUB_TOKEN", "value": value, "hosts": ["api.github.com"]}],
        },
    )
    assert opened.status_code == 201, opened.text
    sid, pod = opened.json()["id"], opened.json()["pod"]
    placeholder = (await claimed(ctl, pod))["env"]["GITHUB_TOKEN"]
    assert placeholder.startswith(PLACEHOLDER_PREFIX)
    pods = [pod]

    async def check(resumed: dict[str, Any], how: str) -> None:
        assert resumed["state"] == "ready" and resumed["resumed"] is True, how
        new_pod = resumed["pod"]
        assert new_pod not in pods, how
        pods.append(new_pod)
        env = (await claimed(ctl, new_pod))["env"]
        assert env["GITHUB_TOKEN"] == placeholder, how
        assert value not in str(env), how
        answer = (await authorize(ctl, create_id_of(ctl, new_pod))).json()
        by_name = {s["name"]: s for s in answer["secrets"]}
        assert by_name["GITHUB_TOKEN"]["placeholder"] == placeholder, how
        assert by_name["GITHUB_TOKEN"]["value"] == value, how

    await suspend(ctl, sid)
    # The editor's usual call, sending secrets again: the session's own are kept (a
    # retry changes none), and the env carries their placeholder, not a new one.
    again = await ctl.client.post(
        "/sessions",
        json={
            "user_id": "ann",
            "thread_id": "t1",
            "secrets": [{"name": "GITHUB_TOKEN", "value": "other", "hosts": ["x.example"]}],
        },
    )
    assert again.status_code == 200, again.text
    await check(again.json(), "POST /sessions")

    await suspend(ctl, sid)
    resumed = await ctl.client.post(f"/sessions/{sid}/resume", json={"env": {"MORE": "1"}})
    assert resumed.status_code == 200, resumed.text
    await check(resumed.json(), "POST /sessions/{id}/resume")
    assert (await claimed(ctl, resumed.json()["pod"]))["env"]["MORE"] == "1"

    # A new leader holds no secret in memory: the placeholders come from the store.
    await suspend(ctl, sid)
    scheduler = ctl.controller.scheduler
    assert scheduler is not None
    scheduler.egress.clear()
    await check(await wake_through_the_proxy(ctl, sid), "the proxy's wake-up")
