"""Suspend and resume failing, over real HTTP with real sandbox processes: a sandbox
without the hooks, a store that cannot take the archive, a restore that fails. A failed
snapshot never keeps a pod; a failed restore never loses the archive's record."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

from sandbox_controller.backends.local import LocalBackend
from sandbox_controller.clock import ManualClock
from sandbox_controller.sandbox_contract import hook_key

from ..conftest import ControllerFactory, sandbox_processes
from ..eventually import eventually
from .test_suspend import (
    IDLE_TIMEOUT,
    START,
    archives,
    open_with_work,
    session,
    start,
    until_state,
)


async def test_a_sandbox_without_the_hooks_ends_at_its_idle_timeout_and_says_why(
    start_controller: ControllerFactory, tmp_path: Path
) -> None:
    backend = LocalBackend(
        tmp_path / "state",
        stop_on_close=True,
        claim_key=hook_key(b"test-token-secret"),
        sandbox_args=("--no-hooks",),
    )
    clock = ManualClock(start=START)
    ctl = await start(start_controller, clock, tmp_path, backend_object=backend)
    opened = await ctl.open("ann", "t1")
    assert opened.status_code == 201, opened.text
    pod = opened.json()["pod"]
    clock.advance(IDLE_TIMEOUT + 1)
    ended = await until_state(ctl, opened.json()["id"], "ended")
    assert ended["end_reason"] == "idle_timeout"
    assert ended["end_detail"]["snapshot"].startswith("not_supported: ")

    async def pod_gone() -> bool:
        return pod not in ctl.sandboxes()

    await eventually(pod_gone, within=20, what="its pod to be deleted")
    metrics = (await ctl.client.get("/metrics")).text
    assert 'sandbox_snapshots_total{outcome="not_supported"} 1.0' in metrics
    assert archives(tmp_path) == []


async def test_a_store_that_cannot_take_the_archive_ends_the_session_and_frees_its_pod(
    start_controller: ControllerFactory, tmp_path: Path
) -> None:
    clock = ManualClock(start=START)
    ctl = await start(start_controller, clock, tmp_path)
    opened = await open_with_work(ctl, "bob", "t1")
    # The store's directory is taken by a file: nothing can be written under it.
    (tmp_path / "archives").mkdir(exist_ok=True)
    shutil.rmtree(tmp_path / "archives")
    (tmp_path / "archives").write_text("not a directory")
    asked = await ctl.client.post(f"/sessions/{opened['id']}/suspend")
    assert asked.status_code == 202, asked.text
    ended = await until_state(ctl, opened["id"], "ended")
    assert ended["end_reason"] == "deleted"
    assert ended["end_detail"]["snapshot"].startswith("store_unavailable: ")

    async def pod_gone() -> bool:
        return opened["pod"] not in ctl.sandboxes()

    await eventually(pod_gone, within=20, what="its pod to be deleted")
    metrics = (await ctl.client.get("/metrics")).text
    assert 'sandbox_snapshots_total{outcome="store_unavailable"} 1.0' in metrics


async def test_a_failed_restore_keeps_the_session_suspended_and_answers_503(
    start_controller: ControllerFactory, tmp_path: Path
) -> None:
    clock = ManualClock(start=START)
    ctl = await start(start_controller, clock, tmp_path)
    opened = await open_with_work(ctl, "cat", "t1")
    await ctl.client.post(f"/sessions/{opened['id']}/suspend")
    suspended = await until_state(ctl, opened["id"], "suspended")
    (key,) = archives(tmp_path)
    archive = tmp_path / "archives" / key
    kept = archive.read_bytes()
    archive.write_bytes(b"this is no tar archive")  # the sandbox refuses it (422)

    refused = await ctl.open("cat", "t1")
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "restore_failed"
    assert int(refused.headers["Retry-After"]) >= 1
    after = await session(ctl, opened["id"])
    assert after["state"] == "suspended" and after["pod"] is None
    assert after["snapshot"] == suspended["snapshot"]  # the record kept, as the archive

    async def tried_pod_gone() -> bool:
        pods = (await ctl.pool())["pods"]
        return bool(pods["assigned"] == 0 and pods["terminating"] == 0)

    await eventually(tried_pod_gone, within=20, what="the pod the restore failed in to go")
    metrics = (await ctl.client.get("/metrics")).text
    assert 'sandbox_snapshots_total{outcome="restore_failed"} 1.0' in metrics

    archive.write_bytes(kept)  # the store is whole again: the next try resumes it
    resumed = await ctl.open("cat", "t1")
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["state"] == "ready" and resumed.json()["resumed"] is True


async def test_a_snapshot_over_the_size_limit_ends_the_session_and_keeps_nothing(
    start_controller: ControllerFactory, tmp_path: Path
) -> None:
    clock = ManualClock(start=START)
    ctl = await start(start_controller, clock, tmp_path, snapshot_max_bytes=64)
    opened = await open_with_work(ctl, "dee", "t1")
    clock.advance(IDLE_TIMEOUT + 1)
    ended = await until_state(ctl, opened["id"], "ended")
    assert ended["end_reason"] == "idle_timeout"
    assert ended["end_detail"]["snapshot"].startswith("too_large: ")
    assert archives(tmp_path) == []
    metrics = (await ctl.client.get("/metrics")).text
    assert 'sandbox_snapshots_total{outcome="too_large"} 1.0' in metrics


async def test_a_hung_snapshot_times_out_ends_the_session_and_its_pod_still_goes(
    start_controller: ControllerFactory, tmp_path: Path
) -> None:
    clock = ManualClock(start=START)
    ctl = await start(start_controller, clock, tmp_path, snapshot_timeout="1s")
    opened = await open_with_work(ctl, "eli", "t1")
    (pid,) = sandbox_processes(opened["pod"])
    os.kill(pid, signal.SIGSTOP)  # accepts connections (the kernel does), never answers
    try:
        asked = await ctl.client.post(f"/sessions/{opened['id']}/suspend")
        assert asked.status_code == 202, asked.text
        ended = await until_state(ctl, opened["id"], "ended")  # SANDBOX_SNAPSHOT_TIMEOUT
        assert ended["end_reason"] == "deleted"
        assert ended["end_detail"]["snapshot"].startswith("timeout: ")
        os.kill(pid, signal.SIGCONT)  # the delete sent meanwhile ends it once it runs

        async def pod_gone() -> bool:
            return opened["pod"] not in ctl.sandboxes()

        await eventually(pod_gone, within=20, what="the hung sandbox to be deleted")
        assert archives(tmp_path) == []
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
