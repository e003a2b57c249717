"""The client's wait for a ready session runs on the clock it was given: its deadline
and its sleeps on one clock, so a test (or a caller with its own notion of time) that
moves the clock moves the whole wait. Against a real controller over HTTP whose
sandboxes never start, so the session stays provisioning."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sandbox_controller.client import AsyncSandboxClient, NotReadyError
from sandbox_controller.clock import ManualClock

from .conftest import API_TOKEN, ControllerFactory, never_ready_backend

READY_WITHIN = 60.0
STEP = 0.5


async def test_the_wait_for_a_ready_session_ends_on_the_clients_clock(
    start_controller: ControllerFactory, tmp_path: Path
) -> None:
    ctl = await start_controller(backend_object=never_ready_backend(tmp_path), prewarm_pool_size=0)
    clock = ManualClock(start=2_000_000_000.0, monotonic_start=0.0)
    async with AsyncSandboxClient(
        ctl.url, API_TOKEN, clock=clock, ready_within=READY_WITHIN
    ) as client:
        waiting = asyncio.create_task(client.open_session("ann", "ann-1", wait_seconds=0))
        # Polling, sleeping on its clock; the wall clock standing still means nothing.
        while clock.monotonic() < READY_WITHIN - STEP:
            await clock.until_sleeping()
            assert not waiting.done(), "gave up before ready_within had passed"
            clock.step_wall(-STEP)
            clock.advance(STEP)
        # Its deadline: every sleep ends by then, and then it gives up (in no real minute).
        await clock.until_sleeping()
        clock.advance(STEP)
        with pytest.raises(NotReadyError) as gave_up:
            async with asyncio.timeout(5.0):
                await waiting
        assert gave_up.value.session.state == "provisioning"
        assert clock.monotonic() == READY_WITHIN
