"""First-run mistakes as a user makes them, each answered in one line on stderr: a
misspelt setting, no cluster, no Docker daemon, no matplotlib."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def run(*args: str, tmp: Path, code: str | None = None, **env: str) -> tuple[int, list[str]]:
    """The CLI as a user runs it, in a clean environment of their own (no cluster, no
    kubeconfig): exit code and stderr's lines."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SANDBOX_", "KUBE")) and k not in ("DOCKER_HOST",)
    }
    command = ["-c", code] if code else ["-m", "sandbox_controller.cli"]
    done = subprocess.run(
        [sys.executable, *command, *args],
        env={
            **base,
            "HOME": str(tmp),
            "SANDBOX_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/s.db",
            "SANDBOX_STATE_DIR": str(tmp / "state"),
            **env,
        },
        capture_output=True, text=True, timeout=60, cwd=os.getcwd(),
    )  # fmt: skip
    return done.returncode, done.stderr.strip().splitlines()


def test_a_misspelt_setting_is_named_with_the_closest_one(tmp_path: Path) -> None:
    code, err = run(
        "migrate",
        tmp=tmp_path,
        SANDBOX_IDLE_TIMOUT="banana",
        # Not settings, but read by others (tests, sandboxes, Compose): never a warning.
        SANDBOX_TEST_POSTGRES="1",
        SANDBOX_CLAIM_SECRET="x",
        SANDBOX_ENV_FILE="x",
    )
    assert code == 0, err
    warned = [line for line in err if "SANDBOX_" in line]
    assert len(warned) == 1, err
    assert "SANDBOX_IDLE_TIMOUT is not a setting" in warned[0]
    assert "did you mean SANDBOX_IDLE_TIMEOUT?" in warned[0]
    assert "WARNING" in warned[0]  # through the log, in its format


def test_the_offline_commands_warn_too(tmp_path: Path) -> None:
    code, err = run("plan", "--help", tmp=tmp_path, SANDBOX_PREWARM_POOL="3")
    assert code == 0
    assert err == [
        "sandbox-controller: warning: SANDBOX_PREWARM_POOL is not a setting and is ignored; "
        "did you mean SANDBOX_PREWARM_POOL_SIZE?"
    ]


def test_kubernetes_without_kubeconfig_or_cluster_is_one_line(tmp_path: Path) -> None:
    code, err = run(
        "dev", "--port", "0", "--proxy-port", "0", tmp=tmp_path,
        SANDBOX_BACKEND="kubernetes", SANDBOX_LOG_LEVEL="warning",
    )  # fmt: skip
    assert code == 1
    assert len(err) == 1, err
    assert err[0].startswith("sandbox-controller: SANDBOX_BACKEND=kubernetes: ")
    assert "not in a cluster, and no kubeconfig at ~/.kube/config" in err[0]
    assert "set SANDBOX_KUBECONFIG" in err[0]


def test_a_kubeconfig_that_is_no_kubeconfig_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "kubeconfig").write_text("apiVersion: v1\nkind: Config\n")
    code, err = run(
        "dev", "--port", "0", "--proxy-port", "0", tmp=tmp_path,
        SANDBOX_BACKEND="kubernetes", SANDBOX_LOG_LEVEL="warning",
        SANDBOX_KUBECONFIG=str(tmp_path / "kubeconfig"),
    )  # fmt: skip
    assert code == 1
    assert len(err) == 1, err
    assert f"the kubeconfig {tmp_path / 'kubeconfig'} (SANDBOX_KUBECONFIG)" in err[0]


def test_docker_without_a_daemon_is_one_line(tmp_path: Path) -> None:
    nothing = f"unix://{tmp_path}/docker.sock"
    code, err = run(
        "dev", "--port", "0", "--proxy-port", "0", tmp=tmp_path,
        SANDBOX_BACKEND="docker", SANDBOX_LOG_LEVEL="warning", SANDBOX_DOCKER_URL=nothing,
    )  # fmt: skip
    assert code == 1
    assert err == [
        f"sandbox-controller: SANDBOX_BACKEND=docker: no Docker daemon answers at {nothing} "
        "(SANDBOX_DOCKER_URL, else DOCKER_HOST): start dockerd, or set SANDBOX_BACKEND=local "
        "to run sandboxes as local processes"
    ]


@pytest.mark.parametrize("flag", ["--plot", "--html", "--pl", "--html=report.html"])
def test_pictures_without_matplotlib_are_one_line_with_the_install_that_works(
    tmp_path: Path, flag: str
) -> None:
    without_matplotlib = (
        "import sys; sys.modules['matplotlib'] = None; "  # as if not installed
        "from sandbox_controller.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    args = ["simulate", "trace.jsonl", flag] + ([] if "=" in flag else [str(tmp_path / "out")])
    code, err = run(*args, tmp=tmp_path, code=without_matplotlib)
    assert code == 2
    assert len(err) == 1, err
    assert "pip install matplotlib" in err[0]
    assert 'pip install -e ".[sim]"' in err[0]
    assert not (tmp_path / "out").exists()
