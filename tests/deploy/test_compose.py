"""The Compose deployment (deploy/compose): .env.example names every setting, the file is
valid Compose, and the stack it describes comes up on a real dockerd and serves the
README's curl flow. Docker Compose v2 is not installable here (no Debian or PyPI
package), so the stack is started with Debian's docker-compose 1.29, which reads the
same Compose specification; ``docker compose`` is used instead where it exists."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sandbox_controller.config import Settings, load_settings

from ..dockerhost import docker, in_ci, remove_all, require_docker
from ..e2e.test_dev_crash import free_port
from ..eventually import eventually
from .deploytools import REPO

COMPOSE = REPO / "deploy/compose/docker-compose.yml"
ENV_EXAMPLE = REPO / "deploy/compose/.env.example"


def read_env(path: Path) -> tuple[dict[str, str], set[str]]:
    """Values set in an env file, and every SANDBOX_* name it mentions (set or commented)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            name, _, value = line.partition("=")
            values[name] = value
    return values, set(re.findall(r"\b(SANDBOX_[A-Z0-9_]+)=", path.read_text()))


def test_env_example_names_every_setting_and_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    values, mentioned = read_env(ENV_EXAMPLE)
    settings = {f"SANDBOX_{name.upper()}" for name in Settings.model_fields}
    assert settings - mentioned == set(), "settings missing from .env.example"
    for name, value in values.items():
        if name.startswith("SANDBOX_"):
            monkeypatch.setenv(name, value)
    loaded = load_settings(backend="docker")  # as the Compose file sets it
    assert loaded.docker_options().memory == 2 * 2**30 and loaded.proxy_host == "0.0.0.0"


def generated_secrets() -> dict[str, str]:
    """What .env.example asks its reader to fill in: never its (empty) values."""
    names = (
        "POSTGRES_PASSWORD",
        "SANDBOX_API_TOKEN",
        "SANDBOX_TOKEN_SECRET",
        "SANDBOX_PROXY_TOKEN",
    )
    return {name: secrets.token_urlsafe(32) for name in names}


def test_env_example_holds_no_secret_value() -> None:
    values, _ = read_env(ENV_EXAMPLE)
    for name in generated_secrets():
        assert values[name] == "", f"{name} has a value in .env.example: a placeholder"


def compose_command() -> list[str]:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if in_ci(os.environ):
        pytest.fail("docker-compose is missing: scripts/test.sh installs it in CI")
    pytest.skip("neither `docker compose` nor docker-compose is installed")


def test_the_compose_file_is_valid_and_keeps_the_socket_behind_the_proxy(
    tmp_path: Path,
) -> None:
    env = tmp_path / ".env"
    values, _ = read_env(ENV_EXAMPLE)
    chosen = generated_secrets()
    env.write_text("".join(f"{k}={v}\n" for k, v in {**values, **chosen}.items()))
    done = subprocess.run(
        [*compose_command(), "-f", str(COMPOSE), "--env-file", str(env), "config"],
        capture_output=True,
        text=True,
        env={**os.environ, "SANDBOX_ENV_FILE": str(env)},
    )
    assert done.returncode == 0, done.stderr
    services: dict[str, Any] = yaml.safe_load(done.stdout)["services"]
    assert set(services) == {
        "postgres",
        "socket-proxy",
        "egress-guard",
        "controller",
        "proxy",
        "egress-ca",
        "egress",
    }
    for name, service in services.items():
        # egress-ca makes the CA once and exits: restarting it would loop.
        assert service["restart"] == ("no" if name == "egress-ca" else "unless-stopped"), name
        mounts = json.dumps(service.get("volumes", []))
        assert ("docker.sock" in mounts and "/var/run" in mounts) == (name == "socket-proxy")
    for name in ("postgres", "socket-proxy", "controller", "proxy", "egress"):
        assert services[name]["healthcheck"]["test"], name
    for name in ("socket-proxy", "controller", "proxy", "egress", "egress-ca"):
        assert services[name]["read_only"] and services[name]["cap_drop"] == ["ALL"]
    assert services["controller"]["environment"]["SANDBOX_DOCKER_URL"].startswith("unix://")
    # The proxy gets its own credential and no other secret: no env_file (the .env holds
    # them all), no API token, token secret or database password among its variables.
    proxy = services["proxy"]
    assert "env_file" not in proxy
    assert proxy["environment"]["SANDBOX_PROXY_TOKEN"] == chosen["SANDBOX_PROXY_TOKEN"]
    held = json.dumps(proxy)
    for name in ("SANDBOX_API_TOKEN", "SANDBOX_TOKEN_SECRET", "POSTGRES_PASSWORD"):
        assert name not in held and chosen[name] not in held, name
    assert (
        services["controller"]["environment"]["SANDBOX_PROXY_TOKEN"]
        == chosen["SANDBOX_PROXY_TOKEN"]
    )
    assert services["controller"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # Suspension on, its archives in a named volume (kept across `down` and upgrades).
    controller = services["controller"]
    store = controller["environment"]["SANDBOX_SNAPSHOT_STORE"]
    assert controller["environment"]["SANDBOX_IDLE_ACTION"] == "suspend"
    assert "snapshots:" + store.removeprefix("file://") in json.dumps(controller["volumes"])
    assert proxy["environment"]["SANDBOX_PROXY_RESUME_WAIT"] == "30s"


def test_egress_is_enforced_and_the_egress_service_is_the_only_way_out(
    tmp_path: Path,
) -> None:
    env = tmp_path / ".env"
    values, _ = read_env(ENV_EXAMPLE)
    chosen = generated_secrets()
    env.write_text("".join(f"{k}={v}\n" for k, v in {**values, **chosen}.items()))
    done = subprocess.run(
        [*compose_command(), "-f", str(COMPOSE), "--env-file", str(env), "config"],
        capture_output=True,
        text=True,
        env={**os.environ, "SANDBOX_ENV_FILE": str(env)},
    )
    assert done.returncode == 0, done.stderr
    services: dict[str, Any] = yaml.safe_load(done.stdout)["services"]
    egress = services["egress"]
    assert egress["command"] == ["egress-proxy"]
    assert egress["environment"]["SANDBOX_EGRESS"] == "enforce"
    assert "pypi.org" in egress["environment"]["SANDBOX_EGRESS_ALLOW"].split(",")
    # It listens on the host's address on the sandboxes' internal network, which the
    # controller makes with that subnet, and the guard opens that one port to them.
    subnet, host = values["SANDBOX_DOCKER_EGRESS_SUBNET"], values["SANDBOX_EGRESS_PROXY_HOST"]
    assert ipaddress.ip_address(host) == next(ipaddress.ip_network(subnet).hosts())
    assert values["SANDBOX_EGRESS_PROXY_URL"] == f"http://{host}:3128"
    assert egress["environment"]["SANDBOX_EGRESS_PROXY_HOST"] == host
    proxy_args = services["socket-proxy"]["command"]
    assert "--egress=enforce" in proxy_args and f"--egress-subnet={subnet}" in proxy_args
    guard = services["egress-guard"]["command"]
    assert guard[guard.index("--allow-port") + 1] == "3128"
    assert values["SANDBOX_DOCKER_EGRESS_NETWORK"] in guard
    # Its own credential, the CA; no other secret.
    assert "env_file" not in egress
    held = json.dumps(egress)
    for name in ("SANDBOX_API_TOKEN", "SANDBOX_TOKEN_SECRET", "POSTGRES_PASSWORD"):
        assert name not in held and chosen[name] not in held, name
    # The CA is made once, before either process reads it.
    for name in ("egress", "controller"):
        depends = services[name]["depends_on"]["egress-ca"]
        assert depends["condition"] == "service_completed_successfully", name
    assert "egress-ca:/var/lib/agent-sandbox-egress-ca:ro" in json.dumps(
        services["controller"]["volumes"]
    ) or any(
        v.get("source") == "egress-ca" and v.get("read_only")
        for v in services["controller"]["volumes"]
        if isinstance(v, dict)
    )


def test_the_compose_file_refuses_to_run_with_the_secrets_left_unset(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    shutil.copy(ENV_EXAMPLE, env)
    done = subprocess.run(
        [*compose_command(), "-f", str(COMPOSE), "--env-file", str(env), "config"],
        capture_output=True,
        text=True,
        env={**os.environ, "SANDBOX_ENV_FILE": str(env)},
    )
    assert done.returncode != 0 and "in .env" in done.stderr, done.stderr


def egress_network(instance: str) -> dict[str, str]:
    """An internal network of the stack's own, on a /24 no other run picks."""
    bits = uuid.uuid4().int
    subnet = f"10.{200 + bits % 50}.{(bits >> 8) % 256}.0/24"
    host = subnet.replace(".0/24", ".1")
    return {
        "SANDBOX_DOCKER_EGRESS_NETWORK": f"{instance}-egress",
        "SANDBOX_DOCKER_EGRESS_SUBNET": subnet,
        "SANDBOX_EGRESS_PROXY_HOST": host,
        "SANDBOX_EGRESS_PROXY_URL": f"http://{host}:3128",
    }


def stack_env(tmp_path: Path, instance: str, **overrides: str) -> Path:
    """An env file for a stack of its own: its ports, its instance, the local images,
    secrets generated for it."""
    values, _ = read_env(ENV_EXAMPLE)
    values.update(generated_secrets())
    api, proxy = free_port(), free_port()
    values.update(
        {
            "POSTGRES_IMAGE": "agent-sandbox/postgres:dev",
            "SANDBOX_CONTROLLER_IMAGE": "agent-sandbox/devsandbox:dev",
            "EGRESS_GUARD_IMAGE": "agent-sandbox/egress-guard:dev",
            "SANDBOX_ENV_FILE": str(tmp_path / ".env"),
            "POSTGRES_PORT": str(free_port()),
            "SANDBOX_PORT": str(api),
            "SANDBOX_PROXY_PORT": str(proxy),
            "SANDBOX_PROXY_HOST": "127.0.0.1",
            "SANDBOX_CONTROLLER_URL": f"http://127.0.0.1:{api}",
            "SANDBOX_PROXY_PUBLIC_URL": f"http://127.0.0.1:{proxy}",
            "SANDBOX_DOCKER_NETWORK": "agent-sandbox-compose-test",
            # The egress network, its subnet and the egress proxy's address: the stack's own.
            **egress_network(instance),
            "SANDBOX_DOCKER_INSTANCE": instance,
            "SANDBOX_DOCKER_MEMORY": "256Mi",
            "SANDBOX_DOCKER_CPUS": "0.5",
            "SANDBOX_PREWARM_POOL_SIZE": "1",
            **overrides,
        }
    )
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return tmp_path / ".env"


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The Compose stack on its own ports, images built offline, torn down afterwards."""
    require_docker()
    compose = compose_command()
    instance = f"compose-{uuid.uuid4().hex[:8]}"
    env = stack_env(tmp_path, instance)
    values, _ = read_env(env)
    command = [*compose, "-p", instance, "-f", str(COMPOSE), "--env-file", str(env)]
    try:
        up = subprocess.run([*command, "up", "-d"], capture_output=True, text=True, timeout=300)
        assert up.returncode == 0, up.stderr
        yield values
    finally:
        logs = subprocess.run([*command, "logs", "--no-color"], capture_output=True, text=True)
        (tmp_path / "compose.log").write_text(logs.stdout + logs.stderr)
        subprocess.run([*command, "down", "-v", "-t", "5"], capture_output=True, timeout=120)
        remove_all(instance)
        docker("network", "rm", values["SANDBOX_DOCKER_EGRESS_NETWORK"], check=False)


def curl(*args: str) -> str:
    done = subprocess.run(
        ["curl", "-sS", "--fail-with-body", "--noproxy", "*", "--max-time", "30", *args],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.docker
async def test_the_stack_comes_up_and_serves_the_readme_curl_flow(
    stack: dict[str, str],
) -> None:
    env = stack
    api = f"http://127.0.0.1:{env['SANDBOX_PORT']}"
    token = f"Authorization: Bearer {env['SANDBOX_API_TOKEN']}"

    def ready() -> bool:
        done = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"{api}/readyz"],
            capture_output=True,
            text=True,
        )
        return done.stdout == "200"

    await eventually(ready, within=120, every=0.5, what="the controller to lead and be ready")

    # The README's flow, command for command.
    session = json.loads(
        curl(
            "-H", token, "-H", "content-type: application/json",
            "-d", '{"user_id": "me", "thread_id": "t1"}', f"{api}/sessions",
        )
    )  # fmt: skip
    assert session["state"] == "ready", session
    url, bearer = session["connect"]["url"], f"Authorization: Bearer {session['connect']['token']}"
    assert curl("-H", bearer, url + "healthz") == "ok"
    assert curl("-H", bearer, "--data-binary", "hello", url + "echo") == "hello"
    # The sandbox is a container of this stack's controller, on the sandbox network.
    labels = json.loads(docker("inspect", "-f", "{{json .Config.Labels}}", session["pod"]))
    assert labels["app.kubernetes.io/instance"] == env["SANDBOX_DOCKER_INSTANCE"]
    # Egress on (.env.example): the sandbox is on the stack's internal network alone, and
    # the CA was made once, by egress-ca, before the controller started.
    egress_net = env["SANDBOX_DOCKER_EGRESS_NETWORK"]
    networks = json.loads(
        docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", session["pod"])
    )
    assert list(networks) == [egress_net]
    made = json.loads(docker("network", "inspect", egress_net))[0]
    assert made["Internal"] is True
    assert made["IPAM"]["Config"][0]["Subnet"] == env["SANDBOX_DOCKER_EGRESS_SUBNET"]
    one_shot = docker(
        "ps", "-a", "--format", "{{.Status}}",
        "--filter", f"label=com.docker.compose.project={env['SANDBOX_DOCKER_INSTANCE']}",
        "--filter", "label=com.docker.compose.service=egress-ca",
    )  # fmt: skip
    assert one_shot.startswith("Exited (0)"), one_shot
    curl("-X", "DELETE", "-H", token, f"{api}/sessions/{session['id']}")
    ended = json.loads(curl("-H", token, f"{api}/sessions/{session['id']}"))
    assert ended["state"] == "ended"
