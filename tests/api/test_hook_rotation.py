"""A hook secret rotated without keeping the old one (issue 25): the sandboxes' status
hooks answer 401 to every key the controller holds. Over real HTTP, real sandbox
processes, the fake clock: the busy session is kept past its idle timeout (401 is
unknown, not "not busy"), counted as unauthorized, and ended only when deleted."""

from __future__ import annotations

from sandbox_controller.api.schemas import iso
from sandbox_controller.clock import ManualClock
from sandbox_controller.sandbox_contract import hook_key

from ..conftest import ControllerFactory
from .test_idling import (
    IDLE_TIMEOUT,
    START,
    sandbox_address,
    session,
    set_busy,
    start,
    until_asked,
)


async def test_a_status_hook_refusing_every_key_never_ends_a_busy_session_as_idle(
    start_controller: ControllerFactory,
) -> None:
    clock = ManualClock(start=START)
    ctl = await start(start_controller, clock, hook_secret="the-hook-secret-before-it")
    opened = (await ctl.open("ann", "t1")).json()
    await set_busy(await sandbox_address(ctl, opened["pod"]), True, "running the suite")
    # What a controller restarted with a new SANDBOX_HOOK_SECRET and no _PREVIOUS holds:
    # the sandbox, made with the old key, refuses every claim secret it is shown.
    hooks = ctl.controller.hooks
    assert hooks is not None
    hooks._keys = (hook_key(b"a-new-hook-secret-without-the-old"),)
    hooks._key_of.clear()

    for _ in range(3):  # past the idle timeout, again and again: asked, and kept
        clock.advance(IDLE_TIMEOUT + 1)
        await ctl.settle()
        await until_asked(ctl, opened["id"], iso(clock.now()))
    metrics = (await ctl.client.get("/metrics")).text
    # Asked each time, and each time kept: never ended as idle.
    assert 'sandbox_status_checks_total{answer="unauthorized"} 3.0' in metrics, metrics
    kept = await session(ctl, opened["id"])
    assert kept["state"] == "ready", kept
    assert kept["last_activity"]["source"] == "busy"
    assert kept["last_activity"]["detail"] == "claim secret refused (HTTP 401)"
