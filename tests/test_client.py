"""sandbox_controller.client against a real `sandbox-controller dev`, not mocks.

One dev server for the module, with small limits so that 429 and 503 come quickly:
no warm pool (every session starts cold, so `provisioning` is seen), 3 pods in all,
one session per user, sessions idle 2 s after their last activity, tokens good for 2 s.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from sandbox_controller.client import (
    AsyncSandboxClient,
    CapacityExhaustedError,
    EndDetail,
    InvalidRequestError,
    NotReadyError,
    SandboxClient,
    SessionEndedError,
    SessionNotFoundError,
    UnauthorizedError,
    UserSessionLimitError,
)

from .eventually import eventually

TOKEN = "client-test-token"
MAX_TOTAL = 3

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Dev:
    def __init__(self, tmp: Path, **settings: str) -> None:
        self.port, self.proxy_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "SANDBOX_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/sandbox.db",
            "SANDBOX_STATE_DIR": str(tmp / "state"),
            "SANDBOX_API_TOKEN": TOKEN,
            "SANDBOX_TOKEN_SECRET": "client-test-secret",
            "SANDBOX_PREWARM_POOL_SIZE": "0",
            "SANDBOX_MAX_TOTAL_JOBS": str(MAX_TOTAL),
            "SANDBOX_MAX_SESSIONS_PER_USER": "1",
            "SANDBOX_IDLE_AFTER": "2s",
            "SANDBOX_ACTIVITY_FLUSH_INTERVAL": "0.25s",
            "SANDBOX_TOKEN_TTL": "2s",  # so a token's expiry is seen, and its refresh
            "SANDBOX_LOG_LEVEL": "warning",
            **settings,
        }
        self.log = open(tmp / "dev.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sandbox_controller.cli", "dev",
             "--port", str(self.port), "--proxy-port", str(self.proxy_port)],
            env=env, stdout=self.log, stderr=self.log,
        )  # fmt: skip

    async def ready(self) -> bool:
        assert self.proc.poll() is None, "dev server exited"
        try:
            async with httpx.AsyncClient() as http:
                return (await http.get(self.url + "/readyz")).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    server = Dev(tmp_path_factory.mktemp("dev"))
    try:
        asyncio.run(eventually(server.ready, within=60, what="the dev server"))
        yield server
    finally:
        server.stop()


@pytest.fixture
def one_pod_dev(tmp_path: Path) -> Iterator[Dev]:
    """A dev server of its own, room for one pod: ended sessions' pods stay terminating
    for a while, so the shared server's capacity is not the test's to fill."""
    server = Dev(tmp_path, SANDBOX_MAX_TOTAL_JOBS="1")
    try:
        asyncio.run(eventually(server.ready, within=60, what="the dev server"))
        yield server
    finally:
        server.stop()


@pytest.fixture
async def client(dev: Dev) -> AsyncIterator[AsyncSandboxClient]:
    async with AsyncSandboxClient(dev.url, TOKEN, max_retries=1) as c:
        yield c


async def test_open_gives_a_ready_session_whose_url_answers(
    client: AsyncSandboxClient,
) -> None:
    opened = await client.open_session("ada", "ada-thread-1")
    try:
        assert opened.created  # 201
        assert opened.session.ready and opened.session.connect is not None
        connect = opened.session.connect
        async with httpx.AsyncClient() as http:
            page = await http.get(connect.url, headers={"X-Sandbox-Token": connect.token})
        assert page.status_code == 200 and "devsandbox" in page.text

        again = await client.open_session("ada", "ada-thread-1")  # a retried open: 200
        assert not again.created and again.session.id == opened.session.id
        assert [s.id for s in await client.list("ada")] == [opened.session.id]
    finally:
        await client.delete(opened.session.id)


async def test_open_configures_the_sandbox_at_claim_time(client: AsyncSandboxClient) -> None:
    opened = await client.open_session(
        "cleo",
        "cleo-thread-1",
        env={"AGENT_API_KEY": "sk-cleo-secret"},
        metadata={"workspace": "ws-7"},
        files={"notes/todo.txt": "ship it\n"},
    )
    try:
        assert opened.session.ready and opened.session.metadata == {"workspace": "ws-7"}
        connect = opened.session.connect
        assert connect is not None
        async with httpx.AsyncClient() as http:
            page = await http.get(connect.url, headers={"X-Sandbox-Token": connect.token})
        # The sandbox's index page names what it received (names, never values).
        assert "AGENT_API_KEY" in page.text and "sk-cleo-secret" not in page.text
        assert (await client.get(opened.session.id)).metadata == {"workspace": "ws-7"}
    finally:
        await client.delete(opened.session.id)


async def test_open_waits_through_provisioning(client: AsyncSandboxClient) -> None:
    # wait_seconds=0: the server answers 201 at once, still provisioning (a cold pod);
    # with no time to wait, the client says so.
    with pytest.raises(NotReadyError) as early:
        await client.open_session("bob", "bob-thread-1", wait_seconds=0, ready_within=0)
    assert early.value.session.state == "provisioning" and early.value.session.detail
    try:
        # Given time, it polls until the pod is ready.
        opened = await client.open_session("bob", "bob-thread-1", wait_seconds=0)
        assert opened.session.ready and opened.session.id == early.value.session.id
    finally:
        await client.delete(early.value.session.id)


async def test_refresh_hands_out_a_new_token_once_the_old_one_expired(
    client: AsyncSandboxClient,
) -> None:
    opened = await client.open_session("cy", "cy-thread-1")
    connect = opened.session.connect
    assert connect is not None
    try:
        async with httpx.AsyncClient() as http:

            async def status(token: str) -> int:
                return (await http.get(connect.url, headers={"X-Sandbox-Token": token})).status_code

            async def expired() -> bool:
                return await status(connect.token) == 401

            assert await status(connect.token) == 200
            await eventually(expired, within=10, what="the first token to expire", every=0.2)
            fresh = await client.refresh(opened.session.id)
            assert fresh.token != connect.token and await status(fresh.token) == 200
    finally:
        await client.delete(opened.session.id)


async def test_delete_ends_the_session(client: AsyncSandboxClient) -> None:
    opened = await client.open_session("dee", "dee-thread-1")
    await client.touch(opened.session.id)
    await client.delete(opened.session.id)

    ended = await client.get(opened.session.id)
    assert ended.state == "ended" and ended.end_reason == "deleted" and ended.connect is None
    assert ended.activity_source == "touch"  # the touch above was its last activity
    assert ended.end_detail == EndDetail(ended.last_active_at, "touch", None)
    with pytest.raises(SessionEndedError):
        await client.refresh(opened.session.id)
    with pytest.raises(SessionNotFoundError) as missing:
        await client.get("no-such-session")
    assert missing.value.status == 404 and missing.value.code == "session_not_found"


async def test_429_is_retried_after_retry_after_and_then_succeeds(
    client: AsyncSandboxClient,
) -> None:
    first = await client.open_session("eve", "eve-thread-1")
    started = time.monotonic()
    # The user is at the limit; after Retry-After the first session is idle, so the
    # retry reclaims it and the new thread gets a sandbox.
    second = await client.open_session("eve", "eve-thread-2")
    try:
        assert time.monotonic() - started >= 1.0  # Retry-After: at least 1 s
        assert second.created and second.session.reclaimed_session_id == first.session.id
    finally:
        await client.delete(second.session.id)


async def test_429_is_raised_when_retries_run_out(client: AsyncSandboxClient) -> None:
    first = await client.open_session("fay", "fay-thread-1")

    async def keep_busy() -> None:  # the agent works: the first session never turns idle
        while True:
            await client.touch(first.session.id)
            await asyncio.sleep(0.2)

    toucher = asyncio.create_task(keep_busy())
    started = time.monotonic()
    try:
        with pytest.raises(UserSessionLimitError) as refused:
            await client.open_session("fay", "fay-thread-2")
        assert time.monotonic() - started >= 1.0  # it waited once (max_retries=1)
        assert refused.value.status == 429 and refused.value.code == "user_session_limit"
        assert refused.value.retry_after is not None and refused.value.retry_after >= 1
    finally:
        toucher.cancel()
        await client.delete(first.session.id)


def test_503_is_retried_after_retry_after_and_then_raised(one_pod_dev: Dev) -> None:
    with SandboxClient(one_pod_dev.url, TOKEN, max_retries=1) as client:
        holder = client.open_session("gus", "gus-thread-1")
        started = time.monotonic()
        with pytest.raises(CapacityExhaustedError) as refused:
            client.open_session("hal", "hal-thread-1", wait_seconds=0)
        assert refused.value.status == 503 and refused.value.code == "capacity_exhausted"
        assert refused.value.retry_after is not None
        assert time.monotonic() - started >= refused.value.retry_after  # waited it out once
        client.delete(holder.session.id)


async def test_bad_input_and_a_bad_token_raise_their_own_errors(dev: Dev) -> None:
    async with AsyncSandboxClient(dev.url, "wrong-token") as wrong:
        with pytest.raises(UnauthorizedError):
            await wrong.list("ada")
    async with AsyncSandboxClient(dev.url, TOKEN) as client:
        with pytest.raises(InvalidRequestError) as invalid:
            await client.open_session("", "thread")
        assert invalid.value.status == 422


def test_the_sync_client_does_the_same(dev: Dev) -> None:
    with SandboxClient(dev.url, TOKEN) as client:
        opened = client.open_session("ida", "ida-thread-1")
        assert opened.created and opened.session.ready
        assert client.refresh(opened.session.id).url == opened.session.connect.url  # type: ignore[union-attr]
        client.touch(opened.session.id)
        client.delete(opened.session.id)
        assert client.get(opened.session.id).state == "ended"
