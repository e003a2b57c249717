"""`sandbox-controller dev` stopped on purpose, then started again on the same state."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import sandbox_processes
from ..eventually import eventually
from .test_dev_crash import Dev, stop_and_reap


@pytest.mark.slow
async def test_a_graceful_stop_ends_sessions_as_controller_stopped_not_pod_failed(
    tmp_path: Path,
) -> None:
    dev = Dev(tmp_path)
    try:
        await dev.start()
        opened = await dev.client.post(
            "/sessions", json={"user_id": "me", "thread_id": "t1", "wait_seconds": 30}
        )
        assert opened.status_code == 201, opened.text
        session_id = opened.json()["id"]
        assert opened.json()["state"] == "ready"

        assert dev.proc is not None
        dev.proc.send_signal(signal.SIGTERM)
        assert dev.proc.wait(timeout=30) == 0
        assert not sandbox_processes(dev.state_dir), "dev stops its sandboxes on SIGTERM"

        await dev.start()  # same database, same state directory
        session = (await dev.client.get(f"/sessions/{session_id}")).json()
        assert session["state"] == "ended"
        assert session["end_reason"] == "controller_stopped"
    finally:
        await dev.client.aclose()
        leftover = stop_and_reap(dev)
    assert not leftover


@pytest.mark.slow
async def test_a_second_dev_on_the_same_state_says_it_stands_by_and_who_leads(
    tmp_path: Path,
) -> None:
    first = Dev(tmp_path)
    (tmp_path / "second").mkdir()
    second = Dev(tmp_path / "second")
    for name in ("SANDBOX_DATABASE_URL", "SANDBOX_STATE_DIR"):
        second.env[name] = first.env[name]
    second.state_dir = first.state_dir
    second.env["SANDBOX_LOG_LEVEL"] = "info"
    out = tmp_path / "second" / "dev.log"
    try:
        await first.start()
        second.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "sandbox_controller.cli", "dev"),
                *("--port", str(second.port), "--proxy-port", str(second.proxy_port)),
            ],
            env=second.env,
            stdout=second.log,
            stderr=second.log,
        )

        async def banner() -> bool:
            return "Standby:" in out.read_text() or second.proc.poll() is not None

        await eventually(banner, within=60, what="the second dev's banner")
        text = out.read_text()
        assert "Try: curl" not in text, "a standby's curl would get 503 not_leader"
        standby = next(line for line in text.splitlines() if line.startswith("Standby:"))
        holder = re.search(r"Standby: (\S+) leads on this database \(lease epoch 1", standby)
        assert holder, standby
        assert first.proc is not None and f"-{first.proc.pid}-" in holder.group(1)
        log_line = next(line for line in text.splitlines() if "standing by:" in line)
        assert holder.group(1) in log_line
        assert re.search(r"taking over if it is not renewed within \d+\.\d s", log_line)
        got = await second.client.get("/readyz")
        assert got.status_code == 503

        first.proc.send_signal(signal.SIGTERM)  # releases the lease: the standby leads
        first.proc.wait(timeout=30)
        await eventually(second._ready, within=30, what="the standby to take over")
        assert "leading with lease epoch 2" in out.read_text()
    finally:
        await first.client.aclose()
        await second.client.aclose()
        stop_and_reap(first)
        leftover = stop_and_reap(second)
    assert not leftover
