"""``sandbox-controller plan --docker``: the seed's arithmetic against one Docker host."""

from __future__ import annotations

from decimal import Decimal

import pytest

from sandbox_controller import plan
from sandbox_controller.backends.docker_spec import GIB, Host

from .dockerhost import require_docker


def test_the_host_decides_how_many_sandboxes_fit() -> None:
    peak = plan.plan(80, 5, 100, Decimal(1), Decimal("0.25"))
    text = plan.docker_host_lines(peak, Host(cpus=2, memory=24 * GIB, reserved_memory=GIB))
    assert "Sandboxes it holds:   92 at 0.25 GiB each" in text
    assert "85 CPU on 2 cores" in text and "WARNING" not in text
    assert "SANDBOX_MAX_TOTAL_JOBS=92" in text
    small = plan.docker_host_lines(
        plan.plan(20, 5, 50, Decimal(1), Decimal(2)), Host(2, 24 * GIB, GIB)
    )
    assert "WARNING: 25 sandboxes at peak, but this host holds 11." in small


@pytest.mark.docker
def test_plan_docker_reads_this_host(capsys: pytest.CaptureFixture[str]) -> None:
    require_docker()
    assert plan.main(["--peak-editors", "4", "--docker"]) == 0
    out = capsys.readouterr().out
    assert "Docker host:" in out and "Sandboxes it holds:" in out


def test_no_daemon_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = plan.main(
        ["--peak-editors", "4", "--docker", "--docker-url", "unix:///nonexistent.sock"]
    )
    assert code == 2
    assert "cannot read docker info" in capsys.readouterr().err
