"""Credential rotation without an outage (issue 25, README "Rotating credentials"),
with real processes: kubesim serving a sandbox at every pod, `serve` replicas on
PostgreSQL, and a `proxy` that reaches the leader through a stand-in for the controller
Service. The rotation is the README's procedure, a rolling restart:

1. every replica runs with the old API token and token secret; an editor holds a
   session token signed with it, and another session's sandbox is busy;
2. new replicas start with the new API token beside the old one, the new token secret
   signing, the old one in SANDBOX_TOKEN_SECRET_PREVIOUS, and the hook secret pinned to
   what it was; the old replicas stop one by one (the leader last, with SIGTERM).

Throughout, the editor's requests through the proxy never see a 401 or 403, a token
signed by the new secret opens its session at once (the proxy learns the new key on
demand, not at its next minute's refresh), and the busy sandbox, asked past its idle
timeout again and again, is never ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox_controller.tokens import secret_key_id, token_key_id

from ...conftest import fresh_postgres
from ...eventually import eventually
from .harness import API_TOKEN, HA, Replica, free_port

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

OLD_SECRET = "rotation-drill-token-secret-before"
NEW_SECRET = "rotation-drill-token-secret-after!"
NEW_API_TOKEN = "rotation-drill-api-token-after"
PROXY_TOKEN = "rotation-drill-proxy-credential"


class Service:
    """What the chart's controller Service does: each connection goes to the replica
    that leads now (the Service selects the leader's label; here, its /readyz)."""

    def __init__(self, ha: HA) -> None:
        self.ha = ha
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connect, "127.0.0.1", self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _leader(self) -> Replica | None:
        for replica in reversed(self.ha.replicas):
            if replica.proc.poll() is None and await replica.is_leader():
                return replica
        return None

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            leader = await self._leader()
            if leader is None:
                writer.close()
                return
            port = int(leader.url.rsplit(":", 1)[1])
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(ConnectionError, OSError, RuntimeError):
        writer.close()


class Editor:
    """An open editor: one request through the proxy every 0.1 s with its token,
    every answer counted."""

    def __init__(self, proxy: str, session_id: str, token: str) -> None:
        self.url = f"{proxy}/s/{session_id}/"
        self.token = token
        self.codes: Counter[int] = Counter()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=5.0, trust_env=False) as http:
            while True:
                try:
                    response = await http.get(self.url, headers={"x-sandbox-token": self.token})
                    self.codes[response.status_code] += 1
                except httpx.HTTPError:
                    self.codes[0] += 1
                await asyncio.sleep(0.1)

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@pytest.fixture
async def drill(tmp_path: Path) -> AsyncIterator[tuple[HA, Service, str]]:
    """kubesim, two replicas with the old credentials, the Service and a proxy."""
    async with fresh_postgres() as url:
        ha = HA(tmp_path, url)
        ha.env.update(
            SANDBOX_TOKEN_SECRET=OLD_SECRET,
            SANDBOX_PROXY_TOKEN=PROXY_TOKEN,
            # Short, so that the busy sandbox is asked again and again during the drill.
            SANDBOX_IDLE_AFTER="1s",
            SANDBOX_IDLE_TIMEOUT="3s",
            SANDBOX_HOOK_TIMEOUT="1s",
            SANDBOX_LOG_LEVEL="info",
        )
        service = Service(ha)
        proxy: subprocess.Popen[bytes] | None = None
        try:
            await ha.start_kubesim("old-a", "old-b", "new-a", "new-b")
            first = await ha.start_replica("old-a")
            await ha.leader([first])
            await ha.start_replica("old-b")
            await service.start()
            proxy_port = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_")}
            env.update(
                PYTHONUNBUFFERED="1",
                SANDBOX_PROXY_TOKEN=PROXY_TOKEN,
                SANDBOX_CONTROLLER_URL=service.url,
                SANDBOX_PROXY_PORT=str(proxy_port),
            )
            with (tmp_path / "proxy.log").open("wb") as out:
                proxy = subprocess.Popen(
                    [sys.executable, "-m", "sandbox_controller.cli", "proxy"],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            proxy_url = f"http://127.0.0.1:{proxy_port}"
            await eventually(lambda: ready(proxy_url), within=30, what="the proxy to be ready")
            yield ha, service, proxy_url
        finally:
            if proxy is not None:
                proxy.send_signal(signal.SIGTERM)
                await asyncio.to_thread(proxy.wait, 20)
            await service.close()
            await ha.close()


async def ready(proxy_url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        async with httpx.AsyncClient(trust_env=False) as http:
            return (await http.get(f"{proxy_url}/readyz")).status_code == 200
    return False


async def metric(replica: Replica, line: str) -> float:
    text = (await replica.client.get("/metrics")).text
    found = [row for row in text.splitlines() if row.startswith(line + " ")]
    return float(found[0].split()[-1]) if found else 0.0


async def test_a_rolling_rotation_keeps_live_editors_and_busy_sandboxes(
    drill: tuple[HA, Service, str],
) -> None:
    ha, _service, proxy = drill
    old_leader = await ha.leader()
    await ha.wait_idle(old_leader, 2)

    # An editor at work (its agent busy too, so the short idle timeout never races the
    # proxy's activity reports), and a busy sandbox nobody types into.
    editing = (await old_leader.open("ada", "t-edit")).json()
    busy = (await old_leader.open("bob", "t-busy")).json()
    assert token_key_id(editing["connect"]["token"]) == secret_key_id(OLD_SECRET.encode())
    for session in (editing, busy):
        await set_busy(old_leader, session["id"])
    editor = Editor(proxy, editing["id"], editing["connect"]["token"])
    editor.start()
    await eventually(lambda: editor.codes[200] > 0, within=15, what="the editor served")
    # The busy sandbox is asked past its idle timeout, and kept, before the rotation too.
    await eventually(
        lambda: busy_checks(old_leader, 1), within=20, what="a busy answer before the rotation"
    )

    # The rolling restart: new replicas with the new credentials, the old ones stopped.
    rotated = {
        "SANDBOX_API_TOKEN": "",
        "SANDBOX_API_TOKENS": f"before:{API_TOKEN},after:{NEW_API_TOKEN}",
        "SANDBOX_TOKEN_SECRET": NEW_SECRET,
        "SANDBOX_TOKEN_SECRET_PREVIOUS": OLD_SECRET,
        # The hook secret stays what it was: the live sandboxes hold secrets made from it.
        "SANDBOX_HOOK_SECRET": OLD_SECRET,
    }
    new_a = await ha.start_replica("new-a", **rotated)
    standby = next(r for r in ha.replicas[:2] if r is not old_leader)
    await asyncio.to_thread(_stop, standby)
    old_leader.signal(signal.SIGTERM)  # hands over to the new replica at once
    leader = await ha.leader([new_a])
    await asyncio.to_thread(old_leader.proc.wait, 30)
    await ha.start_replica("new-b", **rotated)

    # Either API token opens sessions now; the new secret signs them.
    with_new_token = {"Authorization": f"Bearer {NEW_API_TOKEN}"}
    fresh = await leader.client.post(
        "/sessions",
        json={"user_id": "cy", "thread_id": "t-new", "wait_seconds": 10},
        headers=with_new_token,
    )
    assert fresh.status_code == 201, fresh.text
    new_token = fresh.json()["connect"]["token"]
    assert token_key_id(new_token) == secret_key_id(NEW_SECRET.encode())
    # The proxy has not refreshed its keys since (it does every minute): the first
    # request with a token of the new key must still be served.
    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
        opened = await http.get(
            f"{proxy}/s/{fresh.json()['id']}/", headers={"x-sandbox-token": new_token}
        )
        assert opened.status_code == 200, opened.text
        # A fresh token for the editor's session, signed by the new key, works too.
        again = (await leader.client.get(f"/sessions/{editing['id']}")).json()
        renewed = await http.get(
            f"{proxy}/s/{editing['id']}/", headers={"x-sandbox-token": again["connect"]["token"]}
        )
        assert renewed.status_code == 200, renewed.text

    # The busy sandbox is asked by the new leader, with the hook secret it was made with.
    await eventually(lambda: busy_checks(leader, 2), within=20, what="busy answers after it")
    served_before = editor.codes[200]
    await eventually(
        lambda: editor.codes[200] > served_before + 5, within=15, what="the editor served after"
    )
    await editor.stop()

    assert editor.codes[401] == 0 and editor.codes[403] == 0, editor.codes
    for session in (editing, busy):
        kept = (await leader.client.get(f"/sessions/{session['id']}")).json()
        assert kept["state"] == "ready", kept
    assert kept["last_activity"]["source"] == "busy"
    assert await metric(leader, 'sandbox_status_checks_total{answer="unauthorized"}') == 0
    assert await metric(leader, 'sandbox_status_checks_total{answer="no_answer"}') == 0


async def set_busy(replica: Replica, session_id: str) -> None:
    route = (await replica.client.get(f"/internal/routes/{session_id}")).json()
    async with httpx.AsyncClient(trust_env=False) as http:
        answer = await http.post(
            f"http://{route['address']}/_sandbox/busy",
            json={"busy": True, "detail": "running the migration"},
        )
        answer.raise_for_status()


async def busy_checks(replica: Replica, at_least: int) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return await metric(replica, 'sandbox_status_checks_total{answer="busy"}') >= at_least
    return False


def _stop(replica: Replica, timeout: float = 20.0) -> Any:
    replica.proc.send_signal(signal.SIGTERM)
    try:
        return replica.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        replica.proc.kill()
        return replica.proc.wait()
