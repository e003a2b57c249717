"""`dev` with egress on: the egress proxy runs beside the controller and the proxy, the
local sandboxes are pointed at it through their env, and what it refuses shows in GET
/sessions/{id}/egress (issue 19, item 5)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from sandbox_controller.config import load_settings
from sandbox_controller.egress_env import CA_BUNDLE_VARIABLES
from sandbox_controller.process import DevProcess
from sandbox_controller.serving import serve

from .api.test_egress import environ
from .conftest import sandbox_processes
from .eventually import eventually
from .test_process import refused


async def test_dev_runs_the_egress_proxy_and_points_sandboxes_at_it(tmp_path: Path) -> None:
    settings = load_settings(
        port=0,
        proxy_port=0,
        egress="enforce",
        egress_allow="pypi.org",
        egress_proxy_port=0,
        database_url=f"sqlite+aiosqlite:///{tmp_path}/sandbox.db",
        state_dir=str(tmp_path / "state"),
        api_token="dev-token",
        token_secret="dev-secret",
        prewarm_pool_size=1,
        log_level="warning",
    )
    dev = DevProcess(settings)
    stop, started = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(dev, stop, started.set))
    try:
        await asyncio.wait_for(started.wait(), 30)
        assert dev.controller is not None and dev.egress is not None
        api = f"http://127.0.0.1:{dev.controller.port}"
        egress_port = dev.egress.port
        headers = {"Authorization": "Bearer dev-token"}
        async with httpx.AsyncClient(timeout=30, headers=headers) as http:
            created = await http.post(f"{api}/sessions", json={"user_id": "u", "thread_id": "t"})
            assert created.status_code == 201, created.text
            session = created.json()
            assert session["egress"]["allow"] == ["pypi.org"]
        pod = session["pod"]
        [pid] = sandbox_processes(pod)
        env = environ(pid)
        proxy = env["HTTP_PROXY"]
        assert proxy.endswith(f"@127.0.0.1:{egress_port}") and env["HTTPS_PROXY"] == proxy
        bundle = Path(env["SSL_CERT_FILE"])
        assert all(env[v] == str(bundle) for v in CA_BUNDLE_VARIABLES)
        assert b"BEGIN CERTIFICATE" in bundle.read_bytes()

        # What the sandbox's own client does: through its proxy, with its credential.
        # The controller is not on the list (and its loopback address never would be).
        async with httpx.AsyncClient(proxy=proxy, timeout=30) as sandbox:
            denied = await sandbox.get(f"{api}/healthz")
        assert denied.status_code == 403
        async with httpx.AsyncClient(proxy=f"http://127.0.0.1:{egress_port}", timeout=30) as anon:
            assert (await anon.get("http://pypi.org/")).status_code == 407

        async def recorded() -> bool:
            async with httpx.AsyncClient(timeout=30, headers=headers) as http:
                egress = await http.get(f"{api}/sessions/{session['id']}/egress")
            found = egress.json()["denials"]
            return any((d["host"], d["reason"]) == ("127.0.0.1", "not_allowed") for d in found)

        await eventually(recorded, within=10, what="the denial in GET /sessions/{id}/egress")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert refused(egress_port)
