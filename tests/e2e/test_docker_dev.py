"""The whole controller with SANDBOX_BACKEND=docker. ``sandbox-controller dev`` driven from
outside: the proxy routes HTTP, Server-Sent Events and WebSocket traffic to a sandbox
container; a SIGKILLed controller, started again, adopts every healthy container and
orphans none. And a host too small for one more sandbox shows in the API as on
Kubernetes: ``capacity_blocked`` and the reason in a provisioning session's detail."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from ..conftest import ControllerFactory
from ..dockerhost import containers, new_instance, remove_all, require_docker, settings_overrides
from ..eventually import eventually
from .test_dev_crash import Dev

pytestmark = pytest.mark.docker


async def round_trips(url: str, token: str) -> None:
    """HTTP, SSE and WebSocket through the proxy to the session's container."""
    auth = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(timeout=15, trust_env=False) as http:
        echoed = await http.post(url + "echo", content=b"to a container", headers=auth)
        assert (echoed.status_code, echoed.content) == (200, b"to a container")
        async with http.stream("GET", url + "events?n=3&interval=0.01", headers=auth) as events:
            assert events.headers["content-type"].startswith("text/event-stream")
            lines = [line async for line in events.aiter_lines() if line.startswith("data:")]
        assert len(lines) == 3
    async with connect(
        "ws" + url.removeprefix("http") + "ws", additional_headers=auth, proxy=None
    ) as ws:
        await ws.send("text frame")
        assert await ws.recv() == "text frame"
        await ws.send(b"\x00binary\xff")
        assert await ws.recv() == b"\x00binary\xff"


async def test_the_proxy_reaches_containers_and_a_killed_controller_adopts_them(
    tmp_path: Path,
) -> None:
    image = require_docker()
    instance = new_instance()
    dev = Dev(tmp_path)
    dev.env.update(
        {
            "SANDBOX_BACKEND": "docker",
            "SANDBOX_DOCKER_IMAGE": image,
            "SANDBOX_DOCKER_INSTANCE": instance,
            "SANDBOX_DOCKER_NETWORK": "agent-sandbox-test",
            "SANDBOX_DOCKER_PUBLISH": "true",
            "SANDBOX_DOCKER_CPUS": "0.5",
            "SANDBOX_DOCKER_MEMORY": "256Mi",
            "SANDBOX_PREWARM_POOL_SIZE": "1",
        }
    )
    try:
        await dev.start()
        created = await dev.client.post(
            "/sessions", json={"user_id": "u", "thread_id": "t", "env": {"API_KEY": "s3cret"}}
        )
        assert created.status_code == 201, created.text
        session = created.json()
        assert session["state"] == "ready" and session["pod"] in containers(instance)
        connect = session["connect"]
        await round_trips(connect["url"], connect["token"])
        # The claim reached the container: its claim secret came with it (the env).
        async with httpx.AsyncClient(timeout=15, trust_env=False) as http:
            index = await http.get(
                connect["url"], headers={"Authorization": f"Bearer {connect['token']}"}
            )
        assert "API_KEY" in index.text and "s3cret" not in index.text

        async def warm() -> bool:
            return int((await dev.pool())["pods"]["idle"]) >= 1

        await eventually(warm, within=60, what="the warm pool refilled")
        before = containers(instance)
        assert len(before) == 2  # the session's and a warm one

        assert dev.proc is not None
        dev.proc.send_signal(signal.SIGKILL)
        dev.proc.wait()
        assert containers(instance) == before, "containers outlive the controller"

        await dev.start()  # same database: the new controller finds what the last left
        got = (await dev.client.get(f"/sessions/{session['id']}")).json()
        assert (got["state"], got["pod"]) == ("ready", session["pod"]), got
        await eventually(warm, within=60, what="the warm pool adopted")
        pool = await dev.pool()
        assert pool["pods"] == {"pending": 0, "idle": 1, "assigned": 1, "terminating": 0}
        assert containers(instance) == before, "every healthy container adopted, none new"
        await round_trips(connect["url"], connect["token"])

        dev.proc.send_signal(signal.SIGTERM)  # dev removes what it ran, as with processes
        assert dev.proc.wait(timeout=30) == 0
        assert containers(instance) == set()
    finally:
        await dev.client.aclose()
        if dev.proc is not None and dev.proc.poll() is None:
            dev.proc.send_signal(signal.SIGTERM)
            dev.proc.wait(timeout=30)
        remove_all(instance)


async def test_a_full_host_shows_as_capacity_blocked_with_the_reason(
    start_controller: ControllerFactory,
) -> None:
    image = require_docker()
    instance = new_instance()
    ctl = await start_controller(
        **{**settings_overrides(image, instance), "docker_memory": "12Gi", "prewarm_pool_size": 2}
    )
    try:
        await ctl.wait_idle_pods(1)

        async def blocked() -> bool:
            return bool((await ctl.pool())["capacity_blocked"])

        await eventually(blocked, within=30, what="the second sandbox reported unschedulable")
        first = (await ctl.open("u1", "t1")).json()
        assert first["state"] == "ready"
        second = (await ctl.open("u2", "t2", wait=0)).json()
        assert second["state"] == "provisioning"
        assert second["detail"].startswith("0/1 nodes are available: 1 Insufficient memory.")

        await ctl.client.delete(f"/sessions/{first['id']}")  # room frees: it starts

        async def ready() -> bool:
            got = (await ctl.client.get(f"/sessions/{second['id']}")).json()
            return bool(got["state"] == "ready")

        await eventually(ready, within=60, what="the waiting sandbox started and ready")
    finally:
        await ctl.stop()
        remove_all(instance)
