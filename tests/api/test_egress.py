"""Egress through the API (issue 19): grants within SANDBOX_EGRESS_GRANTABLE, PATCH and
GET /sessions/{id}/egress, the egress proxy's authorize and denials calls, and secrets
that the sandbox, the database, the logs and every GET never hold. A real controller
over HTTP, real devsandbox processes (local backend), SQLite and PostgreSQL."""

from __future__ import annotations

import json
import logging
import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sandbox_controller.backends.base import LABEL_CREATE_ID
from sandbox_controller.egress_env import PROXY_VARIABLES
from sandbox_controller.egress_secrets import PLACEHOLDER_PREFIX
from sandbox_controller.sandbox_contract import egress_credential, hook_key
from sandbox_controller.store import Store

from ..conftest import ControllerFactory, RunningController
from ..eventually import eventually
from .test_claims import TOKEN_SECRET, address_of, sandbox_claim

KEY = hook_key(TOKEN_SECRET)
EGRESS = {
    "egress": "enforce",
    "egress_allow": "pypi.org, *.npmjs.org",
    "egress_grantable": "*.github.com, 203.0.113.7",
    "egress_deny_cidrs": "10.96.0.0/12",
}


def create_id_of(ctl: RunningController, pod: str) -> str:
    labels: dict[str, str] = ctl.sandboxes()[pod]["labels"]
    return labels[LABEL_CREATE_ID]


async def authorize(
    ctl: RunningController, create_id: str, password: str | None = None
) -> httpx.Response:
    password = password if password is not None else egress_credential(KEY, create_id)
    return await ctl.client.post(
        "/internal/egress/authorize", json={"user": create_id, "password": password}
    )


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


async def test_grants_patch_denials_and_authorize(start_controller: ControllerFactory) -> None:
    ctl = await start_controller(prewarm_pool_size=2, **EGRESS)
    await ctl.wait_idle_pods(2)

    refused = await ctl.client.post(
        "/sessions",
        json={"user_id": "u", "thread_id": "t", "egress": {"allow": ["api.gitlab.com"]}},
    )
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "egress_not_grantable"
    assert "api.gitlab.com" in refused.json()["error"]["message"]
    # The wildcard itself is not within itself's subdomains; a bare suffix is not either.
    for pattern in ("github.com", "*.github.com:22", "203.0.113.8"):
        answer = await ctl.client.post(
            "/sessions", json={"user_id": "u", "thread_id": "t", "egress": {"allow": [pattern]}}
        )
        assert answer.json()["error"]["code"] == "egress_not_grantable", pattern
    bad = await ctl.client.post(
        "/sessions",
        json={"user_id": "u", "thread_id": "t", "egress": {"allow": ["https://x.github.com"]}},
    )
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"
    assert "not a URL" in bad.json()["error"]["message"]

    opened = await ctl.client.post(
        "/sessions",
        json={"user_id": "u", "thread_id": "t", "egress": {"allow": ["API.GitHub.com."]}},
    )
    assert opened.status_code == 201, opened.text
    session = opened.json()
    assert session["egress"] == {
        "mode": "enforce",
        "allow": ["pypi.org", "*.npmjs.org", "api.github.com"],
        "granted": ["api.github.com"],
    }
    # A retry for the thread is that session, its grants unchanged (as env and metadata).
    retry = await ctl.client.post(
        "/sessions",
        json={"user_id": "u", "thread_id": "t", "egress": {"allow": ["x.github.com"]}},
    )
    assert retry.status_code == 200 and retry.json()["egress"]["granted"] == ["api.github.com"]

    pod = session["pod"]
    create_id = create_id_of(ctl, pod)
    answer = await authorize(ctl, create_id)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["pod"] == create_id and body["session_id"] == session["id"]
    assert body["mode"] == "enforce" and body["ttl"] == 1.0
    assert body["allow"] == ["pypi.org", "*.npmjs.org", "api.github.com"]
    assert body["deny_cidrs"] == ["10.96.0.0/12"] and body["secrets"] == []
    wrong = await authorize(ctl, create_id, "0" * 64)
    assert wrong.status_code == 401 and wrong.json()["code"] == "bad_credential"
    unknown = await authorize(ctl, "f" * 32, "0" * 64)
    assert unknown.status_code == 401

    # A warm pod: the deployment's list only, no session.
    await ctl.wait_idle_pods(1)
    answers: list[dict[str, Any]] = []

    async def a_warm_pod_answers() -> bool:
        # A sandbox process that has just started may not be in the pool yet (it is
        # refused as gone): ask each until one the pool holds answers.
        for warm in (name for name in ctl.sandboxes() if name != pod):
            answer = await authorize(ctl, create_id_of(ctl, warm))
            if answer.status_code == 200:
                answers.append(answer.json())
                return True
        return False

    await eventually(a_warm_pod_answers, what="a warm pod's authorize answer")
    warm_answer = answers[0]
    assert warm_answer["session_id"] is None and warm_answer["allow"] == ["pypi.org", "*.npmjs.org"]

    patched = await ctl.client.patch(
        f"/sessions/{session['id']}/egress", json={"allow": ["*.x.github.com", "203.0.113.7:443"]}
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["granted"] == ["*.x.github.com", "203.0.113.7:443"]
    # The next authorize (the proxy's cache lives a second) has it.
    assert (await authorize(ctl, create_id)).json()["allow"][-2:] == [
        "*.x.github.com",
        "203.0.113.7:443",
    ]
    shown = (await ctl.client.get(f"/sessions/{session['id']}")).json()
    assert shown["egress"]["granted"] == ["*.x.github.com", "203.0.113.7:443"]
    outside = await ctl.client.patch(f"/sessions/{session['id']}/egress", json={"allow": ["*.com"]})
    assert outside.status_code == 422 and outside.json()["error"]["code"] == "egress_not_grantable"
    missing = await ctl.client.patch("/sessions/nope/egress", json={"allow": []})
    assert missing.status_code == 404

    # Denials: kept per session, the last 100, oldest first; a warm pod's are not kept.
    denials = [
        {
            "session_id": session["id"],
            "at": 1_700_000_000.0 + i,
            "host": f"h{i}.example",
            "port": 443,
            "reason": "not_allowed",
        }
        for i in range(120)
    ]
    denials.append({"session_id": None, "at": 1.0, "host": "x", "port": 1, "reason": "not_allowed"})
    for start in (0, 60):
        sent = await ctl.client.post(
            "/internal/egress/denials", json={"denials": denials[start : start + 60]}
        )
        assert sent.status_code == 204, sent.text
    sent = await ctl.client.post("/internal/egress/denials", json={"denials": denials[120:]})
    assert sent.status_code == 204
    bad_reason = await ctl.client.post(
        "/internal/egress/denials",
        json={"denials": [{**denials[0], "reason": "because"}]},
    )
    assert bad_reason.status_code == 422
    egress = (await ctl.client.get(f"/sessions/{session['id']}/egress")).json()
    assert egress["session_id"] == session["id"] and egress["mode"] == "enforce"
    assert len(egress["denials"]) == 100
    assert egress["denials"][0]["host"] == "h20.example"
    assert egress["denials"][-1] == {
        "at": "2023-11-14T22:15:19+00:00",
        "host": "h119.example",
        "port": 443,
        "reason": "not_allowed",
    }

    assert (await ctl.client.delete(f"/sessions/{session['id']}")).status_code == 204
    ended = await authorize(ctl, create_id)
    assert ended.status_code == 403 and ended.json()["code"] == "session_ended"

    async def deleted() -> bool:
        return pod not in ctl.sandboxes()

    await eventually(deleted, within=15, what="the ended session's pod deleted")
    await ctl.settle()
    assert (await authorize(ctl, create_id)).status_code == 403  # gone: still refused
    # A pod of ours the pool does not know yet (its create not answered): as a warm one.
    fresh = (await authorize(ctl, "0123456789abcdef" * 2)).json()
    assert fresh["session_id"] is None and fresh["allow"] == ["pypi.org", "*.npmjs.org"]
    late = await ctl.client.patch(f"/sessions/{session['id']}/egress", json={"allow": []})
    assert late.status_code == 410
    # Its denials stay readable after its end (why did it fail?), until retention.
    after = (await ctl.client.get(f"/sessions/{session['id']}/egress")).json()
    assert len(after["denials"]) == 100


async def test_secret_bodies_are_checked(start_controller: ControllerFactory) -> None:
    ctl = await start_controller(prewarm_pool_size=0, **EGRESS)

    async def refused(secret: dict[str, Any], **more: Any) -> dict[str, Any]:
        answer = await ctl.client.post(
            "/sessions",
            json={"user_id": "u", "thread_id": "t", "secrets": [secret], **more, "wait_seconds": 0},
        )
        assert answer.status_code == 422, answer.text
        error: dict[str, Any] = answer.json()["error"]
        assert "hunter2" not in answer.text  # never the value, even refused
        return error

    good = {"name": "TOKEN", "value": "hunter2", "hosts": ["api.github.com"]}
    assert "{value}" in (await refused({**good, "format": "Bearer"}))["message"]
    assert "proxy's own" in (await refused({**good, "header": "Host"}))["message"]
    assert (await refused({**good, "header": "X Bad"}))["code"] == "invalid_request"
    assert (await refused({**good, "value": "a\r\nX-Evil: 1hunter2"}))["code"] == "invalid_request"
    assert (await refused({**good, "hosts": []}))["code"] == "invalid_request"
    assert "not a URL" in (await refused({**good, "hosts": ["http://x"]}))["message"]
    assert (await refused({**good, "name": "1BAD"}))["code"] == "invalid_request"
    assert (await refused({**good, "value": "x" * 9000}))["code"] == "claim_limit_exceeded"
    named = await refused(good, env={"TOKEN": "hunter2-too"})
    assert "env name" in named["message"]
    crowded = await ctl.client.post(
        "/sessions",
        json={
            "user_id": "u",
            "thread_id": "t",
            "env": {f"E{i}": "x" for i in range(64)},
            "secrets": [good],
        },
    )
    assert crowded.json()["error"]["code"] == "claim_limit_exceeded"
    many = await ctl.client.post(
        "/sessions",
        json={
            "user_id": "u",
            "thread_id": "t",
            "secrets": [{**good, "name": f"T{i}"} for i in range(17)],
        },
    )
    assert many.json()["error"]["code"] == "claim_limit_exceeded"


async def test_secrets_need_egress_on(start_controller: ControllerFactory) -> None:
    ctl = await start_controller(prewarm_pool_size=0)
    answer = await ctl.client.post(
        "/sessions",
        json={
            "user_id": "u",
            "thread_id": "t",
            "wait_seconds": 0,
            "secrets": [{"name": "T", "value": "v", "hosts": ["a.example"]}],
        },
    )
    assert answer.status_code == 422 and "SANDBOX_EGRESS=off" in answer.json()["error"]["message"]
    # With egress off, the session JSON says so, and sandboxes get no proxy env.
    opened = await ctl.client.post("/sessions", json={"user_id": "u", "thread_id": "t2"})
    assert opened.json()["egress"] == {"mode": "off", "allow": [], "granted": []}
    pid = ctl.sandboxes()[opened.json()["pod"]]["pid"]
    assert not set(PROXY_VARIABLES) & set(environ(pid))


async def database_dump(url: str) -> str:
    """Every row of every table, as text."""
    store = Store.open(url)

    def dump(conn: Connection) -> str:
        rows = []
        for name in sa.inspect(conn).get_table_names():
            rows.extend(repr(tuple(r)) for r in conn.execute(sa.text(f'SELECT * FROM "{name}"')))
        return "\n".join(rows)

    try:
        return await store.run(dump)
    finally:
        await store.close()


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
async def test_secrets_reach_only_the_egress_proxy(
    engine: str,
    start_controller: ControllerFactory,
    postgres_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    url = postgres_url if engine == "postgres" else f"sqlite+aiosqlite:///{tmp_path}/egress.db"
    secrets_file = tmp_path / "secrets.yaml"
    registry_value = f"registry-{secrets.token_hex(8)}"
    secrets_file.write_text(
        f"- name: NPM_TOKEN\n  value: {registry_value}\n  hosts: ['registry.npmjs.org']\n"
    )
    ctl = await start_controller(
        prewarm_pool_size=1,
        database_url=url,
        log_level="debug",
        egress_secrets_file=str(secrets_file),
        **EGRESS,
    )
    await ctl.wait_idle_pods(1)
    value = f"ghp_{secrets.token_hex(12)}"
    opened = await ctl.client.post(
        "/sessions",
        json={
            "user_id": "u",
            "thread_id": "t",
            "env": {"PLAIN": "yes"},
            "secrets": [
                {
                    "name": "GITHUB_TOKEN",
                    "value": value,
                    "hosts": ["api.github.com"],
                    "header": "Authorization",
                    "format": "token {value}",
                }
            ],
        },
    )
    assert opened.status_code == 201, opened.text
    session = opened.json()
    assert session["secrets"] == [
        {"name": "GITHUB_TOKEN", "hosts": ["api.github.com"], "header": "Authorization"}
    ]
    pod = session["pod"]
    claim = await sandbox_claim(ctl, pod, await address_of(ctl, session["id"]))
    placeholder = claim["env"]["GITHUB_TOKEN"]
    assert placeholder.startswith(PLACEHOLDER_PREFIX) and claim["env"]["PLAIN"] == "yes"

    # The sandbox's own env: its proxy with its credential, the deployment secret's
    # placeholder from creation, no value.
    create_id = create_id_of(ctl, pod)
    env = environ(ctl.sandboxes()[pod]["pid"])
    password = egress_credential(KEY, create_id)
    for name in PROXY_VARIABLES:
        assert env[name] == f"http://{create_id}:{password}@127.0.0.1:3128"
    assert env["NO_PROXY"] == env["no_proxy"] == "localhost,127.0.0.1,::1"
    assert env["NPM_TOKEN"].startswith(PLACEHOLDER_PREFIX)

    answer = (await authorize(ctl, create_id)).json()
    by_name = {s["name"]: s for s in answer["secrets"]}
    assert by_name["GITHUB_TOKEN"] == {
        "name": "GITHUB_TOKEN",
        "placeholder": placeholder,
        "value": value,
        "hosts": ["api.github.com"],
        "header": "Authorization",
        "format": "token {value}",
    }
    assert by_name["NPM_TOKEN"]["placeholder"] == env["NPM_TOKEN"]
    assert by_name["NPM_TOKEN"]["value"] == registry_value

    fetched = await ctl.client.get(f"/sessions/{session['id']}")
    listed = await ctl.client.get("/sessions")
    egress = await ctl.client.get(f"/sessions/{session['id']}/egress")
    stored = await database_dump(url)
    metrics = (await ctl.client.get("/metrics")).text
    assert "GITHUB_TOKEN" in stored  # the row is there, its value sealed
    for text in (fetched.text, listed.text, egress.text, stored, metrics, json.dumps(env)):
        assert value not in text and registry_value not in text

    # What a new leader holds: nothing in memory; it opens what the store has sealed.
    scheduler = ctl.controller.scheduler
    assert scheduler is not None
    scheduler.egress.clear()
    reopened = (await authorize(ctl, create_id)).json()
    assert {s["name"]: s["value"] for s in reopened["secrets"]}["GITHUB_TOKEN"] == value

    # Its end deletes them, in the ending's transaction.
    assert (await ctl.client.delete(f"/sessions/{session['id']}")).status_code == 204
    await ctl.settle()

    async def gone() -> bool:
        return "GITHUB_TOKEN" not in await database_dump(url)

    await eventually(gone, within=5, what="the session's secrets deleted")
    assert (await ctl.client.get(f"/sessions/{session['id']}")).json()["secrets"] == []
    await ctl.stop()
    assert value not in caplog.text and registry_value not in caplog.text
    assert "sandbox_controller.scheduler.loop" in {r.name for r in caplog.records}


async def test_a_standby_sends_the_egress_proxy_to_the_leader(
    start_controller: ControllerFactory,
) -> None:
    leader = await start_controller(prewarm_pool_size=1, **EGRESS)
    standby = await start_controller(prewarm_pool_size=1, **EGRESS)
    assert leader.controller.is_leader and not standby.controller.is_leader
    await leader.wait_idle_pods(1)
    [pod] = leader.sandboxes()
    create_id = create_id_of(leader, pod)
    assert (await authorize(leader, create_id)).status_code == 200
    refused = await authorize(standby, create_id)
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    assert refused.json()["error"]["code"] == "not_leader"
