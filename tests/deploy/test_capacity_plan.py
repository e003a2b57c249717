"""`sandbox-controller plan`: the sizing arithmetic an operator would otherwise do by hand."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from sandbox_controller import plan
from tests.deploy.deploytools import REPO, Render, find


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = plan.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_defaults_for_twenty_editors(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--peak-editors", "20")
    assert code == 0
    assert "25 pods" in out
    assert "25 CPU cores" in out
    assert "50 GiB" in out
    assert "WARNING" not in out


def test_warns_when_the_cap_refuses_sessions(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--peak-editors", "60")
    assert code == 0
    assert "WARNING" in out
    assert "503 capacity_exhausted" in out
    assert "maxTotalJobs" in out and "at least 65" in out


def test_exactly_at_the_cap_does_not_warn(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--peak-editors", "45")
    assert code == 0 and "50 pods" in out and "WARNING" not in out


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--peak-editors", "many"],
        ["--peak-editors", "-1"],
        ["--peak-editors", "5", "--max-total-jobs", "0"],
        ["--peak-editors", "5", "--cpu", "lots"],
        ["--peak-editors", "5", "--memory-gib", "0"],
        ["--peak-editors", "5", "--template", "/nonexistent/pod.yaml"],
    ],
)
def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert "error" in err and not out


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", "0.5"),
        ("2", "2"),
        ("1.5", "1.5"),
        ("2Gi", str(2 * 1024**3)),
        ("2048Mi", str(2 * 1024**3)),
        ("1G", "1000000000"),
        ("128Ki", "131072"),
    ],
)
def test_parse_quantity(text: str, value: str) -> None:
    assert plan.parse_quantity(text) == Decimal(value)


def test_template_requests_replace_the_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = {
        "apiVersion": "v1",
        "kind": "Pod",
        "spec": {
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "500m", "memory": "3072Mi"}}},
                {"name": "sidecar", "resources": {"requests": {"cpu": "4", "memory": "8Gi"}}},
            ]
        },
    }
    path = tmp_path / "pod.yaml"
    path.write_text(yaml.safe_dump(template))
    code, out, _ = run(capsys, "--peak-editors", "15", "--cpu", "8", "--template", str(path))
    assert code == 0
    assert "20 pods" in out and "10 CPU cores" in out and "60 GiB" in out


def test_reads_the_charts_own_pod_template(
    render: Render, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    values = {"agentSandbox": {"job": {"resources": {"requests": {"cpu": "2", "memory": "4Gi"}}}}}
    path = tmp_path / "configmap.yaml"
    path.write_text(yaml.safe_dump(find(render(values), "ConfigMap", "-pod-template")))
    code, out, _ = run(capsys, "--peak-editors", "5", "--template", str(path))
    assert code == 0
    assert "10 pods" in out and "20 CPU cores" in out and "40 GiB" in out


def test_module_runs_as_a_script() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sandbox_controller.plan", "--peak-editors", "20"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert "25 pods" in proc.stdout


def test_subdomain_mode_names_the_dns_record_and_certificate_it_needs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "--peak-editors", "20", "--session-domain", "Sandbox.Example.com.")
    assert code == 0
    assert "25 pods" in out  # the arithmetic is unchanged
    assert "*.sandbox.example.com  A/AAAA -> the ingress address" in out
    assert "certificate for *.sandbox.example.com" in out
    assert "agentSandbox.proxy.sessionDomain: sandbox.example.com" in out


def test_without_a_session_domain_there_is_no_dns_advice(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, out, _ = run(capsys, "--peak-editors", "20")
    assert "DNS" not in out


def test_headroom_covers_the_sessions_of_one_node_add(capsys: pytest.CaptureFixture[str]) -> None:
    # The seed's 20 editors + 5 warm; 2 new sessions a minute while a node takes 2 minutes.
    code, out, _ = run(capsys, "--peak-editors", "20", "--arrivals-per-minute", "2")
    assert code == 0
    assert "25 pods (20 editors + 5 warm)" in out
    assert "agentSandbox.headroom.pods: 4" in out
    assert "29 pods (25 sandbox + 4 placeholder): 29 CPU cores, 58 GiB" in out
    # A slower autoscaler needs more; a fraction of a pod is a whole one.
    code, out, _ = run(
        capsys, "--peak-editors", "20", "--arrivals-per-minute", "2.5", "--node-add-seconds", "300"
    )
    assert code == 0 and "agentSandbox.headroom.pods: 13" in out


def test_no_headroom_lines_without_an_arrival_rate(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--peak-editors", "20")
    assert code == 0 and "Headroom" not in out


@pytest.mark.parametrize(
    "argv",
    [
        ["--arrivals-per-minute", "-1"],
        ["--arrivals-per-minute", "nan"],
        ["--arrivals-per-minute", "many"],
        ["--arrivals-per-minute", "2", "--node-add-seconds", "0"],
    ],
)
def test_bad_headroom_arguments_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, err = run(capsys, "--peak-editors", "20", *argv)
    assert code == 2
    assert "error" in err and not out


def test_suspended_sessions_are_counted_in_the_store_not_in_pods(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(
        capsys, "--peak-editors", "20", "--suspended-sessions", "300", "--archive-size", "200Mi"
    )
    assert code == 0
    assert "25 pods" in out  # suspended sessions hold no pod
    assert "Snapshot store:       58.59 GiB (300 suspended sessions x 200 MiB" in out


def test_a_bad_archive_size_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, "--peak-editors", "5", "--suspended-sessions", "3", "--archive-size", "0"
    )
    assert code == 2 and "--archive-size" in err and not out
