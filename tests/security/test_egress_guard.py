"""Issue 17, row 12: the Compose stack's egress guard. The host's own LAN was not
covered, every stack flushed the same chains, and the rules stayed after ``down``. Now
each stack's guard has chains of its own, covers the host's addresses and every local
range, and takes its rules with it when the stack goes down (real dockerd, real
iptables, docker-compose)."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox_controller.backends.docker_spec import bridge_name

from ..deploy.deploytools import REPO
from ..deploy.test_compose import COMPOSE, compose_command, stack_env
from ..dockerhost import docker, require_docker
from ..eventually import eventually


@pytest.fixture
def guard_image(tmp_path: Path) -> Iterator[str]:
    """The Compose test's guard image with this checkout's egress-guard.sh, under a tag
    of its own (other runs rebuild agent-sandbox/egress-guard:dev from theirs)."""
    require_docker()
    tag = f"agent-sandbox/egress-guard:test-{uuid.uuid4().hex[:8]}"
    context = tmp_path / "guard"
    context.mkdir()
    shutil.copy(REPO / "deploy/docker/egress-guard.sh", context / "egress-guard.sh")
    (context / "Dockerfile").write_text(
        "FROM agent-sandbox/egress-guard:dev\nCOPY egress-guard.sh /usr/local/bin/egress-guard\n"
    )
    built = subprocess.run(
        ["docker", "build", "-q", "-t", tag, str(context)],
        capture_output=True,
        text=True,
        env={**os.environ, "DOCKER_BUILDKIT": "0"},
    )
    assert built.returncode == 0, built.stderr
    try:
        yield tag
    finally:
        docker("rmi", "-f", tag, check=False)


def rules(chain_prefix: str) -> list[str]:
    """This host's IPv4 and IPv6 rules that name a chain starting with the prefix."""
    found = []
    for tool in ("iptables", "ip6tables"):
        listed = subprocess.run([tool, "-w", "-S"], capture_output=True, text=True)
        found += [f"{tool} {r}" for r in listed.stdout.splitlines() if chain_prefix in r]
    return found


# What egress-guard.sh prints once its chains and every bridge's jumps are in.
GUARD_APPLIED = "cannot reach the host or a local range"


def guard_log(command: list[str]) -> str:
    logs = subprocess.run([*command, "logs", "egress-guard"], capture_output=True, text=True)
    return logs.stdout + logs.stderr


def lan_addresses() -> set[ipaddress.IPv4Interface]:
    """This host's own IPv4 addresses on the interface of its default route, with their
    subnet: its LAN (192.0.2.0/24 on the VM the issue was found on)."""
    route = subprocess.run(["ip", "-4", "route", "show", "default"], capture_output=True, text=True)
    device = route.stdout.split(" dev ")[1].split()[0]
    shown = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "dev", device, "scope", "global"],
        capture_output=True,
        text=True,
    )
    return {ipaddress.IPv4Interface(line.split()[3]) for line in shown.stdout.splitlines()}


@pytest.mark.docker
async def test_each_stacks_guard_has_its_own_rules_and_takes_them_down(
    tmp_path: Path, guard_image: str
) -> None:
    """Issue 17, row 12: the host's own LAN was not covered, every stack flushed the same
    chains, and the rules stayed after ``down``."""
    compose = compose_command()
    stacks = []
    for name in ("a", "b"):
        instance = f"guard-{name}-{uuid.uuid4().hex[:8]}"
        folder = tmp_path / name
        folder.mkdir()
        env = stack_env(
            folder, instance, EGRESS_GUARD_IMAGE=guard_image, SANDBOX_DOCKER_NETWORK=instance
        )
        command = [*compose, "-p", instance, "-f", str(COMPOSE), "--env-file", str(env)]
        chain = "SBX-" + hashlib.sha256(instance.encode()).hexdigest()[:8]
        stacks.append((command, chain, bridge_name(instance)))
    try:
        for command, _, _ in stacks:
            up = subprocess.run([*command, "up", "-d", "egress-guard"], capture_output=True)
            assert up.returncode == 0, up.stderr
        for command, _, _ in stacks:
            # The guard's word that every bridge's jumps are in (it fills its chains
            # first, then jumps from each bridge in turn): rules read before it may lack
            # the last bridge's.
            await eventually(
                lambda command=command: GUARD_APPLIED in guard_log(command),
                within=30,
                what="the guard's rules",
            )
        (a_command, a_chain, a_bridge), (_, b_chain, b_bridge) = stacks
        a_rules, b_rules = rules(a_chain), rules(b_chain)
        assert set(a_rules).isdisjoint(b_rules)
        assert f"iptables -A DOCKER-USER -i {a_bridge} -j {a_chain}-EGRESS" in a_rules
        assert f"iptables -A INPUT -i {a_bridge} -j {a_chain}-HOST" in a_rules
        assert f"ip6tables -A INPUT -i {a_bridge} -j {a_chain}-HOST" in a_rules
        for address in lan_addresses():  # the host itself and its LAN, whatever the range
            for net in (address.ip, address.network):
                spelled = f"{net}/32" if net == address.ip else str(net)
                assert (
                    f"iptables -A {a_chain}-EGRESS -d {spelled} -j REJECT "
                    "--reject-with icmp-net-prohibited" in a_rules
                )
        for local in ("10.0.0.0/8", "100.64.0.0/10", "169.254.0.0/16", "192.168.0.0/16"):
            assert f"iptables -A {a_chain}-EGRESS -d {local} -j REJECT" in " ".join(a_rules)

        down = subprocess.run([*a_command, "down", "-t", "10"], capture_output=True)
        assert down.returncode == 0, down.stderr
        assert rules(a_chain) == [] and rules(a_bridge) == []
        assert rules(b_chain) == b_rules  # the other stack's guard, untouched
    finally:
        for command, _, _ in stacks:
            subprocess.run([*command, "down", "-t", "10"], capture_output=True, timeout=120)
    assert rules(b_chain) == [] and rules(b_bridge) == []
