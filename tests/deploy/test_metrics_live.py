"""The dashboard and the alerts read metrics that a running controller and proxy export.

Starts the real `sandbox-controller dev` (controller + proxy + local backend + SQLite) as a
subprocess and reads both /metrics endpoints: a renamed metric would otherwise leave a
dashboard panel silently empty and an alert that can never fire.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.deploy.deploytools import (
    EGRESS_METRICS,
    PROXY_METRICS,
    REPO,
    Render,
    dashboard_expressions,
    metric_names,
    rule_expressions,
)

START_DEADLINE = 60.0
STOP_DEADLINE = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_healthy(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + START_DEADLINE
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"dev server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"{url} not healthy within {START_DEADLINE:.0f}s:\n{log.read_text()[-3000:]}")


def exported_families(text: str) -> set[str]:
    """Names from `# TYPE` lines, with counters under both their family and _total name
    (the classic text format names the family `x_total`, OpenMetrics names it `x`)."""
    names = set()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[:2] == ["#", "TYPE"]:
            name, kind = parts[2], parts[3]
            names.add(name)
            if kind == "counter":
                names.add(name if name.endswith("_total") else f"{name}_total")
    return names


@pytest.fixture(scope="module")
def dev_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    tmp = tmp_path_factory.mktemp("dev")
    port, proxy_port = free_port(), free_port()
    env = {
        **os.environ,
        "SANDBOX_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/s.db",
        "SANDBOX_STATE_DIR": str(tmp / "state"),
        "SANDBOX_PREWARM_POOL_SIZE": "1",
    }
    log = tmp / "dev.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sandbox_controller.cli",
                "dev",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--proxy-port",
                str(proxy_port),
            ],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            # Its own process group, so the test can tell whether anything it started
            # outlives it, and clean up if it does.
            start_new_session=True,
        )
    controller, proxy = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{proxy_port}"
    try:
        wait_healthy(proc, f"{controller}/healthz", log)
        wait_healthy(proc, f"{proxy}/healthz", log)
        yield controller, proxy
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            pytest.fail(f"dev server ignored SIGTERM for {STOP_DEADLINE:.0f}s")
        # DESIGN: no process it started outlives it (the local sandboxes included).
        time.sleep(0.5)
        with pytest.raises(ProcessLookupError):
            os.killpg(proc.pid, 0)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def test_every_metric_the_dashboard_and_alerts_read_is_exported(
    dev_server: tuple[str, str], render: Render
) -> None:
    controller, proxy = dev_server
    controller_families = exported_families(httpx.get(f"{controller}/metrics", timeout=5).text)
    proxy_families = exported_families(httpx.get(f"{proxy}/metrics", timeout=5).text)
    monitoring = {"metrics": {"prometheusRule": {"enabled": True}}}
    exprs = [*dashboard_expressions(), *rule_expressions(render(monitoring))]
    # The egress proxy's families come from its own process (`dev` runs it only with
    # SANDBOX_EGRESS not off); its tests read them from its /metrics.
    used = set().union(*map(metric_names, exprs)) - EGRESS_METRICS
    assert used
    for name in sorted(used):
        where, families = (
            ("proxy", proxy_families)
            if name in PROXY_METRICS
            else ("controller", controller_families)
        )
        assert name in families, f"{name} is not exported by the {where}'s /metrics"
