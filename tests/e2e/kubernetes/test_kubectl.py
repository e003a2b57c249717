"""What an operator sees with kubectl: the pool, by the label the chart documents."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from sandbox_controller.backends.base import LABEL_MANAGED_BY, MANAGED_BY

from .conftest import NAMESPACE, Kube, pod_names

REPO = Path(__file__).resolve().parents[3]


def find_kubectl() -> str | None:
    """$KUBECTL, then the one scripts/fetch-kubectl.sh puts in .cache/tools, then PATH
    (as tests/kubesim/test_kubectl.py finds it)."""
    for candidate in (os.environ.get("KUBECTL"), str(REPO / ".cache/tools/kubectl")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("kubectl")


KUBECTL = find_kubectl()
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="no kubectl: run scripts/fetch-kubectl.sh")


async def test_kubectl_lists_the_pool_by_the_managed_by_label(kube: Kube) -> None:
    assert KUBECTL is not None
    sim = await kube.sim()
    ctl = await kube.controller(sim, prewarm_pool_size=3)
    await ctl.wait_idle_pods(3)
    session = (await ctl.open("erin", "t1")).json()
    await ctl.wait_idle_pods(3)
    assert sim.kubeconfig_path is not None
    proc = await asyncio.create_subprocess_exec(
        KUBECTL,
        "--kubeconfig",
        str(sim.kubeconfig_path),
        "get",
        "pods",
        "-l",
        f"{LABEL_MANAGED_BY}={MANAGED_BY}",
        "-o",
        "custom-columns=NAME:.metadata.name,PHASE:.status.phase,"
        "READY:.status.conditions[?(@.type=='Ready')].status,"
        "STATE:.metadata.labels.agent-sandbox/state",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "HOME": str(sim.kubeconfig_path.parent)},
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, out.decode()
    lines = out.decode().strip().splitlines()
    assert lines[0].split() == ["NAME", "PHASE", "READY", "STATE"], lines
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert set(rows) == pod_names(sim) and len(rows) == 4  # the kubeconfig's namespace
    assert all(row[:2] == ["Running", "True"] for row in rows.values()), rows
    assert rows.pop(session["pod"])[2] == "assigned"
    assert all(row[2] != "assigned" for row in rows.values()), rows  # the warm pool
    assert NAMESPACE == sim.namespace
