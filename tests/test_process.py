"""The process lifecycle: startup, run until stopped, shutdown in order."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import httpx
import pytest

from sandbox_controller.config import load_settings
from sandbox_controller.process import ControllerProcess, DevProcess
from sandbox_controller.serving import serve

from .conftest import sandbox_processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


async def test_a_startup_that_fails_releases_its_port_and_stops_at_once() -> None:
    port = free_port()
    settings = load_settings(
        port=port,
        database_url=f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/none",
        log_level="warning",
    )
    stop = asyncio.Event()
    stop.set()  # a SIGTERM during start-up: no minute of database retries first
    with pytest.raises(OSError):
        await asyncio.wait_for(serve(ControllerProcess(settings), stop), 10)
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))  # the port is free for the next attempt


async def test_dev_serves_on_the_ports_it_bound_and_stops_every_sandbox(tmp_path: Path) -> None:
    settings = load_settings(
        port=0,
        proxy_port=0,
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
        assert dev.controller is not None and dev.proxy is not None
        api_port, proxy_port = dev.controller.port, dev.proxy.port
        async with httpx.AsyncClient(timeout=30) as http:
            created = await http.post(
                f"http://127.0.0.1:{api_port}/sessions",
                json={"user_id": "u", "thread_id": "t"},
                headers={"Authorization": "Bearer dev-token"},
            )
            assert created.status_code == 201, created.text
            connect = created.json()["connect"]
            # connect.url names the port the proxy really bound (it was given 0).
            assert connect["url"].startswith(f"http://127.0.0.1:{proxy_port}/s/")
            through = await http.get(
                connect["url"] + "healthz", headers={"Authorization": f"Bearer {connect['token']}"}
            )
            assert through.status_code == 200
        pod = created.json()["pod"]
        assert sandbox_processes(pod)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert sandbox_processes(pod) == [], "a sandbox outlived dev"
    assert list((tmp_path / "state" / "pods").glob("*.json")) == []  # none left to adopt
    assert refused(api_port) and refused(proxy_port)
