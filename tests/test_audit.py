"""The audit log over real HTTP (local backend, fake clock): one JSON line per state
change in SANDBOX_AUDIT_LOG_FILE, naming the caller by token id and never a secret."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from sandbox_controller.audit import AUDIT_LOGGER, caller_of, emit_audit, token_id
from sandbox_controller.clock import ManualClock
from sandbox_controller.model import AuditEvent

from .conftest import API_TOKEN, ControllerFactory, RunningController
from .console.test_access import csrf_of, sign_in
from .eventually import eventually

START = 2_000_000_000.0
IDLE_AFTER = 300.0
IDLE_TIMEOUT = 3600.0
CALLER = hashlib.sha256(API_TOKEN.encode()).hexdigest()[:12]


def lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


async def events_of(path: Path, session_id: str, count: int) -> list[dict[str, Any]]:
    async def written() -> bool:
        return len([e for e in lines(path) if e["session_id"] == session_id]) >= count

    await eventually(written, within=15, what=f"{count} audit events of {session_id}")
    return [e for e in lines(path) if e["session_id"] == session_id]


async def start(
    start_controller: ControllerFactory, tmp_path: Path, clock: ManualClock, **kw: Any
) -> tuple[RunningController, Path]:
    path = tmp_path / "audit.jsonl"
    values: dict[str, Any] = {
        "prewarm_pool_size": 2,
        "max_sessions_per_user": 1,
        "idle_after": IDLE_AFTER,
        "idle_timeout": IDLE_TIMEOUT,
        "audit_log_file": str(path),
        "hooks": False,
    }
    values.update(kw)
    ctl = await start_controller(clock=clock, **values)
    await ctl.wait_idle_pods(2)
    return ctl, path


async def test_open_claim_reclaim_and_delete_name_the_calling_token_and_the_session(
    start_controller: ControllerFactory, tmp_path: Path
) -> None:
    clock = ManualClock(start=START)
    ctl, path = await start(start_controller, tmp_path, clock)
    first = (await ctl.open("ada", "t1")).json()
    clock.advance(IDLE_AFTER + 10)
    # At ada's limit: her quiet session is reclaimed, by this caller's open.
    second = (await ctl.open("ada", "t2")).json()
    assert second["reclaimed_session_id"] == first["id"]
    assert (await ctl.client.delete(f"/sessions/{second['id']}")).status_code == 204

    opened, claimed, reclaimed = await events_of(path, first["id"], 3)
    assert opened == {
        "event": "audit",
        "action": "open",
        "caller": CALLER,
        "at": pytest.approx(START, abs=1),
        "session_id": first["id"],
        "user_id": "ada",
        "org_id": None,
        "reason": "warm",
        "pod": first["pod"],
    }
    assert (claimed["action"], claimed["reason"], claimed["pod"]) == ("claim", "warm", first["pod"])
    assert (reclaimed["action"], reclaimed["reason"]) == ("reclaim", "reclaimed")
    assert reclaimed["caller"] == CALLER  # the open that made room for itself
    assert reclaimed["at"] == pytest.approx(START + IDLE_AFTER + 10, abs=1)

    actions = [(e["action"], e["caller"]) for e in await events_of(path, second["id"], 3)]
    assert actions == [("open", CALLER), ("claim", CALLER), ("delete", CALLER)]
    assert API_TOKEN not in path.read_text() and "test-token-secret" not in path.read_text()


async def test_an_idle_timeout_is_the_controllers_and_a_console_end_the_operators(
    start_controller: ControllerFactory, tmp_path: Path
) -> None:
    clock = ManualClock(start=START)
    ctl, path = await start(start_controller, tmp_path, clock, max_sessions_per_user=2)
    idle = (await ctl.open("bo", "t1")).json()
    clock.advance(IDLE_TIMEOUT + 1)
    await ctl.settle()
    timed_out = (await events_of(path, idle["id"], 3))[-1]
    assert (timed_out["action"], timed_out["caller"]) == ("idle_timeout", "controller")
    assert (timed_out["user_id"], timed_out["reason"]) == ("bo", "idle_timeout")

    await ctl.wait_idle_pods(2)
    session = (await ctl.open("bo", "t2")).json()
    async with sign_in(ctl.url, API_TOKEN) as operator:
        page = await operator.get(f"/console/sessions/{session['id']}")
        ended = await operator.post(
            f"/console/sessions/{session['id']}/end",
            data={"csrf": csrf_of(page.text)},
            headers={"origin": ctl.url},
        )
        assert ended.status_code == 303
    deleted = (await events_of(path, session["id"], 3))[-1]
    assert (deleted["action"], deleted["caller"]) == ("delete", "console:operator")


async def test_a_refused_open_is_no_state_change_and_leaves_no_event(
    start_controller: ControllerFactory, tmp_path: Path
) -> None:
    clock = ManualClock(start=START)
    ctl, path = await start(start_controller, tmp_path, clock)
    kept = (await ctl.open("cy", "t1")).json()
    refused = await ctl.open("cy", "t2")  # at the limit, nothing idle to reclaim
    assert refused.status_code == 429
    assert [e["action"] for e in await events_of(path, kept["id"], 2)] == ["open", "claim"]
    assert {e["session_id"] for e in lines(path)} == {kept["id"]}


def test_the_caller_is_the_id_the_authentication_set_else_the_tokens_fingerprint() -> None:
    assert caller_of("ops-2", "Bearer whatever") == "ops-2"
    assert caller_of(None, f"Bearer {API_TOKEN}") == CALLER == token_id(API_TOKEN)
    assert caller_of(None, "") == "anonymous"


def test_emit_audit_writes_an_admin_action_to_the_audit_logger(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger=AUDIT_LOGGER):
        event = emit_audit("user_deleted", caller="ops-1", at=START, user_id="ada")
    assert event == AuditEvent("user_deleted", "ops-1", START, user_id="ada")
    [record] = [r for r in caplog.records if r.name == AUDIT_LOGGER]
    assert json.loads(record.getMessage()) == {
        "event": "audit",
        "action": "user_deleted",
        "caller": "ops-1",
        "at": START,
        "session_id": None,
        "user_id": "ada",
        "org_id": None,
        "reason": None,
        "pod": None,
    }
