"""The Docker backend's pure parts: the container spec, room on the host, and what
``docker inspect`` says about a sandbox. No dockerd needed."""

from __future__ import annotations

import re
import subprocess

import pytest

from sandbox_controller.backends.base import PodPhase
from sandbox_controller.backends.docker_spec import (
    GIB,
    Host,
    bridge_name,
    container_spec,
    observe,
    template_hash,
    timestamp,
)
from sandbox_controller.config import ConfigError, load_settings

from ..dockerhost import REPO, options

OPTS = options("agent-sandbox/devsandbox:dev", "spec")


def test_the_spec_is_hardened_and_limited() -> None:
    spec = container_spec(OPTS, "sha256:abc")
    host = spec["HostConfig"]
    assert spec["User"] == "10001:10001" and spec["Image"] == "sha256:abc"
    assert host["CapDrop"] == ["ALL"] and host["ReadonlyRootfs"] and host["Init"]
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert host["NanoCpus"] == 500_000_000 and host["Memory"] == host["MemorySwap"]
    assert host["PortBindings"] == {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}
    assert "Runtime" not in host
    gvisor = container_spec(options("i", "x", runtime="runsc", publish=False), "sha256:abc")
    assert gvisor["HostConfig"]["Runtime"] == "runsc" and "PortBindings" not in gvisor["HostConfig"]


def test_the_template_hash_follows_the_image_and_the_limits() -> None:
    one = template_hash(container_spec(OPTS, "sha256:abc"))
    assert one == template_hash(container_spec(OPTS, "sha256:abc"))
    assert one != template_hash(container_spec(OPTS, "sha256:def"))  # a rebuilt tag
    assert one != template_hash(container_spec(options("i", "spec", cpus=1.0), "sha256:abc"))


def test_memory_is_held_and_cpu_is_shared() -> None:
    host = Host(cpus=2, memory=24 * GIB, reserved_memory=GIB)
    assert host.capacity(GIB // 4) == 92
    assert host.why_not(1.0, 2 * GIB, held_memory=20 * GIB, running=10) is None
    why = host.why_not(1.0, 2 * GIB, held_memory=22 * GIB, running=11)
    assert why is not None and why.startswith("0/1 nodes are available: 1 Insufficient memory.")
    assert "22.0 GiB held by 11 sandboxes" in why
    why = host.why_not(4.0, GIB, held_memory=0, running=0)
    assert why is not None and why.startswith("0/1 nodes are available: 1 Insufficient cpu.")


def inspected(status: str, **state: object) -> dict[str, object]:
    return {
        "State": {"Status": status, "StartedAt": "2026-12-01T04:00:00.1Z", **state},
        "NetworkSettings": {
            "Ports": {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "32768"}]},
            "Networks": {OPTS.network: {"IPAddress": "172.19.0.5"}},
        },
    }


def test_what_inspect_says() -> None:
    running = observe(inspected("running"), OPTS)
    assert running.address == "127.0.0.1:32768" and running.phase() is None
    on_network = observe(inspected("running"), options("i", "x", publish=False))
    assert on_network.address == "172.19.0.5:8080"
    healthy = observe(inspected("running", Health={"Status": "healthy"}), OPTS)
    assert healthy.phase() is PodPhase.READY
    oom = observe(inspected("exited", ExitCode=137, OOMKilled=True), OPTS)
    assert oom.phase() is PodPhase.FAILED and "out of memory" in oom.failure()
    waiting = observe(inspected("created", StartedAt="0001-01-01T00:00:00Z"), OPTS)
    assert not waiting.started and waiting.phase() is None and not waiting.holds_memory


def test_a_container_never_started_or_of_unknown_start_is_not_started() -> None:
    for never in ("0001-01-01T00:00:00Z", "", None):
        observed = observe(inspected("exited", StartedAt=never, ExitCode=1), OPTS)
        # Not started, so not failed: it still waits for room, rather than being replaced.
        assert not observed.started and observed.phase() is None
    assert observe(inspected("exited", ExitCode=1), OPTS).phase() is PodPhase.FAILED


def test_docker_times_with_nanoseconds() -> None:
    assert timestamp("2026-12-01T04:00:00.123456789Z") == pytest.approx(1796097600.123456)
    assert timestamp("2026-12-01T04:00:00Z") == 1796097600.0


@pytest.mark.parametrize(
    "text", ["", "yesterday", "2026-13-01T04:00:00Z", "2026-12-01T04:00:00+01:00", "2026-12-01"]
)
def test_an_unreadable_time_is_none_not_now(text: str) -> None:
    # "Now" would make an old container look fresh; the caller decides what to assume.
    assert timestamp(text) is None


def test_the_guard_names_the_bridge_the_backend_gives_a_network() -> None:
    printed = subprocess.run(
        [
            "sh",
            str(REPO / "deploy/docker/egress-guard.sh"),
            "--network",
            "agent-sandbox",
            "--print",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert printed.stdout.strip() == bridge_name("agent-sandbox")
    assert len(bridge_name("a" * 200)) <= 15  # Linux's limit on interface names


@pytest.mark.parametrize(
    ("text", "size"),
    [("2Gi", 2 * GIB), ("256Mi", 256 * 2**20), ("512Mi", 512 * 2**20), ("1Gi", GIB)],
)
def test_memory_settings(text: str, size: int) -> None:
    assert load_settings(docker_memory=text).docker_memory == size


@pytest.mark.parametrize("text", ["lots", "2 GB?", "-1Gi", "1Xi", "256m", "1g"])
def test_a_bad_memory_setting_names_the_variable(text: str) -> None:
    with pytest.raises(ConfigError, match="SANDBOX_DOCKER_MEMORY"):
        load_settings(docker_memory=text)


def test_the_writable_paths_are_sized_by_the_disk_settings() -> None:
    def sizes(**settings: str) -> dict[str, int]:
        spec = container_spec(load_settings(**settings).docker_options(), "sha256:abc")
        tmpfs = spec["HostConfig"]["Tmpfs"]
        return {p: int(re.search(r"size=(\d+)", o)[1]) for p, o in tmpfs.items()}  # type: ignore[index]

    sized = sizes(tmp_dir_size_limit="512Mi", docker_memory="2Gi")
    assert sized == {"/tmp": 512 * 2**20, "/workspace": 512 * 2**20}
    # The default (20Gi) is held to the memory limit: a tmpfs lives in memory.
    assert sizes(docker_memory="1Gi") == {"/tmp": GIB, "/workspace": GIB}
    with pytest.raises(ConfigError, match="SANDBOX_TMP_DIR_SIZE_LIMIT"):
        load_settings(tmp_dir_size_limit="20GB")
