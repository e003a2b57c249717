"""Pieces the benchmarks share: free ports, scratch databases, process memory."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
# Made per run: `serve` refuses placeholder and short secrets.
TOKEN = secrets.token_urlsafe(24)
TOKEN_SECRET = secrets.token_urlsafe(32)
_PSQL = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-qc"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_wrk(
    base: str,
    path: str,
    conns: int,
    seconds: float,
    tag: str,
    requests: int = 0,
    templates: str = "",
) -> dict[str, Any]:
    """wrk with claims.lua: new sessions for new users and threads, for ``seconds`` or,
    with ``requests``, until each wrk thread has had that many answers."""
    threads = 2 if conns > 1 else 1
    command = [
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(conns),
        "-d",
        f"{seconds:g}s",
        "-H",
        f"Authorization: Bearer {TOKEN}",
        "-s",
        str(ROOT / "benchmarks" / "claims.lua"),
        f"{base}{path}",
        "--",
        tag,
        str(requests),
        templates,
    ]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as wrk:
        assert wrk.stdout is not None
        lines = []
        if requests:
            # A stopped wrk thread does not end wrk, which sleeps out its duration;
            # SIGINT ends the run early and still prints the summary.
            stopped = 0
            while stopped < threads and (line := wrk.stdout.readline()):
                lines.append(line)
                stopped += line.startswith("STOPPED")
            wrk.send_signal(signal.SIGINT)
        out = "".join(lines) + wrk.stdout.read()
        if wrk.wait() != 0:
            raise RuntimeError(f"wrk failed: {out}")
    match = re.search(r"RESULT (\{.*\})", out)
    assert match, out
    result: dict[str, Any] = json.loads(match.group(1))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def rss_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, in MiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


def fresh_database(kind: str, tmp: Path, prefix: str = "bench") -> str:
    """A new SQLite file or a new PostgreSQL database (127.0.0.1:5432) for one run."""
    if kind == "sqlite":
        return f"sqlite+aiosqlite:///{tmp}/bench.db"
    name = f"{prefix}_{os.getpid()}_{int(time.time())}"
    subprocess.run([*_PSQL, f'CREATE DATABASE "{name}"'], check=True)
    return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"


def drop_database(url: str) -> None:
    if url.startswith("postgresql"):
        name = url.rsplit("/", 1)[1]
        subprocess.run([*_PSQL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'], check=False)


def stop(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL if it has not gone within 30 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Kubesim:
    """kubesim in its own process, driven through its /_kubesim admin endpoints."""

    def __init__(
        self,
        tmp: Path,
        *,
        nodes: int,
        node_cpu: str,
        node_memory: str,
        startup_delay: float,
        termination_delay: float = 0.05,
        workload: bool = False,
    ) -> None:
        self.kubeconfig = str(tmp / "kubeconfig")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sandbox_controller.kubesim",
                "--port",
                "0",
                "--kubeconfig",
                self.kubeconfig,
                "--nodes",
                str(nodes),
                "--node-cpu",
                node_cpu,
                "--node-memory",
                node_memory,
                "--startup-delay",
                str(startup_delay),
                "--termination-delay",
                str(termination_delay),
                "--history",
                "400000",
                "--token",
                "",
                # A devsandbox at each pod's address (the claim hook's other end).
                *(["--workload"] if workload else []),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert self.proc.stdout is not None
        # kubesim prints {"url": ..., "kubeconfig": ...} once it listens.
        self.url = json.loads(self.proc.stdout.readline())["url"]

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = httpx.get(f"{self.url}/_kubesim/stats", timeout=60).json()
        return result

    def first_create_at(self) -> float:
        """Wall-clock time of the first pod create kubesim served."""
        calls = httpx.get(f"{self.url}/_kubesim/calls", timeout=60).json()
        return min(c["at"] for c in calls if c["verb"] == "create" and c["resource"] == "pods")

    def stop(self) -> None:
        stop(self.proc)


async def wait_leader(client: httpx.AsyncClient, timeout: float = 60) -> None:
    """Return once the controller at ``client``'s base URL leads (GET /readyz 200)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if (await client.get("/readyz")).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.02)
    raise TimeoutError("the controller never became ready")
