"""First-run edges of `sandbox-controller`: each mistake is one line and an exit code."""

from __future__ import annotations

import argparse
import os
import re
import secrets
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sandbox_controller.cli import (
    DEV_CREDENTIALS,
    _dev_credentials,
    _dev_suspends,
    build_parser,
    main,
)
from sandbox_controller.config import load_settings


def run_cli(*args: str, timeout: float = 30, **env: str) -> tuple[int, str]:
    """The CLI as a user runs it: exit code and stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "sandbox_controller.cli", *args],
        env={**os.environ, "SANDBOX_TOKEN_SECRET": secrets.token_urlsafe(32), **env},
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    return done.returncode, done.stderr


# ------------------------------------------------------------------ help


def subcommands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", ["", "dev", "serve", "proxy", "migrate"])
def test_help_shows_no_markup_and_explains_every_flag(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"] if command else ["--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    assert not re.search(r"``|:class:|\*\*|\]\(", shown), shown
    parser = subcommands()[command] if command else build_parser()
    for action in parser._actions:
        assert action.help and action.help != argparse.SUPPRESS, action.option_strings
    if not command:  # the top level lists every command, each with its help
        for name in subcommands():
            assert re.search(rf"^\s+{name}\s+\S", shown, re.M), name


# ------------------------------------------------------------------ settings


def test_a_bad_log_level_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SANDBOX_LOG_LEVEL", "loud")
    assert main(["serve"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "SANDBOX_LOG_LEVEL" in err[0] and "'loud'" in err[0]


def test_serve_refuses_to_start_without_the_token_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SANDBOX_TOKEN_SECRET", raising=False)
    assert main(["serve"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "SANDBOX_TOKEN_SECRET: required by serve" in err[0]


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield int(taken.getsockname()[1])


@pytest.mark.parametrize("variable", ["SANDBOX_PORT", "SANDBOX_PROXY_PORT"])
def test_a_taken_port_is_named(
    variable: str, taken_port: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv(variable, str(taken_port))
    monkeypatch.setenv("SANDBOX_PORT" if variable != "SANDBOX_PORT" else "SANDBOX_PROXY_PORT", "0")
    monkeypatch.setenv("SANDBOX_STATE_DIR", str(tmp_path))
    assert main(["dev"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"sandbox-controller: port {taken_port} on 127.0.0.1 is taken"]


# ------------------------------------------------------------------ the database


@pytest.fixture
def silent_server() -> Iterator[int]:
    """Accepts connections and never says a word: a database behind a black hole."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (f"postgresql+asyncpg://app:s3cret-pw@127.0.0.1:{closed_port()}/app", "refused"),
        ("postgresql+asyncpg://nobody:s3cret-pw@127.0.0.1:5432/test", "nobody"),
        ("mysql://app:s3cret-pw@db.example/app", "MySQLdb"),
        ("not a url", "not a database URL"),
    ],
    ids=["refused", "unknown-role", "no-driver", "not-a-url"],
)
@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_an_unusable_database_is_one_line_naming_it(url: str, says: str, command: str) -> None:
    code, err = run_cli(command, SANDBOX_DATABASE_URL=url, SANDBOX_PORT="0")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert says in lines[0] and "s3cret-pw" not in lines[0]
    if "://" in url:
        assert url.replace("s3cret-pw", "***").split("@")[1] in lines[0]
    # Fast, not retried: run_cli's 30 s limit is half of the 60 s a start-up waits for a
    # database that is merely not up yet (no tighter bound: the suite times nothing).


@pytest.mark.slow
def test_a_database_that_never_answers_is_one_line_after_its_7_s_deadline(
    silent_server: int,
) -> None:
    url = f"postgresql+asyncpg://app:s3cret-pw@127.0.0.1:{silent_server}/app"
    code, err = run_cli("serve", SANDBOX_DATABASE_URL=url, SANDBOX_PORT="0")
    lines = err.strip().splitlines()
    assert code == 1 and lines == [
        f"sandbox-controller: cannot use the database postgresql+asyncpg://app:***@127.0.0.1:"
        f"{silent_server}/app: no answer within 7 s"
    ]


def test_migrate_at_the_default_level_shows_no_alembic_chatter(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SANDBOX_LOG_LEVEL"}
    done = subprocess.run(
        [sys.executable, "-m", "sandbox_controller.cli", "migrate"],
        env={**env, "SANDBOX_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/s.db"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "alembic" not in done.stderr
    assert (tmp_path / "s.db").exists()


def test_migrate_to_rolls_the_schema_back_and_forward(tmp_path: Path) -> None:
    import sqlite3

    env = {**os.environ, "SANDBOX_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/s.db"}

    def migrate(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sandbox_controller.cli", "migrate", *args],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    def revision() -> str:
        with sqlite3.connect(tmp_path / "s.db") as db:
            return str(db.execute("SELECT version_num FROM alembic_version").fetchone()[0])

    assert migrate().returncode == 0
    assert revision() == "0005"
    assert migrate("--to", "0002").returncode == 0
    assert revision() == "0002"
    unknown = migrate("--to", "0042")
    assert unknown.returncode == 2
    assert "no revision '0042'" in unknown.stderr and "Traceback" not in unknown.stderr
    assert revision() == "0002"
    assert migrate().returncode == 0
    assert revision() == "0005"


# ------------------------------------------------------------------ dev's credentials


def test_dev_keeps_its_credentials_in_the_state_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("SANDBOX_API_TOKEN", "SANDBOX_TOKEN_SECRET"):
        monkeypatch.delenv(name, raising=False)
    first = _dev_credentials(load_settings(state_dir=str(tmp_path)))
    again = _dev_credentials(load_settings(state_dir=str(tmp_path)))
    assert first.api_token and first.token_secret
    assert (again.api_token, again.token_secret) == (first.api_token, first.token_secret)
    kept = tmp_path / DEV_CREDENTIALS
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600

    # A value from the environment wins, and is never written down.
    monkeypatch.setenv("SANDBOX_API_TOKEN", "from-the-environment")
    chosen = _dev_credentials(load_settings(state_dir=str(tmp_path)))
    assert chosen.api_token == "from-the-environment"
    assert chosen.token_secret == first.token_secret
    assert "from-the-environment" not in kept.read_text()


@pytest.mark.slow
def test_a_session_token_survives_a_restart_of_dev(tmp_path: Path) -> None:
    from .test_client import free_port

    port, proxy_port = free_port(), free_port()
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if k not in ("SANDBOX_API_TOKEN", "SANDBOX_TOKEN_SECRET")
        },
        "SANDBOX_STATE_DIR": str(tmp_path / "state"),
        "SANDBOX_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/s.db",
        "SANDBOX_PREWARM_POOL_SIZE": "1",
        "SANDBOX_LOG_LEVEL": "warning",
    }

    def start() -> tuple[subprocess.Popen[str], str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sandbox_controller.cli", "dev",
             "--port", str(port), "--proxy-port", str(proxy_port)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        for line in proc.stdout:  # dev prints its API token once it is serving
            if line.strip().startswith("API token"):
                return proc, line.split()[-1]
        raise AssertionError(f"dev exited ({proc.wait()}) without printing its API token")

    def stop(proc: subprocess.Popen[str]) -> None:
        proc.terminate()
        proc.wait(30)

    first, api_token = start()
    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {api_token}"}
        ) as api:
            session = api.post("/sessions", json={"user_id": "u", "thread_id": "t"}).json()
    finally:
        stop(first)
    connect = session["connect"]

    second, api_token_again = start()
    try:
        assert api_token_again == api_token
        with httpx.Client(headers={"Authorization": f"Bearer {api_token}"}) as http:
            assert http.get(f"http://127.0.0.1:{port}/sessions/{session['id']}").status_code == 200
            # The session token still verifies: the proxy knows it, the session is what
            # ended (dev stops its sandboxes when it stops), not the token.
            again = httpx.get(connect["url"], headers={"X-Sandbox-Token": connect["token"]})
            assert again.status_code in (200, 410), again.text
    finally:
        stop(second)


def test_dev_suspends_idle_sandboxes_into_its_state_dir_unless_told_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SANDBOX_IDLE_ACTION", raising=False)
    monkeypatch.delenv("SANDBOX_SNAPSHOT_STORE", raising=False)
    shown = _dev_suspends(load_settings(state_dir=str(tmp_path)))
    assert shown.idle_action == "suspend"
    assert shown.snapshot_store == (tmp_path / "snapshots").resolve().as_uri()
    monkeypatch.setenv("SANDBOX_IDLE_ACTION", "end")
    monkeypatch.setenv("SANDBOX_SNAPSHOT_STORE", "s3://bucket/dev")
    told = _dev_suspends(load_settings(state_dir=str(tmp_path)))
    assert (told.idle_action, told.snapshot_store) == ("end", "s3://bucket/dev")
