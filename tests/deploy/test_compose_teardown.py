"""The Compose stack on a host shared with others: PostgreSQL is published on the host
only when asked (postgres-port.yml), and scripts/compose-down.sh, the README's teardown,
leaves nothing of one stack (services, sandboxes, sandbox network, egress rules) while a
second stack on the same host keeps serving."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ..dockerhost import docker, remove_all, require_docker
from ..eventually import eventually
from .deploytools import REPO
from .test_compose import COMPOSE, compose_command, curl, read_env, stack_env

PUBLISH_PORT = REPO / "deploy/compose/postgres-port.yml"
COMPOSE_DOWN = REPO / "scripts/compose-down.sh"


def config(tmp_path: Path, *files: Path) -> dict[str, Any]:
    env = stack_env(tmp_path, "config-only")
    args = [arg for path in files for arg in ("-f", str(path))]
    done = subprocess.run(
        [*compose_command(), *args, "--env-file", str(env), "config"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    services: dict[str, Any] = yaml.safe_load(done.stdout)["services"]
    return services


def test_postgres_is_published_on_the_host_only_when_asked(tmp_path: Path) -> None:
    plain = config(tmp_path, COMPOSE)
    assert "ports" not in plain["postgres"], "a host PostgreSQL on 5432 would collide"
    # The controller reaches it through the socket both share instead.
    url = plain["controller"]["environment"]["SANDBOX_DATABASE_URL"]
    assert url.endswith("@/sandbox?host=/run/postgresql"), url
    assert "pgsocket:/run/postgresql:ro" in json.dumps(plain["controller"]["volumes"]) or any(
        isinstance(v, dict) and v.get("source") == "pgsocket"
        for v in plain["controller"]["volumes"]
    )
    published = config(tmp_path, COMPOSE, PUBLISH_PORT)
    ports = json.dumps(published["postgres"]["ports"])
    assert "127.0.0.1" in ports and "5432" in ports, ports


def chain_tag(instance: str) -> str:
    """The egress guard's chain prefix for a stack (deploy/docker/egress-guard.sh)."""
    return "SBX-" + hashlib.sha256(instance.encode()).hexdigest()[:8]


def firewall_rules() -> str:
    """Every iptables ruleset on the host, whichever of nft and legacy dockerd uses."""
    out = []
    for tool in (
        "iptables-save",
        "iptables-legacy-save",
        "ip6tables-save",
        "ip6tables-legacy-save",
    ):
        if shutil.which(tool):
            out.append(subprocess.run([tool], capture_output=True, text=True).stdout)
    return "\n".join(out)


class Stack:
    def __init__(self, root: Path, compose: list[str]) -> None:
        self.instance = f"compose-{uuid.uuid4().hex[:8]}"
        self.network = f"sbx-{self.instance}"
        root.mkdir()
        self.env_file = stack_env(root, self.instance, SANDBOX_DOCKER_NETWORK=self.network)
        self.values, _ = read_env(self.env_file)
        self.options = ["-p", self.instance, "-f", str(COMPOSE), "--env-file", str(self.env_file)]
        self.compose = [*compose, *self.options]
        self.api = f"http://127.0.0.1:{self.values['SANDBOX_PORT']}"

    def ready(self) -> bool:
        done = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"{self.api}/readyz"],
            capture_output=True,
            text=True,
        )
        return done.stdout == "200"

    def open_session(self, thread: str) -> dict[str, Any]:
        body = json.dumps({"user_id": "me", "thread_id": thread})
        session: dict[str, Any] = json.loads(
            curl(
                "-H", f"Authorization: Bearer {self.values['SANDBOX_API_TOKEN']}",
                "-H", "content-type: application/json", "-d", body, f"{self.api}/sessions",
            )
        )  # fmt: skip
        assert session["state"] == "ready", session
        bearer = f"Authorization: Bearer {session['connect']['token']}"
        assert curl("-H", bearer, session["connect"]["url"] + "healthz") == "ok"
        return session

    def down(self) -> subprocess.CompletedProcess[str]:
        """The README's teardown, as a user runs it (no SANDBOX_* from this process)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_")}
        return subprocess.run(
            ["bash", str(COMPOSE_DOWN), *self.options],
            capture_output=True,
            text=True,
            timeout=300,
            env={**env, "COMPOSE": " ".join(compose_command())},
        )

    def leftovers(self) -> dict[str, str]:
        """What of this stack dockerd and iptables still hold."""
        found = {
            "sandboxes": docker(
                "ps", "-aq", "--filter", f"label=app.kubernetes.io/instance={self.instance}"
            ),
            "services": docker(
                "ps", "-aq", "--filter", f"label=com.docker.compose.project={self.instance}"
            ),
            "networks": docker("network", "ls", "-q", "--filter", f"name={self.instance}"),
            "volumes": docker(
                "volume",
                "ls",
                "-q",
                "--filter",
                f"label=com.docker.compose.project={self.instance}",
            ),
            "rules": "\n".join(
                line for line in firewall_rules().splitlines() if chain_tag(self.instance) in line
            ),
        }
        return {name: text.strip() for name, text in found.items() if text.strip()}


@pytest.fixture
def two_stacks(tmp_path: Path) -> Iterator[tuple[Stack, Stack]]:
    require_docker()
    compose = compose_command()
    stacks = (Stack(tmp_path / "first", compose), Stack(tmp_path / "second", compose))
    try:
        ups = [
            subprocess.Popen(
                [*stack.compose, "up", "-d", "--no-build"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for stack in stacks
        ]
        for up in ups:
            _, err = up.communicate(timeout=300)
            assert up.returncode == 0, err
        yield stacks
    finally:
        for stack in stacks:
            logs = subprocess.run(
                [*stack.compose, "logs", "--no-color"], capture_output=True, text=True
            )
            (tmp_path / f"{stack.instance}.log").write_text(logs.stdout + logs.stderr)
            stack.down()
            remove_all(stack.instance)


@pytest.mark.docker
async def test_compose_down_leaves_nothing_of_its_stack_and_spares_the_other(
    two_stacks: tuple[Stack, Stack],
) -> None:
    first, second = two_stacks
    for stack in two_stacks:
        await eventually(stack.ready, within=150, every=0.5, what="a stack to lead and be ready")
    first.open_session("t1")
    first.open_session("t2")
    held = first.leftovers()
    # Two sessions and the warm pod, its network, the guard's chains: all there to remove.
    assert len(held["sandboxes"].split()) >= 2 and held["networks"] and held["rules"], held

    done = first.down()
    assert done.returncode == 0, done.stderr

    assert first.leftovers() == {}
    # The other stack: its rules, its sandboxes, and it still opens a session.
    assert second.leftovers()["rules"]
    second.open_session("t1")
