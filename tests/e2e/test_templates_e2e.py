"""Templates end to end, the same test over each backend (local processes, kubesim
through the real client, a real dockerd): two templates with different resources and
warm pools, sessions of both at once under one cap, and a session's own resources
inside and outside its template's bounds.

What a pod was made as is read from outside: a process's environment, kubesim's pod
spec, ``docker inspect``; never the controller's own word."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from sandbox_controller.backends.base import LABEL_TEMPLATE
from sandbox_controller.quantities import cpu_millis, memory_bytes

from ..conftest import sandbox_processes
from ..dockerhost import docker
from ..eventually import eventually
from .kubernetes.conftest import NAMESPACE
from .test_backend_scenarios import Platform, platform  # noqa: F401 (a fixture)

TEMPLATES = """
- name: small
  default: true
  resources: {cpu: 100m, memory: 64Mi}
  maxResources: {cpu: 300m, memory: 128Mi}
  prewarm: {size: 1}
- name: large
  resources: {cpu: 200m, memory: 96Mi}
  prewarm: {size: 2}
"""
CAP = 5


def made_as(on: Platform, pod: str, sim: Any = None) -> tuple[str, int, int]:
    """(template, CPU millis, memory bytes) of a pod, as its platform made it."""
    if on.name == "local":
        (pid,) = sandbox_processes(pod)
        env = dict(
            line.split("=", 1)
            for line in Path(f"/proc/{pid}/environ").read_text().split("\0")
            if "=" in line
        )
        return (
            env["AGENT_SANDBOX_TEMPLATE"],
            cpu_millis(env.get("AGENT_SANDBOX_CPU", "0")),
            memory_bytes(env.get("AGENT_SANDBOX_MEMORY", "0")),
        )
    if on.name == "kubernetes":
        obj = sim.store.get("pods", NAMESPACE, pod)
        requests = obj["spec"]["containers"][0]["resources"]["requests"]
        return (
            obj["metadata"]["labels"][LABEL_TEMPLATE],
            cpu_millis(requests["cpu"]),
            memory_bytes(requests["memory"]),
        )
    data = json.loads(docker("inspect", pod))[0]
    host = data["HostConfig"]
    return (
        data["Config"]["Labels"][LABEL_TEMPLATE],
        host["NanoCpus"] // 1_000_000,
        host["Memory"],
    )


async def test_two_templates_share_one_cap(platform: Platform, tmp_path: Path) -> None:  # noqa: F811
    path = tmp_path / "templates.yaml"
    path.write_text(TEMPLATES)
    ctl = await platform.controller(templates_file=str(path), max_total_jobs=CAP)
    sim = platform.sim

    async def warm() -> bool:
        parts = (await ctl.pool())["templates"]
        return parts["small"]["pods"]["idle"] == 1 and parts["large"]["pods"]["idle"] == 2

    await eventually(warm, within=60, what="each template's warm pool")
    assert len(platform.pods()) == 3

    # Both shapes at once, each served warm from its own pool.
    small, large = await asyncio.gather(
        ctl.open("ann", "t1"),
        ctl.client.post(
            "/sessions", json={"user_id": "ben", "thread_id": "t2", "template": "large"}
        ),
    )
    assert small.status_code == 201 and large.status_code == 201, (small.text, large.text)
    assert small.json()["template"] == "small" and large.json()["template"] == "large"
    if platform.name != "local":  # local sandboxes share the host: no resources to read
        assert made_as(platform, small.json()["pod"], sim)[1:] == (100, 64 * 2**20)
        assert made_as(platform, large.json()["pod"], sim)[1:] == (200, 96 * 2**20)
    assert made_as(platform, small.json()["pod"], sim)[0] == "small"
    assert made_as(platform, large.json()["pod"], sim)[0] == "large"

    # Resources of its own, within the bounds: served, cold, and said so.
    own = await ctl.client.post(
        "/sessions",
        json={"user_id": "cat", "thread_id": "t3", "resources": {"cpu": "300m"}},
    )
    assert own.status_code == 201, own.text
    body = own.json()
    assert body["resources"] == {"cpu": "300m", "memory": "64Mi"}
    assert "served cold" in (body.get("detail") or "")
    template, cpu, memory = made_as(platform, body["pod"], sim)
    assert template == "small"
    if platform.name == "local":
        assert cpu == 300  # told in its environment
    else:
        assert (cpu, memory) == (300, 64 * 2**20)

    # Outside the bounds, or no such template: refused, nothing made.
    before = len(platform.pods())
    too_big = await ctl.client.post(
        "/sessions",
        json={"user_id": "dov", "thread_id": "t4", "resources": {"memory": "1Gi"}},
    )
    assert too_big.status_code == 422
    assert too_big.json()["error"]["code"] == "resources_out_of_bounds"
    large_own = await ctl.client.post(
        "/sessions",
        json={"user_id": "dov", "thread_id": "t5", "template": "large", "resources": {"cpu": "1"}},
    )
    assert large_own.json()["error"]["code"] == "resources_out_of_bounds"  # large has no max
    unknown = await ctl.client.post(
        "/sessions", json={"user_id": "dov", "thread_id": "t6", "template": "gpu"}
    )
    assert unknown.status_code == 422
    assert unknown.json()["error"]["code"] == "unknown_template"
    assert len(platform.pods()) <= before

    # One cap over both: 3 sessions and what the warm pools may keep, never above it.
    pool = await ctl.pool()
    assert sum(pool["pods"].values()) + pool["creating"] <= CAP
    assert len(platform.pods()) <= CAP
    metrics = (await ctl.client.get("/metrics")).text
    assert 'sandbox_template_pods{state="assigned",template="large"} 1.0' in metrics


async def test_a_sessions_pod_is_labelled_for_cost_attribution(
    platform: Platform,  # noqa: F811
) -> None:
    ctl = await platform.controller(pod_label_metadata_keys="team,cost-center")
    await ctl.wait_idle_pods(1)
    opened = await ctl.client.post(
        "/sessions",
        json={
            "user_id": "ann",
            "thread_id": "t1",
            "org_id": "acme",
            "metadata": {"team": "data science/ml", "secret": "not a label"},
        },
    )
    assert opened.status_code == 201, opened.text
    pod = opened.json()["pod"]

    # On every backend the metrics say whose the pod is, under the name its platform
    # gives it: on Docker, where a container's labels are fixed when it is made (a warm
    # one before any session), this is where a cost tool finds the org and metadata,
    # joining container metrics (cAdvisor's ``name``) on ``pod``.
    metrics = (await ctl.client.get("/metrics")).text
    (sample,) = [line for line in metrics.splitlines() if line.startswith("sandbox_pod_labels{")]
    for label in (
        f'pod="{pod}"',
        'label_agent_sandbox_template="default"',
        'label_agent_sandbox_org="acme"',
        'label_agent_sandbox_meta_team="data_science_ml"',
    ):
        assert label in sample, sample
    assert "secret" not in sample  # only allow-listed keys

    if platform.name == "docker":
        # What Docker itself says: the container is named as the metric names it, and
        # its own labels carry its template (cAdvisor exports them as they are).
        data = json.loads(docker("inspect", pod))[0]
        assert data["Name"] == f"/{pod}"
        assert data["Config"]["Labels"][LABEL_TEMPLATE] == "default"
        assert "agent-sandbox/org" not in data["Config"]["Labels"]  # the documented limit
        return
    if platform.name == "kubernetes":

        def labels() -> dict[str, str]:
            found: dict[str, str] = platform.sim.store.get("pods", NAMESPACE, pod)["metadata"][
                "labels"
            ]
            return found

    else:

        def labels() -> dict[str, str]:
            found: dict[str, str] = ctl.sandboxes()[pod]["labels"]
            return found

    async def labelled() -> bool:
        return labels().get("agent-sandbox/meta-team") == "data_science_ml"

    await eventually(labelled, within=30, what="the attribution labels")
    assert labels()[LABEL_TEMPLATE] == "default"
    assert labels()["agent-sandbox/org"] == "acme"
    assert not any("secret" in key for key in labels())  # only allow-listed keys
