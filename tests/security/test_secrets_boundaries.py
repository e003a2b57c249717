"""Who holds which secret (issue 17, rows 7, 13 and 15), with real processes.

- A local sandbox (``sandbox-controller dev``) reads its own environment and finds none
  of the controller's secrets, and ``dev`` says once that such sandboxes are for
  trusted code (they run as the same user).
- A proxy given only its credential and the controller's address serves sessions; it
  holds neither the token secret nor the API token, its credential opens ``/internal/*``
  and nothing else, and no token signed with anything it holds is accepted by it.
- ``serve`` and ``proxy`` refuse placeholder and short secrets (``dev`` takes them).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from sandbox_controller.process import LOCAL_BACKEND_NOTE
from sandbox_controller.sandbox_contract import ENV_CLAIM_SECRET
from sandbox_controller.tokens import issue_token

from ..conftest import sandbox_processes
from ..e2e.test_dev_crash import free_port
from ..eventually import eventually

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "sandbox_controller.cli"]
SECRET_NAMES = ("SANDBOX_API_TOKEN", "SANDBOX_TOKEN_SECRET", "SANDBOX_DATABASE_URL")


def base_env(tmp: Path, **settings: str) -> dict[str, str]:
    """The test's environment without any SANDBOX_* of its own, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_")}
    env.update(
        SANDBOX_DATABASE_URL=f"sqlite+aiosqlite:///{tmp}/sandbox.db",
        SANDBOX_STATE_DIR=str(tmp / "state"),
        SANDBOX_LOG_LEVEL="info",
        **settings,
    )
    return env


@asynccontextmanager
async def running(command: list[str], env: dict[str, str], log: Path) -> AsyncIterator[int]:
    """A process of its own, stopped with SIGTERM (then SIGKILL) at the end; its pid.
    Local sandboxes it left (``serve`` keeps them for the next controller) are stopped
    too: they are the ones with their log in its state directory."""
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if "SANDBOX_STATE_DIR" in env:
            for pid in sandbox_processes(env["SANDBOX_STATE_DIR"]):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)


async def answers(url: str, status: int = 200) -> None:
    async def check() -> bool:
        try:
            async with httpx.AsyncClient(timeout=5, trust_env=False) as http:
                return (await http.get(url)).status_code == status
        except httpx.HTTPError:
            return False

    await eventually(check, within=60, every=0.1, what=f"{url} to answer {status}")


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.decode().partition("=") for item in raw.split(b"\0") if item)
    return {name: value for name, _, value in pairs}


async def open_session(api: httpx.AsyncClient, thread: str) -> dict[str, object]:
    body = {"user_id": "ada", "thread_id": thread, "wait_seconds": 60}
    response = await api.post("/sessions", json=body)
    assert response.status_code == 201, response.text
    session: dict[str, object] = response.json()
    assert session["state"] == "ready", session
    return session


async def test_a_local_sandbox_started_by_dev_reads_none_of_the_controllers_secrets(
    tmp_path: Path,
) -> None:
    # Placeholder and short secrets: `dev` takes them (one user's own machine).
    api_token, token_secret = "change-me-too", "short-secret"
    other = f"operator-exported-{secrets.token_hex(8)}"
    port, proxy_port = free_port(), free_port()
    env = base_env(
        tmp_path,
        SANDBOX_API_TOKEN=api_token,
        SANDBOX_TOKEN_SECRET=token_secret,
        SANDBOX_PREWARM_POOL_SIZE="1",
        SOME_CLOUD_SECRET_KEY=other,
    )
    database_url = env["SANDBOX_DATABASE_URL"]
    command = [*CLI, "dev", "--port", str(port), "--proxy-port", str(proxy_port)]
    log = tmp_path / "dev.log"
    async with running(command, env, log):
        await answers(f"http://127.0.0.1:{port}/readyz")
        headers = {"authorization": f"Bearer {api_token}"}
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=60, trust_env=False
        ) as api:
            session = await open_session(api, "t1")
        # The sandbox serving it, by the pod name on its command line.
        pods = tmp_path / "state" / "pods"
        pid = json.loads((pods / f"{session['pod']}.json").read_text())["pid"]
        seen = environ_of(pid)
        # Zero configuration still works end to end: the in-process proxy verifies with
        # the public key and asks the controller with its own credential.
        connect = session["connect"]
        assert isinstance(connect, dict)
        async with httpx.AsyncClient(timeout=30, trust_env=False) as http:
            through = await http.get(
                connect["url"] + "healthz", headers={"authorization": f"Bearer {connect['token']}"}
            )
        assert through.status_code == 200 and through.text == "ok"
    printed = log.read_text()

    for name in SECRET_NAMES:
        assert name not in seen, f"{name} reached the sandbox"
    everything = "\0".join(f"{k}={v}" for k, v in seen.items())
    for value in (api_token, token_secret, database_url, other):
        assert value not in everything, f"{value!r} reached the sandbox"
    assert [k for k in seen if k.startswith("SANDBOX_")] == [ENV_CLAIM_SECRET]  # its own
    assert seen.get("PATH") == os.environ.get("PATH")  # what any program needs, kept
    # dev says, once, what the local backend does not protect.
    assert printed.count(LOCAL_BACKEND_NOTE) == 1, printed
    assert "trusted" in LOCAL_BACKEND_NOTE and "/proc/*/environ" in LOCAL_BACKEND_NOTE


def hmac_token(key: bytes, session_id: str, expires_at: float) -> str:
    """A token in the old format (HMAC-SHA256), signed with ``key``."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    payload = f"{b64(session_id.encode())}.{int(expires_at)}"
    return f"{payload}.{b64(hmac.new(key, payload.encode(), hashlib.sha256).digest())}"


async def test_a_proxy_with_only_its_credential_serves_sessions_and_cannot_mint_tokens(
    tmp_path: Path,
) -> None:
    api_token, token_secret, proxy_token = (secrets.token_urlsafe(32) for _ in range(3))
    port, proxy_port, old_proxy_port = free_port(), free_port(), free_port()
    controller_env = base_env(
        tmp_path,
        SANDBOX_API_TOKEN=api_token,
        SANDBOX_TOKEN_SECRET=token_secret,
        SANDBOX_PROXY_TOKEN=proxy_token,
        SANDBOX_PORT=str(port),
        SANDBOX_PREWARM_POOL_SIZE="1",
        SANDBOX_PROXY_PUBLIC_URL=f"http://127.0.0.1:{proxy_port}",
    )
    # What the chart and the Compose file give a proxy: its credential, where things are.
    proxy_env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_")}
    proxy_env.update(
        SANDBOX_PROXY_TOKEN=proxy_token,
        SANDBOX_CONTROLLER_URL=f"http://127.0.0.1:{port}",
        SANDBOX_PROXY_PORT=str(proxy_port),
    )
    # And a proxy configured the old way: it still starts, and says what is wrong.
    old_proxy_env = {
        **proxy_env,
        "SANDBOX_PROXY_TOKEN": "",
        "SANDBOX_TOKEN_SECRET": token_secret,
        "SANDBOX_API_TOKEN": api_token,
        "SANDBOX_PROXY_PORT": str(old_proxy_port),
    }
    proxy_url = f"http://127.0.0.1:{proxy_port}"
    async with (
        # The proxy first: with no controller to ask for the verify key it is not ready,
        # and a token gets 503, until the controller answers.
        running([*CLI, "proxy"], proxy_env, tmp_path / "proxy.log") as proxy_pid,
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=60, trust_env=False
        ) as controller,
        httpx.AsyncClient(timeout=30, trust_env=False) as http,
    ):
        await answers(f"{proxy_url}/readyz", 503)
        early = await http.get(f"{proxy_url}/s/x/healthz", headers={"x-sandbox-token": "a.1.b"})
        assert early.status_code == 503, early.text
        async with (
            running([*CLI, "serve"], controller_env, tmp_path / "serve.log"),
            running([*CLI, "proxy"], old_proxy_env, tmp_path / "old-proxy.log"),
        ):
            await answers(f"http://127.0.0.1:{port}/readyz")
            await answers(f"{proxy_url}/readyz")  # ready: it has the verify key now
            await answers(f"http://127.0.0.1:{old_proxy_port}/readyz")
            controller.headers["authorization"] = f"Bearer {api_token}"
            session = await open_session(controller, "t1")
            sid = str(session["id"])
            connect = session["connect"]
            assert isinstance(connect, dict)

            async def through(token: str, base: str = proxy_url) -> int:
                url = f"{base}/s/{sid}/healthz"
                return (
                    await http.get(url, headers={"authorization": f"Bearer {token}"})
                ).status_code

            assert await through(connect["token"]) == 200
            assert await through(connect["token"], f"http://127.0.0.1:{old_proxy_port}") == 200

            # 1. The proxy's environment holds neither the token secret nor the API token.
            seen = environ_of(proxy_pid)
            assert "SANDBOX_TOKEN_SECRET" not in seen and "SANDBOX_API_TOKEN" not in seen
            everything = "\0".join(f"{k}={v}" for k, v in seen.items())
            assert token_secret not in everything and api_token not in everything

            # 2. Its credential opens /internal/* only: no session, no connect token, no pool.
            as_proxy = {"authorization": f"Bearer {proxy_token}"}
            refused = [
                await controller.post(
                    "/sessions", json={"user_id": "eve", "thread_id": "t2"}, headers=as_proxy
                ),
                await controller.get(f"/sessions/{sid}", headers=as_proxy),
                await controller.get("/sessions", params={"user_id": "ada"}, headers=as_proxy),
                await controller.get("/pool", headers=as_proxy),
            ]
            assert [r.status_code for r in refused] == [401] * 4
            route = await controller.get(f"/internal/routes/{sid}", headers=as_proxy)
            assert route.status_code == 200 and route.json()["state"] == "ready"
            keys = await controller.get("/internal/token-keys", headers=as_proxy)
            assert keys.status_code == 200
            (verify_key,) = keys.json()["keys"]
            assert len(base64.urlsafe_b64decode(verify_key + "=")) == 32  # an Ed25519 public key
            anonymous = await http.get(f"http://127.0.0.1:{port}/internal/token-keys")
            assert anonymous.status_code == 401

            # 3. Nothing the proxy holds signs a token it accepts: its credential and the
            # verify key, used as a signing secret in the new format or the old one.
            expires = time.time() + 3600
            for held in (
                proxy_token.encode(),
                verify_key.encode(),
                base64.urlsafe_b64decode(verify_key + "="),
            ):
                for forged in (issue_token(held, sid, expires), hmac_token(held, sid, expires)):
                    assert await through(forged) == 401, forged
            # A token of the old format from the real secret is refused too: HMAC is gone.
            assert await through(hmac_token(token_secret.encode(), sid, expires)) == 401

    old_log = (tmp_path / "old-proxy.log").read_text()
    assert "SANDBOX_TOKEN_SECRET is set for the proxy" in old_log
    assert "SANDBOX_API_TOKEN is set for the proxy" in old_log
    assert "is set for the proxy" not in (tmp_path / "proxy.log").read_text()


GOOD = {name: secrets.token_urlsafe(32) for name in ("api", "secret", "proxy")}


@pytest.mark.parametrize(
    ("command", "variable", "value", "says"),
    [
        ("serve", "SANDBOX_API_TOKEN", "change-me-too", "known placeholder"),
        ("serve", "SANDBOX_TOKEN_SECRET", "change-me-three", "known placeholder"),
        ("serve", "SANDBOX_TOKEN_SECRET", "s", "too short (1 bytes"),
        ("serve", "SANDBOX_API_TOKEN", "fifteen-bytes!!", "too short (15 bytes"),
        ("serve", "SANDBOX_PROXY_TOKEN", "changeme", "known placeholder"),
        ("serve", "SANDBOX_PROXY_TOKEN", "<the API token>", "must differ from SANDBOX_API_TOKEN"),
        ("proxy", "SANDBOX_PROXY_TOKEN", "change-me-please-now", "known placeholder"),
        ("proxy", "SANDBOX_PROXY_TOKEN", "password", "known placeholder"),
        ("proxy", "SANDBOX_TOKEN_SECRET", "secret", "known placeholder"),
    ],
)
def test_serve_and_proxy_refuse_placeholder_and_short_secrets(
    tmp_path: Path, command: str, variable: str, value: str, says: str
) -> None:
    env = base_env(
        tmp_path,
        SANDBOX_API_TOKEN=GOOD["api"],
        SANDBOX_TOKEN_SECRET=GOOD["secret"],
        SANDBOX_PROXY_TOKEN=GOOD["proxy"],
        SANDBOX_PORT=str(free_port()),
        SANDBOX_PROXY_PORT=str(free_port()),
        SANDBOX_PREWARM_POOL_SIZE="0",
    )
    env[variable] = GOOD["api"] if value == "<the API token>" else value
    try:
        done = subprocess.run([*CLI, command], env=env, capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`{command}` started with {variable}={value!r}")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"sandbox-controller: configuration error: {variable}: "), lines
    assert says in lines[0], lines
