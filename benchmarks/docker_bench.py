"""The Docker backend on this machine (issue 14).

    python benchmarks/docker_bench.py [--warm 20] [--cold 10] [--fill-memory 256Mi]
                                      [--parts warm,cold,fill]

The controller runs as ``sandbox-controller serve`` with SANDBOX_BACKEND=docker in its
own process (SQLite), sandboxes are containers of the project's devsandbox image
(scripts/build-images.sh), and every request goes over the real HTTP API:

1. warm: a pool of 3 warm containers; --warm times ``POST /sessions`` for a new user,
   then ``DELETE`` it and wait for the pool to refill, so each claim finds a warm pod.
   The time is the client's, request to ``201 ready``.
2. cold: no pool; --cold times ``POST /sessions`` (``wait_seconds`` 60) from request to
   ``201 ready``: container create, start, and the sandbox answering /healthz.
3. fill: the most containers this host holds at --fill-memory each: a pool as large as
   maxTotalJobs (500) fills until the backend reports the host full (capacity_blocked);
   then how many are ready, what they really use (docker stats), and the host's memory.

Writes a Markdown table to stdout and to benchmarks/results/docker.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script
from benchmarks.common import ROOT, TOKEN, TOKEN_SECRET, free_port, stop


def build_image() -> str:
    built = subprocess.run(
        ["bash", str(ROOT / "scripts/build-images.sh")], capture_output=True, text=True, check=True
    )
    return built.stdout.split()[-1]


class Controller:
    def __init__(self, tmp: Path, image: str, **settings: str) -> None:
        self.instance = f"bench-{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        env = {
            **os.environ,
            "SANDBOX_BACKEND": "docker",
            "SANDBOX_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/{self.instance}.db",
            "SANDBOX_API_TOKEN": TOKEN,
            "SANDBOX_TOKEN_SECRET": TOKEN_SECRET,
            "SANDBOX_PORT": str(self.port),
            "SANDBOX_LOG_LEVEL": "warning",
            "SANDBOX_DOCKER_IMAGE": image,
            "SANDBOX_DOCKER_INSTANCE": self.instance,
            "SANDBOX_DOCKER_NETWORK": "agent-sandbox-bench",
            "SANDBOX_DOCKER_PUBLISH": "true",
            "SANDBOX_MAX_SESSIONS_PER_USER": "500",
            **{f"SANDBOX_{k.upper()}": v for k, v in settings.items()},
        }
        self.log = open(tmp / f"{self.instance}.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sandbox_controller.cli", "serve"],
            env=env,
            stdout=self.log,
            stderr=self.log,
        )
        self.http = httpx.Client(
            base_url=f"http://127.0.0.1:{self.port}",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=120,
            trust_env=False,
        )
        self.wait(lambda: self.http.get("/readyz").status_code == 200, 60, "the controller")

    def wait(self, check: Any, within: float, what: str) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "the controller exited"
            try:
                if check():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"waited {within:g}s for {what}")

    def pool(self) -> dict[str, Any]:
        body: dict[str, Any] = self.http.get("/pool").json()
        return body

    def containers(self, status: str = "") -> list[str]:
        label = f"label=app.kubernetes.io/instance={self.instance}"
        only = ["--filter", f"status={status}"] if status else []
        out = subprocess.run(
            ["docker", "ps", "-aq", "--filter", label, *only],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return out.split()

    def close(self) -> None:
        self.http.close()
        stop(self.proc)
        names = self.containers()
        if names:
            subprocess.run(["docker", "rm", "-f", *names], capture_output=True, check=False)


def timed_claims(ctl: Controller, count: int, *, warm: bool) -> list[float]:
    times = []
    for i in range(count):
        if warm:
            ctl.wait(lambda: ctl.pool()["pods"]["idle"] >= 3, 120, "the pool to refill")
        started = time.perf_counter()
        response = ctl.http.post(
            "/sessions", json={"user_id": f"u{i}", "thread_id": f"t{i}", "wait_seconds": 60}
        )
        elapsed = time.perf_counter() - started
        body = response.json()
        assert response.status_code == 201 and body["state"] == "ready", response.text
        times.append(elapsed * 1000)
        ctl.http.delete(f"/sessions/{body['id']}")
        if not warm:
            ctl.wait(lambda: not ctl.containers(), 60, "the container removed")
    return times


def summary(times: list[float]) -> str:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return (
        f"{len(times)} | {statistics.median(ordered):.0f} | {p95:.0f} | "
        f"{ordered[0]:.0f} | {ordered[-1]:.0f}"
    )


def host_memory() -> tuple[float, float]:
    """(total, available) in GiB, from /proc/meminfo."""
    fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    kib = {k: int(v.split()[0]) for k, v in fields.items() if k in ("MemTotal", "MemAvailable")}
    return kib["MemTotal"] / 2**20, kib["MemAvailable"] / 2**20


def fill(tmp: Path, image: str, memory: str) -> dict[str, Any]:
    _, available_before = host_memory()
    ctl = Controller(
        tmp,
        image,
        prewarm_pool_size="500",
        max_total_jobs="500",
        docker_memory=memory,
        docker_cpus="1",
        startup_timeout="30m",
    )
    try:
        started = time.monotonic()
        ctl.wait(lambda: ctl.pool()["capacity_blocked"], 1800, "the host to fill")
        blocked_at = time.monotonic() - started
        # Every started one ready: the pending pods are those waiting for room.
        ctl.wait(
            lambda: ctl.pool()["pods"]["pending"] == len(ctl.containers("created")),
            1800,
            "every started one ready",
        )
        ready_at = time.monotonic() - started
        pool = ctl.pool()
        stats = subprocess.run(
            [
                "docker",
                "stats",
                "--no-stream",
                "--format",
                "{{.MemUsage}}",
                *ctl.containers("running"),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
        used = [_mib(line.split("/")[0]) for line in stats if line.strip()]
        _, available_after = host_memory()
        return {
            "idle": pool["pods"]["idle"],
            "pending": pool["pods"]["pending"],
            "containers": len(ctl.containers()),
            "waiting": len(ctl.containers("created")),
            "blocked_s": blocked_at,
            "ready_s": ready_at,
            "median_mib": statistics.median(used) if used else 0.0,
            "total_gib": sum(used) / 1024,
            "host_used_gib": available_before - available_after,
        }
    finally:
        ctl.close()


def _mib(text: str) -> float:
    text = text.strip()
    for unit, factor in (("GiB", 1024.0), ("MiB", 1.0), ("KiB", 1 / 1024), ("B", 1 / 2**20)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warm", type=int, default=20)
    parser.add_argument("--cold", type=int, default=10)
    parser.add_argument("--fill-memory", default="256Mi")
    parser.add_argument("--parts", default="warm,cold,fill")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    image = build_image()
    total, _ = host_memory()
    lines = [
        f"Host: {os.cpu_count()} CPUs, {total:.1f} GiB; image {image}; {time.strftime('%Y-%m-%d')}",
        "",
        "| claim | n | median ms | p95 ms | min ms | max ms |",
        "|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        if "warm" in parts:
            ctl = Controller(tmp, image, prewarm_pool_size="3", docker_memory="256Mi")
            try:
                lines.append(f"| warm | {summary(timed_claims(ctl, args.warm, warm=True))} |")
            finally:
                ctl.close()
        if "cold" in parts:
            ctl = Controller(tmp, image, prewarm_pool_size="0", docker_memory="256Mi")
            try:
                lines.append(f"| cold | {summary(timed_claims(ctl, args.cold, warm=False))} |")
            finally:
                ctl.close()
        if "fill" in parts:
            result = fill(tmp, image, args.fill_memory)
            lines += [
                "",
                f"Fill at {args.fill_memory} each: **{result['idle']} containers ready** "
                f"({result['containers']} exist, {result['waiting']} created and waiting for room); "
                f"host full (capacity_blocked) after {result['blocked_s']:.0f} s, all ready "
                f"after {result['ready_s']:.0f} s; real use {result['median_mib']:.1f} MiB "
                f"median per container, {result['total_gib']:.2f} GiB in all "
                f"(host available memory fell by {result['host_used_gib']:.2f} GiB).",
            ]
    text = "\n".join(lines)
    print(text)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "docker.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
