"""Busy-aware idling over real HTTP with real sandbox processes (local backend) on the
fake clock: a busy sandbox is neither reclaimed nor idled out, a quiet or hung one is,
each ended session says why, and a served sandbox hears of its release before it goes."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from sandbox_controller.api.schemas import iso
from sandbox_controller.clock import ManualClock

from ..conftest import ControllerFactory, RunningController, sandbox_processes
from ..eventually import eventually

START = 2_000_000_000.0
IDLE_AFTER = 300.0
IDLE_TIMEOUT = 3600.0
# Past idle_after and the activity lag (2 x the proxies' 2 s flush interval).
QUIET = IDLE_AFTER + 5.0


async def start(start_controller: ControllerFactory, clock: ManualClock, **kw: Any) -> Any:
    values: dict[str, Any] = {
        "prewarm_pool_size": 2,
        "max_sessions_per_user": 1,
        "idle_after": IDLE_AFTER,
        "idle_timeout": IDLE_TIMEOUT,
        "hook_timeout": "1s",
        "release_timeout": "1s",
    }
    values.update(kw)
    ctl = await start_controller(clock=clock, **values)
    await ctl.wait_idle_pods(values["prewarm_pool_size"])
    return ctl


async def sandbox_address(ctl: RunningController, pod: str) -> str:
    """Straight from the backend (asking the controller for a route would lease it)."""
    address = ctl.sandbox_address(pod)
    assert address is not None, f"no address for {pod}"
    return address


async def set_busy(address: str, busy: bool, detail: str = "") -> None:
    async with httpx.AsyncClient() as sandbox:
        response = await sandbox.post(
            f"http://{address}/_sandbox/busy", json={"busy": busy, "detail": detail}
        )
        response.raise_for_status()


async def session(ctl: RunningController, sid: str) -> dict[str, Any]:
    body: dict[str, Any] = (await ctl.client.get(f"/sessions/{sid}")).json()
    return body


async def until_ended(ctl: RunningController, sid: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    async def ended() -> bool:
        seen.update(await session(ctl, sid))
        return bool(seen["state"] == "ended")

    await eventually(ended, within=15, what=f"session {sid} to end")
    return seen


async def until_asked(ctl: RunningController, sid: str, at: str) -> dict[str, Any]:
    """Until the sandbox's busy answer has been recorded as activity at ``at``."""
    seen: dict[str, Any] = {}

    async def recorded() -> bool:
        seen.update(await session(ctl, sid))
        return bool(seen["last_activity"]["at"] == at)

    await eventually(recorded, within=15, what="the busy answer to be recorded")
    return seen


@contextmanager
def witness_deletes(ctl: RunningController) -> Iterator[dict[str, str]]:
    """What each sandbox's own index page said just before the backend deleted it (an
    outside witness of whether the release hook reached it first)."""
    backend: Any = ctl.controller.backend
    pages: dict[str, str] = {}
    delete = backend.delete_pod

    async def witnessed(name: str) -> None:
        address = ctl.sandbox_address(name)
        if address is not None and name not in pages:
            try:
                async with httpx.AsyncClient(timeout=2.0) as sandbox:
                    pages[name] = (await sandbox.get(f"http://{address}/")).text
            except httpx.HTTPError as exc:
                pages[name] = f"unreachable: {type(exc).__name__}"
        await delete(name)

    backend.delete_pod = witnessed
    try:
        yield pages
    finally:
        backend.delete_pod = delete


async def test_a_busy_sandbox_is_neither_reclaimed_nor_idled_out_and_a_quiet_one_is(
    start_controller: ControllerFactory,
) -> None:
    clock = ManualClock(start=START)
    ctl = await start(start_controller, clock)
    first = (await ctl.open("ann", "t1")).json()
    address = await sandbox_address(ctl, first["pod"])
    await set_busy(address, True, "running the test suite")

    clock.advance(QUIET)
    refused = await ctl.open("ann", "t2")  # the only session is busy: nothing to reclaim
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "user_session_limit"
    assert int(refused.headers["Retry-After"]) >= IDLE_AFTER
    asked = await session(ctl, first["id"])
    assert asked["state"] == "ready"
    assert asked["last_activity"]["source"] == "busy"
    assert asked["last_activity"]["detail"] == "running the test suite"
    busy_at = asked["last_activity"]["at"]

    clock.advance(IDLE_TIMEOUT)  # past the idle timeout: asked again, busy again
    await ctl.settle()
    asked = await until_asked(ctl, first["id"], iso(clock.now()))
    assert asked["state"] == "ready" and asked["last_activity"]["at"] != busy_at
    assert asked["last_activity"]["source"] == "busy"

    await set_busy(address, False, "waiting for input")
    with witness_deletes(ctl) as pages:
        clock.advance(IDLE_TIMEOUT)
        ended = await until_ended(ctl, first["id"])
        assert ended["end_reason"] == "idle_timeout"
        assert ended["end_detail"] == {
            "last_active_at": asked["last_activity"]["at"],
            "activity_source": "busy",
            "busy_answer": "not busy: waiting for input",
            "claim_answer": None,
            "eviction": None,
        }
        await eventually(lambda: first["pod"] in pages, within=15, what="the delete")
    assert "; released." in pages[first["pod"]]  # the release hook came before the delete
    metrics = (await ctl.client.get("/metrics")).text
    assert 'sandbox_status_checks_total{answer="busy"} 2.0' in metrics
    assert 'sandbox_status_checks_total{answer="not_busy"} 1.0' in metrics


async def test_a_reclaim_takes_the_quiet_session_not_the_busy_one(
    start_controller: ControllerFactory,
) -> None:
    clock = ManualClock(start=START)
    ctl = await start(start_controller, clock, prewarm_pool_size=3, max_sessions_per_user=2)
    busy = (await ctl.open("bob", "t1")).json()
    clock.advance(10)
    quiet = (await ctl.open("bob", "t2")).json()
    await set_busy(await sandbox_address(ctl, busy["pod"]), True, "compiling")
    clock.advance(QUIET)

    with witness_deletes(ctl) as pages:
        opened = await ctl.open("bob", "t3")
        assert opened.status_code == 201, opened.text
        # The busy one is older and was quieter longer, yet the quiet one goes.
        assert opened.json()["reclaimed_session_id"] == quiet["id"]
        ended = await until_ended(ctl, quiet["id"])
        assert ended["end_reason"] == "reclaimed"
        assert ended["end_detail"] == {
            "last_active_at": quiet["last_active_at"],
            "activity_source": "handover",
            "busy_answer": "not busy",
            "claim_answer": None,
            "eviction": None,
        }
        await eventually(lambda: quiet["pod"] in pages, within=15, what="the delete")
    assert "; released." in pages[quiet["pod"]]
    kept = await session(ctl, busy["id"])
    assert kept["state"] == "ready" and kept["last_activity"]["detail"] == "compiling"


@pytest.mark.parametrize("how", ["reclaim", "idle timeout"])
async def test_a_hung_sandbox_is_reclaimed_or_idled_out_and_still_deleted(
    start_controller: ControllerFactory, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    clock = ManualClock(start=START)
    ctl = await start(start_controller, clock)
    first = (await ctl.open("cat", "t1")).json()
    pid = sandbox_pid(first["pod"])
    os.kill(pid, signal.SIGSTOP)  # accepts connections (the kernel does), never answers
    caplog.set_level(logging.INFO, logger="sandbox_controller.scheduler.loop")
    try:
        if how == "reclaim":
            clock.advance(QUIET)
            opened = await ctl.open("cat", "t2")
            assert opened.status_code == 201, opened.text
            assert opened.json()["reclaimed_session_id"] == first["id"]
        else:
            clock.advance(IDLE_TIMEOUT)
        ended = await until_ended(ctl, first["id"])
        assert ended["end_reason"] == ("reclaimed" if how == "reclaim" else "idle_timeout")
        assert ended["end_detail"]["busy_answer"] == "no answer (timed out)"

        await eventually(
            lambda: "release hook timed out; deleting it anyway" in caplog.text,
            within=15,
            what="the release hook to give up",
        )
        # The delete went out regardless: the stop signal waiting on the stopped
        # process ends it as soon as it runs again.
        os.kill(pid, signal.SIGCONT)

        async def deleted() -> bool:
            return first["pod"] not in ctl.sandboxes()

        await eventually(deleted, within=15, what="the hung sandbox to be deleted")
        metrics = (await ctl.client.get("/metrics")).text
        assert 'sandbox_status_checks_total{answer="no_answer"} 1.0' in metrics
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def sandbox_pid(pod: str) -> int:
    (pid,) = sandbox_processes(pod)
    return pid


async def test_each_activity_records_its_source(start_controller: ControllerFactory) -> None:
    clock = ManualClock(start=START)
    ctl = await start(start_controller, clock, prewarm_pool_size=1)
    opened = (await ctl.open("dee", "t1")).json()
    assert opened["last_activity"] == {
        "at": opened["last_active_at"],
        "source": "handover",
        "detail": None,
    }
    assert opened["end_detail"] is None

    clock.advance(1)
    assert (await ctl.client.post(f"/sessions/{opened['id']}/touch")).status_code == 204
    await ctl.settle()
    assert (await session(ctl, opened["id"]))["last_activity"]["source"] == "touch"

    clock.advance(1)  # what a proxy reports: the session's last traffic, in a batch
    report = {"activity": {opened["id"]: clock.now()}}
    assert (await ctl.client.post("/internal/activity", json=report)).status_code == 204
    await ctl.settle()
    after = await session(ctl, opened["id"])
    assert after["last_activity"] == {"at": iso(clock.now()), "source": "proxy", "detail": None}
