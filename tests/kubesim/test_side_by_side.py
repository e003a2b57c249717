"""Two kubesims on one machine, and a prompt exit on SIGTERM (issue 10, item 7)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from sandbox_controller.kubesim import KubeSim
from sandbox_controller.kubesim.testing import pod_body

from ..eventually import eventually

NS = "default"


def running_ips(sim: KubeSim) -> dict[str, str]:
    return {
        p["metadata"]["name"]: p["status"]["podIP"]
        for p in sim.pods(NS)
        if p["status"].get("phase") == "Running"
    }


async def answers(http: httpx.AsyncClient, ip: str) -> bool:
    try:
        return (await http.get(f"http://{ip}:8080/healthz", timeout=1.0)).status_code == 200
    except httpx.TransportError:
        return False


async def test_two_kubesims_with_workloads_each_serve_their_own_pods(tmp_path: Path) -> None:
    options = {"startup_delay": 0.01, "termination_delay": 0.01, "workload": True, "seed": 3}
    first = await KubeSim(kubeconfig=tmp_path / "a", **options).start()  # type: ignore[arg-type]
    second = await KubeSim(kubeconfig=tmp_path / "b", **options).start()  # type: ignore[arg-type]
    try:
        # The worst case: the second starts allocating exactly where the first did, as
        # two runs with the same fixed range did before.
        second.cluster._next_ip = first.cluster._next_ip
        for i in range(5):
            first.store.create("pods", NS, first.admit_pod(pod_body(f"a{i}", cpu="10m")))
            second.store.create("pods", NS, second.admit_pod(pod_body(f"b{i}", cpu="10m")))
        await eventually(lambda: len(running_ips(first)) == len(running_ips(second)) == 5)
        a_ips, b_ips = set(running_ips(first).values()), set(running_ips(second).values())
        assert len(a_ips) == len(b_ips) == 5
        assert not a_ips & b_ips, "two kubesims handed out the same pod address"
        async with httpx.AsyncClient() as http:
            assert all([await answers(http, ip) for ip in a_ips | b_ips])
            # Stopping the first takes its pods' workloads away and leaves the second's:
            # each address was served by the instance that owns the pod.
            await first.stop()
            assert not any([await answers(http, ip) for ip in a_ips])
            assert all([await answers(http, ip) for ip in b_ips])
    finally:
        await first.stop()
        await second.stop()


@pytest.mark.slow
async def test_exits_within_5s_of_sigterm_with_300_running_pods(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sandbox_controller.kubesim",
            "--kubeconfig",
            str(tmp_path / "kubeconfig"),
            "--workload",
            "--startup-delay",
            "0",
        ],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        url = json.loads(await asyncio.to_thread(proc.stdout.readline))["url"]
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            sem = asyncio.Semaphore(20)

            async def create(i: int) -> None:
                async with sem:
                    body = pod_body(f"p{i}", cpu="10m")
                    response = await http.post(f"/api/v1/namespaces/{NS}/pods", json=body)
                    assert response.status_code == 201

            await asyncio.gather(*(create(i) for i in range(300)))

            async def running() -> int:
                pods = (await http.get(f"/api/v1/namespaces/{NS}/pods")).json()["items"]
                return sum(p["status"].get("phase") == "Running" for p in pods)

            async with asyncio.timeout(60):
                while await running() < 300:  # noqa: ASYNC110 (polling a process)
                    await asyncio.sleep(0.2)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 10)
        took = time.monotonic() - sent
        assert code == 0
        assert took < 5.0, f"kubesim took {took:.1f}s to exit"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
