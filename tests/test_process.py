"""The process lifecycle: startup, run until stopped, shutdown in order."""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from pathlib import Path

import httpx
import pytest

from sandbox_controller.config import load_settings
from sandbox_controller.process import ControllerProcess, DevProcess
from sandbox_controller.serving import serve
from sandbox_controller.tokens import issue_token

from .conftest import sandbox_processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


async def test_a_stop_during_startup_ends_it_at_once_and_frees_the_port() -> None:
    port = free_port()
    settings = load_settings(
        port=port,
        # Nothing listens there: start-up would retry the database for a minute.
        database_url=f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/none",
        log_level="warning",
    )
    stop = asyncio.Event()
    serving = asyncio.create_task(serve(ControllerProcess(settings), stop))
    await asyncio.sleep(0.5)  # well into the database wait
    assert not serving.done()
    stop.set()  # SIGTERM
    await asyncio.wait_for(serving, 5)
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))  # released for the next attempt


async def test_dev_whose_proxy_port_is_taken_fails_and_frees_the_api_port(
    tmp_path: Path,
) -> None:
    api_port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = load_settings(
            port=api_port,
            proxy_port=taken.getsockname()[1],
            database_url=f"sqlite+aiosqlite:///{tmp_path}/sandbox.db",
            state_dir=str(tmp_path / "state"),
            token_secret="dev-secret",
            log_level="warning",
        )
        with pytest.raises(OSError) as failed:
            await asyncio.wait_for(serve(DevProcess(settings), asyncio.Event()), 10)
        assert failed.value.errno == errno.EADDRINUSE
    with socket.socket() as again:
        again.bind(("127.0.0.1", api_port))


async def test_dev_serves_on_the_ports_it_bound_and_stops_every_sandbox(tmp_path: Path) -> None:
    settings = load_settings(
        port=0,
        proxy_port=0,
        database_url=f"sqlite+aiosqlite:///{tmp_path}/sandbox.db",
        state_dir=str(tmp_path / "state"),
        api_token="dev-token",
        token_secret="dev-secret",
        token_secret_previous="dev-secret-before",
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
            # A token of the previous secret still opens it (a rotation under dev).
            before = issue_token(b"dev-secret-before", created.json()["id"], time.time() + 60)
            old = await http.get(connect["url"] + "healthz", headers={"x-sandbox-token": before})
            assert old.status_code == 200, old.text
        pod = created.json()["pod"]
        assert sandbox_processes(pod)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert sandbox_processes(pod) == [], "a sandbox outlived dev"
    assert list((tmp_path / "state" / "pods").glob("*.json")) == []  # none left to adopt
    assert refused(api_port) and refused(proxy_port)


class SwallowsOneCancel:
    """A start-up whose library swallows the first cancellation (as a database driver's
    connect may when its own timeout fires at the same moment) and then keeps waiting."""

    def __init__(self) -> None:
        self.shut_down = False
        self.waiting = asyncio.Event()

    async def startup(self) -> None:
        try:
            self.waiting.set()
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            pass  # swallowed
        await asyncio.sleep(60)

    async def run(self, stop: asyncio.Event) -> None:
        raise AssertionError("never started")

    async def shutdown(self) -> None:
        self.shut_down = True


async def test_a_stop_ends_a_startup_even_when_a_library_swallows_the_cancellation() -> None:
    process = SwallowsOneCancel()
    stop = asyncio.Event()
    serving = asyncio.create_task(serve(process, stop))
    await process.waiting.wait()  # in its first wait, the one whose cancel it swallows
    stop.set()
    await asyncio.wait_for(serving, 2)
    assert process.shut_down
