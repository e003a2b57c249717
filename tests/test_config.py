"""Settings and durations: defaults from DESIGN, and a clear line for every bad value."""

from __future__ import annotations

import secrets
import socket
from pathlib import Path

import pytest

from sandbox_controller.cli import main
from sandbox_controller.config import ConfigError, load_settings
from sandbox_controller.durations import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("5m", 300),
        ("2h30m", 9000),
        ("1d", 86400),
        ("250ms", 0.25),
        ("42", 42),
        ("1.5h", 5400),
        (" 10S ", 10),
    ],
)
def test_durations_as_operators_write_them(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "5 m", "m5", "-5m", "5x", "2h30"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_defaults_match_the_design(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SANDBOX_PREWARM_POOL_SIZE", "SANDBOX_MAX_TOTAL_JOBS", "SANDBOX_IDLE_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    s = load_settings()
    assert (s.prewarm_pool_size, s.max_total_jobs, s.max_sessions_per_user) == (5, 50, 5)
    assert (s.idle_timeout, s.idle_after, s.max_lifetime, s.startup_timeout) == (9000, 300, 0, 300)
    assert s.max_concurrent_creates == 3 and s.backend == "local"
    assert s.database_url == "sqlite+aiosqlite:///./sandbox.db"
    assert s.proxy_public_url is None and s.proxy_url == "http://127.0.0.1:8081"
    guard = s.limits().recovery  # the restore guard: 20% of the pods and more than 5
    assert (guard.max_fraction, guard.max_pods, guard.confirmed) == (0.2, 5, False)


def test_the_recovery_guard_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_RECOVERY_MAX_DELETE", "0.5")
    monkeypatch.setenv("SANDBOX_RECOVERY_MAX_PODS", "12")
    monkeypatch.setenv("SANDBOX_RECOVERY_CONFIRM", "true")
    guard = load_settings().limits().recovery
    assert (guard.max_fraction, guard.max_pods, guard.confirmed) == (0.5, 12, True)
    assert not guard.holds(1000, 1000)  # confirmed: nothing is held


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("SANDBOX_IDLE_TIMEOUT", "soon", "SANDBOX_IDLE_TIMEOUT"),
        ("SANDBOX_MAX_TOTAL_JOBS", "-1", "SANDBOX_MAX_TOTAL_JOBS"),
        ("SANDBOX_PREWARM_POOL_SIZE", "five", "SANDBOX_PREWARM_POOL_SIZE"),
        ("SANDBOX_PREWARM_POOL_SIZE", "80", "must not exceed SANDBOX_MAX_TOTAL_JOBS"),
        ("SANDBOX_BACKEND", "nomad", "SANDBOX_BACKEND"),
        ("SANDBOX_RECOVERY_MAX_DELETE", "1.5", "SANDBOX_RECOVERY_MAX_DELETE"),
        ("SANDBOX_RECOVERY_MAX_PODS", "-1", "SANDBOX_RECOVERY_MAX_PODS"),
        # One label in sandbox_pod_labels (label_agent_sandbox_meta_cost_center).
        ("SANDBOX_POD_LABEL_METADATA_KEYS", "cost-center,cost_center", "differ only in"),
    ],
)
def test_a_bad_value_stops_start_up_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    value: str,
    says: str,
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=says):
        load_settings()
    assert main(["serve"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0] and "Traceback" not in err[0]


def test_an_empty_token_counts_as_unset_and_serve_refuses_to_listen_openly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SANDBOX_API_TOKEN", "")
    monkeypatch.setenv("SANDBOX_HOST", "0.0.0.0")
    assert main(["serve"]) == 2
    assert "SANDBOX_API_TOKEN: required" in capsys.readouterr().err


def test_the_proxy_needs_its_credential(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SANDBOX_TOKEN_SECRET", raising=False)
    monkeypatch.delenv("SANDBOX_PROXY_TOKEN", raising=False)
    assert main(["proxy"]) == 2
    assert "SANDBOX_PROXY_TOKEN: required by the proxy" in capsys.readouterr().err


def test_a_taken_port_is_one_line_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: object
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        monkeypatch.setenv("SANDBOX_PORT", str(taken.getsockname()[1]))
        monkeypatch.setenv("SANDBOX_API_TOKEN", secrets.token_urlsafe(24))
        monkeypatch.setenv("SANDBOX_TOKEN_SECRET", secrets.token_urlsafe(32))
        monkeypatch.setenv("SANDBOX_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/s.db")
        # GC tuning is process-wide; the test process keeps its own.
        monkeypatch.setattr("sandbox_controller.serving.tune_gc", lambda: None)
        assert main(["serve"]) == 1
        port = taken.getsockname()[1]
    assert (
        capsys.readouterr().err.strip() == f"sandbox-controller: port {port} on 127.0.0.1 is taken"
    )


def test_limits_and_kube_options_come_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # Built from Settings, never from defaults of their own: what the operator set is
    # what the scheduler and the backend get.
    monkeypatch.setenv("SANDBOX_MAX_TOTAL_JOBS", "9")
    monkeypatch.setenv("SANDBOX_IDLE_AFTER", "2m")
    monkeypatch.setenv("SANDBOX_ACTIVITY_FLUSH_INTERVAL", "3s")
    monkeypatch.setenv("SANDBOX_MAX_CONCURRENT_CREATES", "7")
    monkeypatch.setenv("SANDBOX_KUBE_QPS", "50")
    monkeypatch.setenv("SANDBOX_NAMESPACE", "sandboxes")
    s = load_settings(prewarm_pool_size=2)
    limits = s.limits()
    assert (limits.prewarm_pool_size, limits.max_total_jobs, limits.idle_after) == (2, 9, 120)
    # Activity reaches the controller up to two flushes late; reclaiming allows for it.
    assert limits.reclaim_after == 120 + 2 * 3
    kube = s.kube_options()
    assert (kube.namespace, kube.qps, kube.burst, kube.max_concurrent_creates) == (
        "sandboxes",
        50,
        40,
        7,
    )


def test_connect_urls_follow_the_proxy_unless_a_public_url_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SANDBOX_PROXY_PUBLIC_URL", raising=False)
    assert load_settings(proxy_port=39001).proxy_url == "http://127.0.0.1:39001"
    monkeypatch.setenv("SANDBOX_PROXY_PUBLIC_URL", "https://sandbox.example.com")
    assert load_settings(proxy_port=39001).proxy_url == "https://sandbox.example.com"


def test_secrets_come_from_files_in_the_secrets_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sandbox_token_secret").write_text("from-a-file\n")
    (tmp_path / "sandbox_api_token").write_text("api-from-a-file")
    monkeypatch.setenv("SANDBOX_SECRETS_DIR", str(tmp_path))
    monkeypatch.delenv("SANDBOX_TOKEN_SECRET", raising=False)
    monkeypatch.setenv("SANDBOX_API_TOKEN", "from-the-env")
    settings = load_settings()
    assert settings.token_secret == "from-a-file"
    assert settings.api_token == "from-the-env"  # the environment wins


def test_with_egress_on_docker_sandboxes_join_the_internal_network() -> None:
    off = load_settings(backend="docker").docker_options()
    assert (off.network, off.internal) == ("agent-sandbox", False)
    for mode in ("audit", "enforce"):
        on = load_settings(backend="docker", egress=mode).docker_options()
        assert (on.network, on.internal) == ("agent-sandbox-egress", True)
    named = load_settings(backend="docker", egress="enforce", docker_egress_network="sbx-out")
    assert named.docker_options().network == "sbx-out"
